"""The machine a benchmark ran on, and the peak FLOP/s its timings are compared with.

Everything here is read without importing torch (library versions come from the installed
distributions' metadata, the GPU from ``nvidia-smi``); CUDA details that only torch knows are added
when torch is already imported by the caller.

Peak figures are **assumptions**, stated with every result:

* **CPU**: ``cores x clock x FLOPs per cycle per core``. Cores: the CPUs this process may run on.
  Clock: ``/proc/cpuinfo``'s current "cpu MHz" (under a hypervisor, the nominal clock; turbo is not
  counted). FLOPs per cycle (fp32): 2 FMA pipes x SIMD lanes x 2, with 16 lanes for AVX-512 on Intel and
  on AMD Zen 5 (family 26), 8 lanes for AVX2 and for AMD Zen 4 (family 25, which splits 512-bit work into
  two 256-bit halves), 4 lanes otherwise. int8 (VNNI dot products): 4x fp32 with AVX-512 VNNI/AVX-VNNI,
  2x without. fp16: 2x fp32 only with AVX512-FP16, otherwise no peak (fp16 is not a CPU deployment target).
* **GPU**: :data:`GPU_PEAKS`, dense (no structured sparsity) figures from NVIDIA's datasheets; fp32 is the
  CUDA-core rate (PyTorch keeps TF32 off for matmul by default), fp16, bf16 and int8 the tensor-core rates
  (bf16 = fp16 on Ampere, Hopper and later tensor cores; the H200 SXM datasheet: 67 TFLOPS FP32,
  1,979 TFLOPS FP16/BF16 and 3,958 TOPS INT8 *with sparsity*, so 989 / 989 / 1,979 dense).
  bf16 has no CPU peak unless the CPU has AVX512-BF16 (then 2x fp32).
  Entries marked "estimate" are derived, not published; check them against the module's datasheet.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "GPU_PEAKS",
    "LIBRARIES",
    "CpuInfo",
    "GpuInfo",
    "PeakSpec",
    "cpu_info",
    "cpu_peak",
    "device_record",
    "git_commit",
    "gpu_info",
    "gpu_peak",
    "library_versions",
    "peak_for",
]

#: distributions whose versions are recorded with every result (missing ones are reported as None)
LIBRARIES = (
    "fgad", "numpy", "onnxruntime", "onnxruntime-gpu", "onnx", "torch", "open_clip_torch", "opencv-python-headless",
    "faiss-cpu", "faiss-gpu", "tensorrt", "matplotlib",
)

_TFLOPS = 1e12
_H100_SXM = "NVIDIA H100 SXM5 datasheet (dense: half the sparsity figures)"
_H100_PCIE = "NVIDIA H100 PCIe datasheet (dense: half the sparsity figures)"
_NVL = "NVIDIA H100 NVL / H200 NVL datasheet (dense: half the sparsity figures)"
_H200 = "NVIDIA H200 SXM datasheet (dense: half the sparsity figures)"
_ORIN = ("NVIDIA Jetson AGX Orin 64GB technical brief: 5.3 FP32 TFLOPS, 170 sparse INT8 TOPS (GPU); "
         "dense INT8 = 170 / 2, dense FP16 = dense INT8 / 2 (Ampere tensor cores) - estimate")
_THOR = ("estimate from NVIDIA Jetson AGX Thor T5000 figures: 2560 CUDA cores at 1.57 GHz (FP32 = 2 x cores x "
         "clock); 2070 sparse FP4 TFLOPS, halved for dense and per precision step (FP8/INT8, FP16) - check the "
         "datasheet")

#: GPU name pattern -> precision -> (peak FLOP/s, source). Patterns are tried in order (specific ones first).
GPU_PEAKS: dict[str, dict[str, tuple[float, str]]] = {
    "H100 PCIe": {"fp32": (51 * _TFLOPS, _H100_PCIE), "fp16": (756 * _TFLOPS, _H100_PCIE),
                  "int8": (1513 * _TFLOPS, _H100_PCIE)},
    "H100 NVL": {"fp32": (60 * _TFLOPS, _NVL), "fp16": (835 * _TFLOPS, _NVL), "int8": (1670 * _TFLOPS, _NVL)},
    "H200 NVL": {"fp32": (60 * _TFLOPS, _NVL), "fp16": (835 * _TFLOPS, _NVL), "int8": (1670 * _TFLOPS, _NVL)},
    "H100": {"fp32": (67 * _TFLOPS, _H100_SXM), "fp16": (989 * _TFLOPS, _H100_SXM),
             "int8": (1979 * _TFLOPS, _H100_SXM)},
    "H200": {"fp32": (67 * _TFLOPS, _H200), "fp16": (989 * _TFLOPS, _H200), "int8": (1979 * _TFLOPS, _H200)},
    "Orin": {"fp32": (5.3 * _TFLOPS, _ORIN), "fp16": (42.5 * _TFLOPS, _ORIN), "int8": (85 * _TFLOPS, _ORIN)},
    "Thor": {"fp32": (8.0 * _TFLOPS, _THOR), "fp16": (259 * _TFLOPS, _THOR), "int8": (517 * _TFLOPS, _THOR)},
}
for _table in GPU_PEAKS.values():  # the tensor cores' bf16 rate is their fp16 rate on every GPU above
    _table["bf16"] = _table["fp16"]


@dataclass(frozen=True)
class PeakSpec:
    """The peak a measured rate is compared with, and where that number comes from."""

    device: str
    precision: str
    flops_per_s: float | None
    source: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CpuInfo:
    model: str
    vendor: str
    family: int | None
    cores: int  # CPUs this process may use
    mhz: float | None
    flags: frozenset[str] = field(default_factory=frozenset, repr=False)

    @property
    def simd(self) -> str:
        if "avx512f" in self.flags:
            return "avx512"
        if "avx2" in self.flags and "fma" in self.flags:
            return "avx2"
        return "sse"

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "vendor": self.vendor, "family": self.family, "cores": self.cores,
                "mhz": self.mhz, "simd": self.simd,
                "vnni": bool({"avx512_vnni", "avx_vnni"} & self.flags), "avx512_fp16": "avx512_fp16" in self.flags}


@dataclass(frozen=True)
class GpuInfo:
    name: str
    driver: str | None
    memory_mb: int | None
    compute_capability: str | None = None
    cuda: str | None = None
    cudnn: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cpuinfo_fields(text: str) -> dict[str, str]:
    """The first processor's ``key: value`` lines of /proc/cpuinfo."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if out:
                break
            continue
        key, _, value = line.partition(":")
        out.setdefault(key.strip(), value.strip())
    return out


