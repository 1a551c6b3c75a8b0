"""Build the frozen open_clip CLIP model a config names, with real or random weights.

Weights come from an open_clip pretrained tag (needs the hub once), a local weights file, or a
``local-dir:DIR`` folder (open_clip's layout: ``open_clip_config.json`` + weights). With
``pretrained: null`` the model is randomly initialised from ``init_seed``, so the same config
always rebuilds the same backbone; :func:`state_fingerprint` lets checkpoints verify that.

A pickled weights file (``.pt``/``.bin``) is only ever unpickled with ``torch.load(weights_only=True)``:
open_clip is asked for it, and ``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` is set while open_clip loads, so neither an
older open_clip nor its retry without the argument can unpickle code (:func:`weights_only_loads`).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import os
import pickle
import re
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fgad.backbone.compat import import_open_clip
from fgad.config import BackboneConfig, ConfigError

log = logging.getLogger(__name__)

LOCAL_DIR = "local-dir:"
RANDOM_INIT = ("none", "random")  # --pretrained none: random init from backbone.init_seed


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be fetched or read."""


def _register_project_model_configs() -> None:
    """Make fgad's own open_clip architectures (e.g. ``fgad-tiny``) known to open_clip."""
    open_clip = import_open_clip()
    folder = resources.files("fgad.configs") / "open_clip"
    with resources.as_file(folder) as path:
        known = open_clip.list_models()
        for f in sorted(Path(path).glob("*.json")):
            if f.stem not in known:
                open_clip.add_model_config(f)


