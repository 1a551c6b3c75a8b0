"""The bundles a benchmark runs: exported from a random-weight model (``--config`` mode), quantized to
int8, or built into TensorRT engines. Whatever cannot be made here is returned as a reason, not raised,
so the benchmark records it as a skipped row.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_random_model", "export_bundle", "int8_bundle", "tensorrt_available", "tensorrt_bundle"]

log = logging.getLogger(__name__)

INT8_MISSING = "int8: not available (fgad.calibration missing)"


def build_random_model(config: str, image_size: int | None = None, seed: int = 0,
                       banks: Sequence[str] = ()) -> Any:
    """A model of ``config`` (by its method) with random weights (latency does not depend on the weights' values)."""
    from fgad.config import load_config
    from fgad.methods.registry import get_method

    backbone: dict[str, Any] = {"pretrained": None}
    if image_size is not None:
        backbone["image_size"] = image_size
    model_over: dict[str, Any] = {"backbone": backbone}
    if banks:
        model_over["prompts"] = {"banks": list(banks)}
    cfg = load_config(config, {"model": model_over}).model
    return get_method(cfg.method).build(cfg, seed=seed).eval()


def export_bundle(model: Any, class_name: str, refs: Sequence[Path], out: Path, deform: str = "decomposed") -> Path:
    """Export ``model`` for ``class_name`` with ``refs`` (the few-shot references and CoCoOp conditioning)."""
    from fgad.export.bundle import export_bundle

    for noisy in ("onnxscript", "onnx_ir", "torch.onnx", "torch.export", "torch._export"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return export_bundle(out, model, model.cfg, class_name, list(refs) or None, deform=deform)


def int8_bundle(bundle: Path, out: Path, calib_dir: Path | None, method: str = "entropy",
                limit: int | None = None) -> tuple[Path | None, str | None]:
    """``(int8 bundle, None)`` from ``fgad-calibrate`` (:func:`fgad.calibration.quantize_bundle`), or
    ``(None, reason)``.

    The quantizer runs in a child process: onnxruntime's calibrator holds the graph several times over plus its
    intermediate tensors, and beside the PyTorch model the benchmark keeps loaded, a ViT-L graph did not fit in
    23 GB. A child also gives its memory back when it ends.
    """
    import importlib.util
    import subprocess
    import sys

    try:
        missing = importlib.util.find_spec("fgad.calibration") is None  # None also when blocked in sys.modules
    except (ImportError, ValueError):
        missing = True
    if missing:
        return None, INT8_MISSING
    cmd = [sys.executable, "-m", "fgad.cli.calibrate", "--bundle", str(bundle), "--out", str(out), "--method", method]
    if calib_dir is not None:
        cmd += ["--calib-dir", str(calib_dir)]
    if limit is not None:
        cmd += ["--limit", str(limit)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:  # a failed quantization is a result of the benchmark, not its end
        why = "killed (out of memory?)" if done.returncode in (-9, 137) else f"exit {done.returncode}"
        tail = (done.stderr.strip() or done.stdout.strip())[-300:]
        log.warning("int8 quantization failed: %s: %s", why, tail)
        return None, f"int8: quantization failed ({why}: {tail})"
    return Path(out), None


def tensorrt_available() -> str | None:
    """None when TensorRT engines can be built and run here, else the reason."""
    from fgad.runtime.backends.trt import MISSING_MESSAGE, TensorRTBackend

    if not TensorRTBackend.is_available():
        return f"trt: tensorrt is not installed ({MISSING_MESSAGE.rstrip('.')})"
    return None


def tensorrt_bundle(bundle: Path, out: Path, precision: str, calib_dir: Path | None = None,
                    calib_limit: int | None = None) -> tuple[Path | None, str | None]:
    """A copy of the fp32 ``bundle`` with a TensorRT engine of ``precision`` added, or ``(None, reason)``.

    The engine is built and parity-checked by :func:`fgad.export.engine_bundle.add_engine` (what
    ``fgad-export --bundle DIR --engine ...`` does); int8 is calibrated on the images of ``calib_dir``.
    """
    missing = tensorrt_available()
    if missing:
        return None, missing
    try:
        from fgad.export.engine_bundle import add_engine
        from fgad.export.tensorrt_build import EngineBuildOptions
    except ImportError as exc:
        return None, f"trt: the engine builder is not available ({exc})"
    try:
        calibration = None
        if precision == "int8":
            if calib_dir is None:
                return None, "trt int8: no calibration images (give --calib DIR)"
            from fgad.bundle import load_manifest
            from fgad.calibration import read_calibration_images

            spec = load_manifest(bundle).input
            calibration = read_calibration_images(calib_dir, spec.size, spec.mean, spec.std, limit=calib_limit)
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(bundle, out)
        add_engine(out, EngineBuildOptions(precision=precision, progress=False), calibration=calibration)
    except Exception as exc:  # as above: recorded, not raised
        log.warning("TensorRT %s engine failed: %s", precision, exc)
        return None, f"trt {precision}: engine build failed ({type(exc).__name__}: {str(exc).strip()[:300]})"
    return out, None
