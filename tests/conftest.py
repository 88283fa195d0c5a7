"""Shared test helpers: run megavid in real gloo processes, skip GPU tests without CUDA."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megavid import quiet

REPO = Path(__file__).resolve().parents[1]

if not torch.cuda.is_available():
    # Triton reads this when first imported (megatron.core imports it): set it before any
    # test module imports megatron, so the kernel tests can run in the CPU interpreter.
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config):
    # pytest restores the warning filters after each test and collected module, so the ones
    # megavid installs on import would not outlive the first; give pytest the same list
    cpu = () if torch.cuda.is_available() else quiet.CPU_ONLY_NOISE
    for message, category, _ in quiet.KNOWN_NOISE + cpu:
        config.addinivalue_line("filterwarnings", f"ignore:{message}:{category.__name__}")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA: run `pytest -m gpu` on a GPU node")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def subprocess_env() -> dict:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"  # several ranks share 2 cores
    env["PYTHONWARNINGS"] = "ignore"
    return env


def run_pretrain(tmp_path: Path, nproc: int, *args: str, timeout: int = 300,
                 env: dict | None = None) -> list[dict]:
    """``torchrun --nproc-per-node N -m megavid.pretrain ARGS``; returns metrics.jsonl rows."""
    log_dir = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
        "--master-port", str(free_port()), "-m", "megavid.pretrain",
        "--log-dir", str(log_dir), *args,
    ]
    proc = subprocess.run(cmd, cwd=REPO, env={**subprocess_env(), **(env or {})},
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return [json.loads(line) for line in (log_dir / "metrics.jsonl").read_text().splitlines()]
