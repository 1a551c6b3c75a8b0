"""FiLo++: the composition of backbone, prompts, filtering, adapter, local heads and few-shot branch.

Inference (METHOD.md §1.9), per batch of images of one class:
 1. backbone -> G, original and V-V stage tokens; G_a = n(adapter(G))
 2. box prior -> region R and the position mask
 3. prompts (normal; abnormal at the selected positions) -> filtering -> T_n, T_a
 4. M^vl from the 7 stage maps (Eq. 2-4), M^few from the patch memory (Eq. 5-6), λ-suppression
 5. M = G_σ(mean of the branches) (Eq. 7) and S = (p_a + max M) / 2 (Eq. 1)
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from fgad.backbone.dual_path import ClipDualPath, TextEncoder, VisualFeatures
from fgad.backbone.fewshot import PatchMemory
from fgad.backbone.postprocess import GaussianBlur, suppress_outside, upsample
from fgad.config import ModelConfig
from fgad.core.cells import NUM_POSITIONS
from fgad.methods.filo.heads import Adapter, LinearStageHeads, MDCIHead
from fgad.methods.filo.priors.base import BoxPrior, BoxPriorResult
from fgad.methods.filo.prompts import PromptLearner
from fgad.methods.filo.released import released_maps, released_stage_logits
from fgad.methods.filo.scoring import filter_masks, l2n, masked_direction, two_way_logits, two_way_probs


class TextPair(NamedTuple):
    t_normal: torch.Tensor  # [B, C]
    t_abnormal: torch.Tensor  # [B, C]
    abnormal: torch.Tensor  # [B, 9 * K_pos, C], normalised
    keep_abnormal: torch.Tensor  # [B, 9 * K_pos] bool, kept after filtering
    valid_abnormal: torch.Tensor  # [B, 9 * K_pos] bool, at a selected position


class FiloOutput(NamedTuple):
    anomaly_map: torch.Tensor  # [B, s, s], final M
    image_score: torch.Tensor  # [B], S_global
    global_prob: torch.Tensor  # [B], p_a of the global feature
    global_logits: torch.Tensor  # [B, 2]
    stage_probs: tuple[torch.Tensor, ...]  # per stage [B, 2, g, g]: 4 linear then 3 MDCI
    vl_map: torch.Tensor  # [B, s, s], M^vl after suppression (reproduce "released": blurred, before suppression)
    fewshot_map: torch.Tensor | None  # [B, s, s], M^few after suppression (released: blurred, before)
    best_description: torch.Tensor  # [B] abnormal prompt (selected positions) closest to G_a
    prior: BoxPriorResult | None = None  # the box prior's boxes, region and position, when one ran


class FiLoPlusPlus(nn.Module):
    def __init__(self, cfg: ModelConfig, clip: nn.Module, tokenizer) -> None:  # noqa: ANN001
        super().__init__()
        self.cfg = cfg
        bb = cfg.backbone
        self.backbone = ClipDualPath(clip.visual, bb, cfg.feature_layers, tuple(cfg.heads.mdci_layers),
                                     aliasing=cfg.reproduce == "released")
        self.text_encoder = TextEncoder(clip)
        for p in list(self.backbone.parameters()) + list(self.text_encoder.parameters()):
            p.requires_grad_(False)
        self.prompts = PromptLearner(cfg, self.text_encoder, tokenizer)
        self.linear_heads = LinearStageHeads(cfg)
        self.mdci = MDCIHead(cfg)
        self.adapter = Adapter(bb.embed_dim, cfg.heads.adapter_reduction) if cfg.heads.adapter else None
        self.blur = GaussianBlur(bb.image_size, sigma=cfg.post.sigma, truncate=cfg.post.truncate)
        self.memory = PatchMemory(len(cfg.fewshot.memory_layers), dims=bb.width)
        self._linear_index = [cfg.feature_layers.index(i) for i in cfg.heads.linear_layers]
        self._memory_index = [cfg.feature_layers.index(i) for i in cfg.fewshot.memory_layers]

    # ------------------------------------------------------------------ parameter groups
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The learned weights: everything except the frozen CLIP towers and the memory."""
        frozen = ("backbone.", "text_encoder.", "prompts.text_encoder.", "memory.", "blur.")
        return {k: v for k, v in self.state_dict().items() if not k.startswith(frozen)}

    def phase1_parameters(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(prompt-learner params, head params) for phase 1."""
        prompt_params = [p for n, p in self.prompts.named_parameters() if not n.startswith("text_encoder.")]
        head_params = list(self.linear_heads.parameters()) + list(self.mdci.parameters())
        return prompt_params, head_params

    def adapter_parameters(self) -> list[nn.Parameter]:
        return list(self.adapter.parameters()) if self.adapter is not None else []

    # ------------------------------------------------------------------ pieces
    def set_reproduce(self, mode: str) -> None:
        """Switch ``model.reproduce`` of a built or loaded model ("fgad" or "released": the aliased features and
        the released test's scoring and blur, :mod:`fgad.methods.filo.released`)."""
        from fgad.config import replace

        self.cfg = replace(self.cfg, reproduce=mode)  # validated: an unknown mode raises ConfigError
        self.backbone.aliasing = mode == "released"

    def encode_images(self, images: torch.Tensor) -> VisualFeatures:
        with torch.no_grad():
            return self.backbone(images)

    def adapted_global(self, global_embed: torch.Tensor) -> torch.Tensor:
        g = self.adapter(global_embed) if self.adapter is not None else global_embed
        return l2n(g)

    def text_pair(
        self,
        class_name: str,
        global_normed: torch.Tensor,
        global_adapted: torch.Tensor,
        positions: torch.Tensor,
        filtering: bool,
    ) -> TextPair:
        normal, abnormal = self.prompts(class_name, global_normed)
        normal = l2n(normal)
        per_position = abnormal.shape[2]
        abnormal = l2n(abnormal).flatten(1, 2)  # [B, 9 * K_pos, C]
        valid = positions.bool().unsqueeze(-1).expand(-1, NUM_POSITIONS, per_position).flatten(1)
        if filtering:
            keep_n, keep_a = filter_masks(global_adapted, normal, abnormal, valid)
        else:
            keep_n, keep_a = torch.ones(normal.shape[:2], dtype=torch.bool, device=normal.device), valid
        return TextPair(masked_direction(normal, keep_n), masked_direction(abnormal, keep_a), abnormal, keep_a, valid)

    def head_features(self, feats: VisualFeatures) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        """The linear heads' [B, N, C] features and, per MDCI stage, its kernels' [B, N, C] features."""
        ori_linear = tuple(feats.ori[i] for i in self._linear_index)
        return list(self.linear_heads(ori_linear)), self.mdci(feats.vv)

    def stage_probabilities(
        self,
        feats: VisualFeatures,
        pair: TextPair,
        heads: tuple[list[torch.Tensor], list[list[torch.Tensor]]] | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """Per-stage [B, 2, g, g] probabilities: linear stages, then MDCI stages (mean over kernels).

        ``heads``: :meth:`head_features` already computed for ``feats`` (else computed here)."""
        g = self.cfg.backbone.grid
        tau = self.cfg.heads.tau_local
        # without ``heads``: the linear stages before the MDCI heads run, the order of the exported graph (golden
        # bundles pin it)
        linear = self.linear_heads(tuple(feats.ori[i] for i in self._linear_index)) if heads is None else heads[0]
        out: list[torch.Tensor] = []
        for f in linear:
            out.append(two_way_probs(l2n(f), pair.t_normal, pair.t_abnormal, tau).unflatten(2, (g, g)))
        for kernels in (self.mdci(feats.vv) if heads is None else heads[1]):
            probs = [two_way_probs(l2n(f), pair.t_normal, pair.t_abnormal, tau) for f in kernels]
            out.append(torch.stack(probs, dim=0).mean(dim=0).unflatten(2, (g, g)))
        return tuple(out)

    def vl_map(self, stage_probs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """M^vl at input resolution [B, s, s] (Eq. 3-4; softmax at g x g, then upsample)."""
        mean = torch.stack(stage_probs, dim=0).mean(dim=0)
        mean = upsample(mean, self.cfg.backbone.image_size, align_corners=True)
        if self.cfg.heads.vl_map == "symmetric":
            return (mean[:, 1] + 1.0 - mean[:, 0]) / 2.0
        return mean[:, 1]

    def fewshot_map(self, feats: VisualFeatures) -> torch.Tensor:
        g, s = self.cfg.backbone.grid, self.cfg.backbone.image_size
        stage_tokens = [feats.ori[i][:, 1:] for i in self._memory_index]
        dist = self.memory(stage_tokens)  # [B, N]
        return upsample(dist.unflatten(1, (g, g)).unsqueeze(1), s, align_corners=True)[:, 0]

    # ------------------------------------------------------------------ few-shot memory
    @torch.no_grad()
    def set_reference_images(self, images: torch.Tensor) -> None:
        """Fill the patch memory with the normal reference images' stage tokens ([k, 3, s, s])."""
        feats = self.backbone(images)
        for stage, i in enumerate(self._memory_index):
            self.memory.set_memory(stage, feats.ori[i][:, 1:])

    def clear_memory(self) -> None:
        self.memory.clear()

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        images: torch.Tensor,
        class_name: str,
        positions: torch.Tensor | None = None,
        region: torch.Tensor | None = None,
        filtering: bool | None = None,
        use_memory: bool = True,
        box_prior: BoxPrior | None = None,
    ) -> FiloOutput:
        """Score ``images`` of ``class_name``.

        The position mask and region come either from ``positions`` / ``region`` or from ``box_prior``
        (run on these images, reusing this forward's backbone features), not both. Without either: all 9
        positions and the whole image.
        """
        batch = images.shape[0]
        if box_prior is not None and (positions is not None or region is not None):
            raise ValueError("pass either box_prior or positions/region to FiLoPlusPlus.forward, not both")
        if filtering is None:
            filtering = self.cfg.prompts.filtering and not self.training
        feats = self.encode_images(images)
        prior = box_prior(images, class_name, features=feats) if box_prior is not None else None
        if prior is not None:
            positions, region = prior.positions, prior.region
        if positions is None:
            positions = torch.ones(batch, NUM_POSITIONS, device=images.device)
        g_normed = l2n(feats.global_embed)
        g_adapted = self.adapted_global(feats.global_embed)
        pair = self.text_pair(class_name, g_normed, g_adapted, positions, filtering)

        global_logits = two_way_logits(g_adapted, pair.t_normal, pair.t_abnormal, self.cfg.heads.tau_global)
        global_prob = global_logits.softmax(dim=1)[:, 1]

        heads = self.head_features(feats) if self.cfg.reproduce == "released" else None
        stage_probs = self.stage_probabilities(feats, pair, heads)
        few = self.fewshot_map(feats) if (use_memory and self.memory.has_memory) else None
        if self.cfg.reproduce == "released":  # the released test's scoring and blur (released.py)
            logits = released_stage_logits(*heads, pair.t_normal, pair.t_abnormal, self.cfg.heads.tau_local,
                                           self.cfg.backbone.grid)
            rel = released_maps(logits, few, g_adapted, pair.t_abnormal, region, self.cfg.post.suppression,
                                self.cfg.backbone.image_size)
            anomaly_map, image_score, vl, few = rel
        else:
            vl = self.vl_map(stage_probs)
            if region is not None:
                lam = self.cfg.post.suppression
                vl = suppress_outside(vl.unsqueeze(1), region, lam)[:, 0]
                few = suppress_outside(few.unsqueeze(1), region, lam)[:, 0] if few is not None else None
            fused = vl if few is None else (vl + few) / 2.0
            anomaly_map = self.blur(fused.unsqueeze(1))[:, 0]
            image_score = 0.5 * (global_prob + anomaly_map.flatten(1).amax(dim=1))

        sims = torch.einsum("bc,bpc->bp", g_adapted, pair.abnormal)
        sims = torch.where(pair.valid_abnormal, sims, torch.full_like(sims, -2.0))
        return FiloOutput(
            anomaly_map=anomaly_map,
            image_score=image_score,
            global_prob=global_prob,
            global_logits=global_logits,
            stage_probs=stage_probs,
            vl_map=vl,
            fewshot_map=few,
            best_description=sims.argmax(dim=1),
            prior=prior,
        )
