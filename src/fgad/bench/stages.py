"""Per-stage timers: the stages of one frame, as ``fgad-run`` processes it.

=============  ==============================================================================
stage          work
=============  ==============================================================================
``decode``     read and decode the image file (``fgad.core.io.read_image``)
``preprocess`` resize + normalise (``fgad.core.transforms.preprocess``), batch assembly
``engine``     the graph: ONNX Runtime / TensorRT session, or the PyTorch module
``fewshot``    nearest-neighbour search against the reference memory, upsampling
``post``       fusion, Gaussian smoothing, image score
``overlay``    heat-map overlay of the anomaly map on the frame (``fgad.runtime.overlay``)
=============  ==============================================================================

The runtime :class:`~fgad.runtime.pipeline.Detector` already times ``preprocess`` ... ``post`` itself
(``Result.timings``); :func:`detector_stage_ms` turns those into per-call times, so the benchmark
measures exactly the code ``fgad-run`` runs. Runners of other backends time the same stages with
:class:`StageTimer`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

from fgad.runtime.pipeline import STAGES as DETECTOR_STAGES

__all__ = ["DETECTOR_STAGES", "STAGES", "StageTimer", "detector_stage_ms"]

#: every stage a benchmark row may report, in pipeline order
STAGES: tuple[str, ...] = ("decode", *DETECTOR_STAGES, "overlay")


class StageTimer:
    """Accumulates wall time per stage, in milliseconds.

    ``sync`` (e.g. ``torch.cuda.synchronize``) runs before and after each timed block, so that
    asynchronous GPU work is charged to the stage that launched it.
    """

    def __init__(self, sync: Callable[[], None] | None = None) -> None:
        self.sync = sync
        self.ms: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
        if self.sync is not None:
            self.sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.sync is not None:
                self.sync()
            self.add(stage, 1000.0 * (time.perf_counter() - start))

    def add(self, stage: str, ms: float) -> None:
        self.ms[stage] = self.ms.get(stage, 0.0) + float(ms)

    def reset(self) -> dict[str, float]:
        """Return the accumulated times and start again."""
        out, self.ms = self.ms, {}
        return out


def detector_stage_ms(timings: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Per-call stage times from the ``Result.timings`` of one :meth:`Detector.batch` call.

    The Detector reports a batch's time divided by its size on every result, so the call's time is
    that value times the number of results (the sum over them).
    """
    out: dict[str, float] = {}
    for timing in timings:
        for stage, ms in timing.items():
            out[stage] = out.get(stage, 0.0) + float(ms)
    return out
