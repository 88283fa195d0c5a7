"""Test assets made on the spot: a 4DS-layout .npz of random arrays, small HF VideoMAE configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make_fourds_npz(path: Path, *, width=32, layers=4, heads=4, ffn=48, tubelet=(2, 8, 8),
                    grid=(2, 3, 3), channels=3, seed=0, depth_model=False) -> Path:
    """The official release's key layout and shapes, filled with random float32 arrays.

    ``depth_model`` nests the encoder under params/layers_0/ and adds a readout under
    params/layers_2/, as the ScanNet depth checkpoint does.
    """
    rng = np.random.default_rng(seed)
    hd = width // heads

    def rand(*shape, scale=0.1):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    root = "params/layers_0/" if depth_model else "params/"
    arrays = {
        f"{root}encoder/patch_embedding/Conv_0/kernel": rand(*tubelet, channels, width),
        f"{root}encoder/patch_embedding/Conv_0/bias": rand(width),
        f"{root}encoder/posenc/embeddings": rand(*grid, width, scale=0.5),
    }
    for i in range(layers):
        layer = f"{root}processor/layers_{i}/"
        for norm in ("attention_norm", "mlp_norm"):
            arrays[f"{layer}{norm}/scale"] = 1 + rand(width)
            arrays[f"{layer}{norm}/bias"] = rand(width)
        for proj in ("query", "key", "value"):
            arrays[f"{layer}attention/{proj}/kernel"] = rand(width, heads, hd, scale=0.15)
            arrays[f"{layer}attention/{proj}/bias"] = rand(heads, hd)
        arrays[f"{layer}attention/out/kernel"] = rand(heads, hd, width, scale=0.15)
        arrays[f"{layer}attention/out/bias"] = rand(width)
        arrays[f"{layer}mlp/dense_in/kernel"] = rand(width, ffn, scale=0.15)
        arrays[f"{layer}mlp/dense_in/bias"] = rand(ffn)
        arrays[f"{layer}mlp/dense_out/kernel"] = rand(ffn, width, scale=0.15)
        arrays[f"{layer}mlp/dense_out/bias"] = rand(width)
    if depth_model:
        arrays["params/layers_2/query_embedding"] = rand(4, width)
    path = Path(path)
    np.savez(path, **arrays)
    return path


# -- an independent float64 reference of the official 4DS encoder -------------------------------
# Written from representations4d's model.py and kauldron's PreNormBlock /
# ImprovedMultiHeadDotProductAttention / TransformerMLP, against the npz keys directly:
# it shares no code with megavid.
def _layer_norm(x, scale, bias, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def _gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def fourds_reference_features(arrays: dict, video: np.ndarray, root: str = "params/") -> list:
    """The official readout candidates ``[tokens] + [input of each block]``, each (B, N, D)."""
    p = {k: v.astype(np.float64) for k, v in arrays.items()}
    kernel = p[f"{root}encoder/patch_embedding/Conv_0/kernel"]
    t, h, w, c, d = kernel.shape
    b, frames, height, width, _ = video.shape
    x = video.astype(np.float64).reshape(b, frames // t, t, height // h, h, width // w, w, c)
    tokens = np.einsum("bTtHhWwc,thwcd->bTHWd", x, kernel)  # Conv VALID, stride = kernel
    tokens = tokens + p[f"{root}encoder/patch_embedding/Conv_0/bias"]
    tokens = tokens + p[f"{root}encoder/posenc/embeddings"]
    x = tokens.reshape(b, -1, d)
    aux = [x]
    i = 0
    while f"{root}processor/layers_{i}/mlp_norm/scale" in p:
        aux.append(x)
        layer = f"{root}processor/layers_{i}/"
        y = _layer_norm(x, p[layer + "attention_norm/scale"], p[layer + "attention_norm/bias"])
        q, k, v = (np.einsum("bnd,dhk->bnhk", y, p[f"{layer}attention/{n}/kernel"])
                   + p[f"{layer}attention/{n}/bias"] for n in ("query", "key", "value"))
        q = q / np.sqrt(q.shape[-1])
        logits = np.einsum("bqhk,bjhk->bhqj", q, k)
        weights = np.exp(logits - logits.max(-1, keepdims=True))
        weights = weights / weights.sum(-1, keepdims=True)
        att = np.einsum("bhqj,bjhk->bqhk", weights, v)
        x = x + np.einsum("bqhk,hkd->bqd", att, p[layer + "attention/out/kernel"]) \
            + p[layer + "attention/out/bias"]
        y = _layer_norm(x, p[layer + "mlp_norm/scale"], p[layer + "mlp_norm/bias"])
        y = _gelu_tanh(y @ p[layer + "mlp/dense_in/kernel"] + p[layer + "mlp/dense_in/bias"])
        x = x + y @ p[layer + "mlp/dense_out/kernel"] + p[layer + "mlp/dense_out/bias"]
        i += 1
    return aux


def official_readout_index(num_candidates: int, depth: float) -> int:
    """representations4d's EncoderToReadout: ``int(len(all_features) * readout_depth) - 1``."""
    return int(num_candidates * depth) - 1
