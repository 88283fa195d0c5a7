"""The official 4DS .npz: reading, writing, errors, and features against an independent reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megavid.config import load_config
from megavid.config.presets import get_preset
from megavid.inference import load_encoder, source_arch
from megavid.inference.encoder import Encoder
from megavid.models import fourds
from megavid.models.fourds import FormatError, read_npz, write_npz
from megavid.models.layout_free import layout_free_state
from megavid.tools.convert import convert
from megavid.training.common_state import saved_arch
from tests.interop.helpers import (
    fourds_reference_features,
    make_fourds_npz,
    official_readout_index,
)

DEPTHS = (0.2, 0.5, 0.75, 0.95, 1.0)


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    return make_fourds_npz(tmp_path_factory.mktemp("fourds") / "model.npz", layers=4)


def test_npz_to_megavid_to_npz_is_bit_exact(npz, tmp_path):
    model_cfg, state = read_npz(npz)
    assert (model_cfg.gelu, model_cfg.layernorm_epsilon, model_cfg.encoder_final_norm,
            model_cfg.pixel_norm, model_cfg.qkv_bias) == ("tanh", 1e-6, False, "none", "qkv")
    arch = model_cfg.resolved_arch()
    assert (arch.hidden_size, arch.num_layers, arch.ffn_hidden_size, arch.num_attention_heads,
            arch.num_frames, arch.image_size, arch.tubelet) == (32, 4, 48, 4, 4, 24, (2, 8, 8))
    write_npz(model_cfg, state, tmp_path / "out.npz")
    with np.load(npz) as a, np.load(tmp_path / "out.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            assert a[key].dtype == b[key].dtype == np.float32
            assert np.array_equal(a[key], b[key]), key


def test_megavid_to_npz_to_megavid_is_bit_exact(single_process, tmp_path):
    """A megavid model (random weights, 4DS options) survives the official layout bit for bit."""

    encoder = load_encoder("tiny", seed=7, model={"gelu": "tanh"})
    state = layout_free_state([encoder.chunk])
    write_npz(encoder.model_cfg, state, tmp_path / "tiny.npz")
    model_cfg, back = read_npz(tmp_path / "tiny.npz")
    shape = ("hidden_size", "num_layers", "ffn_hidden_size", "num_attention_heads",
             "num_frames", "image_size", "tubelet", "channels")
    arch = model_cfg.resolved_arch()
    assert [getattr(arch, k) for k in shape] == [getattr(encoder.arch, k) for k in shape]
    assert set(back) == set(state)
    for name, value in state.items():
        assert torch.equal(back[name], value.detach()), name


def test_features_match_the_official_computation(single_process, npz):
    """Features at every depth vs a float64 reference written from the official code."""

    encoder = load_encoder(npz)
    video = torch.rand(2, 4, 24, 24, 3, generator=torch.Generator().manual_seed(0))
    with np.load(npz) as f:
        reference = fourds_reference_features(dict(f), video.numpy())
    assert len(reference) == encoder.num_layers + 1
    worst = 0.0
    for depth in DEPTHS:
        want = reference[official_readout_index(len(reference), depth)]
        got = encoder.features(video, depth=depth, grid=False)
        worst = max(worst, float(np.abs(got.double().numpy() - want).max()))
    print(f"\n4DS npz features vs float64 official reference: max abs error {worst:.3g}")
    assert worst <= 1e-5
    grid = encoder.features(video, depth=0.95)
    assert grid.shape == (2, 2, 3, 3, 32)
    assert torch.equal(grid.reshape(2, -1, 32), encoder.features(video, depth=0.95, grid=False))


def test_readout_depth_follows_the_official_indexing():
    from types import SimpleNamespace


    rule = Encoder(SimpleNamespace(arch=get_preset("4ds-b")), model_cfg=None)
    # 0.95 of 4DS-B's 12 blocks: entry 11 of [tokens, in_0, ..., in_11] = output of block 10
    assert official_readout_index(13, 0.95) == 11 and rule.blocks_for(0.95) == 10
    assert rule.blocks_for(1.0) == 11  # the last block's output is never a candidate
    assert rule.blocks_for(2 / 13) == 0  # entry 1: the block-0 input, i.e. the tokens
    with pytest.raises(ValueError, match="depth 0.01"):
        rule.blocks_for(0.01)


def test_depth_checkpoint_nests_the_encoder(single_process, tmp_path, npz):
    nested = make_fourds_npz(tmp_path / "depth.npz", layers=4, depth_model=True)
    cfg_a, state_a = read_npz(npz)
    cfg_b, state_b = read_npz(nested)
    assert cfg_a == cfg_b and all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    video = torch.rand(1, 4, 24, 24, 3)
    assert torch.equal(load_encoder(nested).features(video), load_encoder(npz).features(video))


def test_source_arch_is_what_load_encoder_builds_without_reading_weights(
        single_process, npz, monkeypatch):

    for source, size in ((npz, {}), ("tiny", {}), ("tiny", dict(num_frames=4, image_size=32))):
        assert source_arch(source, **size) == load_encoder(source, **size).arch, (source, size)

    def no_weights(*args):
        raise AssertionError("source_arch read the weights")

    monkeypatch.setattr(fourds, "_read_encoder", no_weights)
    assert source_arch(npz).hidden_size == 32


def _rewrite(src, dst, change):
    with np.load(src) as f:
        arrays = dict(f)
    change(arrays)
    np.savez(dst, **arrays)
    return dst


@pytest.mark.parametrize("change, message", [
    (lambda a: a.pop("params/processor/layers_1/attention/key/bias"),
     "params/processor/layers_1/attention/key/bias: missing"),
    (lambda a: a.update({"params/processor/layers_0/attention/rope/theta": np.zeros(2)}),
     r"unknown key\(s\) \['params/processor/layers_0/attention/rope/theta'\]"),
    (lambda a: a.update({"params/processor/layers_2/mlp/dense_out/bias": np.zeros(7, np.float32)}),
     r"params/processor/layers_2/mlp/dense_out/bias: shape \(7,\), expected \(32,\)"),
    (lambda a: a.pop("params/processor/layers_2/mlp_norm/scale"),
     "params/processor/layers_2/mlp_norm/scale: missing"),
])
def test_bad_files_fail_naming_the_key(npz, tmp_path, change, message):
    bad = _rewrite(npz, tmp_path / "bad.npz", change)
    with pytest.raises(FormatError, match=message):
        read_npz(bad)


def test_export_refuses_what_the_official_code_would_compute_differently(single_process, tmp_path):
    encoder = load_encoder("tiny")  # exact GELU: megavid's default, not 4DS's
    with pytest.raises(FormatError, match="model.gelu='exact': the official 4DS encoder has 'tanh'"):
        write_npz(encoder.model_cfg, layout_free_state([encoder.chunk]), tmp_path / "x.npz")


def test_load_restores_the_checkpoint_architecture_and_flags_win(single_process, npz, tmp_path):
    convert("4ds-npz", "megavid", npz, tmp_path / "ckpt",
            decoder={"decoder_hidden_size": 16, "decoder_num_attention_heads": 2})
    cfg = load_config(overrides={"checkpoint.load": str(tmp_path / "ckpt")},  # demo config
                      saved_model=saved_arch)
    assert (cfg.model.gelu, cfg.model.resolved_arch().hidden_size,
            cfg.model.resolved_arch().decoder_hidden_size) == ("tanh", 32, 16)
    cfg = load_config(overrides={"checkpoint.load": str(tmp_path / "ckpt"), "model.gelu": "exact"},
                      saved_model=saved_arch)
    assert cfg.model.gelu == "exact"
    assert saved_arch(tmp_path / "nowhere") == {}  # e.g. a path only the cluster can see
