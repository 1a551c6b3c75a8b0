"""The backend protocol: one engine file in, ``run(image_batch) -> {output name: array}`` out.

Backends follow mmdeploy's backend managers: :meth:`Backend.is_available` asks
``importlib.util.find_spec`` whether the backend's package is installed, without importing it, and the
package itself is imported only inside the constructor, so listing backends never pulls in a heavy library.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["Backend"]


@runtime_checkable
class Backend(Protocol):
    """What the pipeline needs from an inference engine."""

    #: registry name, e.g. "onnxruntime"
    name: str

    @classmethod
    def is_available(cls) -> bool:
        """True when the backend's Python package is installed (checked without importing it)."""
        ...

    @property
    def output_names(self) -> list[str]:
        """Names of all graph outputs."""
        ...

    @property
    def input_shapes(self) -> Mapping[str, tuple[int | None, ...]]:
        """Declared input shapes, None for dynamic dimensions."""
        ...

    @property
    def output_shapes(self) -> Mapping[str, tuple[int | None, ...]]:
        """Declared output shapes, None for dynamic dimensions."""
        ...

    def run(self, image_batch: np.ndarray, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run the graph on a float32 ``[B, 3, s, s]`` batch; returns the requested outputs (all by default)."""
        ...
