"""Kernel tests run on CUDA when there is one, else in Triton's CPU interpreter.

Triton reads ``TRITON_INTERPRET`` when it defines jitted functions (its own
``tl.sum`` included), so the flag is set here, at collection, before any test
imports triton. megatron.core imports triton too: if it was imported first
(``pytest tests/models tests/kernels``), the kernel tests skip and say so;
``TRITON_INTERPRET=1 pytest ...`` always works.
"""

from __future__ import annotations

import os

import pytest
import torch
from megavid.kernels import interpreter_loaded  # looks triton up, does not import it

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def device() -> str:
    """Where the kernels run: the GPU, or the CPU through the interpreter."""
    if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1":
        return "cuda"

    if not interpreter_loaded():
        pytest.skip("triton was imported before TRITON_INTERPRET=1 was set (megatron.core "
                    "imports it); run `TRITON_INTERPRET=1 pytest tests/kernels`")
    return "cpu"


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rel: float) -> None:
    """max |actual - expected| <= rel * max |expected| (elementwise rtol misfires near zeros)."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    if actual.numel() == 0:
        return
    err = (actual.float() - expected.float()).abs().max().item()
    scale = expected.float().abs().max().item()
    assert err <= rel * scale + 1e-12, f"max abs error {err:.3g} > {rel} * {scale:.3g}"
