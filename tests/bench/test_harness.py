"""The benchmark timing loop, stage timers and device/peak records (fgad.bench.harness, .stages, .device)."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from fgad.bench.device import cpu_info, cpu_peak, device_record, git_commit, gpu_peak, peak_for
from fgad.bench.harness import HarnessSettings, PeakMemory, batches, measure, summarize
from fgad.bench.stages import STAGES, StageTimer, detector_stage_ms

# ------------------------------------------------------------------ statistics


def test_summarize_percentiles_by_hand() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # 1..100, unsorted
    s = summarize(values)
    # linear interpolation between order statistics: rank q * (n - 1) = 49.5, 89.1, 98.01 (0-based)
    assert s["median"] == pytest.approx(50.5)
    assert s["p90"] == pytest.approx(90.1)
    assert s["p99"] == pytest.approx(99.01)
    assert (s["min"], s["max"], s["n"]) == (1.0, 100.0, 100)
    assert s["mean"] == pytest.approx(50.5)
    assert summarize([])["median"] is None


def test_settings_and_batches() -> None:
    settings = HarnessSettings(frames=5, warmup=0, batch=2)
    assert settings.calls == 3
    frames = [Path("a"), Path("b")]
    assert batches(frames, settings) == [[Path("a"), Path("b")], [Path("a"), Path("b")], [Path("a"), Path("b")]]
    assert batches(frames, HarnessSettings(frames=3, batch=1)) == [[Path("a")], [Path("b")], [Path("a")]]
    with pytest.raises(ValueError, match="frames"):
        HarnessSettings(frames=0)
    with pytest.raises(ValueError, match="no frames"):
        batches([], settings)


# ------------------------------------------------------------------ the loop


class _Sleeper:
    """A runner that sleeps ``seconds`` per call, split over two stages, and logs its calls."""

    device = "cpu"

    def __init__(self, name: str, seconds: float, log: list[str], fail_on: int | None = None) -> None:
        self.name, self.seconds, self.log, self.fail_on = name, seconds, log, fail_on
        self.calls = 0

    def __call__(self, frames: Sequence[Path]) -> tuple[list[float], dict[str, float]]:
        self.calls += 1
        self.log.append(self.name)
        if self.fail_on is not None and self.calls >= self.fail_on:
            raise RuntimeError(f"{self.name} broke\nsecond line")
        timer = StageTimer()
        with timer("engine"):
            time.sleep(self.seconds)
        timer.add("post", 1.0)
        return [float(len(frames))] * len(frames), timer.ms


def test_measure_interleaves_and_times() -> None:
    log: list[str] = []
    slow, fast = _Sleeper("slow", 0.02, log), _Sleeper("fast", 0.002, log)
    settings = HarnessSettings(frames=4, warmup=2, batch=2)
    out = measure({"slow": slow, "fast": fast}, [Path("x.png")], settings, progress=False)
    assert slow.calls == fast.calls == 2 + 2  # warm-up + timed calls
    assert log[4:] == ["slow", "fast", "slow", "fast"]  # timed calls take turns on the same batch
    m = out["slow"]
    assert m.error is None and len(m.latency_ms) == 2 and m.frames == 4
    assert min(m.latency_ms) >= 20.0
    assert min(m.stages_ms["engine"]) >= 20.0 and m.stages_ms["post"] == [1.0, 1.0]
    assert m.scores == [2.0] * 4
    summary = m.summary()
    assert summary["fps"] == pytest.approx(4 / (sum(m.latency_ms) / 1000))
    assert summary["latency_ms"]["median"] > out["fast"].summary()["latency_ms"]["median"]
    assert m.first_call_ms is not None and m.peak_rss_mb and m.peak_rss_mb > 0


def test_a_failing_runner_is_recorded_and_the_others_go_on() -> None:
    log: list[str] = []
    good, bad = _Sleeper("good", 0.0, log), _Sleeper("bad", 0.0, log, fail_on=3)
    out = measure({"good": good, "bad": bad}, [Path("x")], HarnessSettings(frames=4, warmup=1), progress=False)
    assert out["bad"].error is not None and "bad broke" in out["bad"].error and "second line" not in out["bad"].error
    assert out["bad"].summary() == {"error": out["bad"].error}
    assert len(out["good"].latency_ms) == 4
    early = measure({"bad": _Sleeper("bad", 0.0, [], fail_on=1)}, [Path("x")], HarnessSettings(frames=1, warmup=1),
                    progress=False)
    assert early["bad"].error is not None and early["bad"].error.startswith("failed during warm-up")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the per-configuration RSS reset is Linux-only")
def test_peak_memory_resets_and_sees_an_allocation() -> None:
    memory = PeakMemory()
    if not memory.resettable:
        pytest.skip("/proc/self/clear_refs is not writable here (restricted /proc)")
    memory.reset()
    before = memory.peak_mb()
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
    during = memory.peak_mb()
    del block
    memory.reset()
    after = memory.peak_mb()
    assert during - before > 50
    assert after < during - 50


# ------------------------------------------------------------------ stages


def test_stage_timer() -> None:
    synced: list[int] = []
    timer = StageTimer(sync=lambda: synced.append(1))
    with timer("decode"):
        time.sleep(0.005)
    timer.add("decode", 1.0)
    assert timer.ms["decode"] >= 6.0
    assert len(synced) == 2
    with pytest.raises(ValueError, match="unknown stage"):
        with timer("nonsense"):
            pass
    assert set(timer.reset()) == {"decode"} and timer.ms == {}
    assert STAGES[0] == "decode" and STAGES[-1] == "overlay"


def test_detector_stage_ms_sums_a_batch() -> None:
    per_image = {"preprocess": 1.0, "engine": 10.0}
    assert detector_stage_ms([per_image, per_image, per_image]) == {"preprocess": 3.0, "engine": 30.0}


# ------------------------------------------------------------------ device and peaks

_CPUINFO = """processor\t: 0
vendor_id\t: {vendor}
cpu family\t: {family}
model name\t: Test CPU
cpu MHz\t\t: 2000.000
flags\t\t: fpu sse2 {flags}

