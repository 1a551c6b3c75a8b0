"""The ``objectness`` box prior: where the product is, from tokens the model computes anyway.

At the edge a detector such as Grounding DINO costs more than the anomaly model itself. This
prior costs a LayerNorm, one projection and a two-way softmax over the patch tokens:

1. tokens: the deepest V-V stage (CLIP-Surgery tokens localise text concepts far better than the
   original path; without MDCI stages the deepest original-path stage), through CLIP's own
   ``LN_post`` and ``W_proj`` into the joint space, normalised;
2. p(object) per patch = softmax(τ·[cos(f, T_bg), cos(f, T_obj)])₂, with T_obj the mean of
   "a photo of a [cls]."-style prompts and T_bg the mean of background prompts (both frozen
   constants, computed once per class from the frozen text encoder);
3. foreground = p(object) > threshold; the box is the extent of the foreground cells
   (min/max over masked coordinates), in pixels; no foreground: no box (the whole image, centre
   cell; see :mod:`fgad.methods.filo.priors.base`).

Everything after the text constants is export-safe (:class:`ObjectnessHead`): fixed shapes from
the config, thresholding by comparison, extents by ``where`` + ``amin``/``amax``. The exported
graph runs this same module (:mod:`fgad.methods.filo.export_module`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import nn

from fgad.backbone.dual_path import ClipDualPath, VisualFeatures
from fgad.config import ModelConfig, ObjectnessConfig
from fgad.data.descriptions import display_name
from fgad.methods.filo.priors.base import BoxPriorResult, result_from_boxes
from fgad.methods.filo.scoring import l2n

if TYPE_CHECKING:
    from fgad.methods.filo.model import FiLoPlusPlus

__all__ = [
    "ObjectnessHead",
    "ObjectnessOutput",
    "ObjectnessPrior",
    "objectness_prompts",
    "objectness_text",
    "objectness_tokens",
    "token_source",
]


class ObjectnessOutput(NamedTuple):
    prob: torch.Tensor  # [B, g, g] p(object) per patch
    boxes: torch.Tensor  # [B, 1, 4] xyxy pixels; the whole image where no cell is foreground
    valid: torch.Tensor  # [B, 1] bool: some cell is foreground
    scores: torch.Tensor  # [B, 1] highest p(object)


def token_source(cfg: ModelConfig) -> tuple[str, int]:
    """Which backbone output feeds the prior: ("vv", index into VisualFeatures.vv) or ("ori", index)."""
    mdci = tuple(cfg.heads.mdci_layers)
    if mdci:
        return "vv", mdci.index(max(mdci))
    layers = cfg.feature_layers
    return "ori", layers.index(max(layers))


def objectness_tokens(backbone: ClipDualPath, feats: VisualFeatures, cfg: ModelConfig) -> torch.Tensor:
    """Patch tokens in the joint space, normalised: ``n(LN_post(tokens) @ W_proj)`` ``[B, N, C]``."""
    path, index = token_source(cfg)
    tokens = (feats.vv if path == "vv" else feats.ori)[index][:, 1:]
    ln_post: nn.Module = backbone.ln_post  # type: ignore[assignment]  # an open_clip LayerNorm
    return l2n(ln_post(tokens) @ backbone.proj)


def objectness_prompts(class_name: str, params: ObjectnessConfig) -> tuple[list[str], list[str]]:
    """(object prompts with the class's display name, background prompts)."""
    name = display_name(class_name)
    return [t.format(name) for t in params.object_templates], list(params.background_prompts)


@torch.no_grad()
def objectness_text(
    model: FiLoPlusPlus, class_name: str, params: ObjectnessConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """(T_obj, T_bg) ``[C]``: normalised means of the normalised prompt features (frozen text encoder)."""
    objects, background = objectness_prompts(class_name, params)
    encoder = model.prompts.text_encoder
    device = next(model.parameters()).device

    def encode(texts: list[str]) -> torch.Tensor:
        tokens = model.prompts.tokenizer(texts).to(device)
        eot = tokens.argmax(dim=-1)
        feats = encoder(encoder.embed_tokens(tokens), eot, seq_len=int(eot.max()) + 1)
        return l2n(l2n(feats).mean(dim=0))

    return encode(objects), encode(background)


class ObjectnessHead(nn.Module):
    """Projected patch tokens ``[B, N, C]`` -> :class:`ObjectnessOutput` (export-safe).

    Args:
        cfg: the model config (grid, patch size and input size come from it).
        t_object, t_background: ``[C]`` text directions of the class (:func:`objectness_text`).
        params: temperature and threshold.
    """

    t_object: torch.Tensor
    t_background: torch.Tensor
    cells: torch.Tensor

    def __init__(self, cfg: ModelConfig, t_object: torch.Tensor, t_background: torch.Tensor,
                 params: ObjectnessConfig) -> None:
        super().__init__()
        bb = cfg.backbone
        self.grid = bb.grid
        self.patch = bb.patch_size
        self.size = bb.image_size
        self.temperature = float(params.temperature)
        self.threshold = float(params.threshold)
        self.register_buffer("t_object", l2n(t_object.detach().float()).clone())
        self.register_buffer("t_background", l2n(t_background.detach().float()).clone())
        self.register_buffer("cells", torch.arange(bb.grid, dtype=torch.float32))

    def extra_repr(self) -> str:
        return f"grid={self.grid}, temperature={self.temperature}, threshold={self.threshold}"

    def forward(self, tokens: torch.Tensor) -> ObjectnessOutput:
        text = torch.stack([self.t_background, self.t_object], dim=0).to(tokens.dtype)  # [2, C]
        logits = self.temperature * torch.einsum("bnc,kc->bkn", tokens, text)
        prob = logits.softmax(dim=1)[:, 1].unflatten(1, (self.grid, self.grid))  # [B, g, g]
        fg = (prob > self.threshold).to(prob.dtype)
        cols = fg.amax(dim=1)  # [B, g]: some foreground cell in column j
        rows = fg.amax(dim=2)  # [B, g]: some foreground cell in row i
        cells = self.cells.to(prob.dtype)
        far = torch.full_like(cols, float(self.grid))
        near = torch.full_like(cols, -1.0)
        j0 = torch.where(cols > 0, cells, far).amin(dim=1)
        j1 = torch.where(cols > 0, cells, near).amax(dim=1)
        i0 = torch.where(rows > 0, cells, far).amin(dim=1)
        i1 = torch.where(rows > 0, cells, near).amax(dim=1)
        valid = cols.amax(dim=1) > 0  # [B]
        p = float(self.patch)
        box = torch.stack([j0 * p, i0 * p, (j1 + 1.0) * p, (i1 + 1.0) * p], dim=1)  # [B, 4]
        whole = torch.tensor([0.0, 0.0, float(self.size), float(self.size)], dtype=box.dtype, device=box.device)
        box = torch.where(valid.unsqueeze(1), box, whole)
        score = prob.flatten(1).amax(dim=1)
        return ObjectnessOutput(prob=prob, boxes=box.unsqueeze(1), valid=valid.unsqueeze(1), scores=score.unsqueeze(1))

    def result(self, tokens: torch.Tensor) -> BoxPriorResult:
        out = self(tokens)
        return result_from_boxes(out.boxes, out.valid, out.scores, self.size)


class ObjectnessPrior:
    """The ``objectness`` :class:`~fgad.methods.filo.priors.base.BoxPrior` of a FiLo++ model (one head per class)."""

    name = "objectness"

    def __init__(self, model: FiLoPlusPlus, params: ObjectnessConfig | None = None) -> None:
        self.model = model
        self.params = params if params is not None else model.cfg.post.objectness
        self._heads: dict[str, ObjectnessHead] = {}

    def head(self, class_name: str) -> ObjectnessHead:
        """The class's head (text constants computed once, on the model's device)."""
        head = self._heads.get(class_name)
        if head is None:
            t_obj, t_bg = objectness_text(self.model, class_name, self.params)
            head = ObjectnessHead(self.model.cfg, t_obj, t_bg, self.params).to(t_obj.device)
            self._heads[class_name] = head
        return head

    @torch.no_grad()
    def __call__(
        self, images: torch.Tensor, class_name: str, features: VisualFeatures | None = None
    ) -> BoxPriorResult:
        feats = features if features is not None else self.model.encode_images(images)
        tokens = objectness_tokens(self.model.backbone, feats, self.model.cfg)
        return self.head(class_name).result(tokens)
