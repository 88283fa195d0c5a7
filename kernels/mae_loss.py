"""Fused MAE reconstruction loss: one public function, Triton or the reference."""

from __future__ import annotations

import torch
from megavid.kernels import reference
from megavid.kernels._dispatch import use_triton


def fused_mae_loss(
    pred: torch.Tensor,
    patches: torch.Tensor,
    mask: torch.Tensor,
    norm_pix: bool = True,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Same value and ``pred`` gradient as ``reference.mae_loss``, less memory traffic.

    pred, patches: (B, N, P); mask: (B, N) bool, True where the tubelet was
    hidden from the encoder. Returns a 0-d fp32 tensor. ``patches`` is the
    target and gets no gradient. Unlike the reference, unmasked tubelets are
    not read, so a NaN in one of them does not reach the loss.

    backend: "auto" runs the Triton kernel when it can (CUDA tensors, or
    ``TRITON_INTERPRET=1``) and the reference otherwise; "triton" / "torch"
    force one.
    """
    if pred.shape != patches.shape or pred.shape[:-1] != mask.shape:
        raise ValueError(
            f"fused_mae_loss: pred {tuple(pred.shape)}, patches {tuple(patches.shape)} must "
            f"match and mask {tuple(mask.shape)} must be their leading dims"
        )
    if not use_triton(backend, pred, patches, mask):
        return reference.mae_loss(pred, patches.detach(), mask, norm_pix=norm_pix)
    from megavid.kernels._triton_mae_loss import (
        FusedMAELoss,  # defines kernels: import late
    )

    return FusedMAELoss.apply(pred, patches, mask, bool(norm_pix))
