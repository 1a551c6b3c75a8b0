"""Build a TensorRT engine from an ONNX graph on the machine that will run it (TensorRT 10 Python API).

:func:`build_engine` does, in order: load the plugin libraries into TensorRT's registry (before parsing, so
the ONNX parser finds ``fgad::FgadDeformConv2d``), parse the ONNX file (external weights resolve next to it)
into an explicit-batch network (``create_network(0)``: the only mode of TensorRT 10), keep the layer types
of :attr:`EngineBuildOptions.fp32_layer_types` in fp32 when building reduced precision (LayerNorm in fp16
overflows on large activations), set the precision flags, the workspace pool, one optimization profile for
the dynamic batch and the timing cache, build the serialized network, write it to ``engine_path`` as a
**plain** plan (no header of ours: ``trtexec --loadEngine`` and other tools read the same file), then save
the timing cache (old entries plus the new ones) and deserialize the plan once to report its layers and I/O.

Precision:

* ``fp32``: TF32 is turned off so the engine computes what the ONNX graph says (parity ~1e-5 vs onnxruntime);
* ``fp16``: ``BuilderFlag.FP16`` (TensorRT picks fp16 kernels where faster, fp32 elsewhere);
* ``int8``: explicit quantization only (ARCHITECTURE decision 4): the graph must be a Q/DQ graph
  (:mod:`fgad.calibration`); ``INT8`` and ``FP16`` flags, no calibrator (legacy calibrators are deprecated
  in TensorRT 10.1 and not used).

Only :func:`build_engine` needs ``tensorrt`` (and cuda-python for the GPU's compute capability); it is
imported inside it, so this module imports anywhere. Torch-free.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fgad.core.atomic import atomic_path, atomic_write_bytes

if TYPE_CHECKING:
    import tensorrt as trt

__all__ = [
    "INSTALL_TENSORRT",
    "PRECISIONS",
    "EngineBuildError",
    "EngineBuildOptions",
    "EngineInfo",
    "TensorRTUnavailableError",
    "build_engine",
    "tensorrt_installed",
]

log = logging.getLogger(__name__)

PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
INSTALL_TENSORRT = (
    "TensorRT's Python package is not installed. On Jetson it comes with JetPack (sudo apt install "
    "python3-libnvinfer python3-libnvinfer-dev; create the venv with --system-site-packages so it is visible); "
    "on a desktop GPU: pip install tensorrt. The compute capability is read with cuda-python: pip install "
    "cuda-python. See docs/jetson.md"
)
_GIB = 1 << 30


class EngineBuildError(RuntimeError):
    """TensorRT could not parse the graph or build the engine; the message says which node or step and why."""


class TensorRTUnavailableError(EngineBuildError):
    """The tensorrt package is not installed here (the message says how to get it)."""


def tensorrt_installed() -> bool:
    """Whether ``import tensorrt`` can work here (checked without importing it)."""
    return importlib.util.find_spec("tensorrt") is not None


@dataclass(frozen=True)
class EngineBuildOptions:
    """How to build one engine (``fgad-export --engine ...`` fills it from its options)."""

    precision: str = "fp16"  # fp32 (TF32 off) | fp16 | int8 (the ONNX graph must be a Q/DQ graph)
    workspace_gb: float | None = None  # builder workspace pool limit in GiB (None: TensorRT's default)
    timing_cache: Path | None = None  # read if it exists, then written with the new entries added
    plugin_libraries: tuple[Path, ...] = ()  # loaded into the plugin registry before parsing
    min_batch: int = 1  # optimization profile of the dynamic batch axis
    opt_batch: int = 1  # the batch the kernels are tuned for (fgad-run sends 1 frame at a time)
    max_batch: int = 8  # Detector.batch / add_references send up to 8 (fgad.runtime.pipeline.DEFAULT_BATCH)
    fp32_layer_types: tuple[str, ...] = ("NORMALIZATION",)  # TensorRT LayerType names kept fp32 in fp16/int8
    optimization_level: int | None = None  # builder optimization level 0..5 (None: TensorRT's default, 3)
    verbose: bool = False  # TensorRT's INFO/VERBOSE log instead of warnings and errors only
    progress: bool = True  # a tqdm bar per build phase

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r}: use one of {', '.join(PRECISIONS)}")
        if self.workspace_gb is not None and not self.workspace_gb > 0:
            raise ValueError(f"workspace_gb must be > 0 (GiB), got {self.workspace_gb}")
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(
                f"batch profile must satisfy 1 <= min <= opt <= max, got min={self.min_batch}, opt={self.opt_batch}, "
                f"max={self.max_batch}")
        if self.optimization_level is not None and not 0 <= self.optimization_level <= 5:
            raise ValueError(f"optimization_level must be in 0..5, got {self.optimization_level}")
        object.__setattr__(self, "plugin_libraries", tuple(Path(p) for p in self.plugin_libraries))
        if self.timing_cache is not None:
            object.__setattr__(self, "timing_cache", Path(self.timing_cache))


@dataclass(frozen=True)
class EngineInfo:
    """What was built, for the manifest and the log."""

    path: Path
    tensorrt_version: str
    compute_capability: str
    precision: str
    build_seconds: float
    layers: int  # layers of the built engine (after fusion)
    network_layers: int  # layers of the parsed network
    engine_bytes: int
    min_batch: int
    opt_batch: int
    max_batch: int
    inputs: dict[str, list[int | None]] = field(default_factory=dict)
    outputs: dict[str, list[int | None]] = field(default_factory=dict)
    plugins: tuple[str, ...] = ()
    timing_cache: str | None = None

    def to_manifest(self) -> dict[str, Any]:
        """The ``engine.build`` block of the manifest."""
        return {
            "seconds": round(self.build_seconds, 1),
            "layers": self.layers,
            "network_layers": self.network_layers,
            "bytes": self.engine_bytes,
            "batch": {"min": self.min_batch, "opt": self.opt_batch, "max": self.max_batch},
            "timing_cache": self.timing_cache,
        }


# ---------------------------------------------------------------------------------- TensorRT callbacks


def _logger(verbose: bool) -> trt.ILogger:
    """A TensorRT logger that forwards to Python logging and keeps the errors for our exception messages."""
    import tensorrt as trt

    class _ForwardingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self.min_severity = trt.ILogger.Severity.VERBOSE if verbose else trt.ILogger.Severity.WARNING

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(msg)
                log.error("TensorRT: %s", msg)
            elif severity == trt.ILogger.Severity.WARNING:
                log.warning("TensorRT: %s", msg)
            elif verbose:
                log.debug("TensorRT: %s", msg)

    return _ForwardingLogger()


def _progress_monitor() -> trt.IProgressMonitor:
    """One tqdm bar per top-level build phase (TensorRT's IProgressMonitor)."""
    import tensorrt as trt
    from tqdm import tqdm

    class _TqdmMonitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._bars: dict[str, Any] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            if parent_phase is None:  # nested phases would stack bars; the top level says enough
                self._bars[phase_name] = tqdm(total=num_steps, desc=f"TensorRT {phase_name}", leave=False)

        def step_complete(self, phase_name: str, step: int) -> bool:
            bar = self._bars.get(phase_name)
            if bar is not None:
                bar.update(step + 1 - bar.n)
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            bar = self._bars.pop(phase_name, None)
            if bar is not None:
                bar.close()

    return _TqdmMonitor()


# ---------------------------------------------------------------------------------- steps


def _parse(parser: trt.OnnxParser, onnx_path: Path, plugins: Sequence[Path]) -> None:
    if parser.parse_from_file(str(onnx_path)):
        return
    problems = []
    plugin_missing = False
    for index in range(parser.num_errors):
        error = parser.get_error(index)
        node, op = error.node_name(), error.node_operator()
        plugin_missing = plugin_missing or op == "FgadDeformConv2d"
        where = f"node {node!r} ({op})" if node or op else "graph"
        problems.append(f"{where}: {error.desc()} [{error.code()}]")
    hint = ""
    if plugin_missing and not plugins:
        hint = ("; the graph has fgad::FgadDeformConv2d plugin nodes: pass the plugin library built from cpp_ext "
                "(--plugin PATH) or build with --deform native")
    raise EngineBuildError(
        f"TensorRT's ONNX parser rejected {onnx_path}: " + "; ".join(problems or ["no error reported"]) + hint
    )


def _set_precision(
    network: trt.INetworkDefinition, config: trt.IBuilderConfig, options: EngineBuildOptions
) -> int:
    """Precision flags; layers of ``fp32_layer_types`` kept fp32 in reduced precision. Returns how many."""
    import tensorrt as trt

    if options.precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)
        return 0
    config.set_flag(trt.BuilderFlag.FP16)
    if options.precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # explicit quantization: the Q/DQ nodes set the scales
    wanted = set()
    for name in options.fp32_layer_types:
        kind = getattr(trt.LayerType, name, None)
        if kind is None:
            raise ValueError(f"fp32_layer_types: {name!r} is not a TensorRT LayerType")
        wanted.add(kind)
    kept = 0
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.type in wanted:
            layer.precision = trt.float32
            for output in range(layer.num_outputs):
                layer.set_output_type(output, trt.float32)
            kept += 1
    if kept:
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
    return kept


