"""The configurations a benchmark times, each a :class:`~fgad.bench.harness.Runner` over frame files.

* :class:`DetectorRunner`: the torch-free :class:`~fgad.runtime.pipeline.Detector` on a bundle (ONNX
  Runtime fp32 or int8, TensorRT), exactly what ``fgad-run`` does per frame, plus decode and overlay.
* :class:`TorchGraphRunner`: the bundle's computation in PyTorch: the export module
  (:class:`~fgad.methods.filo.export_module.FiloExportModule`, text frozen as in the bundle) for the engine stage,
  the few-shot search, fusion, smoothing and score in torch. Eager or ``torch.compile``; fp32, or fp16 /
  bf16 under ``torch.autocast`` (fp32 weights, matmuls and convolutions in the low precision: what a
  mixed-precision deployment runs; fp16 on CUDA only, bf16 also on the CPU). Same weights and frozen text
  as the bundle, so ``torch / ort`` is the engine's gain.
* :class:`TorchModelRunner`: ``FiLoPlusPlus.forward`` as trained (the CoCoOp text encoded per image),
  for the gain of freezing the text.

torch is imported inside the torch runners only: timing a bundle needs no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fgad.bench.stages import StageTimer, detector_stage_ms
from fgad.core.io import read_image
from fgad.core.transforms import preprocess
from fgad.runtime.overlay import heatmap_overlay

__all__ = ["AUTOCAST_DTYPES", "DetectorRunner", "TorchGraphRunner", "TorchModelRunner", "autocast", "torch_sync"]

#: the torch backend's precisions and the dtype ``torch.autocast`` runs them in (None: plain fp32)
AUTOCAST_DTYPES = {"fp32": None, "fp16": "float16", "bf16": "bfloat16"}


def autocast(device: str, precision: str) -> Any:
    """``torch.autocast`` for ``precision`` on ``device`` ("fp32": a no-op context)."""
    import contextlib

    import torch

    name = AUTOCAST_DTYPES[precision]
    if name is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=getattr(torch, name))


def torch_sync(device: str) -> Any:
    """``torch.cuda.synchronize`` for a CUDA device, else None (a :class:`StageTimer` ``sync``)."""
    if device != "cuda":
        return None
    import torch

    return torch.cuda.synchronize


def _decode(frames: Sequence[Path], timer: StageTimer) -> list[np.ndarray]:
    with timer("decode"):
        return [read_image(p) for p in frames]


def _torch_batch(torch: Any, images: Sequence[np.ndarray], backbone: Any, device: str, dtype: Any = None) -> Any:
    """``images`` preprocessed as the runtime does, as one tensor on ``device`` (cast to ``dtype`` when given)."""
    arr = np.stack([preprocess(img, backbone.image_size, backbone.mean, backbone.std) for img in images])
    return torch.from_numpy(arr).to(device=device, dtype=dtype)


def _decode_and_batch(
    frames: Sequence[Path], timer: StageTimer, batch: Callable[[Sequence[np.ndarray]], Any]
) -> tuple[list[np.ndarray], Any]:
    """The torch runners' first two stages: the decoded frames and their preprocessed batch."""
    images = _decode(frames, timer)
    with timer("preprocess"):
        return images, batch(images)


def _overlay(images: Sequence[np.ndarray], maps: Sequence[np.ndarray], timer: StageTimer) -> None:
    with timer("overlay"):
        for image, amap in zip(images, maps, strict=True):
            heatmap_overlay(image, amap)


class DetectorRunner:
    """The runtime Detector on a bundle; its own stage timings (``Result.timings``) are used as they are."""

    def __init__(self, detector: Any, label: str = "") -> None:
        self.detector = detector
        self.label = label
        self.device = "cpu"
        providers = getattr(detector.backend, "providers", None)
        if providers and providers[0] == "CUDAExecutionProvider":
            self.device = "cuda"
        elif getattr(detector.backend, "name", "") == "tensorrt":
            self.device = "cuda"

    def set_references(self, refs: Sequence[Path]) -> None:
        """Replace the few-shot memory with ``refs`` (none: zero-shot)."""
        self.detector.clear_references()
        if refs:
            self.detector.add_references(list(refs), recalibrate=False)

    def __call__(self, frames: Sequence[Path]) -> tuple[list[float], dict[str, float]]:
        timer = StageTimer()
        images = _decode(frames, timer)
        results = self.detector.batch(images, batch_size=len(images))
        for stage, ms in detector_stage_ms([r.timings for r in results]).items():
            timer.add(stage, ms)
        _overlay(images, [r.anomaly_map for r in results], timer)
        return [r.score for r in results], timer.ms


