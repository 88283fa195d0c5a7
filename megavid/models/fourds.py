"""The official 4DS release (representations4d, JAX/Flax) <-> megavid's layout-free weights.

The release is a flat ``.npz`` of float32 arrays, keys joined by ``/``:

    params/encoder/patch_embedding/Conv_0/{kernel [t,h,w,C,D], bias [D]}
    params/encoder/posenc/embeddings [T',H',W',D]
    params/processor/layers_{i}/{attention_norm,mlp_norm}/{scale,bias} [D]
    params/processor/layers_{i}/attention/{query,key,value}/{kernel [D,H,D/H], bias [H,D/H]}
    params/processor/layers_{i}/attention/out/{kernel [H,D/H,D], bias [D]}
    params/processor/layers_{i}/mlp/{dense_in,dense_out}/{kernel [in,out], bias [out]}

The depth model nests that encoder under ``params/layers_0/`` (an
``nn.Sequential`` of encoder, readout-depth selector and readout) and its
attention readout under ``params/layers_2/``, which megavid does not use: those
keys are skipped and reported. Semantics the file does not store, fixed by the
official code: pre-LN blocks, LayerNorm eps 1e-6, tanh GELU, no final norm, no
input normalisation ([0, 1] RGB), learned position table, biases everywhere.

megavid's side is a layout-free state dict (``megavid.models.layout_free``): whole
tensors under names such as ``encoder.layers.3.self_attention.linear_qkv.weight``,
whose rows megatron-core interleaves per head as ``[q_h; k_h; v_h]``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from megavid.config import ModelConfig
from megavid.config.presets import ModelArch, get_preset, preset_for
from megavid.models.posembed import sincos_table

ENCODER_PREFIXES = ("params/encoder/", "params/layers_0/encoder/")
_LAYER = re.compile(r"^processor/layers_(\d+)/")
# what the official code hard-wires, as megavid ModelConfig fields
FOURDS_OPTIONS = dict(layernorm_epsilon=1e-6, gelu="tanh", qkv_bias="qkv", pos_embed="learned",
                      encoder_final_norm=False, pixel_norm="none")


class FormatError(ValueError):
    """A key is missing, unknown or of the wrong shape; the message names it."""


def _fused_qkv(q, k, v, heads: int) -> torch.Tensor:
    """Three (H*hd, ...) tensors -> megatron's per-head interleaved (3*H*hd, ...) rows."""
    parts = [x.reshape(heads, -1, *x.shape[1:]) for x in (q, k, v)]  # (H, hd, ...)
    fused = torch.stack(parts, dim=1)  # (H, 3, hd, ...)
    return fused.reshape(-1, *q.shape[1:])


def split_qkv(fused: torch.Tensor, heads: int) -> tuple[torch.Tensor, ...]:
    """Inverse of ``_fused_qkv``: (3*H*hd, ...) -> q, k, v each (H*hd, ...)."""
    x = fused.reshape(heads, 3, -1, *fused.shape[1:])
    return tuple(x[:, j].reshape(-1, *fused.shape[1:]) for j in range(3))


class _Reader:
    """Takes arrays out of the npz by key, checking shapes; what is never taken is unknown."""

    def __init__(self, arrays: np.lib.npyio.NpzFile, prefix: str):
        self.arrays, self.prefix, self.used = arrays, prefix, set()
        self.keys = set(arrays.files)

    def take(self, key: str, shape: tuple | None = None) -> torch.Tensor:
        full = self.prefix + key
        if full not in self.keys:
            raise FormatError(f"{full}: missing from the checkpoint")
        value = self.arrays[full]
        if shape is not None and tuple(value.shape) != tuple(shape):
            raise FormatError(f"{full}: shape {tuple(value.shape)}, expected {tuple(shape)}")
        self.used.add(full)
        return torch.from_numpy(np.asarray(value, dtype=np.float32))


