"""The 4DS size family: the one table of model presets megavid knows.

Encoder sizes are those of *Scaling 4D Representations* (Carreira et al. 2024,
Table 1): width / depth / MLP width / heads, 16x224x224 clips cut into 2x16x16
tubelets. 4DS-j (the 22B class) is not fully specified in the paper; we use
6144/48/24576/48, the width/depth ratio of ViT-22B's family scaled to ~22B
encoder parameters (21.8B exact, see ``count_parameters``). The MAE decoder
follows VideoMAE (4 blocks, width 512) unless a preset says otherwise.

Everything that needs a model size (the model builder, FLOPs accounting, the
CLI's ``--list``) reads it from here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelArch:
    """Shape of an MAE model: encoder, decoder and the clip it consumes."""

    hidden_size: int
    num_layers: int
    ffn_hidden_size: int
    num_attention_heads: int
    decoder_hidden_size: int = 512
    decoder_num_layers: int = 4
    decoder_ffn_hidden_size: int = 2048
    decoder_num_attention_heads: int = 8
    num_frames: int = 16
    image_size: int = 224
    tubelet: tuple[int, int, int] = (2, 16, 16)  # (t, h, w)
    channels: int = 3

    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid (T', H', W') after tubelet embedding."""
        t, h, w = self.tubelet
        return (self.num_frames // t, self.image_size // h, self.image_size // w)

    @property
    def num_tokens(self) -> int:
        gt, gh, gw = self.grid
        return gt * gh * gw

    @property
    def patch_dim(self) -> int:
        """Pixels per tubelet: the decoder's output width."""
        t, h, w = self.tubelet
        return t * h * w * self.channels

    def replace(self, **changes) -> "ModelArch":
        return dataclasses.replace(self, **changes)


# Tiny sizes keep tests and the CPU demo in seconds; they share the 4DS structure.
_TINY_CLIP = dict(num_frames=8, image_size=64)
_TINY_DECODER = dict(
    decoder_hidden_size=32, decoder_num_layers=2, decoder_ffn_hidden_size=64,
    decoder_num_attention_heads=4,
)

PRESETS: dict[str, ModelArch] = {
    # name: ModelArch(width, depth, MLP width, heads, ...)
    "tiny": ModelArch(64, 6, 128, 4, **_TINY_DECODER, **_TINY_CLIP),  # 6 + 2 layers
    "demo": ModelArch(96, 4, 384, 4, decoder_hidden_size=64, decoder_num_layers=2,
                      decoder_ffn_hidden_size=256, decoder_num_attention_heads=4,
                      **_TINY_CLIP),
    "4ds-s": ModelArch(384, 12, 1536, 6),
    "4ds-b": ModelArch(768, 12, 3072, 12),
    "4ds-l": ModelArch(1024, 24, 4096, 16),
    "4ds-h": ModelArch(1280, 32, 5120, 16),
    "4ds-g": ModelArch(1664, 48, 8192, 16),
    "4ds-e": ModelArch(1792, 56, 15360, 16),
    "4ds-j": ModelArch(6144, 48, 24576, 48),
}


def get_preset(name: str) -> ModelArch:
    key = name.lower()
    if key not in PRESETS:
        raise ValueError(
            f"model.preset: unknown preset {name!r}; choose one of {', '.join(PRESETS)} "
            "(python -m megavid.models --list shows their sizes)"
        )
    return PRESETS[key]


def preset_for(arch: ModelArch) -> tuple[str, dict]:
    """(preset, overrides) that resolve to ``arch``: the preset differing in fewest fields.

    How converters express a model they read as a ``ModelConfig`` (preset + arch).
    """
    best = None
    for name, preset in PRESETS.items():
        changes = {f.name: getattr(arch, f.name) for f in dataclasses.fields(ModelArch)
                   if getattr(arch, f.name) != getattr(preset, f.name)}
        if best is None or len(changes) < len(best[1]):
            best = (name, changes)
    name, changes = best
    if "tubelet" in changes:
        changes["tubelet"] = list(changes["tubelet"])  # YAML-friendly, as configs write it
    return name, changes


def num_visible(grid: tuple[int, int, int], mask_ratio: float, masking: str) -> int:
    """Visible tokens per sample (VideoMAE's rounding: int(ratio * n) are masked)."""
    gt, gh, gw = grid
    if masking == "tube":
        per_frame = gh * gw
        return gt * (per_frame - int(mask_ratio * per_frame))
    n = gt * gh * gw
    return n - int(mask_ratio * n)


def num_decoded(grid: tuple[int, int, int], mask_ratio: float, masking: str,
                decoder_mask_ratio: float = 0.0) -> int:
    """Tokens per sample the MAE decoder runs on: the visible ones plus the masked ones it
    reconstructs (``int(decoder_mask_ratio * masked)`` of the masked are dropped; 0: all N)."""
    visible = num_visible(grid, mask_ratio, masking)
    masked = grid[0] * grid[1] * grid[2] - visible
    return visible + masked - int(decoder_mask_ratio * masked)


def _stack_parameters(width: int, depth: int, ffn: int) -> int:
    # Per block: qkv + out projections with biases, two MLP linears with biases,
    # two LayerNorms with scale and bias.
    attn = 4 * width * width + 4 * width
    mlp = 2 * width * ffn + ffn + width
    norms = 2 * 2 * width
    return depth * (attn + mlp + norms)


def count_parameters(arch: ModelArch, *, encoder_final_norm: bool = False, qkv_bias: str = "qkv",
                     pos_embed: str = "learned", decoder_embed_bias: bool = True) -> dict[str, int]:
    """Exact parameter counts of the model megavid builds for ``arch``.

    Encoder: tubelet embedding, learned position embedding, blocks (and an
    optional final norm). Decoder: input projection, mask token, position
    embedding, blocks, final norm, pixel head. The keywords are the
    ``ModelConfig`` architecture options that change the count: ``qkv_bias="none"``
    drops the q/k/v bias (``"qv"`` keeps the fused bias, its k slice fixed at 0),
    ``pos_embed="sincos"`` makes both position tables fixed buffers.
    """
    d, dd, n, p = arch.hidden_size, arch.decoder_hidden_size, arch.num_tokens, arch.patch_dim
    learned = pos_embed == "learned"
    encoder = (p * d + d) + learned * n * d + _stack_parameters(d, arch.num_layers,
                                                               arch.ffn_hidden_size)
    decoder = (
        (d * dd + decoder_embed_bias * dd) + dd + learned * n * dd
        + _stack_parameters(dd, arch.decoder_num_layers, arch.decoder_ffn_hidden_size)
        + 2 * dd + (dd * p + p)
    )
    if encoder_final_norm:
        encoder += 2 * d
    if qkv_bias == "none":
        encoder -= 3 * d * arch.num_layers
        decoder -= 3 * dd * arch.decoder_num_layers
    return {"encoder": encoder, "decoder": decoder, "total": encoder + decoder}
