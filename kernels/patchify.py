"""Tubelet patchify fused with the token gather, and the decoder-side scatter.

Public functions with the semantics of ``megavid.kernels.reference``; each runs
the Triton kernel when it can and the reference otherwise (see ``_dispatch``).
"""

from __future__ import annotations

import torch
from megavid.kernels import reference
from megavid.kernels._dispatch import use_triton


def patchify_gather(
    video: torch.Tensor,
    tubelet: tuple[int, int, int],
    ids_keep: torch.Tensor | None = None,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """``gather_tokens(patchify(video, tubelet), ids_keep)`` without the full patch tensor.

    video: (B, T, H, W, C), any strides; ids_keep: (B, K) token ids in raster
    order over the tubelet grid, unique per sample (None keeps all tokens, i.e.
    plain ``patchify``). Returns (B, K, t*h*w*C) in the video's dtype; the
    gradient flows back to ``video``.
    """
    if video.dim() != 5:
        raise ValueError(f"patchify_gather: video must be (B, T, H, W, C), got {tuple(video.shape)}")
    tubelet = tuple(int(s) for s in tubelet)
    if ids_keep is None:
        gt, gh, gw = (d // s for d, s in zip(video.shape[1:4], tubelet))
        ids_keep = torch.arange(gt * gh * gw, device=video.device).expand(video.shape[0], -1)
    if not use_triton(backend, video, ids_keep):
        return reference.gather_tokens(reference.patchify(video, tubelet), ids_keep)
    from megavid.kernels._triton_patchify import (
        PatchifyGather,  # defines kernels: import late
    )

    return PatchifyGather.apply(video, tubelet, ids_keep)


def scatter_tokens(
    visible: torch.Tensor,
    ids_keep: torch.Tensor,
    fill: torch.Tensor,
    num_tokens: int,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """``reference.scatter_tokens``: (B, K, D) -> (B, N, D), ``fill`` (D,) where no token was kept.

    Gradients flow to ``visible`` and ``fill`` (the decoder's mask token); the
    ids must be unique per sample.
    """
    if visible.dim() != 3 or ids_keep.shape != visible.shape[:2] or fill.shape != visible.shape[-1:]:
        raise ValueError(
            f"scatter_tokens: visible {tuple(visible.shape)} must be (B, K, D), ids_keep "
            f"{tuple(ids_keep.shape)} (B, K) and fill {tuple(fill.shape)} (D,)"
        )
    if not use_triton(backend, visible, ids_keep, fill):
        return reference.scatter_tokens(visible, ids_keep, fill, num_tokens)
    from megavid.kernels._triton_patchify import ScatterTokens

    return ScatterTokens.apply(visible, ids_keep, fill, int(num_tokens))
