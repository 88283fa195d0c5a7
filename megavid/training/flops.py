"""FLOPs of an MAE training step: the one count used by logs, planner and benchmarks.

Model FLOPs (matmuls only, 2 per multiply-add), padding and recomputation
excluded, as in the MFU definition of PaLM / Megatron: the encoder sees the
K visible tubelets, the decoder all N. Backward costs twice the forward.
"""

from __future__ import annotations

from megavid.models.masking import num_visible
from megavid.models.presets import ModelArch


def transformer_layer_flops(tokens: int, width: int, ffn: int) -> int:
    """Forward FLOPs of one pre-LN block on ``tokens`` tokens."""
    projections = 2 * tokens * width * (4 * width)  # qkv (3h) + output projection (h)
    mlp = 2 * tokens * 2 * width * ffn
    attention = 2 * 2 * tokens * tokens * width  # scores QK^T and the weighted sum AV
    return projections + mlp + attention


def mae_forward_flops(arch: ModelArch, *, mask_ratio: float, masking: str = "random") -> dict:
    """Forward FLOPs per clip, by part."""
    k = num_visible(arch.grid, mask_ratio, masking)
    n, p = arch.num_tokens, arch.patch_dim
    d, dd = arch.hidden_size, arch.decoder_hidden_size
    parts = {
        "patch_embed": 2 * k * p * d,
        "encoder": arch.num_layers * transformer_layer_flops(k, d, arch.ffn_hidden_size),
        "decoder_embed": 2 * k * d * dd,
        "decoder": arch.decoder_num_layers
        * transformer_layer_flops(n, dd, arch.decoder_ffn_hidden_size),
        "head": 2 * n * dd * p,
    }
    parts["total"] = sum(parts.values())
    return parts


def mae_train_flops_per_clip(arch: ModelArch, *, mask_ratio: float, masking: str = "random") -> int:
    """Forward + backward model FLOPs for one clip."""
    return 3 * mae_forward_flops(arch, mask_ratio=mask_ratio, masking=masking)["total"]
