"""Export-only wrapper: FiLo++ restated as one image -> tensors graph (the bundle's ``model.onnx``).

:class:`FiloExportModule` plays the part of segment-anything's ``SamOnnxModel``: the training
model stays as it is, and this module restates :meth:`FiLoPlusPlus.forward` for deployment,

* with the text side frozen into buffers (:mod:`fgad.export.frozen_text`): no strings, no class
  name, no text encoder;
* without control flow that depends on data or on an argument (no box prior / region, no memory:
  the few-shot branch, fusion, smoothing and the image score are the runtime's, docs/bundle.md);
* without Python arithmetic on tensor sizes (every shape comes from the config, the batch stays
  symbolic).

It shares the model's submodules (backbone, adapter, linear heads, MDCI) and runs FiLo++'s own
scoring methods on them, so the graph cannot drift from the PyTorch model: the wrapper exposes
the attributes those methods read (``cfg``, ``adapter``, ``linear_heads``, ``mdci``,
``_linear_index``) and calls them unbound. The outputs are exactly those of docs/bundle.md, in
this order: ``vl_map``, ``global_prob``, ``best_description``, ``tokens_<layer>`` per memory layer.
"""

from __future__ import annotations

import torch
from torch import nn

from fgad.export.frozen_text import FrozenText
from fgad.models.filo import FiLoPlusPlus, TextPair
from fgad.models.scoring import filter_masks, l2n, masked_direction, two_way_logits

__all__ = ["INPUT_NAME", "FiloExportModule", "output_names"]

INPUT_NAME = "image"
_NO_MATCH = -2.0  # below any cosine: prompts at unselected positions never win (as in FiLoPlusPlus)


def output_names(memory_layers: tuple[int, ...] | list[int]) -> list[str]:
    """The graph's output names, in order (docs/bundle.md)."""
    return ["vl_map", "global_prob", "best_description", *(f"tokens_{i}" for i in memory_layers)]


class FiloExportModule(nn.Module):
    """image ``[B, 3, s, s]`` -> (vl_map ``[B, s, s]``, global_prob ``[B]``, best_description ``[B]`` int64,
    tokens_<l> ``[B, N, D]`` for each few-shot memory layer l)."""

    def __init__(self, model: FiLoPlusPlus, text: FrozenText) -> None:
        super().__init__()
        cfg = model.cfg
        if text.mode not in ("frozen", "bank"):
            raise ValueError(f"text mode {text.mode!r}: use 'frozen' or 'bank'")
        if cfg.post.box_prior != "none":
            raise ValueError(f"post.box_prior={cfg.post.box_prior!r}: the export graph has no box prior; use 'none'")
        self.cfg = cfg
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
        self.output_names = output_names(self.memory_layers)
        device = next(model.parameters()).device
        self.register_buffer("t_normal", text.t_normal.detach().to(device).reshape(1, -1).clone())
        self.register_buffer("t_abnormal", text.t_abnormal.detach().to(device).reshape(1, -1).clone())
        self.register_buffer("abnormal", text.abnormal.detach().to(device).clone())  # [P, C]
        self.register_buffer("valid_abnormal", text.valid_abnormal.detach().to(device).bool().reshape(1, -1).clone())
        self.register_buffer("keep_abnormal", text.keep_abnormal.detach().to(device).bool().reshape(1, -1).clone())
        if text.mode == "bank":
            self.register_buffer("normal", text.normal.detach().to(device).clone())  # [Pn, C]

    # ------------------------------------------------------------------ text
    def text_pair(self, global_adapted: torch.Tensor) -> TextPair:
        """T_n, T_a [B, C] and the abnormal prompts with their masks [B, P] for each image."""
        batch = global_adapted.shape[0]  # symbolic under export: becomes a Shape node, not a constant
        abnormal = self.abnormal.unsqueeze(0).expand(batch, -1, -1)
        valid = self.valid_abnormal.expand(batch, -1)
        if self.text_mode == "frozen":
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
    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feats = self.backbone(image)
        g_adapted = FiLoPlusPlus.adapted_global(self, feats.global_embed)  # type: ignore[arg-type]
        pair = self.text_pair(g_adapted)

        logits = two_way_logits(g_adapted, pair.t_normal, pair.t_abnormal, self.cfg.heads.tau_global)
        global_prob = logits.softmax(dim=1)[:, 1]

        stage_probs = FiLoPlusPlus.stage_probabilities(self, feats, pair)  # type: ignore[arg-type]
        vl = FiLoPlusPlus.vl_map(self, stage_probs)  # type: ignore[arg-type]

        sims = torch.einsum("bc,bpc->bp", g_adapted, pair.abnormal)
        sims = torch.where(pair.valid_abnormal, sims, torch.full_like(sims, _NO_MATCH))
        best = sims.argmax(dim=1)

        tokens = tuple(l2n(feats.ori[i][:, 1:]) for i in self._memory_index)
        return (vl, global_prob, best, *tokens)
