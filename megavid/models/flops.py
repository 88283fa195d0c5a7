"""FLOPs of an MAE training step: the one count used by logs, planner and benchmarks.

Model FLOPs (matmuls only, 2 per multiply-add), padding and recomputation
excluded, as in the MFU definition of PaLM / Megatron: the encoder sees the
K visible tubelets, the decoder all N (with ``model.decoder_mask_ratio``, the
K visible plus the masked ones it reconstructs). Backward costs twice the forward.

What ``torch.utils.flop_counter.FlopCounterMode`` sees, checked by
``tests/plan/test_flops.py`` on the tiny and demo models built through
megavid: every ``mm``/``addmm`` (projections, MLP, tubelet embedding,
decoder embedding, pixel head) and the two attention matmuls. The forward
count matches ``mae_forward_flops`` exactly. Two caveats, both stated here
so nobody "fixes" the count to the counter:

- on CPU, SDPA dispatches to ``_scaled_dot_product_flash_attention_for_cpu``,
  which torch's counter does not register; ``cpu_sdpa_flop_mapping()`` adds
  it with torch's own SDPA formulas (without it the counter misses the
  ``4 s^2 h`` attention term of every layer);
- the counter's backward is 3x forward minus the tubelet embedding's
  input gradient (pixels need none): ``2 K P D`` per clip, < 0.2% of a 4DS
  model, 16% of the toy ``tiny``; plus flash attention's recomputed score
  matrix ``Q K^T`` (``2 s^2 h`` per layer): hardware FLOPs, which model
  FLOPs leave out like any recompute. ``mae_train_flops_per_clip`` keeps the
  PaLM/Megatron 3x convention so MFU is comparable across codebases.

Not counted by either: LayerNorm, softmax, GELU, residual adds, the loss
(elementwise, O(s h) against the matmuls' O(s h^2)).
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

from megavid.config.presets import ModelArch, num_decoded, num_visible


def transformer_layer_flops(tokens: int, width: int, ffn: int) -> int:
    """Forward FLOPs of one pre-LN block on ``tokens`` tokens."""
    projections = 2 * tokens * width * (4 * width)  # qkv (3h) + output projection (h)
    mlp = 2 * tokens * 2 * width * ffn
    attention = 2 * 2 * tokens * tokens * width  # scores QK^T and the weighted sum AV
    return projections + mlp + attention


def mae_forward_flops(arch: ModelArch, *, mask_ratio: float, masking: str = "random",
                      decoder_mask_ratio: float = 0.0) -> dict:
    """Forward FLOPs per clip, by part (the decoder and head on ``num_decoded`` tokens)."""
    k = num_visible(arch.grid, mask_ratio, masking)
    n = num_decoded(arch.grid, mask_ratio, masking, decoder_mask_ratio)
    p = arch.patch_dim
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


def cpu_sdpa_flop_mapping() -> dict:
    """``custom_mapping`` for FlopCounterMode: CPU SDPA counted with torch's SDPA formulas."""

    def forward(query, key, value, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query, key, value)

    def backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
        return sdpa_backward_flop_count(grad_out, query, key, value)

    ops = torch.ops.aten
    return {ops._scaled_dot_product_flash_attention_for_cpu: forward,
            ops._scaled_dot_product_flash_attention_for_cpu_backward: backward}


def mae_train_flops_per_clip(arch: ModelArch, *, mask_ratio: float, masking: str = "random",
                             decoder_mask_ratio: float = 0.0) -> int:
    """Forward + backward model FLOPs for one clip."""
    return 3 * mae_forward_flops(arch, mask_ratio=mask_ratio, masking=masking,
                                 decoder_mask_ratio=decoder_mask_ratio)["total"]
