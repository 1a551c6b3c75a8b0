"""Export-only wrapper: FiLo++ restated as one image -> tensors graph (the bundle's ``model.onnx``).

:class:`FiloExportModule` plays the part of segment-anything's ``SamOnnxModel``: the training
model stays as it is, and this module restates :meth:`FiLoPlusPlus.forward` for deployment,

* with the text side frozen into buffers (:mod:`fgad.methods.filo.frozen_text`): no strings, no class
  name, no text encoder;
* without control flow that depends on data or on an argument (no memory: the few-shot branch,
  fusion, smoothing and the image score are the runtime's, docs/bundle.md);
* without Python arithmetic on tensor sizes (every shape comes from the config, the batch stays
  symbolic).

It shares the model's submodules (backbone, adapter, linear heads, MDCI) and runs FiLo++'s own
scoring methods on them, so the graph cannot drift from the PyTorch model: the wrapper exposes
the attributes those methods read (``cfg``, ``adapter``, ``linear_heads``, ``mdci``,
``_linear_index``) and calls them unbound. The outputs are exactly those of docs/bundle.md, in
this order: ``vl_map``, ``global_prob``, ``best_description``, ``tokens_<layer>`` per memory layer.

Box priors: with ``none`` (the default) the graph is exactly the one above. With ``objectness`` the
prior runs inside the graph on the backbone's tokens (:class:`fgad.methods.filo.priors.objectness.ObjectnessHead`):
the chosen position cell selects the abnormal prompts by index (``frozen``: a gather of one of 9
frozen pairs; ``bank``: a mask over the prompts, then per-image filtering), ``vl_map`` is
λ-suppressed outside the box, and two outputs follow the tokens: ``position`` ``[B]`` int64 and
``region_weight`` ``[B, s, s]`` (1 inside the box, λ outside), by which the runtime multiplies its
few-shot map. ``grounding-dino`` cannot be part of the graph
(:data:`fgad.methods.filo.priors.grounding.NEEDS_TORCH_MESSAGE`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fgad.backbone.postprocess import suppress_outside
from fgad.bundle.spec import BOX_PRIOR_OUTPUTS, GRAPH_BOX_PRIORS, REQUIRED_OUTPUTS, token_output
from fgad.methods.filo.frozen_text import FrozenText
from fgad.methods.filo.model import FiLoPlusPlus, TextPair
from fgad.methods.filo.priors.objectness import ObjectnessHead, objectness_text, objectness_tokens
from fgad.methods.filo.scoring import filter_masks, l2n, masked_direction, two_way_logits

__all__ = ["FiloExportModule", "check_graph_box_prior", "output_names"]

_NO_MATCH = -2.0  # below any cosine: prompts at unselected positions never win (as in FiLoPlusPlus)


def output_names(memory_layers: tuple[int, ...] | list[int], box_prior: str = "none") -> list[str]:
    """The graph's output names, in order (docs/bundle.md)."""
    names = [*REQUIRED_OUTPUTS, *(token_output(i) for i in memory_layers)]
    return names if box_prior == "none" else [*names, *BOX_PRIOR_OUTPUTS]


def check_graph_box_prior(name: str) -> None:
    """Raise a ValueError that says what to do when ``name`` cannot be part of an exported graph."""
    if name == "grounding-dino":
        from fgad.methods.filo.priors.grounding import NEEDS_TORCH_MESSAGE

        raise ValueError(NEEDS_TORCH_MESSAGE)
    if name not in GRAPH_BOX_PRIORS:
        raise ValueError(f"box prior {name!r}: an exported graph holds one of {list(GRAPH_BOX_PRIORS)}")


