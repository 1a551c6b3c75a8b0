"""What a method hands the one bundle writer (:func:`fgad.export.bundle.write_bundle`): an :class:`ExportPlan`.

A method's ``export_plan(model, class_name, refs, options)`` checks what it can export, builds its export-only
module (the graph, image -> outputs in the bundle's order) and says what only it knows: the outputs and their
shapes, the few-shot layers, the manifest's ``post``, ``text`` and ``model`` entries, and how far the frozen
graph is from the exact model (measured after the references are known). The writer does the rest, the same
for every method: ONNX export, shape check, parity against PyTorch, references, manifest, atomic rename.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    from fgad.config import ModelConfig

__all__ = ["ExportOptions", "ExportPlan"]


@dataclass(frozen=True)
class ExportOptions:
    """What fgad-export asks of a method's plan."""

    text_mode: str = "frozen"  # "frozen" (one text pair) or "bank" (all prompts, chosen in the graph)
    box_prior: str | None = None  # None: the config's post.box_prior
    deform: str = "decomposed"  # deformable-conv flavour of the ONNX graph


@dataclass
class ExportPlan:
    """One class of one model, ready to be written (module docstring)."""

    model: nn.Module  # the model exported (its backbone fingerprint is recorded)
    module: nn.Module  # image [B, 3, s, s] -> outputs, in the order of ``expected_outputs``
    cfg: ModelConfig
    class_name: str
    reference_paths: list[Path]  # normal images: parity inputs and references.npz (empty: zero-shot)
    expected_outputs: dict[str, list[int | None]]  # name -> shape (None: dynamic), the manifest's ``outputs``
    fewshot_layers: Sequence[int]  # layers whose tokens_<l> fill references.npz
    post: dict[str, Any]  # the manifest's ``post``
    text: dict[str, Any]  # the manifest's ``text`` (the writer adds ``approximation``)
    measure_approximation: Callable[[torch.Tensor], dict[str, Any]]  # frozen graph vs exact model on images
    deform: str = "decomposed"  # the flavour exported and recorded as ``deform``
    #: method fields of the manifest's ``model``, asked for once the references are in use
    model_entry: Callable[[], dict[str, Any]] = dict
    model_entry_first: dict[str, Any] = field(default_factory=dict)  # ... placed before the shared ones
    fewshot_entry: dict[str, Any] = field(default_factory=dict)  # extra fields of ``fewshot``
    extra_entries: dict[str, Any] = field(default_factory=dict)  # top-level entries after ``text`` (box_prior)
    #: called with the reference images (or None) before the approximation is measured
    use_references: Callable[[torch.Tensor | None, list[Path]], None] | None = None