def cpu_info(cpuinfo_text: str | None = None, cores: int | None = None) -> CpuInfo:
    """This machine's CPU (or the one described by ``cpuinfo_text``, for tests)."""
    if cpuinfo_text is None:
        path = Path("/proc/cpuinfo")
        cpuinfo_text = path.read_text() if path.is_file() else ""
    fields = _cpuinfo_fields(cpuinfo_text)
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        mhz: float | None = float(fields["cpu MHz"])
    except (KeyError, ValueError):
        mhz = None
    try:
        family: int | None = int(fields["cpu family"])
    except (KeyError, ValueError):
        family = None
    return CpuInfo(
        model=fields.get("model name") or platform.processor() or platform.machine(),
        vendor=fields.get("vendor_id", ""),
        family=family,
        cores=int(cores),
        mhz=mhz,
        flags=frozenset(fields.get("flags", "").split()),
    )


def _fp32_per_cycle(cpu: CpuInfo) -> tuple[int, str]:
    lanes = {"avx512": 16, "avx2": 8, "sse": 4}[cpu.simd]
    why = f"2 FMA pipes x {lanes} fp32 lanes ({cpu.simd}) x 2"
    if cpu.simd == "avx512" and cpu.vendor == "AuthenticAMD" and (cpu.family or 0) < 26:
        lanes, why = 8, "2 FMA pipes x 8 fp32 lanes (AMD Zen 4 runs AVX-512 as two 256-bit halves) x 2"
    return 2 * lanes * 2, why


