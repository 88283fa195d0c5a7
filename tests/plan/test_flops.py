"""The analytic FLOPs count against torch's FlopCounterMode on real megavid models."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from megavid.config.presets import PRESETS
from megavid.models.flops import (
    cpu_sdpa_flop_mapping,
    mae_forward_flops,
    mae_train_flops_per_clip,
)
from megavid.models.masking import make_decoder_masks

BATCH = 2


def _attention_flops(arch, mask_ratio: float) -> int:
    """Forward Q K^T and A V FLOPs per clip (4 s^2 h per layer)."""
    k, n = arch.num_tokens - int(mask_ratio * arch.num_tokens), arch.num_tokens
    return (arch.num_layers * 4 * k * k * arch.hidden_size
            + arch.decoder_num_layers * 4 * n * n * arch.decoder_hidden_size)


def _count(fn) -> int:
    with FlopCounterMode(display=False, custom_mapping=cpu_sdpa_flop_mapping()) as counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("preset", ["tiny", "demo"])
@pytest.mark.parametrize("mask_ratio", [0.75, 0.9])
def test_forward_flops_match_counter_exactly(build_chunk, preset, mask_ratio):
    _, arch, chunk, inputs = build_chunk(preset, mask_ratio)
    video, ids_keep, _ = inputs(BATCH)
    counted = _count(lambda: chunk(video, ids_keep))
    assert counted == BATCH * mae_forward_flops(arch, mask_ratio=mask_ratio)["total"]


@pytest.mark.parametrize("decoder_mask_ratio", [0.5, 0.9])
def test_decoder_masking_flops_match_counter_exactly(build_chunk, decoder_mask_ratio):
    """The decoder and head on the visible plus the reconstructed tubelets only."""
    _, arch, chunk, inputs = build_chunk("tiny", 0.75)
    video, ids_keep, mask = inputs(BATCH)
    ids_decode, _ = make_decoder_masks(torch.arange(BATCH), mask, grid=arch.grid,
                                       mask_ratio=0.75, masking="random",
                                       decoder_mask_ratio=decoder_mask_ratio, seed=1)
    counted = _count(lambda: chunk(video, ids_keep, ids_decode))
    full = mae_forward_flops(arch, mask_ratio=0.75)["total"]
    expected = mae_forward_flops(arch, mask_ratio=0.75, decoder_mask_ratio=decoder_mask_ratio)
    assert counted == BATCH * expected["total"] < BATCH * full


@pytest.mark.parametrize("preset", ["tiny", "demo"])
def test_train_flops_are_3x_forward_less_the_pixel_gradient(build_chunk, preset):
    """Counter = 3x forward - pixel gradient (none needed) + flash's recomputed Q K^T."""
    _, arch, chunk, inputs = build_chunk(preset)
    video, ids_keep, _ = inputs(BATCH)

    def step():
        chunk(video, ids_keep).float().pow(2).mean().backward()

    counted = _count(step)
    parts = mae_forward_flops(arch, mask_ratio=0.75)
    convention = mae_train_flops_per_clip(arch, mask_ratio=0.75)
    recomputed_scores = _attention_flops(arch, 0.75) // 2
    assert counted == BATCH * (convention - parts["patch_embed"] + recomputed_scores)


def test_without_the_cpu_sdpa_mapping_the_counter_misses_attention(build_chunk):
    _, arch, chunk, inputs = build_chunk("tiny")
    video, ids_keep, _ = inputs(BATCH)
    with FlopCounterMode(display=False) as counter:
        chunk(video, ids_keep)
    attention = _attention_flops(arch, 0.75)
    expected = BATCH * (mae_forward_flops(arch, mask_ratio=0.75)["total"] - attention)
    assert counter.get_total_flops() == expected


def test_pixel_gradient_is_negligible_for_4ds_presets():
    """The 3x convention is within 0.2% of what is computed for every 4DS size."""

    for name, arch in PRESETS.items():
        if not name.startswith("4ds"):
            continue
        parts = mae_forward_flops(arch, mask_ratio=0.95)
        assert parts["patch_embed"] / (3 * parts["total"]) < 2e-3, name
