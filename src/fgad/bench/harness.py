"""The timing loop: warm-up, then N frames through every runner, interleaved; statistics and peak memory.

Runners take turns on the same batch of frames (batch 1 is a camera's case), so machine-state
drift (other jobs, thermal limits, caches) hits every configuration alike and the ratios between
them are taken at the same moment. Each runner gets its own warm-up calls first; the first call's
time is kept separately (it holds lazy initialisation and, for ``torch.compile``, the compilation).

Peak memory, per runner: the process's peak resident set is reset before each of its calls
(Linux ``/proc/self/clear_refs``; elsewhere the process-lifetime ``ru_maxrss`` is reported and
marked so) and read after it, and on CUDA ``torch.cuda`` peak allocation likewise. All runners'
models stay loaded, so the RSS peak includes them all: compare it across runs, not across rows.
"""

from __future__ import annotations

import logging
import math
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

__all__ = [
    "HarnessSettings",
    "Measurement",
    "PeakMemory",
    "Runner",
    "batches",
    "measure",
    "summarize",
]

log = logging.getLogger(__name__)


class Runner(Protocol):
    """One configuration to time: ``__call__`` processes a batch of frame files end to end."""

    #: "cpu" or "cuda": where the timed work runs (CUDA peak memory is read for "cuda")
    device: str

    def __call__(self, frames: Sequence[Path]) -> tuple[list[float], dict[str, float]]:
        """Process ``frames``; return their image scores and this call's milliseconds per stage."""
        ...


@dataclass(frozen=True)
class HarnessSettings:
    """How many frames to time, after how many warm-up calls, in batches of what size."""

    frames: int = 20  # timed frames per runner (rounded up to whole batches)
    warmup: int = 3  # untimed calls per runner before timing
    batch: int = 1  # frames per call

    def __post_init__(self) -> None:
        if self.frames < 1 or self.batch < 1 or self.warmup < 0:
            raise ValueError(
                f"need frames >= 1, batch >= 1, warmup >= 0; got frames={self.frames}, batch={self.batch}, "
                f"warmup={self.warmup}"
            )

    @property
    def calls(self) -> int:
        return math.ceil(self.frames / self.batch)


@dataclass
class Measurement:
    """The raw timings of one runner."""

    latency_ms: list[float] = field(default_factory=list)  # wall time per call
    stages_ms: dict[str, list[float]] = field(default_factory=dict)  # per stage, per call
    scores: list[float] = field(default_factory=list)
    first_call_ms: float | None = None
    peak_rss_mb: float | None = None
    peak_device_mb: float | None = None
    rss_note: str = ""
    error: str | None = None
    frames_per_call: int = 1

    @property
    def frames(self) -> int:
        return len(self.latency_ms) * self.frames_per_call

    def summary(self) -> dict[str, Any]:
        """Statistics of latency and stages, FPS, memory (or the error)."""
        if self.error is not None:
            return {"error": self.error}
        total_s = sum(self.latency_ms) / 1000.0
        return {
            "frames": self.frames,
            "batch": self.frames_per_call,
            "latency_ms": summarize(self.latency_ms),
            "fps": self.frames / total_s if total_s > 0 else None,
            "stages_ms": {stage: summarize(v) for stage, v in self.stages_ms.items()},
            "first_call_ms": self.first_call_ms,
            "peak_rss_mb": self.peak_rss_mb,
            "peak_rss_note": self.rss_note,
            "peak_device_mb": self.peak_device_mb,
        }


def summarize(values: Sequence[float]) -> dict[str, float | int | None]:
    """median, p90, p99, mean, min, max and count (linear-interpolated percentiles, as numpy's default)."""
    if not values:
        return {"median": None, "p90": None, "p99": None, "mean": None, "min": None, "max": None, "n": 0}
    arr = np.asarray(values, dtype=np.float64)
    return {
        "median": float(np.median(arr)),
        "p90": float(np.percentile(arr, 90)),
        "p99": float(np.percentile(arr, 99)),
        "mean": float(arr.mean()),
        "min": float(arr.min()),
        "max": float(arr.max()),
        "n": int(arr.size),
    }


