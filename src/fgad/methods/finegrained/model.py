"""FineGrainedAD: one model per class, from k normal shots (METHOD.md §2.4, §2.7).

Inference, per image:

1. visual features (§2.4): dual path from block 1; ``G = n(LN_post(x^L_cls) W_proj)``, patch features
   ``F = n(LN_post(z^L) W_proj)`` ``[B, N, C]`` from the V-V path, gallery tokens ``n(x^l)`` of the
   original path at the gallery layers (patch tokens only);
2. text pairs ``T_f = (T^n_f, T^a_f)`` of every family (entities, image, background; MLLP), computed
   once and cached while the model is in eval mode without gradients;
3. token-wise pair choice (CHOICE, replaces the released code's untrained projection, F1, which
   ``model.reproduce: released`` keeps: :mod:`fgad.methods.finegrained.query_former`):
   ``π(u) = argmax_f cos(F_u, T^n_f)``; textual map ``softmax(t [<F_u, T^n_π>, <F_u, T^a_π>])_2`` with
   ``gather`` (no loops, no boolean indexing: export-safe); the global score ``s_t`` is the same for ``G``;
4. visual map ``V = ½ · mean over gallery layers of min(1 − cos)`` against the shots' gallery tokens;
5. pixel map ``M = G_σ(Up(1 / (1/T + 1/V)))`` at ``output_size``, image score
   ``s = 1 / (1/s_t + 1/max Up(V))``. Without references (no shots loaded) ``T`` stands in for ``V``
   in both (CHOICE: FineGrainedAD is few-shot; this keeps a zero-shot call meaningful).

Upsampling is bilinear with ``finegrained.align_corners`` (default False, as the released code: each token
covers a p×p square, and True would shift the edge tokens outwards by half a token; the bundle's
``post.align_corners`` tells the runtime the same). ``t`` is the
CLIP model's raw ``logit_scale`` (F3) unless ``finegrained.logit_scale`` sets it.
"""

from __future__ import annotations

from typing import Any, NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fgad.backbone.dual_path import ClipDualPath, TextEncoder
from fgad.backbone.fewshot import PatchMemory
from fgad.backbone.postprocess import GaussianBlur, harmonic_fusion, upsample
from fgad.config import ModelConfig
from fgad.methods.finegrained.mllp import MllpTexts, MultiLevelPrompts, PromptFeatures
from fgad.methods.finegrained.query_former import UntrainedQueryFormer
from fgad.methods.finegrained.regions import split_tiles, stitch_tiles

__all__ = [
    "FgadOutput",
    "FgadVisual",
    "FineGrainedAD",
    "build_finegrained",
    "choose_pairs",
    "dual_path_features",
    "fuse_and_score",
]


class FgadVisual(NamedTuple):
    global_normed: Tensor  # n(G) [B, C]
    patches: Tensor  # n(F) [B, N, C]
    gallery: tuple[Tensor, ...]  # n(original-path patch tokens) per gallery layer, [B, N, D]


class FgadOutput(NamedTuple):
    anomaly_map: Tensor  # [B, O, O], O = finegrained.output_size
    image_score: Tensor  # [B]
    global_prob: Tensor  # [B] s_t, the global feature's two-way score against its chosen pair
    best_description: Tensor  # [B] int64, the pair G chose (index into the pair names)
    text_map: Tensor  # [B, g, g]
    visual_map: Tensor | None  # [B, g, g], None without references


def dual_path_features(backbone: ClipDualPath, images: Tensor) -> FgadVisual:
    """§2.4: ``n(G)``, ``n(LN_post(z^L) W_proj)`` of the patch tokens, ``n(x^l)`` of the gallery layers."""
    feats = backbone(images)
    ln_post = cast(nn.Module, backbone.ln_post)
    patches = ln_post(feats.vv[0][:, 1:]) @ backbone.proj
    gallery = tuple(F.normalize(o[:, 1:], dim=-1) for o in feats.ori)
    return FgadVisual(F.normalize(feats.global_embed, dim=-1), F.normalize(patches, dim=-1), gallery)


