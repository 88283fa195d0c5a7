"""Hugging Face transformers' VideoMAE (``VideoMAEForPreTraining`` / ``VideoMAEModel``) <->
megavid's layout-free weights.

What HF's VideoMAE computes, as megavid options: pre-LN blocks with LayerNorm
eps ``layer_norm_eps`` (1e-12 by default), the decoder's final norm at torch's
default 1e-5, exact GELU (``hidden_act="gelu"``), biases on q and v but not k
(``qv_bias``), fixed 1-D sinusoidal position tables (buffers, not weights) for
encoder and decoder, a final encoder norm unless ``use_mean_pooling``, an
``encoder_to_decoder`` projection without bias, a Conv3d tubelet embedding
whose weight is (D, C, t, h, w) over (B, T, C, H, W) input, and input that its
processor normalised with ImageNet's mean/std (megavid: ``pixel_norm=imagenet``
on [0, 1] input; the MAE loss un-normalises, as megavid's targets are raw).

Weights are read from / written to a ``save_pretrained`` directory
(``config.json`` + safetensors or ``pytorch_model.bin``); transformers is only
needed to write one (``pip install 'megavid[bench]'``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from megavid.config import ModelConfig
from megavid.config.presets import get_preset, preset_for
from megavid.models.fourds import FormatError, _fused_qkv, split_qkv

HF_DECODER_NORM_EPS = 1e-5  # VideoMAEDecoder.norm is nn.LayerNorm(width): torch's default
_ACTIVATIONS = {"gelu": "exact", "gelu_pytorch_tanh": "tanh"}
_BLOCK = {  # HF VideoMAELayer name -> megavid TransformerLayer name (weights and biases)
    "layernorm_before": "input_layernorm",
    "attention.output.dense": "self_attention.linear_proj",
    "layernorm_after": "pre_mlp_layernorm",
    "intermediate.dense": "mlp.linear_fc1",
    "output.dense": "mlp.linear_fc2",
}


# On disk (and in transformers 4.x modules) the q/v biases are ``q_bias``/``v_bias``;
# transformers 5.x modules call them ``query.bias``/``value.bias`` and rename on load/save.
_ON_DISK = {".attention.attention.q_bias": ".attention.attention.query.bias",
            ".attention.attention.v_bias": ".attention.attention.value.bias"}


def _rename(state: dict, mapping: dict) -> dict:
    out = {}
    for key, value in state.items():
        for old, new in mapping.items():
            if key.endswith(old):
                key = key[: -len(old)] + new
        out[key] = value
    return out


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (list, tuple)) else (value, value)


def model_config_from_hf(config: dict) -> ModelConfig:
    """A VideoMAEConfig (as its dict) -> the megavid ModelConfig computing the same function."""
    image, patch = _pair(config.get("image_size", 224)), _pair(config.get("patch_size", 16))
    if image[0] != image[1] or patch[0] != patch[1]:
        raise FormatError(f"image_size {image} / patch_size {patch}: megavid clips and patches "
                          "are square")
    act = config.get("hidden_act", "gelu")
    if act not in _ACTIVATIONS:
        raise FormatError(f"hidden_act={act!r}: megavid has exact GELU ('gelu') and tanh GELU "
                          "('gelu_pytorch_tanh')")
    arch = get_preset("4ds-b").replace(
        hidden_size=config.get("hidden_size", 768), num_layers=config.get("num_hidden_layers", 12),
        ffn_hidden_size=config.get("intermediate_size", 3072),
        num_attention_heads=config.get("num_attention_heads", 12),
        decoder_hidden_size=config.get("decoder_hidden_size", 384),
        decoder_num_layers=config.get("decoder_num_hidden_layers", 4),
        decoder_ffn_hidden_size=config.get("decoder_intermediate_size", 1536),
        decoder_num_attention_heads=config.get("decoder_num_attention_heads", 6),
        num_frames=config.get("num_frames", 16), image_size=image[0],
        tubelet=(config.get("tubelet_size", 2), patch[0], patch[1]),
        channels=config.get("num_channels", 3))
    preset, overrides = preset_for(arch)
    return ModelConfig(
        preset=preset, arch=overrides, layernorm_epsilon=config.get("layer_norm_eps", 1e-12),
        decoder_norm_epsilon=HF_DECODER_NORM_EPS,
        encoder_final_norm=not config.get("use_mean_pooling", True), gelu=_ACTIVATIONS[act],
        qkv_bias="qv" if config.get("qv_bias", config.get("qkv_bias", True)) else "none",
        pos_embed="sincos",
        pixel_norm="imagenet", decoder_embed_bias=False,
        norm_pix_loss=config.get("norm_pix_loss", True), norm_pix_style="videomae")


def state_from_hf(hf_state: dict[str, torch.Tensor], model_cfg: ModelConfig
                  ) -> dict[str, torch.Tensor]:
    """An HF VideoMAE state dict (with or without the ``videomae.`` prefix and the decoder)
    -> megavid's layout-free weights; unknown, missing or misshapen keys raise naming them."""
    arch = model_cfg.resolved_arch()
    hf = {(k[len("videomae."):] if k.startswith("videomae.") else k): v
          for k, v in _rename(hf_state, _ON_DISK).items()}
    used: set[str] = set()

    def take(key, shape):
        if key not in hf:
            raise FormatError(f"{key}: missing from the Hugging Face weights")
        value = hf[key]
        if tuple(value.shape) != tuple(shape):
            raise FormatError(f"{key}: shape {tuple(value.shape)}, expected {tuple(shape)}")
        used.add(key)
        return value.detach().float().cpu()

    d, t, p, c = arch.hidden_size, *arch.tubelet[:2], arch.channels
    state = {
        # Conv3d (D, C, t, h, w) -> megavid's (D, t*h*w*C) over (t, h, w, c)-ordered tubelets
        "patch_embed.weight": take("embeddings.patch_embeddings.projection.weight",
                                   (d, c, t, p, p)).permute(0, 2, 3, 4, 1).reshape(d, -1),
        "patch_embed.bias": take("embeddings.patch_embeddings.projection.bias", (d,)),
    }
    _take_stack(state, take, "encoder.layer", "encoder.layers", arch.num_layers, d,
                arch.ffn_hidden_size, arch.num_attention_heads, model_cfg.qkv_bias)
    if model_cfg.encoder_final_norm:
        state["encoder_norm.weight"] = take("layernorm.weight", (d,))
        state["encoder_norm.bias"] = take("layernorm.bias", (d,))
    if any(k.startswith(("decoder.", "encoder_to_decoder", "mask_token")) for k in hf):
        dd = arch.decoder_hidden_size
        state["decoder_embed.weight"] = take("encoder_to_decoder.weight", (dd, d))
        state["mask_token"] = take("mask_token", (1, 1, dd)).reshape(dd)
        _take_stack(state, take, "decoder.decoder_layers", "decoder.layers",
                    arch.decoder_num_layers, dd, arch.decoder_ffn_hidden_size,
                    arch.decoder_num_attention_heads, model_cfg.qkv_bias)
        for part in ("weight", "bias"):
            state[f"decoder_norm.{part}"] = take(f"decoder.norm.{part}", (dd,))
        state["head.weight"] = take("decoder.head.weight", (arch.patch_dim, dd))
        state["head.bias"] = take("decoder.head.bias", (arch.patch_dim,))
    unknown = sorted(set(hf) - used)
    if unknown:
        raise FormatError(f"unknown Hugging Face key(s) {unknown[:5]}"
                          + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""))
    return {name: value.contiguous() for name, value in state.items()}


