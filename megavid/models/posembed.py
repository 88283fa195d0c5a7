"""Position embeddings: VideoMAE's fixed sinusoids, and resizing a learned table to a new grid.

``resize_pos_embed`` is the one place where a position-embedding table changes
grid (other frame counts or resolutions); the converters, the checkpoint loader
of the feature API and ``load_encoder(num_frames=..., image_size=...)`` all call
it. Two methods:

- ``trilinear``: ``torch.nn.functional.interpolate(mode="trilinear",
  align_corners=False)`` over the (T', H', W') token grid at once;
- ``bicubic``: bicubic over (H', W') in every frame (``align_corners=False``,
  the timm/DeiT convention for ViTs), then linear over T'.

A table whose grid does not change is returned as is (bit-exact). Fixed
sinusoidal tables are never resized: they are recomputed for the new token count.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

INTERPOLATIONS = ("trilinear", "bicubic")


def sincos_table(num_positions: int, width: int) -> torch.Tensor:
    """(N, D) float32 sinusoids over a 1-D position, VideoMAE's fixed table.

    Entry (p, j) is sin (even j) or cos (odd j) of p / 10000^(2 floor(j/2) / D),
    computed in float64 and rounded once to float32.
    """
    position = np.arange(num_positions, dtype=np.float64)[:, None]
    exponent = 2 * (np.arange(width) // 2) / width
    angle = position / np.power(10000.0, exponent)[None, :]
    table = np.empty_like(angle)
    table[:, 0::2] = np.sin(angle[:, 0::2])
    table[:, 1::2] = np.cos(angle[:, 1::2])
    return torch.from_numpy(table).float()


def resize_pos_embed(table: torch.Tensor, old_grid: tuple[int, int, int],
                     new_grid: tuple[int, int, int], method: str = "trilinear") -> torch.Tensor:
    """(T'*H'*W', D) raster-order table on ``old_grid`` -> the same on ``new_grid``."""
    if method not in INTERPOLATIONS:
        raise ValueError(f"position-embedding interpolation {method!r} is not one of "
                         f"{INTERPOLATIONS}")
    old_grid, new_grid = tuple(old_grid), tuple(new_grid)
    n, d = table.shape
    if n != old_grid[0] * old_grid[1] * old_grid[2]:
        raise ValueError(f"position embedding has {n} rows, grid {old_grid} needs "
                         f"{old_grid[0] * old_grid[1] * old_grid[2]}")
    if old_grid == new_grid:
        return table
    dtype = table.dtype
    x = table.float().reshape(1, *old_grid, d).permute(0, 4, 1, 2, 3)  # (1, D, T', H', W')
    if method == "trilinear":
        x = F.interpolate(x, size=new_grid, mode="trilinear", align_corners=False)
    else:
        gt, _, _ = old_grid
        frames = x[0].permute(1, 0, 2, 3)  # (T', D, H', W')
        if frames.shape[-2:] != new_grid[1:]:
            frames = F.interpolate(frames, size=new_grid[1:], mode="bicubic", align_corners=False)
        x = frames.permute(1, 0, 2, 3).unsqueeze(0)  # (1, D, T', H'', W'')
        if gt != new_grid[0]:
            x = F.interpolate(x, size=new_grid, mode="trilinear", align_corners=False)
    return x[0].permute(1, 2, 3, 0).reshape(-1, d).to(dtype)  # (T''*H''*W'', D)
