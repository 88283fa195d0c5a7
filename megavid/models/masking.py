"""MAE masks, drawn per sample from (seed, sample index) alone.

Every pipeline stage needs the same mask (the first to gather visible tokens,
the transition to scatter them back, the last for the loss) and a sample must
be masked the same way whatever the layout; so the mask is a pure function of
the seed and the sample's global index, recomputed where needed instead of
sent along the pipeline.
"""

from __future__ import annotations

import torch

from megavid.config.presets import num_visible


def _sample_generator(seed: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + index) % (2**63))


def make_masks(
    index: torch.Tensor, *, grid: tuple[int, int, int], mask_ratio: float, masking: str, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """ids_keep (B, K) int64 in ascending order and mask (B, N) bool (True = hidden)."""
    gt, gh, gw = grid
    n = gt * gh * gw
    k = num_visible(grid, mask_ratio, masking)
    keeps = []
    for i in index.tolist():
        gen = _sample_generator(seed, i)
        if masking == "tube":
            per_frame = gh * gw
            k_frame = k // gt
            spatial = torch.randperm(per_frame, generator=gen)[:k_frame]
            keep = (torch.arange(gt).unsqueeze(1) * per_frame + spatial.unsqueeze(0)).flatten()
        else:
            keep = torch.randperm(n, generator=gen)[:k]
        keeps.append(keep.sort().values)
    ids_keep = torch.stack(keeps)  # (B, K)
    mask = torch.ones(len(keeps), n, dtype=torch.bool)
    mask.scatter_(1, ids_keep, False)
    return ids_keep, mask