def _profile(
    builder: trt.Builder, network: trt.INetworkDefinition, config: trt.IBuilderConfig, options: EngineBuildOptions
) -> None:
    """One optimization profile: the batch axis from min to max; every other axis must be static."""
    import tensorrt as trt

    profile = builder.create_optimization_profile()
    dynamic = False
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        shape = [int(tensor.shape[i]) for i in range(len(tensor.shape))]
        if any(d < 0 for d in shape[1:]):
            raise EngineBuildError(
                f"input {tensor.name!r} has shape {shape}: only the batch axis may be dynamic (shapes come from the "
                "config); re-export the graph")
        if shape and shape[0] < 0:
            dynamic = True
            rest = shape[1:]
            profile.set_shape(tensor.name, trt.Dims([options.min_batch, *rest]), trt.Dims([options.opt_batch, *rest]),
                              trt.Dims([options.max_batch, *rest]))
    if dynamic and config.add_optimization_profile(profile) < 0:
        raise EngineBuildError(f"TensorRT refused the batch profile {options.min_batch}/{options.opt_batch}/"
                               f"{options.max_batch}")


def _timing_cache(config: trt.IBuilderConfig, path: Path | None) -> None:
    blob = b""
    if path is not None and path.is_file():
        blob = path.read_bytes()
        log.info("timing cache %s: %d bytes", path, len(blob))
    cache = config.create_timing_cache(blob)
    if cache is None or not config.set_timing_cache(cache, False):
        if not blob:
            raise EngineBuildError("TensorRT could not create a timing cache")
        log.warning("timing cache %s does not match this TensorRT/GPU; starting a new one", path)
        config.set_timing_cache(config.create_timing_cache(b""), False)


