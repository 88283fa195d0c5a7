"""Peak throughput of the devices MFU is quoted against.

GPU numbers are NVIDIA datasheet dense (no sparsity) tensor-core peaks; on a
CPU the peak is measured (a large fp32 matmul), since no datasheet applies.
"""

from __future__ import annotations

import functools
import time

import torch

# TFLOP/s dense, by precision; HBM bandwidth in GB/s. For the planner (megavid.plan):
# memory_gb (HBM), nvlink_gbs (NVLink bandwidth per GPU per direction, GB/s),
# ib_gbs (scale-out per GPU per direction: one NIC per GPU, GB/s), gpus_per_node
# (the NVLink domain of an HGX board).
GPU_PEAKS = {
    # H100 SXM5 datasheet: 989 TF BF16, 1979 TF FP8, 3.35 TB/s; 80 GB; NVLink4 900 GB/s
    # total (450 per direction); DGX H100: 8 x ConnectX-7 400 Gb/s NDR = 50 GB/s per GPU.
    "H100 SXM": {"bf16": 989.0, "fp8": 1979.0, "fp32": 494.0, "hbm_gbs": 3350.0,
                 "memory_gb": 80.0, "nvlink_gbs": 450.0, "ib_gbs": 50.0, "gpus_per_node": 8},
    # H100 PCIe: 756 TF BF16, 1513 TF FP8, 2.0 TB/s; 80 GB; NVLink bridge 600 GB/s total
    # between pairs only, so the planner treats PCIe Gen5 (64 GB/s) as the node fabric.
    "H100 PCIe": {"bf16": 756.0, "fp8": 1513.0, "fp32": 378.0, "hbm_gbs": 2000.0,
                  "memory_gb": 80.0, "nvlink_gbs": 64.0, "ib_gbs": 50.0, "gpus_per_node": 8},
    # H200 SXM: same tensor cores as H100 SXM, 4.8 TB/s HBM3e, 141 GB.
    "H200": {"bf16": 989.0, "fp8": 1979.0, "fp32": 494.0, "hbm_gbs": 4800.0,
             "memory_gb": 141.0, "nvlink_gbs": 450.0, "ib_gbs": 50.0, "gpus_per_node": 8},
    # A100 SXM 80GB: 312 TF BF16, 156 TF TF32, 2.0 TB/s; no FP8; NVLink3 600 GB/s total;
    # DGX A100: 8 x 200 Gb/s HDR = 25 GB/s per GPU.
    "A100": {"bf16": 312.0, "fp8": None, "fp32": 156.0, "hbm_gbs": 2039.0,
             "memory_gb": 80.0, "nvlink_gbs": 300.0, "ib_gbs": 25.0, "gpus_per_node": 8},
    # B200 (HGX): 2250 TF BF16, 4500 TF FP8 dense, 8 TB/s; 180 GB; NVLink5 1.8 TB/s total.
    "B200": {"bf16": 2250.0, "fp8": 4500.0, "fp32": 1100.0, "hbm_gbs": 8000.0,
             "memory_gb": 180.0, "nvlink_gbs": 900.0, "ib_gbs": 50.0, "gpus_per_node": 8},
}

# Command-line names (``--gpu``) of the rows above.
GPU_ALIASES = {
    "h100-80gb": "H100 SXM", "h100": "H100 SXM", "h100-sxm": "H100 SXM",
    "h100-pcie": "H100 PCIe", "h200": "H200", "h200-141gb": "H200",
    "a100-80gb": "A100", "a100": "A100", "b200": "B200",
}


def gpu_spec(name: str) -> dict:
    """The GPU_PEAKS row for a command-line alias or a row name."""
    key = GPU_ALIASES.get(name.lower(), name)
    if key not in GPU_PEAKS:
        raise ValueError(f"unknown GPU {name!r}; choose one of {', '.join(GPU_ALIASES)}")
    return {"name": key, **GPU_PEAKS[key]}


def _match_gpu(name: str) -> str | None:
    lowered = name.lower()
    for key in GPU_PEAKS:
        model, *variant = key.lower().split()
        if model in lowered and all(v in lowered for v in variant):
            return key
    for key in GPU_PEAKS:  # "H100 80GB HBM3" is the SXM part
        if key.split()[0].lower() in lowered:
            return key
    return None


@functools.lru_cache(maxsize=None)
def measured_cpu_tflops(size: int = 1024, repeats: int = 5, dtype: torch.dtype = torch.float32,
                        budget_s: float = 3.0) -> float:
    """Best-of-``repeats`` square matmul throughput of this process's CPU threads, TFLOP/s.

    A dtype the CPU has no fast kernels for (bf16 on an AVX2-only CPU runs some 70x slower
    than fp32) would take minutes at full size, so ``size`` halves until the timed products
    fit in about ``budget_s``; a fast dtype is measured at ``size`` as asked.
    """
    def seconds(a, b) -> float:
        start = time.perf_counter()
        torch.mm(a, b)
        return time.perf_counter() - start

    probe = torch.randn(256, 256, dtype=dtype)
    seconds(probe, probe)  # warm-up
    rate = 2 * 256**3 / max(seconds(probe, probe), 1e-9)  # FLOP/s, roughly
    while size > 256 and 2 * size**3 / rate * (repeats + 1) > budget_s:
        size //= 2
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    seconds(a, b)  # warm-up
    best = min(seconds(a, b) for _ in range(repeats))
    return 2 * size**3 / best / 1e12


def peak_tflops(precision: str) -> tuple[float, str]:
    """(peak TFLOP/s per device, where the number came from) for this machine."""
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        key = _match_gpu(name)
        if key is None:
            return float("nan"), f"{name} (not in megavid.parallel.devices.GPU_PEAKS)"
        prec = "fp8" if precision == "fp8" else ("fp32" if precision == "fp32" else "bf16")
        return GPU_PEAKS[key][prec] or float("nan"), f"{key} datasheet {prec}"
    return measured_cpu_tflops(), "CPU fp32 matmul, measured"
