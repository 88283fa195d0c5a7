"""Fused kernels for the MAE's memory-bound plumbing, with PyTorch fallbacks.

The model selects these by a config flag; every function here has the
semantics of its reference in ``megavid.kernels.reference`` and falls back to it
when Triton or a GPU is missing (``TRITON_INTERPRET=1`` runs the kernels on CPU).
"""

from megavid.kernels._dispatch import (
    interpreter_enabled,
    interpreter_loaded,
    triton_available,
    triton_usable,
)
from megavid.kernels.mae_loss import fused_mae_loss
from megavid.kernels.patchify import patchify_gather, scatter_tokens

__all__ = [
    "fused_mae_loss",
    "interpreter_enabled",
    "interpreter_loaded",
    "patchify_gather",
    "scatter_tokens",
    "triton_available",
    "triton_usable",
]