def _infer_arch(arrays: np.lib.npyio.NpzFile, prefix: str) -> ModelArch:
    def shape(key):
        if prefix + key not in arrays.files:
            raise FormatError(f"{prefix}{key}: missing from the checkpoint")
        return arrays[prefix + key].shape

    t, h, w, c, d = shape("encoder/patch_embedding/Conv_0/kernel")
    gt, gh, gw, _ = shape("encoder/posenc/embeddings")
    layers = sorted({int(m.group(1)) for key in arrays.files if key.startswith(prefix)
                     for m in [_LAYER.match(key[len(prefix):])] if m})
    if not layers or layers != list(range(len(layers))):
        raise FormatError(f"{prefix}processor/layers_*: expected layers_0..layers_N-1, "
                          f"found {layers}")
    _, heads, _ = shape("processor/layers_0/attention/query/kernel")
    _, ffn = shape("processor/layers_0/mlp/dense_in/kernel")
    if gh * h != gw * w:
        raise FormatError(f"{prefix}encoder/posenc/embeddings: grid {gh}x{gw} of {h}x{w} "
                          "patches is not square; megavid clips are square")
    base = get_preset("4ds-b")  # the decoder megavid pairs with a released encoder
    return base.replace(hidden_size=d, num_layers=len(layers), ffn_hidden_size=ffn,
                        num_attention_heads=heads, num_frames=gt * t, image_size=gh * h,
                        tubelet=(t, h, w), channels=c)


def read_npz(path: str | Path, *, weights: bool = True
             ) -> tuple[ModelConfig, dict[str, torch.Tensor] | None]:
    """An official 4DS ``.npz`` -> (its ModelConfig, encoder weights under megavid names).

    Unknown keys, missing keys and shape mismatches raise ``FormatError`` naming the key.
    ``weights=False`` returns None for the weights and reads only the few arrays whose
    shapes give the architecture.
    """
    with np.load(path, allow_pickle=False) as arrays:  # arrays are read one key at a time
        prefix = next((p for p in ENCODER_PREFIXES
                       if p + "patch_embedding/Conv_0/kernel" in arrays.files), None)
        if prefix is None:
            raise FormatError(f"{path}: no {ENCODER_PREFIXES[0]}patch_embedding/Conv_0/kernel "
                              "(nor under params/layers_0/): not a 4DS encoder checkpoint")
        prefix = prefix[: -len("encoder/")]
        arch = _infer_arch(arrays, prefix)
        if not weights:
            preset, overrides = preset_for(arch)
            return ModelConfig(preset=preset, arch=overrides, **FOURDS_OPTIONS), None
        reader = _Reader(arrays, prefix)
        state = _read_encoder(reader, arch)
        skipped = "params/layers_2/" if prefix == "params/layers_0/" else None  # depth readout
        unknown = [key for key in arrays.files if key not in reader.used
                   and not (skipped and key.startswith(skipped))]
    if unknown:
        raise FormatError(f"{path}: unknown key(s) {sorted(unknown)[:5]}"
                          + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""))
    preset, overrides = preset_for(arch)
    return ModelConfig(preset=preset, arch=overrides, **FOURDS_OPTIONS), state


def _read_encoder(reader: _Reader, arch: ModelArch) -> dict:
    d, f, heads = arch.hidden_size, arch.ffn_hidden_size, arch.num_attention_heads
    hd = d // heads
    state = {
        "patch_embed.weight": reader.take("encoder/patch_embedding/Conv_0/kernel",
                                          (*arch.tubelet, arch.channels, d)).reshape(-1, d).T,
        "patch_embed.bias": reader.take("encoder/patch_embedding/Conv_0/bias", (d,)),
        "pos_embed": reader.take("encoder/posenc/embeddings", (*arch.grid, d)).reshape(-1, d),
    }
    for i in range(arch.num_layers):
        src, dst = f"processor/layers_{i}/", f"encoder.layers.{i}."
        att = src + "attention/"
        for norm, name in (("attention_norm", "input_layernorm"), ("mlp_norm", "pre_mlp_layernorm")):
            state[f"{dst}{name}.weight"] = reader.take(f"{src}{norm}/scale", (d,))
            state[f"{dst}{name}.bias"] = reader.take(f"{src}{norm}/bias", (d,))
        qkv = [reader.take(f"{att}{p}/kernel", (d, heads, hd)).reshape(d, d).T
               for p in ("query", "key", "value")]  # (out, in) each
        bias = [reader.take(f"{att}{p}/bias", (heads, hd)).reshape(d)
                for p in ("query", "key", "value")]
        state[f"{dst}self_attention.linear_qkv.weight"] = _fused_qkv(*qkv, heads)
        state[f"{dst}self_attention.linear_qkv.bias"] = _fused_qkv(*bias, heads)
        state[f"{dst}self_attention.linear_proj.weight"] = reader.take(
            f"{att}out/kernel", (heads, hd, d)).reshape(d, d).T
        state[f"{dst}self_attention.linear_proj.bias"] = reader.take(f"{att}out/bias", (d,))
        state[f"{dst}mlp.linear_fc1.weight"] = reader.take(f"{src}mlp/dense_in/kernel", (d, f)).T
        state[f"{dst}mlp.linear_fc1.bias"] = reader.take(f"{src}mlp/dense_in/bias", (f,))
        state[f"{dst}mlp.linear_fc2.weight"] = reader.take(f"{src}mlp/dense_out/kernel", (f, d)).T
        state[f"{dst}mlp.linear_fc2.bias"] = reader.take(f"{src}mlp/dense_out/bias", (d,))
    return {name: value.contiguous() for name, value in state.items()}


