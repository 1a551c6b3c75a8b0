"""Few-shot patch memory for the runtime: nearest reference patch by inner product on L2-normalised rows.

A query patch token ``t`` scores ``d = 1 - max_m <t, m>`` over the reference rows ``m`` of its layer (cosine
distance to the closest normal patch), the same quantity as ``fgad.backbone.fewshot.patch_min_distance``; the
few-shot map is the mean of ``d`` over the memory layers.

Search runs on FAISS (``IndexFlatIP``, exact; on the GPU when ``faiss.get_num_gpus() > 0``) when faiss is installed,
or on a chunked numpy matmul otherwise. Both are exact maximum inner products in float32, so they agree to
rounding (about 1e-7). A bundle exported with ``fgad-export --knn graph`` runs the same search inside its graph
(:mod:`fgad.export.knn_graph`); :func:`distance_from_similarities` turns either search's similarities into the map.

Threads: the numpy search runs with :data:`SEARCH_THREADS` BLAS threads (threadpoolctl), not BLAS's default of one
per core. The search is small and runs between engine calls; with as many BLAS threads as cores it is at the mercy
of every other busy process (measured 63-95 ms per frame instead of 0.9 ms on a shared CPU: the threads wait for
each other at every block). ``benchmarks/knn_search.py`` measures both, on an idle and on a busy CPU.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import ModuleType
from typing import Any

import numpy as np

__all__ = [
    "DUPLICATE_SIMILARITY",
    "SEARCH_THREADS",
    "SMALL_SEARCH",
    "FewShotMemory",
    "PatchMemoryIndex",
    "blas_threads",
    "distance_from_similarities",
    "duplicate_of",
    "faiss_available",
    "max_similarity_numpy",
    "normalize_rows",
]

logger = logging.getLogger(__name__)

#: memory rows compared at once by the numpy search: bounds the [queries, chunk] similarity block
DEFAULT_CHUNK = 8192
#: with use_faiss=None (auto), searches of fewer multiply-adds (queries x rows x D) than this run on numpy: below it
#: OpenMP's start-up inside FAISS costs more than the search (measured 14-25 ms for a 16 x 64 x 16 search on a
#: 2-core machine when another OpenMP runtime, e.g. torch's, was loaded first; numpy took 0.3 ms). Results are the same.
SMALL_SEARCH = 1 << 24
#: BLAS threads of the numpy search (module docstring); None leaves BLAS's own setting
SEARCH_THREADS: int | None = 1
#: two reference images are duplicates when, at every memory layer, their tokens at the same patch position have a
#: mean cosine similarity of at least this (identical images give 1 up to rounding; see :func:`duplicate_of`)
DUPLICATE_SIMILARITY = 0.9999

_blas: Any = None  # threadpoolctl's controller restricted to the BLAS libraries, made on first use (or False)


def _blas_controller() -> Any:
    global _blas
    if _blas is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - a base dependency; without it BLAS keeps its default
            logger.warning("threadpoolctl is not installed: the few-shot search uses BLAS's default threads "
                           "(slow on a busy CPU); pip install threadpoolctl")
            _blas = False
        else:
            _blas = ThreadpoolController().select(user_api="blas")
    return _blas


@contextlib.contextmanager
def blas_threads(threads: int | None) -> Iterator[None]:
    """Run the block with at most ``threads`` BLAS threads (None: unchanged). Costs about 20 us per use."""
    controller = _blas_controller() if threads is not None else False
    if not controller:
        yield
        return
    with controller.limit(limits=int(threads)):
        yield


def faiss_available() -> bool:
    """True when the faiss package is installed (checked without importing it)."""
    return importlib.util.find_spec("faiss") is not None


def normalize_rows(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """``x / max(||x||, eps)`` along the last axis in float32 (``torch.nn.functional.normalize``)."""
    arr = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(arr, axis=-1, keepdims=True)
    return np.ascontiguousarray(arr / np.maximum(norm, np.float32(eps)), dtype=np.float32)


def max_similarity_numpy(
    queries: np.ndarray,
    rows: np.ndarray,
    chunk: int = DEFAULT_CHUNK,
    exclude: tuple[int, int] | None = None,
    threads: int | None = SEARCH_THREADS,
) -> np.ndarray:
    """``max_m <q, rows[m]>`` for every query row, ``[Q, D] x [M, D] -> [Q]``, over chunks of ``chunk`` rows.

    ``exclude=(start, stop)`` leaves the rows ``start:stop`` out of the maximum (leave-one-out). ``threads``: BLAS
    threads for the products (default :data:`SEARCH_THREADS`; None: BLAS's own setting).
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    best = np.full(queries.shape[0], -np.inf, dtype=np.float32)
    num_rows = rows.shape[0]
    with blas_threads(threads):
        for start in range(0, num_rows, chunk):
            stop = min(start + chunk, num_rows)
            sim = queries @ rows[start:stop].T
            if exclude is not None:
                lo, hi = max(exclude[0], start) - start, min(exclude[1], stop) - start
                if lo < hi:
                    sim[:, lo:hi] = -np.inf
            np.maximum(best, sim.max(axis=1, initial=-np.inf), out=best)
    return best


def distance_from_similarities(similarities: Sequence[np.ndarray]) -> np.ndarray:
    """The few-shot distance map: mean over layers of ``1 - max <t, m>`` (one ``[B, N]`` array per layer).

    The one place this is computed, for the runtime's own search and for a graph that searches itself.
    """
    if not similarities:
        raise ValueError("distance_from_similarities needs at least one layer")
    total: np.ndarray | None = None
    for sim in similarities:
        dist = (np.float32(1.0) - np.asarray(sim, dtype=np.float32)).astype(np.float32, copy=False)
        total = dist if total is None else total + dist
    assert total is not None
    return (total / np.float32(len(similarities))).astype(np.float32, copy=False)


def duplicate_of(
    candidate: Mapping[int, np.ndarray],
    others: Sequence[Mapping[int, np.ndarray]],
    threshold: float = DUPLICATE_SIMILARITY,
) -> int | None:
    """Index of the first of ``others`` that ``candidate`` duplicates, or None.

    Each is one reference image's unit token rows per layer (``{layer: [N, D]}``). Two images are duplicates when,
    at every layer, the mean over patch positions of the cosine similarity of their tokens *at the same position*
    is at least ``threshold``. The same file twice, a copy, or the same picture saved again give 1 (up to
    rounding); two photos of parts, even of one part taken twice, differ in every patch's noise and fall well
    below. Duplicates defeat leave-one-out (a left-out reference still finds its twin in the memory).
    """
    for i, other in enumerate(others):
        if all(float(np.mean(np.sum(candidate[layer] * other[layer], axis=-1))) >= threshold for layer in candidate):
            return i
    return None


def _import_faiss() -> ModuleType:
    # The runtime alternates engine runs and small searches every frame. With OpenMP's default (active) wait
    # policy, FAISS's idle threads spin between searches and a 16-query search was measured at ~25 ms instead of
    # 0.04 ms on a 2-core machine (and 460 vs 400 ms at 1369 x 5476 x 1024). PASSIVE is set only when the user has
    # not chosen a policy, and only takes effect if no OpenMP runtime was loaded before faiss.
    if "faiss" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return importlib.import_module("faiss")


class PatchMemoryIndex:
    """Reference patch rows of one layer, searchable by maximum inner product.

    Args:
        dim: token width D.
        use_faiss: True (FAISS for every search), False (numpy) or None (FAISS when installed, numpy for searches
            smaller than ``small_search`` multiply-adds).
        use_gpu: True/False/None (GPU when faiss sees one); only with faiss.
        chunk: memory rows per block in the numpy search.
        small_search: see :data:`SMALL_SEARCH`; default: that value with ``use_faiss=None``, 0 otherwise.
        threads: BLAS threads of the numpy search (default :data:`SEARCH_THREADS`; None: BLAS's own setting).
    """

    def __init__(
        self,
        dim: int,
        *,
        use_faiss: bool | None = None,
        use_gpu: bool | None = None,
        chunk: int = DEFAULT_CHUNK,
        small_search: int | None = None,
        threads: int | None = SEARCH_THREADS,
    ) -> None:
        if threads is not None and (isinstance(threads, bool) or int(threads) != threads or threads < 1):
            raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
        self.threads = None if threads is None else int(threads)
        if isinstance(dim, bool) or int(dim) != dim or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        self.dim = int(dim)
        self.chunk = int(chunk)
        if small_search is None:
            small_search = SMALL_SEARCH if use_faiss is None else 0
        self.small_search = int(small_search)
        if use_faiss is None:
            use_faiss = faiss_available()
        elif use_faiss and not faiss_available():
            raise ImportError("use_faiss=True but faiss is not installed; pip install faiss-cpu (or faiss-gpu)")
        self._faiss: ModuleType | None = _import_faiss() if use_faiss else None
        self._gpu_resources: Any = None
        self._index: Any = None
        self._blocks: list[np.ndarray] = []
        self._rows: np.ndarray | None = np.zeros((0, self.dim), dtype=np.float32)
        if self._faiss is not None:
            faiss = self._faiss
            index = faiss.IndexFlatIP(self.dim)
            gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
            if use_gpu is None:
                use_gpu = gpus > 0
            if use_gpu:
                if gpus < 1:
                    raise RuntimeError("use_gpu=True but faiss sees no GPU (faiss-cpu, or no CUDA device)")
                self._gpu_resources = faiss.StandardGpuResources()
                index = faiss.index_cpu_to_gpu(self._gpu_resources, 0, index)
            self._index = index
        elif use_gpu:
            raise ValueError("use_gpu=True needs faiss (faiss-gpu)")

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_features(cls, features: np.ndarray, **kwargs: Any) -> PatchMemoryIndex:
        """An index holding ``features`` (``[k, N, D]`` or ``[M, D]``, normalised here)."""
        arr = np.asarray(features)
        if arr.ndim not in (2, 3):
            raise ValueError(f"features must be [k, N, D] or [M, D], got shape {arr.shape}")
        index = cls(arr.shape[-1], **kwargs)
        index.add(arr)
        return index

    @classmethod
    def from_npz(cls, path: str | os.PathLike[str], key: str, **kwargs: Any) -> PatchMemoryIndex:
        """An index holding the array ``key`` of an ``.npz`` file (``[M, D]`` rows)."""
        with np.load(path, allow_pickle=False) as data:
            if key not in data.files:
                raise KeyError(f"'{path}' has no array '{key}' (it has {sorted(data.files)})")
            return cls.from_features(data[key], **kwargs)

    # ------------------------------------------------------------------ contents

    @property
    def backend(self) -> str:
        """"faiss-gpu", "faiss-cpu" or "numpy"."""
        if self._faiss is None:
            return "numpy"
        return "faiss-gpu" if self._gpu_resources is not None else "faiss-cpu"

    @property
    def ntotal(self) -> int:
        """Number of reference rows."""
        if self._index is not None:
            return int(self._index.ntotal)
        return sum(b.shape[0] for b in self._blocks)

    def __len__(self) -> int:
        return self.ntotal

    def add(self, features: np.ndarray) -> None:
        """Append rows (``[k, N, D]`` or ``[M, D]``); they are L2-normalised here."""
        arr = np.asarray(features)
        if arr.ndim not in (2, 3) or arr.shape[-1] != self.dim:
            raise ValueError(f"features must be [k, N, {self.dim}] or [M, {self.dim}], got shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.floating) or not np.isfinite(arr).all():
            raise ValueError("features must be finite floating-point values")
        rows = normalize_rows(arr.reshape(-1, self.dim))
        if rows.shape[0] == 0:
            return
        if self._index is not None:
            self._index.add(rows)
        else:
            self._blocks.append(rows)
            self._rows = None

    def rows(self) -> np.ndarray:
        """All reference rows ``[M, D]`` (a copy from FAISS; the stored array for numpy: do not modify it)."""
        if self._index is not None:
            n = self.ntotal
            if n == 0:
                return np.zeros((0, self.dim), dtype=np.float32)
            return np.asarray(self._index.reconstruct_n(0, n), dtype=np.float32)
        if self._rows is None:
            self._rows = np.concatenate(self._blocks, axis=0) if len(self._blocks) > 1 else self._blocks[0]
            self._blocks = [self._rows]
        return self._rows

    def reset(self) -> None:
        """Remove all rows."""
        if self._index is not None:
            self._index.reset()
        self._blocks = []
        self._rows = np.zeros((0, self.dim), dtype=np.float32)

    # ------------------------------------------------------------------ search

    def _queries(self, tokens: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
        arr = np.asarray(tokens)
        if arr.ndim < 2 or arr.shape[-1] != self.dim:
            raise ValueError(f"tokens must be [..., {self.dim}], got shape {arr.shape}")
        if self.ntotal == 0:
            raise ValueError("the patch memory is empty; add reference images first")
        return normalize_rows(arr.reshape(-1, self.dim)), arr.shape[:-1]

    def max_similarity(self, tokens: np.ndarray, exclude: tuple[int, int] | None = None) -> np.ndarray:
        """``max_m <t, m>`` for tokens ``[B, N, D]`` (normalised here) -> ``[B, N]``.

        ``exclude=(start, stop)`` leaves rows ``start:stop`` out (always searched with numpy).
        """
        queries, lead = self._queries(tokens)
        if exclude is not None:
            if exclude[1] - exclude[0] >= self.ntotal:
                raise ValueError("leave-one-out needs rows outside the excluded range")
            best = max_similarity_numpy(queries, self.rows(), self.chunk, exclude, self.threads)
        elif self._index is not None and queries.shape[0] * self.ntotal * self.dim >= self.small_search:
            sims, _ = self._index.search(queries, 1)
            best = np.asarray(sims[:, 0], dtype=np.float32)
        else:
            best = max_similarity_numpy(queries, self.rows(), self.chunk, threads=self.threads)
        return best.reshape(lead)

    def min_distance(self, tokens: np.ndarray, exclude: tuple[int, int] | None = None) -> np.ndarray:
        """``1 - max_m <t, m>`` for tokens ``[B, N, D]`` -> ``[B, N]`` float32."""
        return (np.float32(1.0) - self.max_similarity(tokens, exclude)).astype(np.float32, copy=False)

    def __repr__(self) -> str:
        return f"PatchMemoryIndex(dim={self.dim}, ntotal={self.ntotal}, backend={self.backend!r})"


class FewShotMemory:
    """One :class:`PatchMemoryIndex` per memory layer; the distance map is the mean over layers.

    Args:
        dims: layer -> token width D (insertion order is the layer order).
        **index_kwargs: passed to every :class:`PatchMemoryIndex` (``use_faiss``, ``use_gpu``, ``chunk``).
    """

    def __init__(self, dims: Mapping[int, int], **index_kwargs: Any) -> None:
        if not dims:
            raise ValueError("FewShotMemory needs at least one layer")
        self.indexes: dict[int, PatchMemoryIndex] = {
            int(layer): PatchMemoryIndex(int(dim), **index_kwargs) for layer, dim in dims.items()
        }

    @property
    def layers(self) -> list[int]:
        return list(self.indexes)

    @property
    def ntotal(self) -> int:
        """Rows per layer (every layer holds the same number)."""
        return next(iter(self.indexes.values())).ntotal

    @property
    def is_empty(self) -> bool:
        return self.ntotal == 0

    @property
    def backend(self) -> str:
        return next(iter(self.indexes.values())).backend

    @classmethod
    def from_features(cls, features: Mapping[int, np.ndarray], **index_kwargs: Any) -> FewShotMemory:
        """A memory holding ``features[layer]`` (``[k, N, D]`` or ``[M, D]``) for every layer."""
        memory = cls({layer: np.asarray(f).shape[-1] for layer, f in features.items()}, **index_kwargs)
        memory.add(features)
        return memory

    @classmethod
    def from_npz(
        cls,
        path: str | os.PathLike[str],
        layers: Sequence[int],
        keys: Mapping[int, str] | None = None,
        **index_kwargs: Any,
    ) -> FewShotMemory:
        """Load ``layer_<layer>`` arrays (or the arrays named by ``keys``) of a references ``.npz``."""
        from fgad.bundle import reference_keys

        with np.load(path, allow_pickle=False) as data:
            if keys is None:
                keys = reference_keys(layers, data.files)
                if keys is None:
                    wanted = ", ".join(f"layer_{layer}" for layer in layers)
                    raise KeyError(f"'{path}' must hold arrays {wanted}; it has {sorted(data.files)}")
            features = {int(layer): data[keys[layer]] for layer in layers}
        return cls.from_features(features, **index_kwargs)

    def add(self, features: Mapping[int, np.ndarray]) -> None:
        """Append rows to every layer; ``features`` must cover all layers with equal row counts."""
        if set(features) != set(self.indexes):
            raise ValueError(f"features must cover layers {self.layers}, got {sorted(features)}")
        counts = {int(np.prod(np.asarray(f).shape[:-1])) for f in features.values()}
        if len(counts) != 1:
            raise ValueError(f"every layer must get the same number of rows, got {sorted(counts)}")
        for layer, index in self.indexes.items():
            index.add(features[layer])

    def min_distance(
        self, tokens: Mapping[int, np.ndarray], exclude: tuple[int, int] | None = None
    ) -> np.ndarray:
        """Mean over layers of ``1 - max <t, m>``: tokens ``{layer: [B, N, D]}`` -> ``[B, N]`` float32."""
        missing = [layer for layer in self.indexes if layer not in tokens]
        if missing:
            raise ValueError(f"tokens for memory layers {missing} are missing")
        return distance_from_similarities(
            [index.max_similarity(tokens[layer], exclude) for layer, index in self.indexes.items()]
        )

    def reset(self) -> None:
        for index in self.indexes.values():
            index.reset()

    def save_npz(
        self, path: str | os.PathLike[str], paths: Iterable[str] = (), fingerprint: str | None = None
    ) -> None:
        """Write the memory as a references file (``layer_<layer>`` arrays, ``paths`` and, given, the
        ``fingerprint`` of the model that made the rows: :func:`fgad.bundle.references.references_fingerprint`)."""
        from fgad.bundle.spec import REFERENCES_FINGERPRINT_KEY
        from fgad.core.atomic import atomic_path

        arrays: dict[str, np.ndarray] = {f"layer_{layer}": index.rows() for layer, index in self.indexes.items()}
        arrays["paths"] = np.asarray([str(p) for p in paths], dtype=np.str_)
        if fingerprint is not None:
            arrays[REFERENCES_FINGERPRINT_KEY] = np.asarray(fingerprint, dtype=np.str_)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    def __repr__(self) -> str:
        return f"FewShotMemory(layers={self.layers}, ntotal={self.ntotal}, backend={self.backend!r})"
