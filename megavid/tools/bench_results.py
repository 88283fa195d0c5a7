"""One JSON results format for every benchmark in megavid.

A results file is a JSON object::

    {"benchmark": "kernels.gemm",             # what ran
     "machine": {...},                          # machine_info(): where it ran
     "results": [{"name": ..., "value": 1.0, "unit": "TFLOP/s", ...extra keys}],
     "ratios": {"flash_vs_math": 3.1},          # named ratios vs a peer/baseline; may be empty
     "notes": ["te: skipped (not importable)"]} # optional: what did not run, and why

Keeping every benchmark in one shape lets a single script compare runs across
machines and commits. ``benchmarks/README.md`` documents the fields.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import os
import platform
from pathlib import Path

import torch

# Distribution names whose versions a results file records, by short key.
_VERSIONED = {
    "torch": ("torch",),
    "triton": ("triton", "pytorch-triton"),
    "megatron_core": ("megatron-core", "megatron_core"),
    "transformer_engine": ("transformer-engine", "transformer_engine"),
    "dali": ("nvidia-dali-cuda130", "nvidia-dali-cuda120", "nvidia-dali-cuda110", "nvidia-dali"),
    "av": ("av",),
}
REQUIRED_KEYS = ("benchmark", "machine", "results", "ratios")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dists: tuple[str, ...]) -> str | None:
    for dist in dists:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def machine_info() -> dict:
    """CPU, GPU and library versions of this process (absent libraries are left out)."""
    info = {
        "hostname": platform.node(),
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": (
            len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_count"] = torch.cuda.device_count()
        info["cuda"] = torch.version.cuda
    versions = {key: _version(dists) for key, dists in _VERSIONED.items()}
    info["versions"] = {key: v for key, v in versions.items() if v is not None}
    return info


def validate_results(obj: dict) -> None:
    """Raise ValueError naming the first field that breaks the format."""
    if not isinstance(obj, dict):
        raise ValueError(f"results file must be a JSON object, got {type(obj).__name__}")
    missing = [key for key in REQUIRED_KEYS if key not in obj]
    if missing:
        raise ValueError(f"results file: missing keys {missing}")
    if not isinstance(obj["benchmark"], str) or not obj["benchmark"]:
        raise ValueError("results file: 'benchmark' must be a non-empty string")
    if not isinstance(obj["machine"], dict):
        raise ValueError("results file: 'machine' must be an object (machine_info())")
    if not isinstance(obj["results"], list):
        raise ValueError("results file: 'results' must be a list")
    for i, row in enumerate(obj["results"]):
        if not isinstance(row, dict) or not {"name", "value", "unit"} <= row.keys():
            raise ValueError(f"results[{i}]: needs 'name', 'value' and 'unit', got {row!r}")
        if not isinstance(row["name"], str) or not isinstance(row["unit"], str):
            raise ValueError(f"results[{i}]: 'name' and 'unit' must be strings")
        _check_number(row["value"], f"results[{i}] ({row['name']}).value")
    if not isinstance(obj["ratios"], dict):
        raise ValueError("results file: 'ratios' must be an object (may be empty)")
    for key, value in obj["ratios"].items():
        _check_number(value, f"ratios.{key}")
    if not isinstance(obj.get("notes", []), list):
        raise ValueError("results file: 'notes' must be a list of strings")


def _check_number(value, where: str) -> None:
    # bool is an int in Python, and NaN/inf are not valid JSON: both are mistakes here.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where} must be a finite number, got {value!r}")


def make_results(
    benchmark: str,
    results: list[dict],
    ratios: dict | None = None,
    *,
    notes: list[str] | None = None,
    extra: dict | None = None,
) -> dict:
    """The results object, validated, with this machine's info and a UTC timestamp.

    ``extra``: further top-level keys (a benchmark's settings, say); they may
    not replace the standard ones.
    """
    clash = set(extra or {}) & {*REQUIRED_KEYS, "notes", "created_utc"}
    if clash:
        raise ValueError(f"extra keys {sorted(clash)} would replace standard ones")
    obj = {
        "benchmark": benchmark,
        "machine": machine_info(),
        "results": list(results),
        "ratios": dict(ratios or {}),
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if notes:
        obj["notes"] = list(notes)
    obj.update(extra or {})
    validate_results(obj)
    return obj


def write_results(path: str | os.PathLike, benchmark: str, results: list[dict],
                  ratios: dict | None = None, **kwargs) -> dict:
    """``make_results`` (same arguments), validated and written; returns the object."""
    obj = make_results(benchmark, results, ratios, **kwargs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    return obj


def read_results(path: str | os.PathLike) -> dict:
    """Load and validate a results file."""
    obj = json.loads(Path(path).read_text())
    validate_results(obj)
    return obj
