"""Triton kernels for the MAE reconstruction loss (imported only when Triton is).

Forward reads each masked tubelet's pixels and prediction once, normalises in
registers and writes one float per tubelet (plus mean and 1/std for backward);
the normalised target (B, N, P) that ``reference.mae_loss`` materialises, and its
fp32 copies of ``pred`` and ``patches``, never exist. Unmasked tubelets are not
read at all: their loss weight is zero. Backward reads ``pred`` and ``patches``
once more and writes ``grad_pred``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

EPS = 1e-6  # inside the sqrt, as reference.normalize_patches
MAX_PATCH_DIM = 16384  # one tubelet per tile row; 4DS tubelets are 1536 pixels


@triton.jit
def _masked_tile(mask_ptr, M, P, BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr):
    """This program's tile: BLOCK_M whole tubelets; ``ok`` covers masked ones only."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_P)
    row_ok = rows < M
    col_ok = cols[None, :] < P
    masked = tl.load(mask_ptr + rows, mask=row_ok, other=0) != 0
    ok = masked[:, None] & col_ok  # unmasked rows are never read
    offs = rows.to(tl.int64)[:, None] * P + cols[None, :]
    return rows, row_ok, col_ok, ok, offs


@triton.jit
def _mae_loss_fwd_kernel(
    pred_ptr, patch_ptr, mask_ptr, row_loss_ptr, mean_ptr, rstd_ptr, M, P, eps,
    NORM_PIX: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr,
):
    rows, row_ok, col_ok, ok, offs = _masked_tile(mask_ptr, M, P, BLOCK_M, BLOCK_P)
    target = tl.load(patch_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    if NORM_PIX:  # per-tubelet mean and unbiased variance, in registers
        mean = tl.sum(target, axis=1) / P
        centered = tl.where(ok, target - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(centered * centered, axis=1) / (P - 1) + eps)
        target = centered * rstd[:, None]
        tl.store(mean_ptr + rows, mean, mask=row_ok)
        tl.store(rstd_ptr + rows, rstd, mask=row_ok)
    y = tl.load(pred_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    diff = tl.where(ok, y - target, 0.0)
    tl.store(row_loss_ptr + rows, tl.sum(diff * diff, axis=1) / P, mask=row_ok)


@triton.jit
def _mae_loss_bwd_kernel(
    pred_ptr, patch_ptr, mask_ptr, mean_ptr, rstd_ptr, coef_ptr, grad_ptr, M, P,
    NORM_PIX: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_P: tl.constexpr,
):
    rows, row_ok, col_ok, ok, offs = _masked_tile(mask_ptr, M, P, BLOCK_M, BLOCK_P)
    target = tl.load(patch_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    if NORM_PIX:
        mean = tl.load(mean_ptr + rows, mask=row_ok, other=0.0)
        rstd = tl.load(rstd_ptr + rows, mask=row_ok, other=0.0)
        target = (target - mean[:, None]) * rstd[:, None]
    y = tl.load(pred_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    coef = tl.load(coef_ptr)  # d loss / d row_loss * 2 / P, one scalar
    grad = tl.where(ok, coef * (y - target), 0.0)  # unmasked rows get exact zeros
    tl.store(grad_ptr + offs, grad.to(grad_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok)


def _launch_config(m: int, p: int) -> tuple[int, int, int, tuple[int]]:
    """(BLOCK_M, BLOCK_P, num_warps, grid): whole tubelets per tile, ~4K elements."""
    if p > MAX_PATCH_DIM:
        raise ValueError(f"fused_mae_loss: patch dim {p} > {MAX_PATCH_DIM}; use backend='torch'")
    block_p = triton.next_power_of_2(p)
    block_m = max(1, min(64, 4096 // block_p))
    num_warps = 4 if block_m * block_p <= 2048 else 8
    return block_m, block_p, num_warps, (triton.cdiv(m, block_m),)


class FusedMAELoss(torch.autograd.Function):
    """``reference.mae_loss`` as two kernels; the gradient flows to ``pred`` only."""

    @staticmethod
    def forward(ctx, pred, patches, mask, norm_pix):
        p = pred.shape[-1]
        pred2 = pred.reshape(-1, p).contiguous()  # (M, P), M = B * N
        patches2 = patches.detach().reshape(-1, p).contiguous()
        mask1 = mask.reshape(-1).contiguous().to(torch.uint8)
        m = pred2.shape[0]
        f32 = dict(dtype=torch.float32, device=pred.device)
        row_loss = torch.empty(m, **f32)
        mean = torch.empty(m if norm_pix else 1, **f32)
        rstd = torch.empty(m if norm_pix else 1, **f32)
        block_m, block_p, num_warps, grid = _launch_config(m, p)
        if m:
            _mae_loss_fwd_kernel[grid](
                pred2, patches2, mask1, row_loss, mean, rstd, m, p, EPS,
                NORM_PIX=norm_pix, BLOCK_M=block_m, BLOCK_P=block_p, num_warps=num_warps,
            )
        count = mask1.sum(dtype=torch.float32).clamp(min=1.0)
        ctx.save_for_backward(pred2, patches2, mask1, mean, rstd, count)
        ctx.shape, ctx.norm_pix = pred.shape, norm_pix
        return row_loss.sum() / count

    @staticmethod
    def backward(ctx, grad_loss):
        pred2, patches2, mask1, mean, rstd, count = ctx.saved_tensors
        m, p = pred2.shape
        coef = (grad_loss.float() * 2.0 / (p * count)).reshape(1)  # stays on device: no sync
        grad = torch.empty_like(pred2)
        block_m, block_p, num_warps, grid = _launch_config(m, p)
        if m:
            _mae_loss_bwd_kernel[grid](
                pred2, patches2, mask1, mean, rstd, coef, grad, m, p,
                NORM_PIX=ctx.norm_pix, BLOCK_M=block_m, BLOCK_P=block_p, num_warps=num_warps,
            )
        return grad.view(ctx.shape), None, None, None
