"""The architecture options of ModelConfig: validation, parameter counts, and what each one does."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from megavid.config import ConfigError, ModelConfig, RunConfig, load_config
from megavid.config.presets import count_parameters
from megavid.inference import load_encoder
from megavid.models.builder import build_model_chunks
from megavid.models.initialization import initialize_chunk
from megavid.models.mae import qkv_bias_mask
from megavid.models.masking import make_masks
from megavid.models.posembed import resize_pos_embed, sincos_table
from megavid.parallel import runtime


@pytest.fixture(scope="module")
def build():
    """Build tiny MAE chunks (TP=PP=1) with given ModelConfig fields, seeded."""

    runtime.ensure_model_parallel("tests")

    def make(**fields):
        cfg = RunConfig(model=ModelConfig(preset="tiny", transformer_impl="local", **fields))
        (chunk,) = build_model_chunks(cfg)
        initialize_chunk(chunk, seed=3, std=0.02)
        return chunk

    yield make
    runtime.shutdown()


def test_defaults_are_megavid_original_model():
    cfg = ModelConfig()
    assert (cfg.layernorm_epsilon, cfg.decoder_norm_epsilon, cfg.encoder_final_norm, cfg.gelu,
            cfg.qkv_bias, cfg.pos_embed, cfg.pixel_norm, cfg.decoder_embed_bias,
            cfg.norm_pix_style) == (1e-6, None, False, "exact", "qkv", "learned", "none", True,
                                    "mae")


@pytest.mark.parametrize("override, message", [
    ({"model.gelu": "erf"}, "model.gelu: 'erf' is not one of ('exact', 'tanh')"),
    ({"model.qkv_bias": "k"}, "model.qkv_bias: 'k' is not one of ('qkv', 'qv', 'none')"),
    ({"model.pos_embed": "rope"}, "model.pos_embed: 'rope' is not one of"),
    ({"model.decoder_norm_epsilon": 0}, "model.decoder_norm_epsilon: 0.0 must be > 0"),
    ({"model.pixel_norm": "imagenet", "data.value_range": "imagenet"},
     "model.pixel_norm=imagenet normalises the input itself: set data.value_range=unit"),
])
def test_bad_options_are_named(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(overrides={"model.preset": "tiny", **override})


@pytest.mark.parametrize("fields", [
    {}, {"qkv_bias": "none"}, {"qkv_bias": "qv"}, {"pos_embed": "sincos"},
    {"decoder_embed_bias": False, "encoder_final_norm": True},
])
def test_built_model_has_the_counted_parameters(build, fields):
    chunk = build(**fields)
    counts = count_parameters(chunk.arch, **{k: v for k, v in fields.items()})
    assert sum(p.numel() for p in chunk.parameters()) == counts["total"]
    has_qkv_bias = any(n.endswith("linear_qkv.bias") for n, _ in chunk.named_parameters())
    assert has_qkv_bias == (fields.get("qkv_bias", "qkv") != "none")


def test_qv_bias_keeps_k_at_exactly_zero_under_adam(build):
    chunk = build(qkv_bias="qv")
    optimizer = torch.optim.Adam(chunk.parameters(), lr=1e-2)
    video = torch.rand(2, 8, 64, 64, 3)
    ids_keep, _ = make_masks(torch.tensor([1, 2]), grid=chunk.arch.grid, mask_ratio=0.75,
                             masking="random", seed=0)
    for _ in range(3):
        optimizer.zero_grad()
        chunk(video, ids_keep).pow(2).mean().backward()
        optimizer.step()
    for name, param in chunk.named_parameters():
        if name.endswith("linear_qkv.bias"):  # tiny: 4 heads in encoder and decoder
            k = qkv_bias_mask(4, param.numel() // 12) == 0
            assert torch.count_nonzero(param[k]) == 0, name
            assert torch.count_nonzero(param[~k]) > 0, name  # q and v did move


def test_gelu_tanh_and_pixel_norm_change_the_function(build):
    video = torch.rand(1, 8, 64, 64, 3)
    ids = torch.arange(64).unsqueeze(0)
    with torch.no_grad():
        base = build()(video, ids)
        assert not torch.equal(build(gelu="tanh")(video, ids), base)
        normed = build(pixel_norm="imagenet")
        mean, std = normed.pixel_mean, normed.pixel_std
        assert torch.allclose(normed(video, ids), build()((video - mean) / std, ids), atol=1e-6)


def test_sincos_tables_are_fixed_buffers(build):
    chunk = build(pos_embed="sincos")
    assert "pos_embed" not in dict(chunk.named_parameters())
    assert "pos_embed" not in chunk.state_dict()  # not checkpointed: recomputed from the shape
    assert torch.equal(chunk.pos_embed, sincos_table(64, 64))
    table = sincos_table(3, 4)
    assert torch.allclose(table[1], torch.tensor([1.0, 0.0, 0.01, 1.0]).sin() * torch.tensor(
        [1, 0, 1, 0]) + torch.tensor([0.0, 1.0, 0.0, 0.01]).cos() * torch.tensor([0, 1, 0, 1]))


@pytest.mark.parametrize("method", ["trilinear", "bicubic"])
def test_pos_embed_resize(method):
    table = torch.randn(2 * 3 * 3, 8)
    assert resize_pos_embed(table, (2, 3, 3), (2, 3, 3), method) is table  # same grid: as is
    constant = torch.ones(2 * 3 * 3, 8) * 0.5
    bigger = resize_pos_embed(constant, (2, 3, 3), (4, 5, 5), method)
    assert bigger.shape == (4 * 5 * 5, 8) and torch.allclose(bigger, torch.full_like(bigger, 0.5))
    # frames only: every frame of a time-constant table keeps its spatial pattern
    frames = table.view(2, 9, 8)[:1].expand(2, 9, 8).reshape(18, 8)
    longer = resize_pos_embed(frames, (2, 3, 3), (4, 3, 3), method).view(4, 9, 8)
    assert torch.allclose(longer, frames.view(2, 9, 8)[:1].expand(4, 9, 8), atol=1e-6)
    with pytest.raises(ValueError, match="not one of"):
        resize_pos_embed(table, (2, 3, 3), (4, 3, 3), "nearest")


def test_load_encoder_at_another_clip_size(build):
    encoder = load_encoder("tiny", num_frames=16, image_size=96)
    assert encoder.arch.grid == (8, 6, 6) and encoder.chunk.pos_embed.shape == (8 * 6 * 6, 64)
    assert encoder.features(torch.rand(1, 16, 96, 96, 3)).shape == (1, 8, 6, 6, 64)
    with pytest.raises(ValueError, match=r"video must be \(B, 16, 96, 96, 3\)"):
        encoder.features(torch.rand(1, 8, 64, 64, 3))
    same = load_encoder("tiny", model={"pos_embed": "sincos"}, num_frames=16)
    assert torch.equal(same.chunk.pos_embed, sincos_table(8 * 4 * 4, 64))
    assert dataclasses.asdict(same.model_cfg)["pos_embed"] == "sincos"
