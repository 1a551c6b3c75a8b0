"""What a method is to the rest of fgad: :class:`Method`, a name plus lazily imported entry points.

A method's *spec* (this dataclass, built in ``methods/<name>/spec.py``) is torch-free: its name, the config
section it owns, its config checks and how its checkpoints are recognised. The heavy entry points live in
its ``implementation`` module (torch, open_clip), imported only when one of them is called:

* ``build(cfg, pretrained=None, seed=0, class_name=None)`` -> model
* ``load_checkpoint(ckpt_dir, pretrained=None, combine_with=None, combine=True)`` -> (model, Config, meta)
* ``train(request)`` -> result (request: :class:`TrainRequest`, the method's options as given by fgad-train)
* ``evaluate_class(model, root, class_name, settings, out_dir, progress)`` -> (metrics, predictions, info)
* ``export_plan(model, class_name, refs, options)`` -> :class:`fgad.export.plan.ExportPlan`

Shared code asks the method (:func:`fgad.methods.registry.get_method`) instead of comparing method names.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

#: a :class:`fgad.config.ModelConfig` (not imported: fgad.config resolves methods through this module's registry)
ModelConfig = Any

__all__ = ["Method", "TrainOptionError", "TrainRequest"]


class TrainOptionError(ValueError):
    """An fgad-train option the method does not take (the CLI reports it as a usage error)."""


def _no_checks(cfg: ModelConfig) -> None:
    return None


@dataclass(frozen=True)
class TrainRequest:
    """fgad-train's options, for every method; each method says which ones it takes (:attr:`Method.train_options`)."""

    config: str  # built-in config name or YAML/JSON path
    data_root: Path
    out_dir: Path
    pretrained: str | None = None
    classes: tuple[str, ...] = ()
    epochs_phase1: int | None = None
    epochs_phase2: int | None = None
    max_steps_per_epoch: int | None = None
    seed: int | None = None
    banks: tuple[str, ...] = ()
    class_name: str | None = None
    shots: int | None = None
    epochs: int | None = None
    seed_file: Path | None = None
    captions: Path | None = None
    reproduce: str | None = None  # model.reproduce override: "fgad" or "released" (None: the config's)
    resume: bool = True
    progress: bool = True
    echo: Callable[[str], None] = print


@dataclass(frozen=True)
class Method:
    """One anomaly-detection method (see the module docstring)."""

    name: str  # the config's ``model.method``
    title: str  # for people: "FiLo++"
    implementation: str  # module with the entry points (imported on first use)
    config_section: tuple[str, type] | None = None  # (key under ``model:``, frozen dataclass) it owns, if any
    check_config: Callable[[ModelConfig], None] = _no_checks  # raises fgad.config.ConfigError
    checkpoint_marker: str | None = None  # a file only this method's checkpoints hold
    per_class: bool = False  # one model per class: it evaluates and exports its own class only
    box_priors: bool = False  # takes a DefLoc box prior (--box-prior)
    train_options: tuple[str, ...] = ()  # TrainRequest fields it reads beyond config/data/out/pretrained/seed/...
    describe: dict[str, str] = field(default_factory=dict)  # option -> how fgad-train's help names it

    def module(self) -> ModuleType:
        return importlib.import_module(self.implementation)

    def _call(self, entry: str, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.module(), entry)(*args, **kwargs)

    def build(self, cfg: ModelConfig, **kwargs: Any) -> Any:
        return self._call("build", cfg, **kwargs)

    def load_checkpoint(self, ckpt_dir: str | Path, **kwargs: Any) -> tuple[Any, Any, dict[str, Any]]:
        return self._call("load_checkpoint", ckpt_dir, **kwargs)

    def train(self, request: TrainRequest) -> Any:
        return self._call("train", request)

    def evaluate_class(self, model: Any, root: str | Path, class_name: str, settings: Any, out_dir: Path | None,
                       progress: bool = True) -> tuple[dict[str, float], list[dict[str, Any]], dict[str, Any]]:
        return self._call("evaluate_class", model, root, class_name, settings, out_dir, progress)

    def export_plan(self, model: Any, class_name: str, refs: Any, options: Any) -> Any:
        return self._call("export_plan", model, class_name, refs, options)
