"""Parameter initialisation that does not depend on the parallel layout.

megatron-core initialises from whichever RNG stream a rank happens to hold, so
changing TP/PP changes the model. Here every parameter has a layout-free name
(``encoder.layers.7.mlp.linear_fc1.weight`` with the layer's position in the
whole stack) and every slice of it along its TP partition dimension is drawn
from a generator seeded by ``(seed, name, slice index)``. A rank draws only the
slices it owns, so the cost is that of its shard, and any TP/PP/DP layout
yields bit-identical values.
"""

from __future__ import annotations

import hashlib
import math

import torch
from megatron.core import parallel_state

from megavid.models.layout_free import global_name
from megavid.models.mae import VideoMAEChunk

# Projections that write into the residual stream get std / sqrt(2 * depth) (GPT-2 / megatron).
_OUTPUT_PROJECTIONS = ("linear_proj.weight", "linear_fc2.weight")
_ONES = ("layer_norm_weight", "norm.weight", "layernorm.weight")


def _seed_for(seed: int, name: str, index: int) -> int:
    digest = hashlib.blake2b(f"{seed}/{name}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _fill_slices(param: torch.Tensor, name: str, seed: int, std: float) -> None:
    """Truncated-normal fill, slice by slice along the TP partition dim."""
    dim = getattr(param, "partition_dim", 0) if getattr(param, "tensor_model_parallel", False) else 0
    sharded = getattr(param, "tensor_model_parallel", False)
    tp_rank = parallel_state.get_tensor_model_parallel_rank() if sharded else 0
    view = param.data if param.dim() > 0 else param.data.view(1)
    local = view.shape[dim]
    out = torch.empty(view.shape, dtype=torch.float32)  # on the CPU, where the generators are
    for j in range(local):
        gen = torch.Generator().manual_seed(_seed_for(seed, name, tp_rank * local + j))
        piece = out.select(dim, j)
        torch.nn.init.trunc_normal_(piece, std=std, a=-2 * std, b=2 * std, generator=gen)
    view.copy_(out)


def initialize_chunk(chunk: VideoMAEChunk, *, seed: int, std: float) -> None:
    """Set every parameter of ``chunk`` from (seed, global name) alone."""
    arch = chunk.arch
    depth = {"encoder": arch.num_layers, "decoder": arch.decoder_num_layers}
    with torch.no_grad():
        for local_name, param in chunk.named_parameters():
            name = global_name(chunk, local_name)
            if name.endswith("bias"):
                param.zero_()
            elif name.endswith(_ONES):
                param.fill_(1.0)
            else:
                scale = std
                if name.endswith(_OUTPUT_PROJECTIONS):
                    scale = std / math.sqrt(2.0 * depth[name.split(".")[0]])
                _fill_slices(param, name, seed, scale)
