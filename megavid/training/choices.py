"""The one start-up line saying what a run chose: layer backend, kernels, decoder, versions.

It replaces the import-time notices megatron-core would print (``megavid/quiet.py``):
the user sees what was picked, once, instead of why other things were not.
"""

from __future__ import annotations

import importlib.metadata

import torch

import megavid.kernels as kernels
from megavid.config import RunConfig
from megavid.config.preflight import resolve_backend, transformer_engine_usable
from megavid.data import dali


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _backend(cfg: RunConfig) -> str:
    backend = resolve_backend(cfg.model.transformer_impl, fp8=cfg.train.fp8)
    if backend == "transformer_engine":
        return "transformer engine"
    return "local" + ("" if transformer_engine_usable() else " (no Transformer Engine)")


def _kernels(cfg: RunConfig) -> str:
    """triton when the model's kernels will run Triton on this device, else the reference."""
    choice = cfg.model.kernels
    device_ok = torch.cuda.is_available() or kernels.interpreter_enabled()
    if choice == "triton" or (choice == "auto" and kernels.triton_available() and device_ok):
        return "triton"
    return "reference (torch)"


def _decoder(cfg: RunConfig) -> str:
    data = cfg.data
    if data.mock:
        return "mock (in-memory clips)"
    if data.decoder == "pyav":
        return "pyav"
    if not dali.dali_available():
        return "pyav (DALI not installed)" if data.decoder == "auto" else "dali (not installed)"
    device = "gpu" if torch.cuda.is_available() else "cpu"
    if data.decoder == "dali":
        return f"dali {device}"
    return "dali gpu" if device == "gpu" else "dali cpu for vp8/vp9, else pyav"


def describe_choices(cfg: RunConfig) -> str:
    """``backend local | kernels reference (torch) | decoder pyav | megatron-core 0.16.1 | ...``

    Transformer Engine's version is named where it is installed (the pairing that
    pyproject's ``te`` extra states for each megatron-core).
    """
    te = _version("transformer-engine")
    return (f"backend {_backend(cfg)} | kernels {_kernels(cfg)} | decoder {_decoder(cfg)} | "
            f"megatron-core {_version('megatron-core')}"
            + ("" if te == "?" else f" | transformer-engine {te}")
            + f" | torch {torch.__version__}")
