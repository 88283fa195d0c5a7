"""What every microbenchmark shares: timing, device peaks, result rows, tables, plots.

GPU timing: CUDA events around each call after a warm-up, median of repeats.
CPU timing: ``time.perf_counter`` likewise. Peaks come from NVIDIA datasheets
for known GPUs (``megavid.parallel.devices.GPU_PEAKS``, sources cited there) and
are measured on a CPU, where no datasheet applies.
"""

from __future__ import annotations

import functools
import statistics
import time
from dataclasses import dataclass, field

import torch

from megavid.parallel import devices

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class Report:
    """What one benchmark produced: rows, ratios, notes and plot series."""

    results: list[dict] = field(default_factory=list)
    ratios: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # plot name -> (title, x label, y label, {series label: [(x, y), ...]})
    plots: dict[str, tuple[str, str, str, dict[str, list]]] = field(default_factory=dict)

    def add_point(self, plot: str, series: str, x: float, y: float) -> None:
        self.plots[plot][3].setdefault(series, []).append((x, y))


@dataclass
class Context:
    """Where and how long to run: device, dtype, and the quick flag for CPU smoke runs."""

    device: torch.device
    dtype: torch.dtype
    quick: bool

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def time(self, fn, *, warmup: int | None = None, repeats: int | None = None) -> float:
        """Median seconds per call of ``fn()``."""
        warmup = warmup if warmup is not None else (5 if self.cuda else 1)
        repeats = repeats if repeats is not None else (20 if self.cuda else (3 if self.quick else 5))
        for _ in range(warmup):
            fn()
        if not self.cuda:
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            return statistics.median(times)
        torch.cuda.synchronize(self.device)
        events = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            events.append((start, end))
        torch.cuda.synchronize(self.device)
        return statistics.median(s.elapsed_time(e) for s, e in events) / 1e3

    def peak_tflops(self, dtype: torch.dtype | str) -> tuple[float | None, str]:
        """(dense peak TFLOP/s, source) for this device in ``dtype`` (None if unknown)."""
        if self.cuda:
            key = devices._match_gpu(torch.cuda.get_device_name(self.device))
            prec = dtype if isinstance(dtype, str) else {torch.float32: "fp32"}.get(dtype, "bf16")
            if key is None or devices.GPU_PEAKS[key].get(prec) is None:
                return None, "unknown device or precision"
            return devices.GPU_PEAKS[key][prec], f"{key} datasheet {prec}"
        dtype = DTYPES.get(dtype, torch.float32) if isinstance(dtype, str) else dtype
        return devices.measured_cpu_tflops(2048, dtype=dtype), f"measured square {dtype} matmul"

    def peak_gbs(self) -> tuple[float | None, str]:
        """(memory bandwidth GB/s, source) of this device."""
        if self.cuda:
            key = devices._match_gpu(torch.cuda.get_device_name(self.device))
            if key is None:
                return None, "unknown device"
            return devices.GPU_PEAKS[key]["hbm_gbs"], f"{key} datasheet HBM"
        return measured_cpu_gbs(), "measured fp32 copy"


@functools.lru_cache(maxsize=None)
def measured_cpu_gbs(numel: int = 1 << 24) -> float:
    """Best-of-5 copy bandwidth (read + write) of a 64 MiB fp32 buffer, GB/s.

    This is DRAM bandwidth: a benchmark whose data fits in the CPU's caches can
    exceed it, so "% peak" above 100 on CPU means "ran from cache".
    """
    src, dst = torch.randn(numel), torch.empty(numel)
    dst.copy_(src)
    best = min(_seconds(lambda: dst.copy_(src)) for _ in range(5))
    return 2 * numel * 4 / best / 1e9


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def throughput_row(
    ctx: Context, name: str, seconds: float, *, flops: float | None = None,
    nbytes: float | None = None, peak_dtype: torch.dtype | str | None = None, **params,
) -> dict:
    """A results row in TFLOP/s (given ``flops``) or GB/s (given ``nbytes``), with % of peak."""
    if flops is not None:
        value, unit = flops / seconds / 1e12, "TFLOP/s"
        peak, source = ctx.peak_tflops(peak_dtype or ctx.dtype)
    else:
        value, unit = nbytes / seconds / 1e9, "GB/s"
        peak, source = ctx.peak_gbs()
    row = {"name": name, "value": round(value, 4), "unit": unit, "time_ms": round(seconds * 1e3, 4)}
    if peak:
        row["frac_peak"] = round(value / peak, 4)
        row["peak_source"] = source
    if params:
        row["params"] = params
    return row


def element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()
