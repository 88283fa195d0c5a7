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
import re

import torch
from megatron.core import parallel_state

from megavid.models.mae import VideoMAEChunk

_LAYER = re.compile(r"^(encoder|decoder)\.layers\.(\d+)\.")
# Projections that write into the residual stream get std / sqrt(2 * depth) (GPT-2 / megatron).
_OUTPUT_PROJECTIONS = ("linear_proj.weight", "linear_fc2.weight")
_ONES = ("layer_norm_weight", "norm.weight", "layernorm.weight")


def global_name(chunk: VideoMAEChunk, local_name: str) -> str:
    """Rename ``encoder.layers.<i>`` to the layer's position in its whole stack."""
    match = _LAYER.match(local_name)
    if not match:
        return local_name
    stack, i = match.group(1), int(match.group(2))
    offset = chunk.first_encoder_layer if stack == "encoder" else chunk.first_decoder_layer
    return f"{stack}.layers.{offset + i}.{local_name[match.end():]}"


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


# -- layout-free state dicts: the one bridge between whole tensors and any TP/PP layout ----------
def _tp_split(param: torch.Tensor) -> tuple[int | None, int, int]:
    """(partition dim or None, TP rank, TP size) of a parameter as megatron-core tags it."""
    if not getattr(param, "tensor_model_parallel", False):
        return None, 0, 1
    return (param.partition_dim, parallel_state.get_tensor_model_parallel_rank(),
            parallel_state.get_tensor_model_parallel_world_size())


def chunk_state(chunk: VideoMAEChunk) -> dict[str, torch.Tensor]:
    """This rank's parameters and checkpointed buffers under their layout-free names."""
    state = {}
    for local_name, tensor in chunk.state_dict(keep_vars=True).items():
        if local_name.endswith("_extra_state"):  # Transformer Engine's FP8 metadata
            continue
        state[global_name(chunk, local_name)] = tensor
    return state


def load_layout_free_state(chunk: VideoMAEChunk, full: dict[str, torch.Tensor], *,
                           optional: tuple[str, ...] = ()) -> None:
    """Set this rank's shard of every tensor of ``chunk`` from whole (TP=1) tensors.

    ``full`` maps layout-free names (``encoder.layers.7.mlp.linear_fc1.weight``) to
    whole tensors and may hold more (other stages' layers); a name this chunk
    needs but ``full`` lacks, or a whole tensor of the wrong shape, raises naming
    it, unless the name starts with one of ``optional`` (then it keeps its value).
    """
    with torch.no_grad():
        for name, tensor in chunk_state(chunk).items():
            if name not in full and name.startswith(optional):
                continue
            if name not in full:
                raise KeyError(f"{name}: missing from the weights being loaded")
            value = torch.as_tensor(full[name])
            dim, rank, size = _tp_split(tensor)
            expected = list(tensor.shape)
            if dim is not None:
                expected[dim] *= size
            if list(value.shape) != expected:
                raise ValueError(f"{name}: shape {tuple(value.shape)} does not match the "
                                 f"model's {tuple(expected)}")
            if dim is not None:
                value = value.chunk(size, dim=dim)[rank]
            tensor.copy_(value.to(tensor.dtype))


def layout_free_state(chunks: list[VideoMAEChunk]) -> dict[str, torch.Tensor]:
    """Whole (TP=1) tensors of the model, on every rank: the inverse of ``load_layout_free_state``.

    TP shards are all-gathered over the TP group and the pipeline stages' parts
    exchanged over the PP group (collectives: every rank of the model must call it).
    """
    import torch.distributed as dist

    own = {}
    for chunk in chunks:
        for name, tensor in chunk_state(chunk).items():
            dim, _, size = _tp_split(tensor)
            tensor = tensor.detach()
            if dim is not None and size > 1:
                parts = [torch.empty_like(tensor) for _ in range(size)]
                dist.all_gather(parts, tensor.contiguous(),
                                group=parallel_state.get_tensor_model_parallel_group())
                tensor = torch.cat(parts, dim=dim)
            own[name] = tensor.cpu().clone()
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    if pp == 1:
        return own
    stages = [None] * pp
    dist.all_gather_object(stages, own, group=parallel_state.get_pipeline_model_parallel_group())
    return {name: value for stage in stages for name, value in stage.items()}