def choose_pairs(
    features: Tensor, t_normal: Tensor, t_abnormal: Tensor, scale: Tensor | float, route: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Token-wise pair choice and two-way score.

    Args:
        features: normalised ``[..., C]`` (tokens ``[B, N, C]`` or global ``[B, C]``).
        t_normal, t_abnormal: the pairs ``[P, C]`` (normalised).
        scale: ``t``.
        route: normalised ``[P, C]`` keys the choice is made against instead of ``T^n`` (the released
            code's untrained QueryFormer, :mod:`fgad.methods.finegrained.query_former`).

    Returns:
        ``(p_abnormal [...], choice [...] int64)`` with ``choice = argmax_f <x, T^n_f>`` (or ``<x, route_f>``)
        and ``p = softmax(t [<x, T^n_choice>, <x, T^a_choice>])_2``.
    """
    sim_n = features @ t_normal.T  # [..., P]
    choice = (sim_n if route is None else features @ route.T).argmax(dim=-1, keepdim=True)
    normal = sim_n.gather(-1, choice)
    abnormal = (features @ t_abnormal.T).gather(-1, choice)
    probs = (torch.cat([normal, abnormal], dim=-1) * scale).softmax(dim=-1)[..., 1]
    return probs, choice.squeeze(-1)


def fuse_and_score(
    text_map: Tensor,
    visual_map: Tensor | None,
    global_prob: Tensor,
    output_size: int,
    blur: nn.Module,
    align_corners: bool = False,
) -> tuple[Tensor, Tensor]:
    """Pixel map ``G_σ(Up(T ⊕ V))`` ``[B, O, O]`` and image score ``s_t ⊕ max Up(V)`` (⊕: ``1/(1/a + 1/b)``).

    ``text_map``/``visual_map`` are ``[B, g, g]``; without a visual map ``T`` takes its place.
    """
    reference = text_map if visual_map is None else visual_map
    fused = text_map if visual_map is None else harmonic_fusion(text_map, visual_map)
    up = upsample(fused.unsqueeze(1), output_size, align_corners=align_corners)
    anomaly_map = blur(up)[:, 0]
    peak = upsample(reference.unsqueeze(1), output_size, align_corners=align_corners).flatten(1).amax(dim=1)
    return anomaly_map, harmonic_fusion(global_prob, peak)


class FineGrainedAD(nn.Module):
    """The FineGrainedAD model of one class (see the module docstring)."""

    method = "finegrained"
    logit_scale: Tensor

    def __init__(self, cfg: ModelConfig, clip: Any, tokenizer: Any, texts: MllpTexts) -> None:
        super().__init__()
        if cfg.method != "finegrained":
            raise ValueError(f"FineGrainedAD needs a config with method 'finegrained', got {cfg.method!r}")
        fc, bb = cfg.finegrained, cfg.backbone
        self.cfg = cfg
        self.texts = texts
        self.class_name = texts.class_name
        self.backbone = ClipDualPath(clip.visual, bb, tuple(fc.gallery_layers), (bb.layers,),
                                     aliasing=cfg.reproduce == "released")
        self.text_encoder = TextEncoder(clip)
        for p in list(self.backbone.parameters()) + list(self.text_encoder.parameters()):
            p.requires_grad_(False)
        self.prompts = MultiLevelPrompts(fc, texts, tokenizer, clip.token_embedding, bb.context_length,
                                         released=cfg.reproduce == "released")
        scale = fc.logit_scale if fc.logit_scale is not None else float(clip.logit_scale.detach())
        self.register_buffer("logit_scale", torch.tensor(float(scale)), persistent=False)
        self.memory = PatchMemory(len(fc.gallery_layers), dims=bb.width)
        self.blur = GaussianBlur(fc.output_size, sigma=fc.sigma, truncate=fc.truncate)
        # F1, released mode only: the untrained QueryFormer's random routing (seeded with finegrained.seed)
        self.query_former = (UntrainedQueryFormer(bb.embed_dim, len(texts.pair_names), fc.seed)
                             if cfg.reproduce == "released" else None)
        self.reference_paths: list[str] = []  # the shots the galleries hold (recorded for eval and export)
        self._pair_cache: tuple[tuple[object, ...], tuple[Tensor, Tensor]] | None = None

    # ------------------------------------------------------------------ parameters
    def trainable_state_dict(self) -> dict[str, Tensor]:
        """The learned weights: MLLP contexts and fusion weights (the checkpoint's ``weights.safetensors``)."""
        return {k: v for k, v in self.state_dict().items() if k.startswith("prompts.")}

    @property
    def pair_names(self) -> tuple[str, ...]:
        return self.texts.pair_names

    @property
    def output_size(self) -> int:
        """Side of the pixel map (``finegrained.output_size``)."""
        return self.cfg.finegrained.output_size

    @property
    def image_family(self) -> int:
        return self.prompts.family_index("image")

    @property
    def background_family(self) -> int:
        return self.prompts.family_index("background")

    # ------------------------------------------------------------------ text
    def prompt_features(self) -> PromptFeatures:
        """Raw features of every prompt (with gradients to the contexts when enabled)."""
        return self.prompts(self.text_encoder)

    def text_pairs(self) -> tuple[Tensor, Tensor]:
        """``(T^n [P, C], T^a [P, C])`` in pair order; cached in eval mode without gradients."""
        if self.training or torch.is_grad_enabled():
            return self.prompts.pairs(self.prompt_features())
        key = tuple((p.data_ptr(), p._version, p.device, p.dtype) for p in self.prompts.parameters())
        if self._pair_cache is None or self._pair_cache[0] != key:
            self._pair_cache = (key, self.prompts.pairs(self.prompt_features()))
        return self._pair_cache[1]

    # ------------------------------------------------------------------ vision
    @torch.no_grad()
    def visual_features(self, images: Tensor) -> FgadVisual:
        return dual_path_features(self.backbone, images)

    @torch.no_grad()
    def tile_features(self, images: Tensor, batch_size: int = 16) -> Tensor:
        """Stitched patch features ``Z`` ``[k, (tiles * g)^2, C]`` of ``[k, 3, tiles * s, tiles * s]`` images."""
        fc, bb = self.cfg.finegrained, self.cfg.backbone
        crops = split_tiles(images, fc.tiles)
        parts = [self.visual_features(crops[i : i + batch_size]).patches for i in range(0, crops.shape[0], batch_size)]
        return stitch_tiles(torch.cat(parts), fc.tiles, bb.grid)

    # ------------------------------------------------------------------ few-shot galleries
    @torch.no_grad()
    def set_reference_images(self, images: Tensor, paths: list[str] | None = None) -> None:
        """Fill the galleries with the gallery-layer tokens of the normal shots ``[k, 3, s, s]``."""
        gallery = self.visual_features(images).gallery
        for stage, tokens in enumerate(gallery):
            self.memory.set_memory(stage, tokens)
        self.reference_paths = list(paths or [])

    def clear_memory(self) -> None:
        self.memory.clear()
        self.reference_paths = []

    # ------------------------------------------------------------------ maps
    def routing_keys(self, pairs: tuple[Tensor, Tensor]) -> Tensor | None:
        """The keys the pair choice is made against: None (``T^n``), or in the released mode ``n(QF(T^n, T^a))``."""
        if self.query_former is None:
            return None
        return F.normalize(self.query_former(pairs[0], pairs[1]), dim=-1)

    def text_map(self, visual: FgadVisual, pairs: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """(T_map [B, g, g], s_t [B], pair chosen by G [B])."""
        g = self.cfg.backbone.grid
        route = self.routing_keys(pairs)
        tokens, _ = choose_pairs(visual.patches, pairs[0], pairs[1], self.logit_scale, route)
        global_prob, global_choice = choose_pairs(visual.global_normed, pairs[0], pairs[1], self.logit_scale, route)
        return tokens.unflatten(1, (g, g)), global_prob, global_choice

    def visual_map(self, visual: FgadVisual) -> Tensor:
        """V_map ``[B, g, g]`` = scale · mean over gallery layers of the min cosine distance."""
        g = self.cfg.backbone.grid
        return (self.cfg.finegrained.fewshot_scale * self.memory(list(visual.gallery))).unflatten(1, (g, g))

    def forward(
        self,
        images: Tensor,
        class_name: str | None = None,
        positions: Tensor | None = None,
        region: Tensor | None = None,
        filtering: bool | None = None,
        use_memory: bool = True,
    ) -> FgadOutput:
        """Maps and scores of ``images`` ``[B, 3, s, s]``; ``class_name`` is checked, the FiLo++-only
        arguments (``positions``, ``region``, ``filtering``) are accepted for the same call shape and unused."""
        if class_name is not None and class_name != self.class_name:
            raise ValueError(
                f"this FineGrainedAD model was trained for class {self.class_name!r}, not {class_name!r}; "
                f"train one per class (fgad-train --class-name {class_name})"
            )
        if region is not None:
            raise ValueError("FineGrainedAD has no box prior: pass region=None")
        del positions, filtering
        visual = self.visual_features(images)
        text_map, global_prob, choice = self.text_map(visual, self.text_pairs())
        visual_map = self.visual_map(visual) if (use_memory and self.memory.has_memory) else None
        anomaly_map, score = fuse_and_score(
            text_map, visual_map, global_prob, self.cfg.finegrained.output_size, self.blur,
            self.cfg.finegrained.align_corners,
        )
        return FgadOutput(anomaly_map, score, global_prob, choice, text_map, visual_map)


def build_finegrained(
    cfg: ModelConfig, texts: MllpTexts, pretrained: str | None = None, seed: int | None = None
) -> FineGrainedAD:
    """A FineGrainedAD model with frozen CLIP towers; ``pretrained`` overrides the config's weights.

    The learnable contexts are drawn from ``seed`` (default ``finegrained.seed``) without touching the
    global RNG, so the same call always builds the same model.
    """
    from fgad.backbone.clip_loader import create_clip, get_tokenizer

    clip = create_clip(cfg.backbone, pretrained=pretrained)
    tokenizer = get_tokenizer(cfg.backbone)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.finegrained.seed if seed is None else seed)
        return FineGrainedAD(cfg, clip, tokenizer, texts)