def _take_stack(state, take, src: str, dst: str, layers: int, d: int, ffn: int, heads: int,
                qkv_bias: str) -> None:
    shapes = {"input_layernorm": ((d,), (d,)), "self_attention.linear_proj": ((d, d), (d,)),
              "pre_mlp_layernorm": ((d,), (d,)), "mlp.linear_fc1": ((ffn, d), (ffn,)),
              "mlp.linear_fc2": ((d, ffn), (d,))}
    for i in range(layers):
        hf, mv = f"{src}.{i}.", f"{dst}.{i}."
        for hf_name, mv_name in _BLOCK.items():
            w_shape, b_shape = shapes[mv_name]
            state[f"{mv}{mv_name}.weight"] = take(f"{hf}{hf_name}.weight", w_shape)
            state[f"{mv}{mv_name}.bias"] = take(f"{hf}{hf_name}.bias", b_shape)
        att = f"{hf}attention.attention."
        q, k, v = (take(f"{att}{name}.weight", (d, d)) for name in ("query", "key", "value"))
        state[f"{mv}self_attention.linear_qkv.weight"] = _fused_qkv(q, k, v, heads)
        if qkv_bias == "qv":  # HF has no k bias: megavid's k slice is fixed at 0
            qb, vb = take(f"{att}query.bias", (d,)), take(f"{att}value.bias", (d,))
            state[f"{mv}self_attention.linear_qkv.bias"] = _fused_qkv(qb, torch.zeros(d), vb,
                                                                      heads)


