"""Hugging Face VideoMAE: numerical parity on the same random weights, and exact round trips.

Models are built from small configs in the test (no downloads); fp32 throughout.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

transformers = pytest.importorskip("transformers")

from megavid.config import RunConfig  # noqa: E402
from megavid.inference import load_encoder, source_arch  # noqa: E402
from megavid.models.builder import build_model_chunks  # noqa: E402
from megavid.models.fourds import FormatError  # noqa: E402
from megavid.models.hf_videomae import (  # noqa: E402
    model_config_from_hf,
    read_hf,
    state_from_hf,
    state_to_hf,
    to_hf_model,
    write_hf,
)
from megavid.models.initialization import initialize_chunk  # noqa: E402
from megavid.models.layout_free import layout_free_state, load_layout_free_state  # noqa: E402
from megavid.models.mae import IMAGENET_MEAN, IMAGENET_STD, qkv_bias_mask  # noqa: E402
from megavid.models.masking import make_masks  # noqa: E402
from megavid.tools.convert import _run_config  # noqa: E402
from megavid.training.step import make_forward_step  # noqa: E402

SMALL = dict(image_size=32, patch_size=8, num_frames=4, tubelet_size=2, hidden_size=32,
             num_hidden_layers=3, num_attention_heads=4, intermediate_size=48,
             decoder_hidden_size=24, decoder_num_hidden_layers=2, decoder_num_attention_heads=3,
             decoder_intermediate_size=40)
TOL = 1e-5  # fp32, max abs error


def hf_model(cls="VideoMAEForPreTraining", seed=0, **overrides):
    """HF's own random init, plus noise on biases, norms and the mask token so every
    mapping is exercised (HF initialises those to constants)."""
    torch.manual_seed(seed)
    config = transformers.VideoMAEConfig(**{**SMALL, "use_mean_pooling": False, **overrides})
    model = getattr(transformers, cls)(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 1 or "mask_token" in name:
                param.add_(torch.randn_like(param) * 0.02)
    return model


def megavid_mae(model_cfg, state):
    (chunk,) = build_model_chunks(_run_config(model_cfg, 1, 1))
    load_layout_free_state(chunk, state)
    return chunk.eval()


def hf_input(video):
    """What HF's processor gives: ImageNet-normalised, (B, T, C, H, W)."""
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    return ((video - mean) / std).permute(0, 1, 4, 2, 3)