class PeakMemory:
    """Peak resident set size of this process, resettable on Linux."""

    _STATUS = Path("/proc/self/status")
    _CLEAR = Path("/proc/self/clear_refs")

    def __init__(self) -> None:
        self.resettable = self._try_reset()

    def _try_reset(self) -> bool:
        try:
            self._CLEAR.write_text("5")  # "5": reset the peak RSS (VmHWM) to the current RSS
        except OSError:
            return False
        return self._hwm_kb() is not None

    def _hwm_kb(self) -> int | None:
        try:
            match = re.search(r"^VmHWM:\s+(\d+)\s+kB", self._STATUS.read_text(), re.MULTILINE)
        except OSError:
            return None
        return int(match.group(1)) if match else None

    def reset(self) -> None:
        if self.resettable:
            self._try_reset()

    def peak_mb(self) -> float:
        """Peak RSS since the last :meth:`reset` (or, where it cannot be reset, of the process's lifetime)."""
        if self.resettable:
            kb = self._hwm_kb()
            if kb is not None:
                return kb / 1024.0
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024.0  # bytes on macOS, kB elsewhere

    @property
    def note(self) -> str:
        return ("peak RSS during this configuration's calls (all loaded models included)" if self.resettable
                else "process-lifetime peak RSS (this OS cannot reset it per configuration)")


class _CudaMemory:
    """torch.cuda peak allocation (only when the caller already imported torch and CUDA is there)."""

    def __init__(self) -> None:
        torch = sys.modules.get("torch")
        self.torch = torch if torch is not None and torch.cuda.is_available() else None

    def reset(self) -> None:
        if self.torch is not None:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()

    def peak_mb(self) -> float | None:
        if self.torch is None:
            return None
        self.torch.cuda.synchronize()
        return self.torch.cuda.max_memory_allocated() / 2**20


def batches(frames: Sequence[Path], settings: HarnessSettings) -> list[list[Path]]:
    """The timed calls' frame lists: ``settings.calls`` batches cycling through ``frames``."""
    if not frames:
        raise ValueError("no frames to time: give at least one image")
    out = []
    for call in range(settings.calls):
        start = call * settings.batch
        out.append([frames[(start + j) % len(frames)] for j in range(settings.batch)])
    return out


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


def measure(
    runners: dict[str, Runner],
    frames: Sequence[Path],
    settings: HarnessSettings,
    progress: bool = True,
    desc: str = "bench",
) -> dict[str, Measurement]:
    """Warm up each runner, then time ``settings.frames`` frames through all of them, interleaved.

    A runner that raises is recorded with its error (``Measurement.error``) and left out of later calls;
    the others go on. Returns one :class:`Measurement` per runner name.
    """
    from tqdm import tqdm

    calls = batches(frames, settings)
    results = {name: Measurement(frames_per_call=settings.batch) for name in runners}
    memory = PeakMemory()
    cuda = _CudaMemory()
    active = dict(runners)
    for name, runner in list(active.items()):
        for i in range(settings.warmup):
            start = time.perf_counter()
            try:
                runner(calls[i % len(calls)])
            except Exception as exc:  # one configuration failing is a result, not a crash
                log.warning("%s failed during warm-up: %s", name, _describe(exc))
                results[name].error = f"failed during warm-up: {_describe(exc)}"
                del active[name]
                break
            if i == 0:
                results[name].first_call_ms = 1000.0 * (time.perf_counter() - start)
    bar = tqdm(total=len(calls) * len(active), desc=desc, disable=not progress, leave=False)
    try:
        for batch in calls:
            for name, runner in list(active.items()):
                result = results[name]
                on_cuda = runner.device == "cuda"
                memory.reset()
                if on_cuda:
                    cuda.reset()
                start = time.perf_counter()
                try:
                    scores, stages = runner(batch)
                except Exception as exc:  # as above
                    log.warning("%s failed: %s", name, _describe(exc))
                    result.error = f"failed while timing: {_describe(exc)}"
                    del active[name]
                    continue
                result.latency_ms.append(1000.0 * (time.perf_counter() - start))
                for stage, ms in stages.items():
                    result.stages_ms.setdefault(stage, []).append(ms)
                result.scores.extend(float(s) for s in scores)
                result.peak_rss_mb = max(result.peak_rss_mb or 0.0, memory.peak_mb())
                result.rss_note = memory.note
                if on_cuda:
                    peak = cuda.peak_mb()
                    if peak is not None:
                        result.peak_device_mb = max(result.peak_device_mb or 0.0, peak)
                bar.update(1)
    finally:
        bar.close()
    return results
