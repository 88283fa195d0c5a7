"""The one start-up line saying what a run chose: layer backend, kernels, decoder, versions.

It replaces the import-time notices megatron-core would print (``megavid/quiet.py``):
the user sees what was picked, once, instead of why other things were not.
"""

from __future__ import annotations

import importlib.metadata

import torch

import megavid.kernels as kernels
from megavid.config import RunConfig
from megavid.config.fp8 import stack_fp8
from megavid.config.preflight import Machine


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def _backend(cfg: RunConfig, machine: Machine, backend: str) -> str:
    if backend == "transformer_engine":
        tc = cfg.train
        if tc.fp8 is None:
            return "transformer engine"
        decoder = "fp8" if stack_fp8(cfg, decoder=True) else "bf16"
        return f"transformer engine, fp8 {tc.fp8} {tc.fp8_recipe} (decoder {decoder})"
    return "local" + ("" if machine.transformer_engine else " (no Transformer Engine)")


def _kernels(cfg: RunConfig, machine: Machine) -> str:
    """triton when the model's kernels will run Triton on this device, else the reference."""
    choice = cfg.model.kernels
    device_ok = machine.cuda or kernels.interpreter_enabled()
    if choice == "triton" or (choice == "auto" and kernels.triton_available() and device_ok):
        return "triton"
    return "reference (torch)"


def _decoder(cfg: RunConfig, machine: Machine) -> str:
    data = cfg.data
    if data.mock:
        return "mock (in-memory clips)"
    if data.decoder == "pyav":
        return "pyav"
    if not machine.dali:
        return "pyav (DALI not installed)" if data.decoder == "auto" else "dali (not installed)"
    device = "gpu" if machine.cuda else "cpu"
    if data.decoder == "dali":
        return f"dali {device}"
    return "dali gpu" if device == "gpu" else "dali cpu for vp8/vp9, else pyav"


def describe_choices(cfg: RunConfig, machine: Machine, backend: str) -> str:
    """``backend local | kernels reference (torch) | decoder pyav | megatron-core 0.16.1 | ...``

    Transformer Engine's version is named where it is installed (the pairing that
    pyproject's ``te`` extra states for each megatron-core).
    """
    te = machine.te_version
    return (f"backend {_backend(cfg, machine, backend)} | kernels {_kernels(cfg, machine)} | "
            f"decoder {_decoder(cfg, machine)} | "
            f"megatron-core {_version('megatron-core')}"
            + ("" if te is None else f" | transformer-engine {te}")
            + f" | torch {torch.__version__}")
