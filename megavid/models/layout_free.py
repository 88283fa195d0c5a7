"""Layout-free state dicts: the one bridge between whole tensors and any TP/PP layout.

A parameter's layout-free name carries its layer's position in the whole stack
(``encoder.layers.7.mlp.linear_fc1.weight``), in the local spec's words whatever the
backend (``megavid.models.te_names``), and its value is the whole (TP=1) tensor;
checkpoints' converters, ``load_encoder`` and layout-independent initialisation all
speak it, whatever TP/PP layout and backend built the chunk.
"""

from __future__ import annotations

import re

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megavid.models.mae import VideoMAEChunk
from megavid.models.te_names import is_fp8_state, to_local

_LAYER = re.compile(r"^(encoder|decoder)\.layers\.(\d+)\.")


def global_name(chunk: VideoMAEChunk, local_name: str) -> str:
    """Rename ``encoder.layers.<i>`` to the layer's position in its whole stack, and a
    Transformer Engine layer's parameters to the local spec's names."""
    local_name = to_local(local_name)
    match = _LAYER.match(local_name)
    if not match:
        return local_name
    stack, i = match.group(1), int(match.group(2))
    offset = chunk.first_encoder_layer if stack == "encoder" else chunk.first_decoder_layer
    return f"{stack}.layers.{offset + i}.{local_name[match.end():]}"


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
        if is_fp8_state(local_name):  # Transformer Engine's FP8 scaling state
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
