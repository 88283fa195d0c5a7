"""The stage map: placement of layers on pipeline ranks and model chunks (megatron's order)."""

from __future__ import annotations

import pytest

from megavid.config import ConfigError, StageMap


def test_interleaved_placement_is_megatron_cores_order():
    stages = StageMap(num_layers=8, pp=2, vpp=2)  # 4 chunks of 2 layers
    assert [list(stages.chunk_layers(c)) for c in range(4)] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert stages.rank_chunks(0) == [0, 2] and stages.rank_chunks(1) == [1, 3]
    assert stages.rank_layers(1) == [range(2, 4), range(6, 8)]
    # owner of each layer: (pipeline rank, model chunk on it)
    assert [stages.owner(layer) for layer in range(8)] == [
        (0, 0), (0, 0), (1, 0), (1, 0), (0, 1), (0, 1), (1, 1), (1, 1)]


def test_every_layer_has_exactly_one_owner():
    for pp, vpp in ((1, 1), (2, 1), (3, 2), (4, 3)):
        stages = StageMap(num_layers=24, pp=pp, vpp=vpp)
        held = sorted(layer for rank in range(pp) for chunk in stages.rank_layers(rank)
                      for layer in chunk)
        assert held == list(range(24))
        for rank in range(pp):
            for v, chunk in enumerate(stages.rank_layers(rank)):
                assert all(stages.owner(layer) == (rank, v) for layer in chunk)


def test_layers_that_do_not_divide_name_the_flags():
    with pytest.raises(ConfigError, match=r"--pp 3 x --vpp 1 = 3 chunks do not divide the 8"):
        StageMap(num_layers=8, pp=3)