processor\t: 1
vendor_id\t: ignored
"""


@pytest.mark.parametrize(
    ("vendor", "family", "flags", "per_cycle"),
    [
        ("GenuineIntel", 6, "avx2 fma avx512f", 2 * 16 * 2),
        ("AuthenticAMD", 25, "avx2 fma avx512f", 2 * 8 * 2),  # Zen 4: 512-bit work in two halves
        ("AuthenticAMD", 26, "avx2 fma avx512f", 2 * 16 * 2),
        ("GenuineIntel", 6, "avx2 fma", 2 * 8 * 2),
        ("GenuineIntel", 6, "", 2 * 4 * 2),
    ],
)
def test_cpu_peak_assumption(vendor: str, family: int, flags: str, per_cycle: int) -> None:
    cpu = cpu_info(_CPUINFO.format(vendor=vendor, family=family, flags=flags), cores=4)
    assert (cpu.model, cpu.vendor, cpu.cores, cpu.mhz) == ("Test CPU", vendor, 4, 2000.0)
    peak = cpu_peak(cpu, "fp32")
    assert peak.flops_per_s == pytest.approx(4 * 2.0e9 * per_cycle)
    assert "assumption" in peak.source and str(per_cycle) in peak.source


def test_cpu_int8_and_fp16_peaks() -> None:
    vnni = cpu_info(_CPUINFO.format(vendor="GenuineIntel", family=6, flags="avx2 fma avx512f avx512_vnni"), cores=1)
    plain = cpu_info(_CPUINFO.format(vendor="GenuineIntel", family=6, flags="avx2 fma"), cores=1)
    assert cpu_peak(vnni, "int8").flops_per_s == pytest.approx(4 * cpu_peak(vnni, "fp32").flops_per_s)
    assert cpu_peak(plain, "int8").flops_per_s == pytest.approx(2 * cpu_peak(plain, "fp32").flops_per_s)
    assert cpu_peak(plain, "fp16").flops_per_s is None
    with pytest.raises(ValueError, match="precision"):
        cpu_peak(plain, "fp8")
    no_clock = cpu_info("model name\t: X\n", cores=1)
    assert cpu_peak(no_clock, "fp32").flops_per_s is None


def test_gpu_peak_table_matches_specific_names_first() -> None:
    pcie, sxm = gpu_peak("NVIDIA H100 PCIe", "fp32"), gpu_peak("NVIDIA H100 80GB HBM3", "fp32")
    assert pcie.flops_per_s is not None and sxm.flops_per_s is not None
    assert pcie.flops_per_s < sxm.flops_per_s and "PCIe" in pcie.source
    for name in ("NVIDIA H200", "Orin", "NVIDIA Thor"):
        fp32, fp16, int8 = (gpu_peak(name, p).flops_per_s for p in ("fp32", "fp16", "int8"))
        assert fp32 and fp16 and int8 and fp32 < fp16 < int8
    unknown = gpu_peak("Some GPU", "fp32")
    assert unknown.flops_per_s is None and "--peak-tflops" in unknown.source


def test_device_record_and_override() -> None:
    record = device_record("cpu")
    assert record["target"] == "cpu" and record["cpu"]["cores"] >= 1
    assert record["libraries"]["numpy"] == np.__version__
    assert peak_for(record, "fp32", override_tflops=2.5).flops_per_s == pytest.approx(2.5e12)
    cpu = cpu_info(_CPUINFO.format(vendor="GenuineIntel", family=6, flags="avx2 fma"), cores=2)
    assert peak_for(record, "fp32", cpu=cpu).flops_per_s == pytest.approx(2 * 2.0e9 * 32)


def test_git_commit_of_this_checkout() -> None:
    info = git_commit(Path(__file__).parent)
    if info["commit"] is None:
        pytest.skip("not a git checkout (source distribution)")
    assert re.fullmatch(r"[0-9a-f]{40}", info["commit"]) and isinstance(info["dirty"], bool)


def test_bf16_peaks() -> None:
    """bf16 runs at the fp16 tensor-core rate on the GPUs of the table; on a CPU only with AVX512-BF16."""
    h200 = gpu_peak("NVIDIA H200", "bf16")
    assert h200.flops_per_s == pytest.approx(989e12) == gpu_peak("NVIDIA H200", "fp16").flops_per_s
    plain = cpu_info(_CPUINFO.format(vendor="GenuineIntel", family=6, flags="avx2 fma avx512f"), cores=1)
    amx = cpu_info(_CPUINFO.format(vendor="GenuineIntel", family=6, flags="avx2 fma avx512f avx512_bf16"), cores=1)
    assert cpu_peak(plain, "bf16").flops_per_s is None and "AVX512-BF16" in cpu_peak(plain, "bf16").source
    assert cpu_peak(amx, "bf16").flops_per_s == pytest.approx(2 * cpu_peak(amx, "fp32").flops_per_s)


def test_plan_rows_bf16_and_compile_precisions() -> None:
    from fgad.bench.benchmark import BenchSpec, plan_rows

    spec = BenchSpec(config="tiny-test", backends=("torch", "ort"), precisions=("fp32", "fp16", "bf16"),
                     compile_precisions=("fp16",))
    rows = {r.key: r for r in plan_rows(spec, "cuda")}
    assert rows["torch-eager-bf16"].reason is None and rows["torch-eager-fp16"].reason is None
    assert "torch-compile-fp16" in rows and "torch-compile-fp32" not in rows and "torch-compile-bf16" not in rows
    assert "PyTorch only" in (rows["ort-session-bf16"].reason or "")
    cpu_rows = {r.key: r for r in plan_rows(spec, "cpu")}
    assert cpu_rows["torch-eager-bf16"].reason is None  # bf16 autocast runs on the CPU too
    assert "CUDA only" in (cpu_rows["torch-eager-fp16"].reason or "")
    with pytest.raises(ValueError, match="not among --precisions"):
        BenchSpec(config="tiny-test", precisions=("fp32",), compile_precisions=("fp16",))