def _save_timing_cache(config: trt.IBuilderConfig, path: Path | None) -> None:
    if path is None:
        return
    cache: trt.ITimingCache | None = config.get_timing_cache()  # None when the build used no cache
    if cache is None:
        return
    atomic_write_bytes(path, bytes(memoryview(cache.serialize())))
    log.info("timing cache saved to %s", path)


def _write_plan(serialized: trt.IHostMemory, path: Path) -> int:
    """The serialized engine, byte for byte, written atomically: no header is added."""
    view = memoryview(serialized)
    with atomic_path(path) as tmp, open(tmp, "xb") as fh:
        fh.write(view)
        fh.flush()
        os.fsync(fh.fileno())
    return view.nbytes


def _describe(engine: trt.ICudaEngine) -> tuple[dict[str, list[int | None]], dict[str, list[int | None]]]:
    import tensorrt as trt

    inputs: dict[str, list[int | None]] = {}
    outputs: dict[str, list[int | None]] = {}
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        dims = engine.get_tensor_shape(name)
        shape: list[int | None] = [int(dims[i]) if int(dims[i]) >= 0 else None for i in range(len(dims))]
        (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs)[name] = shape
    return inputs, outputs


def _compute_capability() -> str:
    from fgad.bundle import detect_compute_capability

    capability = detect_compute_capability()
    if capability is None:
        raise EngineBuildError(
            "cannot determine this GPU's compute capability, which the manifest must record for the engine: "
            "pip install cuda-python (or make nvidia-smi available)")
    return capability


