"""Reference PyTorch implementations of the MAE tensor plumbing.

These are the semantics every faster implementation (``kernels/``) is tested
against. Layouts: videos are (B, T, H, W, C) as in 4DS; a tubelet is flattened
in (t, h, w, c) order, the order of the 4DS tubelet-embedding kernel
``[t, h, w, c, D]``; tokens are in raster order over the (T', H', W') grid.
"""

from __future__ import annotations

import torch


def patchify(video: torch.Tensor, tubelet: tuple[int, int, int]) -> torch.Tensor:
    """(B, T, H, W, C) -> (B, N, t*h*w*C) tubelets in raster order."""
    b, t_len, height, width, c = video.shape
    t, h, w = tubelet
    x = video.reshape(b, t_len // t, t, height // h, h, width // w, w, c)
    x = x.permute(0, 1, 3, 5, 2, 4, 6, 7)  # (B, T', H', W', t, h, w, C)
    return x.reshape(b, (t_len // t) * (height // h) * (width // w), t * h * w * c)


def unpatchify(
    patches: torch.Tensor, tubelet: tuple[int, int, int], grid: tuple[int, int, int], channels: int
) -> torch.Tensor:
    """Inverse of ``patchify``: (B, N, t*h*w*C) -> (B, T, H, W, C)."""
    b = patches.shape[0]
    gt, gh, gw = grid
    t, h, w = tubelet
    x = patches.reshape(b, gt, gh, gw, t, h, w, channels)
    x = x.permute(0, 1, 4, 2, 5, 3, 6, 7)  # (B, T', t, H', h, W', w, C)
    return x.reshape(b, gt * t, gh * h, gw * w, channels)


def gather_tokens(tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Pick tokens by index per sample: (B, N, D), (B, K) -> (B, K, D)."""
    return torch.gather(tokens, 1, ids.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def scatter_tokens(
    visible: torch.Tensor, ids_keep: torch.Tensor, fill: torch.Tensor, num_tokens: int
) -> torch.Tensor:
    """Place visible tokens back on the full grid, ``fill`` (D,) everywhere else.

    (B, K, D), (B, K) -> (B, N, D). The decoder's mask-token insertion.
    """
    b, _, d = visible.shape
    full = fill.to(visible.dtype).expand(b, num_tokens, d)
    index = ids_keep.unsqueeze(-1).expand(-1, -1, d)
    return full.scatter(1, index, visible)


def normalize_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-tubelet zero mean / unit variance (MAE's ``norm_pix_loss`` target)."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, unbiased=True, keepdim=True)
    return (patches - mean) / (var + eps).sqrt()


def normalize_patches_per_channel(patches: torch.Tensor, channels: int,
                                  eps: float = 1e-6) -> torch.Tensor:
    """VideoMAE's ``norm_pix_loss`` target: per tubelet *and channel*, (x - mean) / (std + eps).

    (B, N, t*h*w*C) in (t, h, w, c) order -> the same shape; the std is unbiased
    and ``eps`` is added to it (MAE's ``normalize_patches`` adds it to the variance
    and pools the channels).
    """
    b, n, p = patches.shape
    x = patches.reshape(b, n, p // channels, channels)
    x = (x - x.mean(dim=-2, keepdim=True)) / (x.var(dim=-2, unbiased=True, keepdim=True).sqrt()
                                              + eps)
    return x.reshape(b, n, p)


def mae_loss(
    pred: torch.Tensor, patches: torch.Tensor, mask: torch.Tensor, *, norm_pix: bool = True
) -> torch.Tensor:
    """Mean squared error over masked tubelets.

    pred, patches: (B, N, P); mask: (B, N) bool, True where the encoder did not
    see the tubelet. Returns the mean over masked tubelets of the per-tubelet
    mean squared error (0 when nothing is masked).
    """
    target = normalize_patches(patches.float()) if norm_pix else patches.float()
    per_token = (pred.float() - target).pow(2).mean(dim=-1)  # (B, N)
    weights = mask.to(per_token.dtype)
    return (per_token * weights).sum() / weights.sum().clamp(min=1.0)