def hf_config_from_model(model_cfg: ModelConfig) -> dict:
    """The VideoMAEConfig fields of a megavid model; refuses what HF cannot compute."""
    arch = model_cfg.resolved_arch()
    problems = {
        "pos_embed": (model_cfg.pos_embed == "sincos", "HF VideoMAE's position tables are fixed "
                      "sinusoids"),
        "pixel_norm": (model_cfg.pixel_norm == "imagenet", "HF VideoMAE takes ImageNet-normalised "
                       "input (its processor's; its loss un-normalises it)"),
        "decoder_norm_epsilon": ((model_cfg.decoder_norm_epsilon or model_cfg.layernorm_epsilon)
                                 == HF_DECODER_NORM_EPS,
                                 f"HF's decoder norm has eps {HF_DECODER_NORM_EPS}"),
        "arch.tubelet": (arch.tubelet[1] == arch.tubelet[2], "HF patches are square"),
    }
    for field, (ok, why) in problems.items():
        if not ok:
            value = getattr(model_cfg, field, arch.tubelet)
            raise FormatError(f"model.{field}={value!r}: {why}; this model has no exact "
                              "Hugging Face VideoMAE equivalent")
    return dict(
        image_size=arch.image_size, patch_size=arch.tubelet[1], num_channels=arch.channels,
        num_frames=arch.num_frames, tubelet_size=arch.tubelet[0], hidden_size=arch.hidden_size,
        num_hidden_layers=arch.num_layers, num_attention_heads=arch.num_attention_heads,
        intermediate_size=arch.ffn_hidden_size,
        hidden_act={v: k for k, v in _ACTIVATIONS.items()}[model_cfg.gelu],
        layer_norm_eps=model_cfg.layernorm_epsilon, qv_bias=model_cfg.qkv_bias != "none",
        qkv_bias=model_cfg.qkv_bias != "none",  # transformers 4.x's name for qv_bias
        use_mean_pooling=not model_cfg.encoder_final_norm,
        decoder_num_attention_heads=arch.decoder_num_attention_heads,
        decoder_hidden_size=arch.decoder_hidden_size,
        decoder_num_hidden_layers=arch.decoder_num_layers,
        decoder_intermediate_size=arch.decoder_ffn_hidden_size,
        norm_pix_loss=model_cfg.norm_pix_loss)