class TorchGraphRunner:
    """The bundle's computation in PyTorch (see the module docstring).

    Args:
        model: the FiLo++ model the bundle was exported from (its blur and config are used).
        text: the frozen text of the bundle (:func:`fgad.methods.filo.frozen_text.freeze_text`).
        device: "cpu" or "cuda".
        precision: "fp32", or "fp16" (CUDA only) / "bf16" under ``torch.autocast``.
        compile: wrap the graph module in ``torch.compile`` (compiled on the first call).
    """

    def __init__(self, model: Any, text: Any, device: str = "cpu", precision: str = "fp32",
                 compile: bool = False) -> None:
        import copy

        import torch

        from fgad.methods.filo.export_module import FiloExportModule

        if precision not in AUTOCAST_DTYPES:
            raise ValueError(f"the torch backend runs {', '.join(AUTOCAST_DTYPES)}, not {precision!r}")
        if precision == "fp16" and device != "cuda":
            raise ValueError("fp16 PyTorch needs a CUDA device")
        self.torch = torch
        self.device = device
        self.cfg = model.cfg
        self.precision = precision
        module = FiloExportModule(model, text).eval()
        if device != "cpu":
            module = copy.deepcopy(module)
        self.module = module.to(device=device)
        self.blur = copy.deepcopy(model.blur).to(device) if device != "cpu" else model.blur
        self.graph = torch.compile(self.module) if compile else self.module
        self.memory: list[Any] | None = None

    @property
    def _bb(self) -> Any:
        return self.cfg.backbone

    def _batch(self, images: Sequence[np.ndarray]) -> Any:
        return _torch_batch(self.torch, images, self._bb, self.device)

    def _autocast(self) -> Any:
        return autocast(self.device, self.precision)

    def set_references(self, refs: Sequence[Path]) -> None:
        """Fill the memory with the normalised tokens the graph returns for ``refs`` (none: zero-shot)."""
        from fgad.backbone.fewshot import normalize_memory

        if not refs:
            self.memory = None
            return
        with self.torch.no_grad(), self._autocast():
            outs = self.module(self._batch([read_image(p) for p in refs]))
        tokens = outs[3:]
        self.memory = [normalize_memory(t) for t in tokens]

    def forward(self, x: Any, timer: StageTimer | None = None) -> tuple[Any, Any]:
        """Anomaly maps ``[B, H, W]`` and image scores ``[B]`` (fp32 tensors on the device) of a batch ``x``."""
        from fgad.backbone.fewshot import patch_min_distance
        from fgad.backbone.postprocess import upsample

        torch = self.torch
        bb = self._bb
        timer = timer or StageTimer(torch_sync(self.device))
        with torch.no_grad():
            with timer("engine"), self._autocast():
                vl, prob, _best, *tokens = self.graph(x)
            few = None
            if self.memory is not None:
                with timer("fewshot"), self._autocast():
                    dist = torch.stack([patch_min_distance(t, m) for t, m in zip(tokens, self.memory, strict=True)])
                    dist = dist.mean(dim=0).float().unflatten(1, (bb.grid, bb.grid)).unsqueeze(1)
                    few = upsample(dist, bb.image_size, align_corners=True)[:, 0]
            with timer("post"):
                fused = vl.float() if few is None else (vl.float() + few) / 2.0
                amap = self.blur(fused.unsqueeze(1))[:, 0]
                score = 0.5 * (prob.float() + amap.flatten(1).amax(dim=1))
        return amap, score

    def __call__(self, frames: Sequence[Path]) -> tuple[list[float], dict[str, float]]:
        timer = StageTimer(torch_sync(self.device))
        images, x = _decode_and_batch(frames, timer, self._batch)
        amap, score = self.forward(x, timer)
        with timer("post"):
            maps = amap.cpu().numpy()
            scores = score.cpu().tolist()
        _overlay(images, list(maps), timer)
        return scores, timer.ms


class TorchModelRunner:
    """``FiLoPlusPlus.forward`` per batch (text encoded per image); its whole forward is the engine stage."""

    def __init__(self, model: Any, class_name: str, device: str = "cpu") -> None:
        import torch

        self.torch = torch
        self.device = device
        self.model = model.to(device).eval()
        self.class_name = class_name

    def _batch(self, images: Sequence[np.ndarray]) -> Any:
        return _torch_batch(self.torch, images, self.model.cfg.backbone, self.device)

    def set_references(self, refs: Sequence[Path]) -> None:
        if refs:
            self.model.set_reference_images(self._batch([read_image(p) for p in refs]))
        else:
            self.model.clear_memory()

    def __call__(self, frames: Sequence[Path]) -> tuple[list[float], dict[str, float]]:
        torch = self.torch
        timer = StageTimer(torch_sync(self.device))
        images, x = _decode_and_batch(frames, timer, self._batch)
        with torch.no_grad():
            with timer("engine"):
                out = self.model(x, self.class_name)
            maps = out.anomaly_map.cpu().numpy()
            scores = out.image_score.cpu().tolist()
        _overlay(images, list(maps), timer)
        return scores, timer.ms
