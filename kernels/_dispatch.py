"""When to run a Triton kernel and when to fall back to the PyTorch reference.

Triton is optional: the model selects kernels by a config flag and must keep
working on machines without Triton or without a GPU. A kernel runs when Triton
imports and every tensor is on CUDA, or when ``TRITON_INTERPRET=1`` (Triton's
CPU interpreter, used by the tests). Triton reads the interpreter flag when it
defines a jitted function, its own ``tl.sum`` included, so the flag must be set
before anything imports triton: this module only looks triton up, and the
kernel modules are imported lazily, on first use.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys

import torch

BACKENDS = ("auto", "triton", "torch")


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """Whether triton is installed (looked up, not imported: see the module doc)."""
    return importlib.util.find_spec("triton") is not None


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def interpreter_loaded() -> bool:
    """False if triton was already imported without the interpreter flag.

    Then its jitted helpers (``tl.sum``...) compile for a GPU and cannot run on
    CPU tensors, whatever the flag says now. megatron.core imports triton, so
    the flag must be set before megatron.core is imported.
    """
    language = sys.modules.get("triton.language")
    return language is None or type(language.sum).__name__ == "InterpretedFunction"


def triton_usable(*tensors: torch.Tensor) -> bool:
    """Whether the Triton path can run on these tensors."""
    if not triton_available():
        return False
    if all(t.is_cuda for t in tensors):
        return True
    return interpreter_enabled() and interpreter_loaded()


def use_triton(backend: str, *tensors: torch.Tensor) -> bool:
    """Resolve ``backend`` ("auto" | "triton" | "torch") for these tensors.

    "auto" falls back silently; "triton" raises, so a benchmark or test never
    times or checks the reference while believing it ran the kernel.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return False
    usable = triton_usable(*tensors)
    if backend == "triton" and not usable:
        raise RuntimeError(
            "backend='triton' needs Triton and CUDA tensors, or for CPU tensors "
            "TRITON_INTERPRET=1 set before triton (or megatron.core) is first imported; "
            f"triton installed: {triton_available()}, interpreter flag: {interpreter_enabled()}, "
            f"triton loaded in interpreter mode: {interpreter_loaded()}"
        )
    return usable