def cpu_peak(cpu: CpuInfo, precision: str) -> PeakSpec:
    """The assumed CPU peak for ``precision`` (see the module docstring: an estimate, not a measurement)."""
    name = f"CPU {cpu.model} x {cpu.cores}"
    if cpu.mhz is None:
        return PeakSpec(name, precision, None, "unknown clock (no 'cpu MHz' in /proc/cpuinfo): pass --peak-tflops")
    per_cycle, why = _fp32_per_cycle(cpu)
    factor, note = 1, ""
    if precision == "int8":
        factor = 4 if {"avx512_vnni", "avx_vnni"} & cpu.flags else 2
        note = f"; int8 = {factor}x fp32 ({'VNNI' if factor == 4 else 'no VNNI'})"
    elif precision == "fp16":
        if "avx512_fp16" not in cpu.flags:
            return PeakSpec(name, precision, None, "no AVX512-FP16: fp16 has no CPU peak here")
        factor, note = 2, "; fp16 = 2x fp32 (AVX512-FP16)"
    elif precision == "bf16":
        if "avx512_bf16" not in cpu.flags:
            return PeakSpec(name, precision, None, "no AVX512-BF16: bf16 has no CPU peak here")
        factor, note = 2, "; bf16 = 2x fp32 (AVX512-BF16 dot products)"
    elif precision != "fp32":
        raise ValueError(f"precision must be fp32, fp16, bf16 or int8, got {precision!r}")
    peak = cpu.cores * cpu.mhz * 1e6 * per_cycle * factor
    source = (f"assumption: {cpu.cores} cores x {cpu.mhz / 1000:.2f} GHz x {per_cycle} fp32 FLOPs/cycle "
              f"[{why}]{note}")
    return PeakSpec(name, precision, peak, source)


def gpu_peak(name: str, precision: str) -> PeakSpec:
    """The datasheet peak of a GPU named like ``name`` (e.g. 'NVIDIA H100 80GB HBM3') for ``precision``."""
    for pattern, table in GPU_PEAKS.items():
        if pattern.lower() in name.lower():
            if precision not in table:
                return PeakSpec(name, precision, None, f"no {precision} peak in the table for {pattern}")
            value, source = table[precision]
            return PeakSpec(name, precision, value, f"{pattern}: {source}")
    return PeakSpec(name, precision, None, f"GPU '{name}' is not in fgad.bench.device.GPU_PEAKS: pass --peak-tflops")


def peak_for(
    device: dict[str, Any], precision: str, override_tflops: float | None = None, cpu: CpuInfo | None = None
) -> PeakSpec:
    """The peak for a :func:`device_record` and precision; ``override_tflops`` replaces the table/estimate.

    ``cpu``: the CPU to assume when the work runs on the CPU (default: this machine's).
    """
    gpu = device.get("gpu")
    gpu_name = str(gpu["name"]) if device.get("target") == "cuda" and gpu else None
    label = gpu_name or f"CPU {device['cpu']['model']} x {device['cpu']['cores']}"
    if override_tflops is not None:
        return PeakSpec(label, precision, override_tflops * _TFLOPS, "given with --peak-tflops")
    if gpu_name:
        return gpu_peak(gpu_name, precision)
    return cpu_peak(cpu or cpu_info(), precision)


def gpu_info() -> GpuInfo | None:
    """The first NVIDIA GPU from ``nvidia-smi`` (None without one), plus CUDA details if torch is imported."""
    name = driver = None
    memory: int | None = None
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=20, check=True,
            ).stdout.strip().splitlines()
        except (OSError, subprocess.SubprocessError):
            out = []
        if out:
            parts = [p.strip() for p in out[0].split(",")]
            name, driver = parts[0], parts[1] if len(parts) > 1 else None
            memory = int(float(parts[2])) if len(parts) > 2 and re.fullmatch(r"[\d.]+", parts[2]) else None
    torch = sys.modules.get("torch")
    cc = cuda = cudnn = None
    if torch is not None and torch.cuda.is_available():
        name = name or torch.cuda.get_device_name(0)
        major, minor = torch.cuda.get_device_capability(0)
        cc, cuda = f"{major}.{minor}", torch.version.cuda
        cudnn = str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else None
        if memory is None:
            memory = int(torch.cuda.get_device_properties(0).total_memory // 2**20)
    if name is None:
        return None
    return GpuInfo(name=name, driver=driver, memory_mb=memory, compute_capability=cc, cuda=cuda, cudnn=cudnn)


def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str | None]:
    """Installed versions from distribution metadata (no imports); None when not installed."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the git checkout around ``path`` (default: cwd)."""
    cwd = os.fspath(path) if path is not None else None
    if not shutil.which("git"):
        return {"commit": None, "dirty": None}
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=20,
                             check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": sha or None, "dirty": bool(status.strip())}


def device_record(target: str = "cpu") -> dict[str, Any]:
    """OS, CPU, GPU and library versions; ``target`` is where the timed work runs ("cpu" or "cuda")."""
    cpu = cpu_info()
    gpu = gpu_info()
    return {
        "target": target,
        "os": platform.system(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu": cpu.to_dict(),
        "gpu": gpu.to_dict() if gpu else None,
        "libraries": library_versions(),
    }
