"""Combined few-shot mode (METHOD.md §3, CHOICE, off by default): FiLo++ and FineGrainedAD averaged.

The FineGrainedAD prompts are trained per class on FiLo++'s backbone (config
``fgad-on-filo-vitl14-336``: ``F = LN_post W_proj`` of the last V-V layer, galleries from the
original path's blocks 6 and 16, maps at FiLo++'s 518 px). At test time both models see the same
preprocessed images and the same k references; the pixel maps (FineGrainedAD's resized to FiLo++'s
size if they differ, bilinear with ``finegrained.align_corners``) and the image scores are averaged.

Both models must take the same input: the same image size and normalisation. They are run one
after the other (each with its own dual-path pass: the requested layers differ); sharing one
backbone pass is a possible optimisation. Evaluation only: there is no combined bundle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from fgad.backbone.postprocess import upsample
from fgad.config import ModelConfig
from fgad.methods.finegrained.model import FineGrainedAD

__all__ = ["CombinedModel", "CombinedOutput", "load_combined"]


class CombinedOutput(NamedTuple):
    anomaly_map: Tensor  # [B, s, s] mean of the two maps (s: FiLo++'s input size)
    image_score: Tensor  # [B] mean of the two image scores
    global_prob: Tensor  # [B] mean of FiLo++'s p_a and FineGrainedAD's s_t
    best_description: Tensor  # [B] FineGrainedAD's pair choice of G
    filo: Any  # FiLo++'s output
    fgad: Any  # FineGrainedAD's output


class CombinedModel(nn.Module):
    """FiLo++ (``filo``) and FineGrainedAD (``fgad``) of one class, averaged (module docstring)."""

    method = "combined"
    cfg: ModelConfig

    def __init__(self, filo: Any, fgad: FineGrainedAD) -> None:
        super().__init__()
        a, b = filo.cfg.backbone, fgad.cfg.backbone
        if (a.image_size, tuple(a.mean), tuple(a.std)) != (b.image_size, tuple(b.mean), tuple(b.std)):
            raise ValueError(
                f"combined mode needs one input for both models: FiLo++ takes {a.image_size} px "
                f"(mean {list(a.mean)}, std {list(a.std)}), FineGrainedAD {b.image_size} px (mean {list(b.mean)}, "
                f"std {list(b.std)}); train FineGrainedAD with a config on FiLo++'s backbone (fgad-on-filo-vitl14-336)"
            )
        self.filo: Any = filo
        self.fgad = fgad
        self.cfg = filo.cfg  # input size and normalisation of both
        self.class_name = fgad.class_name

    @property
    def output_size(self) -> int:
        return self.cfg.backbone.image_size

    @property
    def prompts(self) -> Any:
        """FiLo++'s prompt learner (extra description banks apply to it)."""
        return self.filo.prompts

    @property
    def pair_names(self) -> tuple[str, ...]:
        return self.fgad.pair_names

    @property
    def reference_paths(self) -> list[str]:
        return self.fgad.reference_paths

    @torch.no_grad()
    def set_reference_images(self, images: Tensor, paths: list[str] | None = None) -> None:
        """The same k normal images fill FiLo++'s patch memory and FineGrainedAD's galleries."""
        self.filo.set_reference_images(images)
        self.fgad.set_reference_images(images, paths)

    def clear_memory(self) -> None:
        self.filo.clear_memory()
        self.fgad.clear_memory()

    def forward(self, images: Tensor, class_name: str | None = None) -> CombinedOutput:
        g = self.fgad(images, class_name)
        f = self.filo(images, class_name or self.class_name)
        size = self.output_size
        fgad_map = g.anomaly_map
        if fgad_map.shape[-1] != size:
            corners = self.fgad.cfg.finegrained.align_corners
            fgad_map = upsample(fgad_map.unsqueeze(1), size, align_corners=corners)[:, 0]
        return CombinedOutput(
            anomaly_map=(f.anomaly_map + fgad_map) / 2.0,
            image_score=(f.image_score + g.image_score) / 2.0,
            global_prob=(f.global_prob + g.global_prob) / 2.0,
            best_description=g.best_description,
            filo=f,
            fgad=g,
        )


def load_combined(fgad: FineGrainedAD, filo_checkpoint: str | Path, pretrained: str | None = None) -> CombinedModel:
    """Wrap a loaded FineGrainedAD model with the FiLo++ model of ``filo_checkpoint``."""
    from fgad.methods.filo.checkpoint import load_checkpoint

    filo, _, _ = load_checkpoint(filo_checkpoint, pretrained=pretrained)
    return CombinedModel(filo.eval(), fgad).eval()
