"""The built model: parameter counts, MAE plumbing, masks, and what the loss sees."""

from __future__ import annotations

import pytest
import torch
from megavid.kernels.reference import (
    gather_tokens,
    mae_loss,
    normalize_patches,
    patchify,
    scatter_tokens,
    unpatchify,
)

from megavid.config import load_config
from megavid.config.presets import count_parameters, get_preset, num_visible
from megavid.models.builder import build_model_chunks
from megavid.models.initialization import initialize_chunk
from megavid.models.masking import make_masks
from megavid.parallel import runtime


@pytest.fixture(scope="module")
def single_process_model():
    """Build the tiny model through megatron-core in a one-rank gloo group."""
    import os

    from tests.conftest import free_port

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    runtime.init_distributed()
    runtime.init_model_parallel(tp=1, pp=1, vpp=None)
    runtime.set_seed(3)
    cfg = load_config(overrides={"model.preset": "tiny", "model.mask_ratio": 0.75})
    (chunk,) = build_model_chunks(cfg)
    initialize_chunk(chunk, seed=3, std=0.02)
    yield cfg, chunk
    runtime.shutdown()


def test_built_model_has_the_counted_parameters(single_process_model):
    cfg, chunk = single_process_model
    counts = count_parameters(cfg.model.resolved_arch())
    assert sum(p.numel() for p in chunk.parameters()) == counts["total"]
    enc = sum(p.numel() for n, p in chunk.named_parameters()
              if n.startswith(("patch_embed", "pos_embed", "encoder.")))
    assert enc == counts["encoder"]


def test_forward_predicts_every_tubelet_and_loss_sees_only_masked(single_process_model):
    cfg, chunk = single_process_model
    arch = cfg.model.resolved_arch()
    video = torch.rand(2, arch.num_frames, arch.image_size, arch.image_size, 3)
    ids_keep, mask = make_masks(torch.tensor([5, 9]), grid=arch.grid, mask_ratio=0.75,
                                masking="random", seed=1)
    pred = chunk(video, ids_keep)
    assert pred.shape == (2, arch.num_tokens, arch.patch_dim)
    patches = patchify(video, arch.tubelet)
    # changing predictions at visible positions must not change the loss
    tampered = pred.detach().clone()
    tampered[~mask] += 100.0
    assert mae_loss(tampered, patches, mask) == pytest.approx(mae_loss(pred.detach(), patches, mask).item())
    # the encoder is blind to masked tubelets: changing their pixels changes no prediction input
    video2 = unpatchify(torch.where(mask.unsqueeze(-1), torch.rand_like(patches), patches),
                        arch.tubelet, arch.grid, 3)
    assert torch.allclose(chunk(video2, ids_keep), pred, atol=1e-6)


def test_patchify_roundtrip_and_layout():
    video = torch.arange(2 * 4 * 32 * 32 * 3, dtype=torch.float32).reshape(2, 4, 32, 32, 3)
    patches = patchify(video, (2, 16, 16))
    assert patches.shape == (2, 2 * 2 * 2, 2 * 16 * 16 * 3)
    assert torch.equal(unpatchify(patches, (2, 16, 16), (2, 2, 2), 3), video)
    # token 1 is (t'=0, h'=0, w'=1); its first element is pixel (t=0, y=0, x=16, c=0)
    assert patches[0, 1, 0] == video[0, 0, 0, 16, 0]
    # (t, h, w, c) order inside a tubelet: element 3 is (t=0, y=0, x=1, c=0)
    assert patches[0, 0, 3] == video[0, 0, 0, 1, 0]


def test_gather_scatter_inverse():
    tokens = torch.randn(2, 10, 4)
    ids = torch.tensor([[1, 3, 7], [0, 2, 9]])
    fill = torch.full((4,), -1.0)
    full = scatter_tokens(gather_tokens(tokens, ids), ids, fill, 10)
    keep = torch.zeros(2, 10, dtype=torch.bool).scatter_(1, ids, True)
    assert torch.equal(full[keep], tokens[keep]) and (full[~keep] == -1).all()


@pytest.mark.parametrize("masking, ratio, expected", [("random", 0.95, 79), ("tube", 0.9, 8 * 20)])
def test_masks_are_deterministic_per_sample(masking, ratio, expected):
    grid = get_preset("4ds-b").grid
    assert num_visible(grid, ratio, masking) == expected
    ids_a, mask_a = make_masks(torch.tensor([3, 4]), grid=grid, mask_ratio=ratio, masking=masking, seed=0)
    ids_b, mask_b = make_masks(torch.tensor([4]), grid=grid, mask_ratio=ratio, masking=masking, seed=0)
    assert torch.equal(ids_a[1:], ids_b) and torch.equal(mask_a[1:], mask_b)
    assert (~mask_a).sum(1).tolist() == [expected, expected]
    assert not torch.equal(ids_a[0], ids_a[1])
    if masking == "tube":  # the same spatial positions in every frame
        per_frame = (~mask_a[0]).view(grid[0], -1)
        assert (per_frame == per_frame[0]).all()


def test_normalised_target_has_unit_variance():
    x = torch.rand(3, 5, 1536) * 7 + 2
    y = normalize_patches(x)
    assert torch.allclose(y.mean(-1), torch.zeros(3, 5), atol=1e-5)
    assert torch.allclose(y.var(-1), torch.ones(3, 5), atol=1e-3)
