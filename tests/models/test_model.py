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
from megavid.config.presets import (
    count_parameters,
    get_preset,
    num_decoded,
    num_visible,
)
from megavid.models.builder import build_model_chunks
from megavid.models.initialization import initialize_chunk
from megavid.models.masking import make_decoder_masks, make_masks
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


def test_decoder_on_all_tubelets_is_the_full_decoder_and_a_subset_sees_only_its_own(
        single_process_model):
    """ids_decode = all N is bit-identical to the default; with a subset, the predictions of
    the decoded tokens do not depend on the pixels of any masked tubelet (dropped or not),
    and the loss covers exactly the reconstructed ones."""
    cfg, chunk = single_process_model
    arch = cfg.model.resolved_arch()
    video = torch.rand(2, arch.num_frames, arch.image_size, arch.image_size, 3)
    index = torch.tensor([5, 9])
    masks = dict(grid=arch.grid, mask_ratio=0.75, masking="random")
    ids_keep, mask = make_masks(index, seed=1, **masks)
    everything = torch.arange(arch.num_tokens).expand(2, -1)
    assert torch.equal(chunk(video, ids_keep, everything), chunk(video, ids_keep))
    ids_decode, target = make_decoder_masks(index, mask, seed=1, decoder_mask_ratio=0.5, **masks)
    pred = chunk(video, ids_keep, ids_decode)
    s = num_decoded(arch.grid, 0.75, "random", 0.5)
    assert pred.shape == (2, s, arch.patch_dim) and s < arch.num_tokens
    patches = patchify(video, arch.tubelet)
    video2 = unpatchify(torch.where(mask.unsqueeze(-1), torch.rand_like(patches), patches),
                        arch.tubelet, arch.grid, 3)
    assert torch.allclose(chunk(video2, ids_keep, ids_decode), pred, atol=1e-6)
    targets = gather_tokens(patches, ids_decode)
    tampered = pred.detach().clone()
    tampered[~target] += 100.0  # visible tokens among the decoded ones: not in the loss
    assert mae_loss(tampered, targets, target) == pytest.approx(
        mae_loss(pred.detach(), targets, target).item())


def test_decoder_masks_are_a_pure_function_of_seed_and_sample():
    """The decoder's subset: every visible tubelet plus a fixed number of masked ones drawn
    from (seed, sample index) alone, so batch composition (the layout) and resume do not
    change it; drawn independently of the encoder's mask."""
    grid = get_preset("4ds-b").grid
    masks = dict(grid=grid, mask_ratio=0.95, masking="random")
    ids_a, mask_a = make_masks(torch.tensor([3, 4]), seed=0, **masks)
    _, mask_b = make_masks(torch.tensor([4]), seed=0, **masks)
    dec_a, target_a = make_decoder_masks(torch.tensor([3, 4]), mask_a, seed=0,
                                         decoder_mask_ratio=0.5, **masks)
    dec_b, target_b = make_decoder_masks(torch.tensor([4]), mask_b, seed=0,
                                         decoder_mask_ratio=0.5, **masks)
    assert torch.equal(dec_a[1:], dec_b) and torch.equal(target_a[1:], target_b)
    assert num_decoded(grid, 0.95, "random", 0.5) == 79 + 745 == dec_a.shape[1]
    assert target_a.sum(1).tolist() == [745, 745]  # 1489 masked, int(0.5 * 1489) dropped
    assert (dec_a.diff(dim=1) > 0).all()  # ascending, no repeats
    for row, keep in zip(dec_a, ids_a):
        assert torch.isin(keep, row).all()
    assert torch.equal(target_a, mask_a.gather(1, dec_a))
    assert not torch.equal(dec_a[0], dec_a[1])
    other, _ = make_decoder_masks(torch.tensor([3, 4]), mask_a, seed=1, decoder_mask_ratio=0.5,
                                  **masks)
    assert not torch.equal(other, dec_a)
    # not simply the first masked tubelets: spread over the whole clip
    masked_ids = mask_a[0].nonzero().squeeze(1)
    assert dec_a[0][target_a[0]].max() > masked_ids[745]


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
