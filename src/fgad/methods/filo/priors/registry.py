"""The box priors by name: ``none``, ``objectness`` (in the graph), ``grounding-dino`` (PyTorch path only).

Each factory imports its prior's module when called, so the detector's heavy packages load only when it is
used; :func:`register_box_prior` adds one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from fgad.methods.filo.priors.base import BoxPrior, NoBoxPrior

if TYPE_CHECKING:
    from fgad.config import PostConfig
    from fgad.methods.filo.model import FiLoPlusPlus

__all__ = ["PriorFactory", "available_box_priors", "build_box_prior", "register_box_prior"]


#: name -> factory(model, post config) -> prior. Detector priors import their heavy packages lazily.
PriorFactory = Callable[["FiLoPlusPlus | None", "PostConfig | None"], BoxPrior]


def _none(model: FiLoPlusPlus | None, post: PostConfig | None) -> BoxPrior:
    return NoBoxPrior()


def _objectness(model: FiLoPlusPlus | None, post: PostConfig | None) -> BoxPrior:
    from fgad.methods.filo.priors.objectness import ObjectnessPrior

    if model is None:
        raise ValueError("the objectness box prior reads the model's patch tokens: pass model= to build_box_prior")
    params = post.objectness if post is not None else model.cfg.post.objectness
    return ObjectnessPrior(model, params)


def _grounding(model: FiLoPlusPlus | None, post: PostConfig | None) -> BoxPrior:
    from fgad.methods.filo.priors.grounding import GroundingDinoPrior

    if post is None:
        post = model.cfg.post if model is not None else None
    if post is None or not post.grounding.model:
        raise ValueError(
            "the grounding-dino box prior needs a detector: give a Hugging Face model id or a local folder "
            "(fgad-eval --box-model ID_OR_DIR, or post.grounding.model in the config)"
        )
    if model is None:
        raise ValueError("the grounding-dino box prior needs the model (its input size and normalisation): pass model=")
    banks = tuple(model.prompts.extra_banks) + tuple(model.cfg.prompts.banks)  # the prompts' search order
    return GroundingDinoPrior.from_pretrained(post.grounding.model, post.grounding, model.cfg.backbone, banks)


_PRIORS: dict[str, PriorFactory] = {"none": _none, "objectness": _objectness, "grounding-dino": _grounding}


def register_box_prior(name: str, factory: PriorFactory) -> None:
    """Add a prior under ``name`` (a factory taking ``(model, post_config)``)."""
    _PRIORS[name] = factory


def available_box_priors() -> list[str]:
    return sorted(_PRIORS)


def build_box_prior(name: str, model: FiLoPlusPlus | None = None, post: PostConfig | None = None) -> BoxPrior:
    """The prior called ``name``; ``post`` overrides ``model.cfg.post`` (thresholds, detector, prompts)."""
    try:
        factory = _PRIORS[name]
    except KeyError:
        raise ValueError(f"unknown box prior {name!r}; available: {available_box_priors()}") from None
    return factory(model, post)
