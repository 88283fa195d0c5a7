"""Fused kernels for the MAE's memory-bound plumbing, with PyTorch fallbacks.

The model selects these by a config flag; every function here has the
semantics of its reference in ``megavid.models.mae_ops`` and falls back to it
when Triton or a GPU is missing (``TRITON_INTERPRET=1`` runs the kernels on CPU).
"""

from kernels._dispatch import (
    interpreter_enabled,
    interpreter_loaded,
    triton_available,
    triton_usable,
)
from kernels.mae_loss import fused_mae_loss
from kernels.patchify import patchify_gather, scatter_tokens

__all__ = [
    "fused_mae_loss",
    "interpreter_enabled",
    "interpreter_loaded",
    "patchify_gather",
    "scatter_tokens",
    "triton_available",
    "triton_usable",
]