def test_encoder_features_and_mae_loss_match_hf(single_process, tmp_path):
    hf = hf_model()
    hf.save_pretrained(tmp_path / "hf")
    encoder = load_encoder(tmp_path / "hf")
    assert source_arch(tmp_path / "hf") == encoder.arch  # config.json alone gives it
    video = torch.rand(2, 4, 32, 32, 3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        hidden = hf.videomae(hf_input(video), output_hidden_states=True).hidden_states
    errors = {}
    for depth in (0.25, 0.5, 0.75, 1.0):
        got = encoder.features(video, depth=depth, grid=False)
        errors[f"features@{depth}"] = (got - hidden[encoder.blocks_for(depth)]).abs().max().item()

    # the whole MAE through the training step's own forward and loss, for the step's mask
    model_cfg, state = read_hf(tmp_path / "hf")
    chunk = megavid_mae(model_cfg, state)
    cfg = RunConfig(model=dataclasses.replace(model_cfg, mask_ratio=0.75))
    forward_step = make_forward_step(cfg)
    batch = {"index": torch.tensor([3, 8]), "video": video}
    with torch.no_grad():
        pred, loss_func = forward_step(iter([batch]), chunk)
        loss, _ = loss_func(pred)

        ids_keep, mask = make_masks(batch["index"], grid=(2, 4, 4), mask_ratio=0.75,
                                    masking="random", seed=cfg.train.seed)
        out = hf(hf_input(video), bool_masked_pos=mask)
        # the encoder's last hidden state, final norm included
        h = chunk.embed(video, None).transpose(0, 1)
        for layer in chunk.encoder.layers:
            h, _ = layer(h, attention_mask=None)
        last = chunk.encoder_norm(h).transpose(0, 1)
        want_last = hf.videomae(hf_input(video)).last_hidden_state
    errors["last_hidden_state"] = (last - want_last).abs().max().item()
    masked_pred = torch.stack([pred[b][mask[b]] for b in range(2)])  # HF predicts masked only
    errors["mae_logits"] = (masked_pred - out.logits).abs().max().item()
    errors["mae_loss"] = abs(loss.item() - out.loss.item())
    print("\nmegavid vs HF VideoMAE, max abs error: "
          + ", ".join(f"{k} {v:.3g}" for k, v in errors.items()))
    assert all(v <= TOL for v in errors.values()), errors
    assert out.loss.item() > 0.1  # a real loss, not a degenerate one


def test_videomae_model_with_mean_pooling_and_no_qv_bias(single_process, tmp_path):
    hf = hf_model("VideoMAEModel", seed=2, use_mean_pooling=True, qv_bias=False,
                  hidden_act="gelu_pytorch_tanh")
    hf.save_pretrained(tmp_path / "hf")
    encoder = load_encoder(tmp_path / "hf")
    cfg = encoder.model_cfg
    assert (cfg.qkv_bias, cfg.encoder_final_norm, cfg.gelu) == ("none", False, "tanh")
    assert not any("linear_qkv.bias" in n for n, _ in encoder.chunk.named_parameters())
    video = torch.rand(1, 4, 32, 32, 3)
    with torch.no_grad():
        want = hf(hf_input(video)).last_hidden_state  # no final norm with mean pooling
    # depth 1.0 is the input of the last block (official convention): apply that one too
    h = encoder.features(video, depth=1.0, grid=False).transpose(0, 1)
    with torch.no_grad():
        h, _ = encoder.chunk.encoder.layers[-1](h, attention_mask=None)
    error = (h.transpose(0, 1) - want).abs().max().item()
    print(f"\nVideoMAEModel (mean pooling, no q/v bias, tanh GELU): max abs error {error:.3g}")
    assert error <= TOL


def test_megavid_to_hf_to_megavid_is_bit_exact(single_process, tmp_path):
    model_cfg = model_config_from_hf(transformers.VideoMAEConfig(**SMALL).to_dict())
    (chunk,) = build_model_chunks(_run_config(model_cfg, 1, 1))
    initialize_chunk(chunk, seed=5, std=0.02)
    with torch.no_grad():
        for name, param in chunk.named_parameters():
            param.add_(torch.randn_like(param) * 0.02)
            if name.endswith("linear_qkv.bias"):  # qv: the k slice stays at zero
                param.mul_(_k_mask(model_cfg, name, param))
    state = layout_free_state([chunk])
    back = state_from_hf(to_hf_model(model_cfg, state).state_dict(), model_cfg)
    assert set(back) == set(state)
    assert all(torch.equal(back[k], state[k]) for k in state)
    write_hf(model_cfg, state, tmp_path / "hf")
    cfg2, back2 = read_hf(tmp_path / "hf")
    assert cfg2 == model_cfg and all(torch.equal(back2[k], state[k]) for k in state)
    assert state_to_hf(back2, cfg2).keys() == to_hf_model(cfg2, back2).state_dict().keys()


def _k_mask(model_cfg, name, param):
    arch = model_cfg.resolved_arch()
    heads = arch.num_attention_heads if name.startswith("encoder") else \
        arch.decoder_num_attention_heads
    return qkv_bias_mask(heads, param.numel() // 3 // heads)


def test_bad_hf_weights_fail_naming_the_key():
    hf = hf_model()
    model_cfg = model_config_from_hf(hf.config.to_dict())
    state = dict(hf.state_dict())
    state["videomae.encoder.layer.1.attention.attention.key.bias"] = torch.zeros(32)
    with pytest.raises(FormatError, match=r"unknown Hugging Face key\(s\) "
                                          r"\['encoder.layer.1.attention.attention.key.bias'\]"):
        state_from_hf(state, model_cfg)
    state = dict(hf.state_dict())
    state["decoder.head.bias"] = torch.zeros(5)
    with pytest.raises(FormatError, match=r"decoder.head.bias: shape \(5,\), expected \(384,\)"):
        state_from_hf(state, model_cfg)
    state = dict(hf.state_dict())
    del state["videomae.encoder.layer.2.output.dense.weight"]
    with pytest.raises(FormatError, match="encoder.layer.2.output.dense.weight: missing"):
        state_from_hf(state, model_cfg)


def test_export_refuses_a_model_hf_cannot_compute(single_process):
    encoder = load_encoder("tiny")  # learned position table, no pixel normalisation
    with pytest.raises(FormatError, match="model.pos_embed='learned'"):
        state_to_hf(layout_free_state([encoder.chunk]), encoder.model_cfg)
