"""MAE masks, drawn per sample from (seed, sample index) alone.

Every pipeline stage needs the same mask (the first to gather visible tokens,
the transition to scatter them back, the last for the loss) and a sample must
be masked the same way whatever the layout; so the mask is a pure function of
the seed and the sample's global index, recomputed where needed instead of
sent along the pipeline. The decoder's subset (``model.decoder_mask_ratio``,
VideoMAE V2's dual masking) is drawn the same way, from a stream of its own.
"""

from __future__ import annotations

import torch

from megavid.config.presets import num_decoded, num_visible

DECODER_STREAM = 0x5DEC0DE  # salts the decoder subset's generator: independent of the encoder's


def _sample_generator(seed: int, index: int, stream: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(((seed * 1_000_003 + index) ^ stream) % (2**63))


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


def make_decoder_masks(
    index: torch.Tensor, mask: torch.Tensor, *, grid: tuple[int, int, int], mask_ratio: float,
    masking: str, decoder_mask_ratio: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The tokens the decoder runs on, ids_decode (B, S) ascending, and which of them the
    loss covers, target (B, S) bool (True = masked and reconstructed).

    ``mask`` (B, N) is ``make_masks``'s; of each sample's masked tubelets the decoder keeps
    a random ``num_decoded - num_visible`` (VideoMAE V2 keeps a running-cell pattern; random
    is its plain variant), beside every visible one.
    """
    s = num_decoded(grid, mask_ratio, masking, decoder_mask_ratio)
    reconstructed = s - num_visible(grid, mask_ratio, masking)
    ids = []
    for i, row in zip(index.tolist(), mask):
        masked = row.nonzero().squeeze(1)  # ascending
        pick = torch.randperm(masked.numel(), generator=_sample_generator(seed, i, DECODER_STREAM))
        ids.append(torch.cat([(~row).nonzero().squeeze(1), masked[pick[:reconstructed]]]).sort()
                   .values)
    ids_decode = torch.stack(ids)  # (B, S)
    return ids_decode, mask.gather(1, ids_decode)
