"""Layout-free initialisation: any TP shard is a slice of one stream per parameter, and the
values are a normal truncated at 2 std."""

from __future__ import annotations

import math

import pytest
import torch

from megavid.models.initialization import draw_shard


@pytest.mark.parametrize("shape,dim,parts", [((6, 5), 0, 2), ((6, 5), 1, 5), ((8, 3, 2), 1, 3),
                                             ((12, 7), 0, 4), ((10,), 0, 2)])
def test_shards_are_slices_of_the_whole(shape, dim, parts):
    """What TP makes of a parameter: shard i on rank i equals slice i of the one-rank tensor
    (shard sizes here leave the start of most shards inside one of Philox's 4-draw blocks)."""
    whole = draw_shard(7, "encoder.layers.0.mlp.linear_fc1.weight", 0.02, shape, dim, 0)
    local = list(shape)
    local[dim] //= parts
    shards = [draw_shard(7, "encoder.layers.0.mlp.linear_fc1.weight", 0.02, tuple(local), dim, i)
              for i in range(parts)]
    assert torch.equal(torch.cat(shards, dim), whole)


def test_values_are_a_normal_truncated_at_two_std():
    std = 0.02
    x = draw_shard(3, "decoder.layers.1.self_attention.linear_qkv.weight", std, (1000, 1000), 0, 0)
    assert x.dtype == torch.float64 and x.abs().max() <= 2 * std
    phi = lambda v: (1 + math.erf(v / math.sqrt(2))) / 2  # noqa: E731
    mass = phi(2) - phi(-2)
    # the truncated normal's std and the share within 1 std, to the sampling error of 1e6 draws
    expected_std = std * math.sqrt(1 - 2 * 2 * math.exp(-2) / math.sqrt(2 * math.pi) / mass)
    assert x.std().item() == pytest.approx(expected_std, rel=2e-3)
    assert abs(x.mean().item()) < 5 * expected_std / 1000
    within = (x.abs() < std).double().mean().item()
    assert within == pytest.approx((phi(1) - phi(-1)) / mass, abs=2e-3)


def test_seed_and_name_each_change_the_values():
    base = draw_shard(1, "a.weight", 1.0, (4, 4), 0, 0)
    assert torch.equal(base, draw_shard(1, "a.weight", 1.0, (4, 4), 0, 0))
    assert not torch.equal(base, draw_shard(2, "a.weight", 1.0, (4, 4), 0, 0))
    assert not torch.equal(base, draw_shard(1, "b.weight", 1.0, (4, 4), 0, 0))