class FiloExportModule(nn.Module):
    """image ``[B, 3, s, s]`` -> (vl_map ``[B, s, s]``, global_prob ``[B]``, best_description ``[B]`` int64,
    tokens_<l> ``[B, N, D]`` for each few-shot memory layer l)."""

    t_normal: torch.Tensor
    t_abnormal: torch.Tensor
    abnormal: torch.Tensor
    valid_abnormal: torch.Tensor
    keep_abnormal: torch.Tensor
    normal: torch.Tensor
    abnormal_position: torch.Tensor
    position_normal: torch.Tensor
    position_abnormal: torch.Tensor

    def __init__(self, model: FiLoPlusPlus, text: FrozenText, box_prior: str | None = None) -> None:
        super().__init__()
        cfg = model.cfg
        if text.mode not in ("frozen", "bank"):
            raise ValueError(f"text mode {text.mode!r}: use 'frozen' or 'bank'")
        prior = cfg.post.box_prior if box_prior is None else box_prior
        check_graph_box_prior(prior)
        if prior != "none" and text.mode == "frozen" and text.position_normal is None:
            raise ValueError(f"box prior {prior!r} in frozen mode needs one text pair per position: "
                             "freeze the text with freeze_text(..., per_position=True)")
        self.cfg = cfg
        self.box_prior = prior
        self.class_name = text.class_name
        self.text_mode = text.mode
        self.filter_per_image = text.mode == "bank" and cfg.prompts.filtering
        # shared with the model (same Parameter objects); the text encoder and prompt learner stay out
        self.backbone = model.backbone
        self.adapter = model.adapter
        self.linear_heads = model.linear_heads
        self.mdci = model.mdci
        self._linear_index = list(model._linear_index)
        self._memory_index = list(model._memory_index)
        self.memory_layers = tuple(cfg.fewshot.memory_layers)
        self.output_names = output_names(self.memory_layers, prior)
        device = next(model.parameters()).device
        self.register_buffer("t_normal", text.t_normal.detach().to(device).reshape(1, -1).clone())
        self.register_buffer("t_abnormal", text.t_abnormal.detach().to(device).reshape(1, -1).clone())
        self.register_buffer("abnormal", text.abnormal.detach().to(device).clone())  # [P, C]
        self.register_buffer("valid_abnormal", text.valid_abnormal.detach().to(device).bool().reshape(1, -1).clone())
        self.register_buffer("keep_abnormal", text.keep_abnormal.detach().to(device).bool().reshape(1, -1).clone())
        if text.mode == "bank":
            self.register_buffer("normal", text.normal.detach().to(device).clone())  # [Pn, C]
        self.objectness: ObjectnessHead | None = None
        if prior == "objectness":
            t_obj, t_bg = objectness_text(model, text.class_name, cfg.post.objectness)
            self.objectness = ObjectnessHead(cfg, t_obj, t_bg, cfg.post.objectness).to(device)
            self.register_buffer("abnormal_position", text.abnormal_positions().to(device).reshape(1, -1).clone())
            if text.mode == "frozen":
                assert text.position_normal is not None and text.position_abnormal is not None
                self.register_buffer("position_normal", text.position_normal.detach().to(device).clone())  # [9, C]
                self.register_buffer("position_abnormal", text.position_abnormal.detach().to(device).clone())

    # ------------------------------------------------------------------ text
    def text_pair(self, global_adapted: torch.Tensor, position: torch.Tensor | None = None) -> TextPair:
        """T_n, T_a [B, C] and the abnormal prompts with their masks [B, P] for each image.

        ``position`` [B] int64: the box prior's cell per image (None: every position).
        """
        batch = global_adapted.shape[0]  # symbolic under export: becomes a Shape node, not a constant
        abnormal = self.abnormal.unsqueeze(0).expand(batch, -1, -1)
        if position is None:
            valid = self.valid_abnormal.expand(batch, -1)
        else:
            valid = self.abnormal_position == position.unsqueeze(1)  # [B, P]: rows of the chosen cell
        if self.text_mode == "frozen" and position is not None:
            t_normal = self.position_normal.index_select(0, position)  # gather: no data-dependent shape
            t_abnormal = self.position_abnormal.index_select(0, position)
            keep_a = valid  # filtered at export time within each position (informational here)
        elif self.text_mode == "frozen":
            t_normal, t_abnormal = self.t_normal.expand(batch, -1), self.t_abnormal.expand(batch, -1)
            keep_a = self.keep_abnormal.expand(batch, -1)  # filtered at export time (informational here)
        else:
            normal = self.normal.unsqueeze(0).expand(batch, -1, -1)
            if self.filter_per_image:
                keep_n, keep_a = filter_masks(global_adapted, normal, abnormal, valid)
            else:
                keep_n, keep_a = torch.ones_like(normal[..., 0], dtype=torch.bool), valid
            t_normal, t_abnormal = masked_direction(normal, keep_n), masked_direction(abnormal, keep_a)
        return TextPair(t_normal=t_normal, t_abnormal=t_abnormal, abnormal=abnormal, keep_abnormal=keep_a,
                        valid_abnormal=valid)

    # ------------------------------------------------------------------ forward
    def description_ties(self, images: torch.Tensor, got: np.ndarray, want: np.ndarray) -> np.ndarray:
        """For each image, whether the two chosen prompts are equally close to G_a (a tie, not an error)."""
        from fgad.export.onnx_export import TIE_TOLERANCE

        with torch.no_grad():
            feats = self.backbone(images)
            adapted = FiLoPlusPlus.adapted_global(self, feats.global_embed)  # type: ignore[arg-type]
            sims = (adapted @ self.abnormal.T).cpu()  # [B, P]
        rows = torch.arange(sims.shape[0])
        gap = (sims[rows, torch.from_numpy(got)] - sims[rows, torch.from_numpy(want)]).abs()
        return (gap <= TIE_TOLERANCE).numpy()

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feats = self.backbone(image)
        g_adapted = FiLoPlusPlus.adapted_global(self, feats.global_embed)  # type: ignore[arg-type]
        position = region = None
        if self.objectness is not None:
            prior = self.objectness.result(objectness_tokens(self.backbone, feats, self.cfg))
            position, region = prior.position, prior.region
        pair = self.text_pair(g_adapted, position)

        logits = two_way_logits(g_adapted, pair.t_normal, pair.t_abnormal, self.cfg.heads.tau_global)
        global_prob = logits.softmax(dim=1)[:, 1]

        stage_probs = FiLoPlusPlus.stage_probabilities(self, feats, pair)  # type: ignore[arg-type]
        vl = FiLoPlusPlus.vl_map(self, stage_probs)  # type: ignore[arg-type]
        if region is not None:
            vl = suppress_outside(vl.unsqueeze(1), region, self.cfg.post.suppression)[:, 0]

        sims = torch.einsum("bc,bpc->bp", g_adapted, pair.abnormal)
        sims = torch.where(pair.valid_abnormal, sims, torch.full_like(sims, _NO_MATCH))
        best = sims.argmax(dim=1)

        tokens = tuple(l2n(feats.ori[i][:, 1:]) for i in self._memory_index)
        if position is None or region is None:
            return (vl, global_prob, best, *tokens)
        weight = suppress_outside(torch.ones_like(region), region, self.cfg.post.suppression)[:, 0]
        return (vl, global_prob, best, *tokens, position, weight)