def _resolve_source(bb: BackboneConfig, pretrained: str | None) -> tuple[str, str | None]:
    """(model_name, pretrained) as open_clip.create_model takes them."""
    name = bb.model_name
    if pretrained is not None and pretrained.lower() in RANDOM_INIT:
        return name, None
    if pretrained and pretrained.startswith(LOCAL_DIR):
        folder = Path(pretrained[len(LOCAL_DIR):]).expanduser()
        if not (folder / "open_clip_config.json").is_file():
            raise WeightsUnavailableError(
                f"{pretrained}: expected an open_clip folder with open_clip_config.json and weights "
                "(open_clip_model.safetensors or open_clip_pytorch_model.bin)"
            )
        return f"{LOCAL_DIR}{folder}", None
    if name.startswith(LOCAL_DIR):
        return name, None
    if pretrained and (pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")) or "/" in pretrained):
        if not Path(pretrained).expanduser().is_file():
            raise WeightsUnavailableError(f"weights file {pretrained!r} does not exist")
        return name, str(Path(pretrained).expanduser())
    return name, pretrained


def create_clip(bb: BackboneConfig, pretrained: str | None = None, use_config_pretrained: bool = True) -> nn.Module:
    """Create the open_clip model for ``bb``, frozen and in eval mode.

    ``pretrained`` overrides ``bb.pretrained`` when given (the CLI's ``--pretrained``).
    """
    open_clip = import_open_clip()
    _register_project_model_configs()
    source = pretrained if pretrained is not None else (bb.pretrained if use_config_pretrained else None)
    name, tag = _resolve_source(bb, source)
    # quick_gelu as a model keyword also switches it *off* for configs that default to it
    kwargs: dict[str, Any] = {"quick_gelu": bb.quick_gelu, "force_image_size": bb.image_size}
    try:
        if tag is None and not name.startswith(LOCAL_DIR):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(bb.init_seed)
                model = open_clip.create_model(name, pretrained=None, **kwargs)
        else:
            if "weights_only" in inspect.signature(open_clip.create_model).parameters:
                kwargs["weights_only"] = True
            with weights_only_loads():
                model = open_clip.create_model(name, pretrained=tag, **kwargs)
    except pickle.UnpicklingError as err:
        raise WeightsUnavailableError(
            f"refused to load weights {tag or name!r}: the file holds Python objects beyond tensors"
            f"{unpickle_refusal_detail(err)}, and unpickling them could run code, so fgad reads pickled weights with "
            "torch.load(weights_only=True) only. Do not trust this file unless you made it; use open_clip's "
            "published weights or a .safetensors file"
        ) from err
    except RuntimeError as err:
        if "Unknown model" in str(err) or "Model config for" in str(err):
            raise ConfigError(
                f"open_clip has no model {name!r}; see open_clip.list_models() or use local-dir:DIR"
            ) from err
        raise _offline_error(name, tag, err) from err
    except (OSError, ValueError) as err:
        raise _offline_error(name, tag, err) from err
    ensure_position_grid(model.visual, bb)
    check_architecture(model, bb)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def unpickle_refusal_detail(err: BaseException) -> str:
    """`` (it references NAME)`` for torch's weights-only refusal of a global, else ``""``."""
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
    return f" (it references {found.group(1)})" if found else ""


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Every ``torch.load`` inside the block unpickles tensors and plain containers only, whatever its caller
    passes (``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` overrides an explicit ``weights_only=False``)."""
    key = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
    before = os.environ.get(key)
    os.environ[key] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def _offline_error(name: str, tag: str | None, err: BaseException) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"could not load weights {tag!r} for {name!r}: {err}. If this machine is offline, fetch them "
        "on a connected machine (open_clip.create_model(name, pretrained=tag) caches them) and pass "
        "--pretrained /path/to/weights.(bin|pt|safetensors) or --pretrained local-dir:/path/to/folder"
    )


def resize_position_embedding(pos: torch.Tensor, new_grid: int) -> torch.Tensor:
    """Bicubic resize of a [1 + g0^2, D] position table to [1 + new_grid^2, D] (CLS row kept)."""
    cls_row, grid_rows = pos[:1], pos[1:]
    old = int(round(grid_rows.shape[0] ** 0.5))
    if old * old != grid_rows.shape[0]:
        raise ValueError(f"position table with {grid_rows.shape[0]} grid rows is not square")
    g = grid_rows.reshape(1, old, old, -1).permute(0, 3, 1, 2)
    g = F.interpolate(g, size=(new_grid, new_grid), mode="bicubic", align_corners=False, antialias=True)
    return torch.cat([cls_row, g.permute(0, 2, 3, 1).reshape(new_grid * new_grid, -1)], dim=0)


def ensure_position_grid(visual: nn.Module, bb: BackboneConfig) -> None:
    """Make the position table fit ``bb.grid`` (some open_clip paths ignore force_image_size)."""
    want = bb.num_patches + 1
    pos = visual.positional_embedding
    if pos.shape[0] == want:
        return
    log.info("resizing position grid %d -> %d rows for %d px input", pos.shape[0], want, bb.image_size)
    with torch.no_grad():
        visual.positional_embedding = nn.Parameter(resize_position_embedding(pos.data, bb.grid))
    visual.grid_size = (bb.grid, bb.grid)
    visual.image_size = (bb.image_size, bb.image_size)


def check_architecture(model: nn.Module, bb: BackboneConfig) -> None:
    """Fail early, naming the config field, when the open_clip model disagrees with the config."""
    visual = model.visual
    if not hasattr(visual, "transformer") or not hasattr(visual, "conv1"):
        raise ConfigError(f"{bb.model_name}: only open_clip VisionTransformer backbones are supported")
    if getattr(visual, "attn_pool", None) is not None:
        raise ConfigError(f"{bb.model_name}: attentional pooling backbones are not supported")
    blocks = visual.transformer.resblocks
    facts = {
        "width": visual.conv1.out_channels,
        "patch_size": visual.conv1.kernel_size[0],
        "layers": len(blocks),
        "heads": blocks[0].attn.num_heads,
        "embed_dim": visual.proj.shape[1],
        "text_width": model.token_embedding.weight.shape[1],
        "context_length": model.positional_embedding.shape[0],
    }
    for key, actual in facts.items():
        if getattr(bb, key) != actual:
            raise ConfigError(f"backbone.{key}={getattr(bb, key)} but {bb.model_name} has {actual}")
    rows = visual.positional_embedding.shape[0]
    if rows != bb.num_patches + 1:
        raise ConfigError(
            f"the position table has {rows} rows but backbone.image_size={bb.image_size} / "
            f"backbone.patch_size={bb.patch_size} imply {bb.num_patches + 1} (1 + {bb.grid}^2)"
        )


def state_fingerprint(module: nn.Module) -> str:
    """sha256 over the module's parameters and buffers (names, shapes, bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def get_tokenizer(bb: BackboneConfig):  # noqa: ANN201 - open_clip's tokenizer type
    open_clip = import_open_clip()
    _register_project_model_configs()
    return open_clip.get_tokenizer(bb.model_name, context_length=bb.context_length)
