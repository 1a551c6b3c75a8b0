"""The torch-free detector: bundle + images -> anomaly score, decision and map.

::

    detector = Detector.from_bundle("bundle/", refs="good_parts/", threshold="auto")
    result = detector(image_rgb_uint8)        # Result(score, is_anomalous, anomaly_map, ...)
    detector.add_references([more_good])      # no re-export needed

Per image: ``fgad.core.transforms.preprocess`` (identical to training) -> engine (``vl_map``, ``global_prob``,
``best_description``, ``tokens_<layer>``) -> few-shot distance against the reference memory (when references are
loaded) -> fuse, Gaussian smoothing, score (``docs/bundle.md``).

Thresholds
----------
``threshold`` of :meth:`Detector.from_bundle`:

* a number: used as given;
* ``None``: ``thresholds.image`` of the manifest (chosen at export; ``None`` there means no decision is made);
* ``"auto"``: the leave-one-out rule of :meth:`Detector.calibrate_threshold`, from the reference *images*
  (``refs`` or :meth:`Detector.add_references`; at least 2). It is recomputed whenever references are added. A
  bundle whose graph holds the memory (``fewshot.search: "graph"``) has it computed at export by the same rule
  (``thresholds.auto``).

References that duplicate one already in the memory (:func:`fgad.runtime.knn.duplicate_of`) are dropped, with a
warning naming both: leave-one-out would otherwise find each one's twin and set the threshold far too low.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fgad.bundle import (
    BundleError,
    Manifest,
    check_graph,
    load_manifest,
    npz_array_shapes,
    reference_keys,
)
from fgad.bundle.integrity import TrustSpec
from fgad.bundle.references import check_references_fingerprint, manifest_references_fingerprint
from fgad.bundle.spec import knn_output
from fgad.core.cells import POSITIONS
from fgad.core.io import ImageReadError, UnreadableImagesError, read_image
from fgad.core.transforms import preprocess
from fgad.runtime.backends import Backend, check_manifest, create_backend
from fgad.runtime.fusion import FusionSpec, finish_maps, upsample_bilinear
from fgad.runtime.knn import FewShotMemory, distance_from_similarities, duplicate_of, max_similarity_numpy

__all__ = ["AUTO_MARGIN_FRACTION", "AUTO_MARGIN_MIN", "Detector", "Result"]

logger = logging.getLogger(__name__)

#: "auto" threshold = max(leave-one-out scores) + max(AUTO_MARGIN_MIN, AUTO_MARGIN_FRACTION * spread)
AUTO_MARGIN_FRACTION = 0.25
AUTO_MARGIN_MIN = 0.01
#: images per engine call in batch() and add_references()
DEFAULT_BATCH = 8

ImageLike = np.ndarray | str | os.PathLike[str]
STAGES = ("preprocess", "engine", "fewshot", "post")


@dataclass
class Result:
    """The outcome for one image.

    ``anomaly_map`` is ``[s, s]`` float32 with ``s = post.output_size`` (the model input size for FiLo++);
    resize it to the frame for display (``fgad.runtime.overlay.heatmap_overlay`` does). ``timings`` are
    milliseconds per stage (preprocess, engine, fewshot, post); for a batch they are the batch's time
    divided by its size.
    """

    score: float
    is_anomalous: bool | None  # None when no threshold is set
    threshold: float | None
    anomaly_map: np.ndarray = field(repr=False)
    best_description: str
    best_description_index: int = -1
    global_prob: float = math.nan
    timings: dict[str, float] = field(default_factory=dict)
    position: str | None = None  # the box prior's position cell ("top left" ... "bottom right"); None without one

    def to_dict(self, include_map: bool = False) -> dict[str, Any]:
        """JSON-ready dict (the map only with ``include_map``, as nested lists)."""
        out: dict[str, Any] = {
            "score": round(float(self.score), 6),
            "is_anomalous": self.is_anomalous,
            "threshold": None if self.threshold is None else float(self.threshold),
            "best_description": self.best_description,
            "best_description_index": int(self.best_description_index),
            "global_prob": round(float(self.global_prob), 6),
            "map_max": round(float(self.anomaly_map.max()), 6),
            "timings_ms": {k: round(float(v), 3) for k, v in self.timings.items()},
        }
        if self.position is not None:
            out["position"] = self.position
        if include_map:
            out["anomaly_map"] = self.anomaly_map.tolist()
        return out

    def to_json(self, include_map: bool = False) -> str:
        """One line of JSON (see :meth:`to_dict`)."""
        return json.dumps(self.to_dict(include_map), ensure_ascii=False)


@dataclass
class _Reference:
    """A reference image added through the graph: its rows in the memory and the outputs leave-one-out needs."""

    name: str
    start: int
    stop: int
    vl_map: np.ndarray
    global_prob: float
    region_weight: np.ndarray | None = None  # [m, m] box-prior weight of its few-shot map (bundles with a prior)


def _as_rgb(image: ImageLike) -> tuple[np.ndarray, str]:
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        return arr, "<array>"
    return read_image(image), os.fspath(image)


def _expand_refs(refs: str | os.PathLike[str] | Sequence[ImageLike]) -> list[ImageLike]:
    from fgad.runtime.sources import expand_image_spec

    if isinstance(refs, str | os.PathLike):
        return list(expand_image_spec(refs))
    if isinstance(refs, np.ndarray):
        return [refs] if refs.ndim in (2, 3) else list(refs)
    return list(refs)


class Detector:
    """FiLo++ inference from a bundle, without torch. Build it with :meth:`from_bundle`.

    Args:
        manifest: the checked manifest.
        backend: an engine backend (see :mod:`fgad.runtime.backends`).
        knn: ``"auto"`` (FAISS when installed), ``"faiss"`` or ``"numpy"`` for the few-shot search.
    """

    def __init__(self, manifest: Manifest, backend: Backend, *, knn: str = "auto") -> None:
        if knn not in ("auto", "faiss", "numpy"):
            raise ValueError(f"knn must be 'auto', 'faiss' or 'numpy', got {knn!r}")
        self.manifest = manifest
        self.backend = backend
        self.knn = knn
        self.size = manifest.input.size
        self.grid = manifest.grid
        self.layers = list(manifest.fewshot.layers)
        self.graph_search = manifest.fewshot.search == "graph"  # the graph holds and searches the memory
        self.memory: FewShotMemory | None = None
        self._refs: list[_Reference] = []
        self._threshold: float | None = manifest.thresholds.image
        self._threshold_mode = "manifest"
        self.auto_margin_fraction = AUTO_MARGIN_FRACTION
        self.auto_margin_min = AUTO_MARGIN_MIN
        self.loo_scores: np.ndarray | None = None
        post = manifest.post
        self._fusion = FusionSpec(sigma=post.sigma, truncate=post.truncate, map_size=manifest.map_size,
                                  output_size=manifest.output_size, fusion=post.fusion, score=post.score,
                                  fewshot_scale=post.fewshot_scale, align_corners=post.align_corners)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_bundle(
        cls,
        path: str | os.PathLike[str],
        refs: str | os.PathLike[str] | Sequence[ImageLike] | None = None,
        backend: str = "auto",
        threshold: float | str | None = None,
        *,
        threads: int | None = None,
        knn: str = "auto",
        verify: bool = True,
        strict: bool = False,
        trust: TrustSpec | None = None,
    ) -> Detector:
        """Load and check a bundle, create the engine and the reference memory.

        Args:
            path: the bundle folder.
            refs: ``None``: the bundle's ``fewshot.file`` if it has one (zero-shot otherwise). A folder, glob or
                image file, or a sequence of images (paths or RGB uint8 arrays): these reference images *replace*
                the bundle's memory. A ``.npz`` file: a references file in the bundle format.
            backend: ``"auto"``, ``"onnxruntime"`` or ``"tensorrt"``.
            threshold: a number, ``"auto"`` (leave-one-out over the reference images; see
                :meth:`calibrate_threshold`) or ``None`` (the manifest's ``thresholds.image``).
            threads: CPU threads of the engine (None: backend default).
            knn: few-shot search, ``"auto"``, ``"faiss"`` or ``"numpy"``.
            verify: check the sha256 of every bundle file (a large model takes a second or two).
            strict: refuse a bundle holding files its manifest does not list (default: one warning).
            trust: PEM public keys (files) or :class:`fgad.bundle.signing.TrustedKey`: the bundle must be signed
                by one of them (docs/bundle.md, "Integrity"); needs ``verify``.
        """
        bundle_dir = Path(path)
        manifest = load_manifest(bundle_dir)
        check_manifest(manifest, bundle_dir, backend=backend, verify_hashes=verify, strict=strict, trust=trust)
        engine = create_backend(manifest, bundle_dir, backend, threads=threads)
        check_graph(manifest, engine.input_shapes, engine.output_shapes, str(bundle_dir / "manifest.json"))
        detector = cls(manifest, engine, knn=knn)
        if refs is not None and detector.graph_search:
            raise detector._graph_memory_error()
        if refs is None:
            if manifest.fewshot.file:  # its fingerprint was checked with the bundle
                detector.load_references_npz(bundle_dir / manifest.fewshot.file, check_fingerprint=False)
        elif isinstance(refs, str | os.PathLike) and os.fspath(refs).lower().endswith(".npz"):
            detector.load_references_npz(refs)
        else:
            images = _expand_refs(refs)
            if images:
                detector.add_references(images, recalibrate=False)
        detector.set_threshold(threshold)
        return detector

    def _graph_memory_error(self) -> BundleError:
        k = self.manifest.fewshot.num_references
        return BundleError(
            f"this bundle's graph holds its few-shot memory ({k} reference images, exported with fgad-export "
            "--knn graph; manifest field 'fewshot.search' is 'graph'), so references cannot be given or added at "
            "run time; re-export it with the new good images: fgad-export --checkpoint RUN --class-name "
            f"{self.manifest.class_name or 'CLASS'} --refs NEW_GOOD_DIR --knn graph --out BUNDLE (or without --knn "
            "graph for a bundle whose memory fgad-run --refs can replace)",
            "fewshot.search",
        )

    def _new_memory(self) -> FewShotMemory:
        if self.graph_search:
            raise self._graph_memory_error()
        if not self.layers:
            raise BundleError(
                "field 'fewshot.layers' is empty: this bundle has no few-shot memory layers, so it cannot use "
                "reference images; re-export it with memory layers",
                "fewshot.layers",
            )
        dims = {}
        for layer in self.layers:
            dim = self.manifest.token_dim(layer)
            if dim is None:
                raise BundleError(f"field 'outputs.tokens_{layer}' has no width D", f"outputs.tokens_{layer}")
            dims[layer] = dim
        use_faiss = {"auto": None, "faiss": True, "numpy": False}[self.knn]
        return FewShotMemory(dims, use_faiss=use_faiss)

    def load_references_npz(self, path: str | os.PathLike[str], *, check_fingerprint: bool = True) -> None:
        """Replace the memory with the rows of a references file (bundle format: ``layer_<layer>`` arrays).

        The file's fingerprint must be this bundle's (made by the same model and layers; docs/bundle.md); a file
        without one (older fgad) loads with a warning.
        """
        memory = self._new_memory()
        if check_fingerprint:
            check_references_fingerprint(self.manifest, path)
        keys = reference_keys(self.layers, list(npz_array_shapes(path)))
        if keys is None:
            wanted = ", ".join(f"layer_{layer}" for layer in self.layers)
            raise BundleError(f"references file '{path}' must hold arrays {wanted}", "fewshot.file")
        try:  # allow_pickle=False: an object array (a pickle) is refused, not unpickled
            with np.load(path, allow_pickle=False) as data:
                rows = {layer: data[keys[layer]] for layer in self.layers}
        except (ValueError, OSError, zipfile.BadZipFile) as exc:
            raise BundleError(f"references file '{path}' cannot be read ({exc}); re-export the bundle or write the "
                              "file again with Detector.save_references", "fewshot.file") from exc
        n = self.manifest.num_patches
        for layer, arr in rows.items():
            if arr.ndim != 2 or arr.shape[0] % n or arr.shape[1] != memory.indexes[layer].dim:
                raise BundleError(
                    f"references file '{path}': {keys[layer]} has shape {list(arr.shape)}, expected "
                    f"[k*{n}, {memory.indexes[layer].dim}]",
                    "fewshot.file",
                )
        memory.add(rows)
        self.memory = memory
        self._refs = []
        self.loo_scores = None
        logger.info("loaded %d reference images' patches from %s", memory.ntotal // n, path)

    # ------------------------------------------------------------------ properties

    @property
    def class_name(self) -> str:
        return self.manifest.class_name

    @property
    def num_references(self) -> int:
        """Reference images in the memory (rows per layer / N; the graph's, for a graph-search bundle)."""
        if self.graph_search:
            return self.manifest.fewshot.num_references
        if self.memory is None:
            return 0
        return self.memory.ntotal // self.manifest.num_patches

    @property
    def threshold(self) -> float | None:
        return self._threshold

    @property
    def threshold_rule(self) -> str:
        """How the current threshold was chosen."""
        if self._threshold_mode == "auto" and self.graph_search:
            return (f"auto: leave-one-out over the {self.num_references} reference images in the graph, computed at "
                    "export (thresholds.auto)")
        if self._threshold_mode == "auto":
            return (
                f"auto: max leave-one-out score of {len(self._refs)} reference images + "
                f"max({self.auto_margin_min}, {self.auto_margin_fraction} * spread)"
            )
        if self._threshold_mode == "fixed":
            return "given"
        if self._threshold is None:
            return "none (no threshold in the manifest)"
        return f"manifest ({self.manifest.thresholds.rule or 'export'})"

    # ------------------------------------------------------------------ thresholds

    def set_threshold(self, threshold: float | str | None) -> None:
        """A number, ``"auto"`` (computed now and after every :meth:`add_references`) or None (manifest)."""
        if threshold is None:
            self._threshold, self._threshold_mode = self.manifest.thresholds.image, "manifest"
            return
        if isinstance(threshold, str):
            if threshold.strip().lower() == "auto" and self.graph_search:
                if self.manifest.thresholds.auto is None:
                    raise ValueError("threshold 'auto' needs at least 2 reference images; this bundle's graph holds "
                                     f"{self.num_references}: give a number, or re-export with 2 or more --refs")
                self._threshold, self._threshold_mode = self.manifest.thresholds.auto, "auto"
                return
            if threshold.strip().lower() == "auto":
                self._threshold = self.calibrate_threshold()
                self._threshold_mode = "auto"
                return
            try:
                threshold = float(threshold)
            except ValueError:
                raise ValueError(f"threshold must be a number or 'auto', got {threshold!r}") from None
        value = float(threshold)
        if not math.isfinite(value):
            raise ValueError(f"threshold must be finite, got {threshold!r}")
        self._threshold, self._threshold_mode = value, "fixed"

    def leave_one_out_scores(self) -> np.ndarray:
        """Score of each reference image against the memory without its own patches ``[k]``.

        Each reference added through the graph is scored exactly as a new image would be (same fusion,
        smoothing and score), except that its own rows are left out of the nearest-neighbour search; rows from a
        references file stay in the memory.
        """
        if self.memory is None or len(self._refs) < 2:
            raise ValueError(
                f"threshold 'auto' needs at least 2 reference images (got {len(self._refs)}); give 2 or more good "
                "images with --refs DIR (refs= in Python; a references .npz holds features, not images), or a number"
            )
        g = self.grid
        rows = {layer: index.rows() for layer, index in self.memory.indexes.items()}
        scores = np.empty(len(self._refs), dtype=np.float32)
        for i, ref in enumerate(self._refs):
            total: np.ndarray | None = None
            for layer in self.layers:
                own = rows[layer][ref.start : ref.stop]
                dist = 1.0 - max_similarity_numpy(own, rows[layer], exclude=(ref.start, ref.stop))
                total = dist if total is None else total + dist
            assert total is not None
            few = (total / len(self.layers)).reshape(1, g, g).astype(np.float32)
            if ref.region_weight is not None:
                few = self._weighted_few(few, ref.region_weight[None])
            _, score = finish_maps(ref.vl_map[None], np.array([ref.global_prob]), few, self._fusion)
            scores[i] = score[0]
        return scores

    def calibrate_threshold(self, margin_fraction: float | None = None, min_margin: float | None = None) -> float:
        """The ``"auto"`` threshold: leave-one-out over the reference images.

        Rule: score every reference image against the memory of the *other* references (see
        :meth:`leave_one_out_scores`), then ``t = max(s) + max(min_margin, margin_fraction * (max(s) - min(s)))``
        (defaults 0.01 and 0.25). A normal image is scored against all ``k`` references, so it sees a memory at least
        as close as a left-out reference did; the margin absorbs the remaining spread. Needs ``k >= 2``.
        """
        if margin_fraction is not None:
            self.auto_margin_fraction = float(margin_fraction)
        if min_margin is not None:
            self.auto_margin_min = float(min_margin)
        scores = self.leave_one_out_scores()
        self.loo_scores = scores
        top, spread = float(scores.max()), float(scores.max() - scores.min())
        threshold = top + max(self.auto_margin_min, self.auto_margin_fraction * spread)
        logger.info(
            "threshold auto = %.4f (leave-one-out scores of %d references: min %.4f, max %.4f)",
            threshold,
            len(scores),
            float(scores.min()),
            top,
        )
        return threshold

    # ------------------------------------------------------------------ references

    def add_references(
        self, images: Iterable[ImageLike], batch_size: int = DEFAULT_BATCH, *, recalibrate: bool = True
    ) -> int:
        """Add normal reference images (RGB uint8 arrays or paths) to the few-shot memory; returns how many.

        The graph runs on them, their ``tokens_<layer>`` rows (normalised) join the memory, and with threshold
        ``"auto"`` the threshold is recomputed (unless ``recalibrate=False``). No re-export is needed.

        All or nothing: every path is read, and if any cannot be,
        :class:`fgad.core.io.UnreadableImagesError` (an ``ImageReadError`` and a ``ValueError``) names each one
        and the memory is left as it was (references define what is normal; none is dropped silently). An image
        that duplicates a reference already in the memory or an earlier one of ``images``
        (:func:`fgad.runtime.knn.duplicate_of`) is not added, with a warning naming both; the count returned
        leaves it out.
        """
        items = list(images)
        n = self.manifest.num_patches
        names = self._token_names()
        memory = self.memory if self.memory is not None else self._new_memory()
        staged: list[tuple[dict[int, np.ndarray], str, np.ndarray, float, np.ndarray | None]] = []
        failures: list[ImageReadError] = []
        for start in range(0, len(items), max(1, batch_size)):
            loaded = []
            for item in items[start : start + batch_size]:
                try:
                    loaded.append(_as_rgb(item))
                except ImageReadError as exc:
                    failures.append(exc)
            if failures or not loaded:
                continue  # keep reading, to name every unreadable file; nothing runs or is added
            batch = self._preprocess([img for img, _ in loaded])
            outs = self.backend.run(batch, ["vl_map", "global_prob", *names, *self._prior_names()])
            tokens = {layer: self._tokens(outs, layer, len(loaded)) for layer in self.layers}
            for j, (_, name) in enumerate(loaded):
                vl = np.array(outs["vl_map"][j], dtype=np.float32)
                weight = np.array(outs["region_weight"][j], dtype=np.float32) if "region_weight" in outs else None
                staged.append(({layer: tokens[layer][j] for layer in self.layers}, name, vl,
                               float(outs["global_prob"][j]), weight))
        if failures:
            raise UnreadableImagesError(failures, len(items), "reference images")
        staged = self._without_duplicates(memory, staged)
        self.memory = memory
        for rows, name, vl, global_prob, weight in staged:
            first = memory.ntotal
            memory.add(rows)
            self._refs.append(_Reference(name, first, first + n, vl, global_prob, weight))
        added = len(staged)
        if recalibrate and self._threshold_mode == "auto" and added:
            self._threshold = self.calibrate_threshold()
        return added

    def _without_duplicates(self, memory: FewShotMemory, staged: list[Any]) -> list[Any]:
        """``staged`` without the images that duplicate a reference in ``memory`` or an earlier staged one."""
        if not staged:
            return staged
        from fgad.runtime.knn import normalize_rows

        kept_rows: list[dict[int, np.ndarray]] = []
        kept_names: list[str] = []
        if not memory.is_empty:  # every image in the memory, also those of a references file (N rows each)
            n = self.manifest.num_patches
            rows = {layer: index.rows() for layer, index in memory.indexes.items()}
            names = {ref.start // n: ref.name for ref in self._refs}
            for i in range(memory.ntotal // n):
                kept_rows.append({layer: r[i * n : (i + 1) * n] for layer, r in rows.items()})
                kept_names.append(names.get(i, f"#{i} of the references file"))
        kept = []
        for item in staged:
            unit = {layer: normalize_rows(t) for layer, t in item[0].items()}
            twin = duplicate_of(unit, kept_rows)
            if twin is not None:
                logger.warning("reference %s duplicates reference %s (identical features): left out, so that "
                               "leave-one-out and the 'auto' threshold stay meaningful", item[1], kept_names[twin])
                continue
            kept.append(item)
            kept_rows.append(unit)
            kept_names.append(item[1])
        return kept

    def clear_references(self) -> None:
        """Drop the few-shot memory (zero-shot from now on; an ``"auto"`` threshold is kept as it was)."""
        self.memory = None
        self._refs = []

    # ------------------------------------------------------------------ inference

    def _token_names(self) -> list[str]:
        return [self.manifest.token_output(layer) for layer in self.layers]

    def _prior_names(self) -> list[str]:
        """Outputs of the box prior inside the graph (none without one)."""
        return [] if self.manifest.box_prior.name == "none" else ["position", "region_weight"]

    def _weighted_few(self, few_grid: np.ndarray, region_weight: np.ndarray) -> np.ndarray:
        """The few-shot map upsampled to the map size and λ-suppressed outside the box (as the graph's vl_map)."""
        few = upsample_bilinear(few_grid, self._fusion.map_size, self._fusion.align_corners)
        return few * np.asarray(region_weight, dtype=np.float32)

    def _tokens(self, outs: dict[str, np.ndarray], layer: int, batch: int) -> np.ndarray:
        arr = np.asarray(outs[self.manifest.token_output(layer)], dtype=np.float32)
        expected = (batch, self.manifest.num_patches, self.manifest.token_dim(layer))
        if arr.shape != expected:
            raise BundleError(
                f"the engine returned tokens_{layer} of shape {list(arr.shape)}, expected {list(expected)} "
                "(check 'grid' and 'outputs' in the manifest)",
                f"outputs.tokens_{layer}",
            )
        return arr

    def _preprocess(self, images: Sequence[np.ndarray]) -> np.ndarray:
        spec = self.manifest.input
        return np.stack([preprocess(img, self.size, spec.mean, spec.std) for img in images])

    def _infer(self, images: Sequence[np.ndarray]) -> list[Result]:
        count = len(images)
        t0 = time.perf_counter()
        batch = self._preprocess(images)
        t1 = time.perf_counter()
        use_memory = self.memory is not None and not self.memory.is_empty
        searched = [knn_output(layer) for layer in self.layers] if self.graph_search else []
        names = ["vl_map", "global_prob", "best_description"] + (self._token_names() if use_memory else [])
        outs = self.backend.run(batch, names + searched + self._prior_names())
        t2 = time.perf_counter()
        few = None
        if searched:  # the graph searched its own memory: the same distance map as the runtime's search
            few = distance_from_similarities([np.asarray(outs[name], dtype=np.float32) for name in searched])
            few = few.reshape(count, self.grid, self.grid)
            if "region_weight" in outs:
                few = self._weighted_few(few, outs["region_weight"])
        elif use_memory:
            assert self.memory is not None
            tokens = {layer: self._tokens(outs, layer, count) for layer in self.layers}
            few = self.memory.min_distance(tokens).reshape(count, self.grid, self.grid)  # upsampled in finish_maps
            if "region_weight" in outs:  # box prior in the graph: suppress M^few outside the box, before fusion
                few = self._weighted_few(few, outs["region_weight"])
        t3 = time.perf_counter()
        vl_map = np.asarray(outs["vl_map"], dtype=np.float32)
        m = self._fusion.map_size
        if vl_map.shape != (count, m, m):
            raise BundleError(
                f"the engine returned vl_map of shape {list(vl_map.shape)}, expected "
                f"{[count, m, m]} (check 'input.size' and 'post.map_size')",
                "outputs.vl_map",
            )
        prob = np.asarray(outs["global_prob"], dtype=np.float32).reshape(-1)
        best = np.asarray(outs["best_description"]).reshape(-1).astype(np.int64)
        cells = np.asarray(outs["position"]).reshape(-1).astype(np.int64) if "position" in outs else None
        maps, scores = finish_maps(vl_map, prob, few, self._fusion)
        t4 = time.perf_counter()
        timings = {
            stage: 1000.0 * dt / count for stage, dt in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True)
        }
        results = []
        for i in range(count):
            score = float(scores[i])
            threshold = self._threshold
            results.append(
                Result(
                    score=score,
                    is_anomalous=None if threshold is None else bool(score >= threshold),
                    threshold=threshold,
                    anomaly_map=maps[i] if count == 1 else maps[i].copy(),
                    best_description=self.manifest.description(int(best[i])),
                    best_description_index=int(best[i]),
                    global_prob=float(prob[i]),
                    timings=dict(timings),
                    position=None if cells is None else POSITIONS[int(cells[i])],
                )
            )
        return results

    def __call__(self, image: ImageLike) -> Result:
        """Score one RGB uint8 ``[H, W, 3]`` image (a path is read with ``fgad.core.io.read_image``)."""
        rgb, _ = _as_rgb(image)
        return self._infer([rgb])[0]

    def batch(self, images: Iterable[ImageLike], batch_size: int = DEFAULT_BATCH) -> list[Result]:
        """Score many images, ``batch_size`` per engine call; results in input order."""
        results: list[Result] = []
        chunk: list[np.ndarray] = []
        for image in images:
            chunk.append(_as_rgb(image)[0])
            if len(chunk) >= max(1, batch_size):
                results.extend(self._infer(chunk))
                chunk = []
        if chunk:
            results.extend(self._infer(chunk))
        return results

    def save_references(self, path: str | os.PathLike[str]) -> None:
        """Write the current memory as a references file (bundle format), e.g. to ship it in a bundle."""
        if self.memory is None or self.memory.is_empty:
            raise ValueError("there are no references to save")
        self.memory.save_npz(path, [r.name for r in self._refs], manifest_references_fingerprint(self.manifest))

    def __repr__(self) -> str:
        return (
            f"Detector(class={self.class_name!r}, size={self.size}, backend={getattr(self.backend, 'name', '?')}, "
            f"references={self.num_references}, threshold={self._threshold})"
        )