def check_exportable(model_cfg: ModelConfig) -> None:
    """Refuse a model the official 4DS code would compute differently, naming the field.

    Any ``qkv_bias`` and ``pos_embed`` export exactly (absent biases as zeros, a
    sinusoidal table as values); the fields below are hard-wired in the official code.
    """
    for field in ("layernorm_epsilon", "gelu", "encoder_final_norm", "pixel_norm"):
        have, want = getattr(model_cfg, field), FOURDS_OPTIONS[field]
        if have != want:
            raise FormatError(f"model.{field}={have!r}: the official 4DS encoder has {want!r}, "
                              "so its code would compute a different function")


def write_npz(model_cfg: ModelConfig, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """megavid weights -> an ``.npz`` in the official encoder layout (float32).

    q/k/v biases megavid keeps fixed at zero or leaves out (``qkv_bias`` qv or
    none) are written as zeros; a fixed sinusoidal position table as its values.
    """
    check_exportable(model_cfg)
    arch = model_cfg.resolved_arch()
    d, f, heads = arch.hidden_size, arch.ffn_hidden_size, arch.num_attention_heads
    hd = d // heads

    def get(name, shape):
        if name not in state:
            raise FormatError(f"{name}: missing from the megavid weights")
        value = state[name].detach().float().cpu()
        if tuple(value.shape) != tuple(shape):
            raise FormatError(f"{name}: shape {tuple(value.shape)}, expected {tuple(shape)}")
        return value

    pos = (get("pos_embed", (arch.num_tokens, d)) if model_cfg.pos_embed == "learned"
           else sincos_table(arch.num_tokens, d))
    out = {
        "params/encoder/patch_embedding/Conv_0/kernel":
            get("patch_embed.weight", (d, arch.patch_dim)).T.reshape(*arch.tubelet, arch.channels, d),
        "params/encoder/patch_embedding/Conv_0/bias": get("patch_embed.bias", (d,)),
        "params/encoder/posenc/embeddings": pos.reshape(*arch.grid, d),
    }
    for i in range(arch.num_layers):
        src, dst = f"encoder.layers.{i}.", f"params/processor/layers_{i}/"
        att = dst + "attention/"
        for norm, name in (("attention_norm", "input_layernorm"), ("mlp_norm", "pre_mlp_layernorm")):
            out[f"{dst}{norm}/scale"] = get(f"{src}{name}.weight", (d,))
            out[f"{dst}{norm}/bias"] = get(f"{src}{name}.bias", (d,))
        weights = split_qkv(get(f"{src}self_attention.linear_qkv.weight", (3 * d, d)), heads)
        bias_name = f"{src}self_attention.linear_qkv.bias"
        fused_bias = (get(bias_name, (3 * d,)) if model_cfg.qkv_bias != "none"
                      else torch.zeros(3 * d))
        biases = split_qkv(fused_bias, heads)
        for p, w, b in zip(("query", "key", "value"), weights, biases):
            out[f"{att}{p}/kernel"] = w.T.reshape(d, heads, hd)
            out[f"{att}{p}/bias"] = b.reshape(heads, hd)
        out[f"{att}out/kernel"] = get(f"{src}self_attention.linear_proj.weight", (d, d)).T.reshape(
            heads, hd, d)
        out[f"{att}out/bias"] = get(f"{src}self_attention.linear_proj.bias", (d,))
        out[f"{dst}mlp/dense_in/kernel"] = get(f"{src}mlp.linear_fc1.weight", (f, d)).T
        out[f"{dst}mlp/dense_in/bias"] = get(f"{src}mlp.linear_fc1.bias", (f,))
        out[f"{dst}mlp/dense_out/kernel"] = get(f"{src}mlp.linear_fc2.weight", (d, f)).T
        out[f"{dst}mlp/dense_out/bias"] = get(f"{src}mlp.linear_fc2.bias", (d,))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:  # np.savez would append .npz to a name without it
        np.savez(fh, **{k: np.ascontiguousarray(v.numpy(), dtype=np.float32) for k, v in out.items()})
