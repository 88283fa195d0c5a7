"""Triton kernels for tubelet patchify + token gather, and the decoder's scatter.

Both replace a chain of PyTorch copies by one pass over the data:
``gather_tokens(patchify(video), ids_keep)`` writes the full (B, N, P) patch
tensor and reads it back to keep ~25% of it; the kernel reads only the kept
tubelets straight from the video. ``scatter_tokens`` expands the fill vector to
(B, N, D) and then scatters into it; the kernel writes each output row once,
from either a visible token or the fill vector. Backward passes are the mirror
images and likewise touch each element once. Token ids must be unique within a
sample (true of MAE's ``ids_keep``): backward writes, it does not accumulate.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _tubelet_offsets(tok, cols, GH, GW, t, h, w, C, s_t, s_h, s_w, s_c):
    """[R, P] offsets inside one sample's video of pixel ``cols`` of tubelet ``tok``.

    Tokens are raster order over (T', H', W'); pixels are (t, h, w, c) order.
    """
    gt_i = tok // (GH * GW)
    gh_i = (tok // GW) % GH
    gw_i = tok % GW
    ci = cols % C
    wi = (cols // C) % w
    hi = (cols // (C * w)) % h
    ti = cols // (C * w * h)
    return (
        (gt_i[:, None] * t + ti[None, :]).to(tl.int64) * s_t
        + (gh_i[:, None] * h + hi[None, :]).to(tl.int64) * s_h
        + (gw_i[:, None] * w + wi[None, :]).to(tl.int64) * s_w
        + ci[None, :].to(tl.int64) * s_c
    )


@triton.jit
def _patchify_gather_kernel(
    video_ptr, ids_ptr, out_ptr, R, K, P, GH, GW, t, h, w, C, s_b, s_t, s_h, s_w, s_c,
    BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # flat (b, k)
    cols = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    ok = (rows < R)[:, None] & (cols < P)[None, :]
    tok = tl.load(ids_ptr + rows, mask=rows < R, other=0)
    src = (rows // K).to(tl.int64)[:, None] * s_b
    src += _tubelet_offsets(tok, cols, GH, GW, t, h, w, C, s_t, s_h, s_w, s_c)
    x = tl.load(video_ptr + src, mask=ok, other=0)
    tl.store(out_ptr + rows.to(tl.int64)[:, None] * P + cols[None, :], x, mask=ok)


@triton.jit
def _unpatchify_scatter_kernel(
    grad_ptr, inv_ptr, video_grad_ptr, R, N, K, P, GH, GW, t, h, w, C, s_b, s_t, s_h, s_w, s_c,
    BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # flat (b, n): every tubelet
    cols = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    ok = (rows < R)[:, None] & (cols < P)[None, :]
    slot = tl.load(inv_ptr + rows, mask=rows < R, other=-1)  # k, or -1 if not kept
    b = (rows // N).to(tl.int64)
    src = (b * K + slot)[:, None] * P + cols[None, :]
    g = tl.load(grad_ptr + src, mask=ok & (slot >= 0)[:, None], other=0)
    dst = b[:, None] * s_b + _tubelet_offsets(rows % N, cols, GH, GW, t, h, w, C, s_t, s_h, s_w, s_c)
    tl.store(video_grad_ptr + dst, g, mask=ok)  # zeros where the tubelet was dropped


@triton.jit
def _scatter_tokens_kernel(
    vis_ptr, fill_ptr, inv_ptr, out_ptr, R, N, K, D,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # flat (b, n)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    ok = (rows < R)[:, None] & (cols < D)[None, :]
    slot = tl.load(inv_ptr + rows, mask=rows < R, other=-1)
    kept = (slot >= 0)[:, None]
    src = ((rows // N).to(tl.int64) * K + slot)[:, None] * D + cols[None, :]
    v = tl.load(vis_ptr + src, mask=ok & kept, other=0)
    f = tl.load(fill_ptr + cols, mask=cols < D, other=0)
    out = tl.where(kept, v, f[None, :])
    tl.store(out_ptr + rows.to(tl.int64)[:, None] * D + cols[None, :], out, mask=ok)


@triton.jit
def _scatter_tokens_bwd_kernel(
    grad_ptr, inv_ptr, vis_grad_ptr, fill_part_ptr, R, N, K, D,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    ok = (rows < R)[:, None] & (cols < D)[None, :]
    slot = tl.load(inv_ptr + rows, mask=rows < R, other=-1)
    kept = (slot >= 0)[:, None]
    g = tl.load(grad_ptr + rows.to(tl.int64)[:, None] * D + cols[None, :], mask=ok, other=0)
    dst = ((rows // N).to(tl.int64) * K + slot)[:, None] * D + cols[None, :]
    tl.store(vis_grad_ptr + dst, g, mask=ok & kept)
    # The fill vector's gradient: this tile's masked rows, summed in fp32.
    part = tl.sum(tl.where(kept, 0.0, g.to(tl.float32)), axis=0)
    tl.store(fill_part_ptr + tl.program_id(0) * D + cols, part, mask=cols < D)


def _inverse_ids(ids_keep: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """(B, K) kept ids -> (B, N) int32 slot of each token in ids_keep, -1 if dropped."""
    b, k = ids_keep.shape
    inv = torch.full((b, num_tokens), -1, dtype=torch.int32, device=ids_keep.device)
    slots = torch.arange(k, dtype=torch.int32, device=ids_keep.device).expand(b, k)
    return inv.scatter_(1, ids_keep.long(), slots)


def _tile(rows: int, cols: int) -> tuple[int, int, tuple[int, int]]:
    """(BLOCK_R, BLOCK_C, grid) for a copy kernel: 2-4K elements per program."""
    block_c = min(triton.next_power_of_2(cols), 1024)
    block_r = max(1, min(64, 4096 // block_c))
    return block_r, block_c, (triton.cdiv(rows, block_r), triton.cdiv(cols, block_c))


def _geometry(video: torch.Tensor, tubelet: tuple[int, int, int]) -> tuple:
    """(grid (GT, GH, GW), patch dim, kernel args) of a (B, T, H, W, C) video."""
    _, t_len, height, width, c = video.shape
    t, h, w = tubelet
    grid = (t_len // t, height // h, width // w)
    return grid, t * h * w * c, (grid[1], grid[2], t, h, w, c)


class PatchifyGather(torch.autograd.Function):
    """(B, T, H, W, C) video, (B, K) ids -> (B, K, P) kept tubelets."""

    @staticmethod
    def forward(ctx, video, tubelet, ids_keep):
        grid, p, geo = _geometry(video, tubelet)
        ids = ids_keep.contiguous()
        b, k = ids.shape
        out = torch.empty((b, k, p), dtype=video.dtype, device=video.device)
        block_r, block_p, launch = _tile(b * k, p)
        if out.numel():  # nothing kept: no launch
            _patchify_gather_kernel[launch](
                video, ids, out, b * k, k, p, *geo, *video.stride(), BLOCK_R=block_r, BLOCK_P=block_p,
            )
        ctx.save_for_backward(ids)
        ctx.video_shape, ctx.tubelet, ctx.grid = video.shape, tubelet, grid
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (ids,) = ctx.saved_tensors
        shape, grid = ctx.video_shape, ctx.grid
        b, k = ids.shape
        n = grid[0] * grid[1] * grid[2]
        covered = all(g * s == d for g, s, d in zip(grid, ctx.tubelet, shape[1:4]))
        alloc = torch.empty if covered else torch.zeros  # edge pixels outside every tubelet
        grad_video = alloc(shape, dtype=grad_out.dtype, device=grad_out.device)
        _, p, geo = _geometry(grad_video, ctx.tubelet)
        block_r, block_p, launch = _tile(b * n, p)
        if grad_video.numel() == 0:
            return grad_video, None, None
        _unpatchify_scatter_kernel[launch](
            grad_out.contiguous(), _inverse_ids(ids, n), grad_video, b * n, n, k, p, *geo,
            *grad_video.stride(), BLOCK_R=block_r, BLOCK_P=block_p,
        )
        return grad_video, None, None


class ScatterTokens(torch.autograd.Function):
    """(B, K, D) visible tokens -> (B, N, D), ``fill`` where no token was kept."""

    @staticmethod
    def forward(ctx, visible, ids_keep, fill, num_tokens):
        vis = visible.contiguous()
        b, k, d = vis.shape
        inv = _inverse_ids(ids_keep, num_tokens)
        out = torch.empty((b, num_tokens, d), dtype=vis.dtype, device=vis.device)
        block_r, block_d, launch = _tile(b * num_tokens, d)
        if out.numel():
            _scatter_tokens_kernel[launch](
                vis, fill.to(vis.dtype).contiguous(), inv, out, b * num_tokens, num_tokens, k, d,
                BLOCK_R=block_r, BLOCK_D=block_d,
            )
        ctx.save_for_backward(inv)
        ctx.k, ctx.fill_dtype = k, fill.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (inv,) = ctx.saved_tensors
        grad = grad_out.contiguous()
        b, n, d = grad.shape
        grad_vis = torch.empty((b, ctx.k, d), dtype=grad.dtype, device=grad.device)
        block_r, block_d, launch = _tile(b * n, d)
        parts = torch.zeros((launch[0], d), dtype=torch.float32, device=grad.device)
        if grad.numel():
            _scatter_tokens_bwd_kernel[launch](
                grad, inv, grad_vis, parts, b * n, n, ctx.k, d, BLOCK_R=block_r, BLOCK_D=block_d,
            )
        grad_fill = parts.sum(0).to(grad.dtype).to(ctx.fill_dtype)  # rounds like the reference
        return grad_vis, None, grad_fill, None