def build_engine(
    onnx_path: str | os.PathLike[str], engine_path: str | os.PathLike[str], options: EngineBuildOptions
) -> EngineInfo:
    """Parse ``onnx_path``, build an engine as ``options`` say, write it to ``engine_path`` (plain plan, atomic).

    Raises :class:`TensorRTUnavailableError` when tensorrt is not installed, :class:`EngineBuildError` when a
    plugin library does not load, the parser rejects a node (the message names each node and operator) or the
    build fails, and FileNotFoundError for a missing graph or plugin library. Nothing is written on failure
    (the timing cache is only updated by a successful build).
    """
    source, target = Path(onnx_path), Path(engine_path)
    if not source.is_file():
        raise FileNotFoundError(f"ONNX graph {source} does not exist")
    if not tensorrt_installed():
        raise TensorRTUnavailableError(INSTALL_TENSORRT)
    try:
        import tensorrt as trt
    except ImportError as exc:  # installed but broken, e.g. libnvinfer not on the library path
        raise TensorRTUnavailableError(f"importing tensorrt failed ({exc}). {INSTALL_TENSORRT}") from exc
    from fgad.runtime.backends.trt import load_plugin_libraries

    capability = _compute_capability()
    version = str(trt.__version__)
    logger = _logger(options.verbose)
    try:
        plugins = load_plugin_libraries(trt.get_plugin_registry(), options.plugin_libraries)
    except RuntimeError as exc:
        raise EngineBuildError(str(exc)) from exc
    trt.init_libnvinfer_plugins(logger, "")

    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    _parse(parser, source, plugins)
    config = builder.create_builder_config()
    if options.workspace_gb is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_gb * _GIB))
    if options.optimization_level is not None:
        config.builder_optimization_level = options.optimization_level
    kept = _set_precision(network, config, options)
    _profile(builder, network, config, options)
    _timing_cache(config, options.timing_cache)
    if options.progress:
        config.progress_monitor = _progress_monitor()
    network_layers = network.num_layers
    log.info("building a TensorRT %s %s engine from %s (%d layers, %d kept fp32, batch %d..%d, GPU sm %s); "
             "this takes minutes", version, options.precision, source.name, network_layers, kept, options.min_batch,
             options.max_batch, capability)

    start = time.perf_counter()
    serialized: trt.IHostMemory | None = builder.build_serialized_network(network, config)  # None on failure
    seconds = time.perf_counter() - start
    if serialized is None:
        detail = "; ".join(getattr(logger, "errors", [])[-3:]) or "see the TensorRT log above"
        raise EngineBuildError(
            f"TensorRT could not build the {options.precision} engine from {source} ({detail}); common causes: the "
            "builder ran out of memory (on Jetson add swap, or lower --workspace), or a layer has no kernel for "
            "this precision (try --engine fp32 to tell them apart)")
    size = _write_plan(serialized, target)
    _save_timing_cache(config, options.timing_cache)
    del serialized, parser, network, config, builder  # free the builder's memory before deserializing

    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(target.read_bytes())
    if engine is None:
        raise EngineBuildError(f"the engine just written to {target} does not deserialize (see the TensorRT log)")
    inputs, outputs = _describe(engine)
    info = EngineInfo(
        path=target,
        tensorrt_version=version,
        compute_capability=capability,
        precision=options.precision,
        build_seconds=seconds,
        layers=int(engine.num_layers),
        network_layers=int(network_layers),
        engine_bytes=size,
        min_batch=options.min_batch,
        opt_batch=options.opt_batch,
        max_batch=options.max_batch,
        inputs=inputs,
        outputs=outputs,
        plugins=tuple(str(p) for p in plugins),
        timing_cache=str(options.timing_cache) if options.timing_cache else None,
    )
    log.info("engine %s: %d layers, %.1f MB, built in %.0f s", target, info.layers, size / 1e6, seconds)
    return info