def state_to_hf(state: dict[str, torch.Tensor], model_cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """megavid's layout-free weights -> an HF VideoMAE state dict (``VideoMAEForPreTraining``
    keys if the decoder is there, else ``VideoMAEModel``'s)."""
    arch = model_cfg.resolved_arch()
    hf_config_from_model(model_cfg)  # refuses inexact exports
    with_decoder = "head.weight" in state
    prefix = "videomae." if with_decoder else ""

    def get(name):
        if name not in state:
            raise FormatError(f"{name}: missing from the megavid weights")
        return state[name].detach().float().cpu()

    d, (t, p, _), c = arch.hidden_size, arch.tubelet, arch.channels
    out = {
        f"{prefix}embeddings.patch_embeddings.projection.weight":
            get("patch_embed.weight").reshape(d, t, p, p, c).permute(0, 4, 1, 2, 3),
        f"{prefix}embeddings.patch_embeddings.projection.bias": get("patch_embed.bias"),
    }
    _put_stack(out, get, f"{prefix}encoder.layer", "encoder.layers", arch.num_layers,
               arch.num_attention_heads, model_cfg.qkv_bias)
    if model_cfg.encoder_final_norm:
        out[f"{prefix}layernorm.weight"] = get("encoder_norm.weight")
        out[f"{prefix}layernorm.bias"] = get("encoder_norm.bias")
    if with_decoder:
        if model_cfg.decoder_embed_bias and get("decoder_embed.bias").any():
            raise FormatError("decoder_embed.bias: HF's encoder_to_decoder has no bias and this "
                              "one is not zero")
        out["encoder_to_decoder.weight"] = get("decoder_embed.weight")
        out["mask_token"] = get("mask_token").reshape(1, 1, -1)
        _put_stack(out, get, "decoder.decoder_layers", "decoder.layers",
                   arch.decoder_num_layers, arch.decoder_num_attention_heads, model_cfg.qkv_bias)
        for part in ("weight", "bias"):
            out[f"decoder.norm.{part}"] = get(f"decoder_norm.{part}")
            out[f"decoder.head.{part}"] = get(f"head.{part}")
    return {k: v.contiguous() for k, v in out.items()}


def _put_stack(out, get, dst: str, src: str, layers: int, heads: int, qkv_bias: str) -> None:
    for i in range(layers):
        hf, mv = f"{dst}.{i}.", f"{src}.{i}."
        for hf_name, mv_name in _BLOCK.items():
            out[f"{hf}{hf_name}.weight"] = get(f"{mv}{mv_name}.weight")
            out[f"{hf}{hf_name}.bias"] = get(f"{mv}{mv_name}.bias")
        att = f"{hf}attention.attention."
        q, k, v = split_qkv(get(f"{mv}self_attention.linear_qkv.weight"), heads)
        out[f"{att}query.weight"], out[f"{att}key.weight"], out[f"{att}value.weight"] = q, k, v
        if qkv_bias != "none":
            # a k bias adds q.b_k to all scores of a query alike: the softmax drops it, so
            # leaving it out is exact (and with qkv_bias=qv it is 0 anyway)
            qb, _, vb = split_qkv(get(f"{mv}self_attention.linear_qkv.bias"), heads)
            out[f"{att}query.bias"], out[f"{att}value.bias"] = qb, vb


# -- directories ---------------------------------------------------------------------------------
def _load_hf_weights(directory: Path) -> dict[str, torch.Tensor]:
    files = sorted(directory.glob("*.safetensors"))
    if files:
        from safetensors.torch import load_file

        return {k: v for f in files for k, v in load_file(f).items()}
    files = sorted(directory.glob("pytorch_model*.bin"))
    if files:
        return {k: v for f in files
                for k, v in torch.load(f, map_location="cpu", weights_only=True).items()}
    raise FormatError(f"{directory}: no *.safetensors or pytorch_model*.bin weights")


def read_hf(directory: str | Path, *, weights: bool = True
            ) -> tuple[ModelConfig, dict[str, torch.Tensor] | None]:
    """A ``save_pretrained`` VideoMAE directory -> (ModelConfig, layout-free weights). Offline.

    ``weights=False`` reads config.json only (the weights come back as None)."""
    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text())
    if config.get("model_type") != "videomae":
        raise FormatError(f"{directory}/config.json: model_type {config.get('model_type')!r} is "
                          "not 'videomae'")
    model_cfg = model_config_from_hf(config)
    if not weights:
        return model_cfg, None
    return model_cfg, state_from_hf(_load_hf_weights(directory), model_cfg)


def to_hf_model(model_cfg: ModelConfig, state: dict[str, torch.Tensor]):
    """A transformers ``VideoMAEForPreTraining`` (or ``VideoMAEModel`` without a decoder)
    holding megavid's weights exactly."""
    from transformers import VideoMAEConfig, VideoMAEForPreTraining, VideoMAEModel

    config = VideoMAEConfig(**hf_config_from_model(model_cfg))
    hf_state = state_to_hf(state, model_cfg)
    model = (VideoMAEForPreTraining if "head.weight" in state else VideoMAEModel)(config)
    if any(key.endswith(tuple(_ON_DISK)) for key in model.state_dict()):  # transformers 4.x
        hf_state = _rename(hf_state, {new: old for old, new in _ON_DISK.items()})
    model.load_state_dict(hf_state, strict=True)
    return model.eval()


def write_hf(model_cfg: ModelConfig, state: dict[str, torch.Tensor], directory: str | Path) -> None:
    to_hf_model(model_cfg, state).save_pretrained(str(directory))
