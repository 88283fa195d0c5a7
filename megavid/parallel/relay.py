"""A forward pass relayed along the pipeline, for inference outside megatron-core's schedules.

Feature extraction reads the encoder at some depth: only the stages up to the
one holding the last block needed do any work, each receives its input from
the previous stage, runs its layers and passes the result on; the owner then
broadcasts the result so that every rank of the model returns it. Training uses
megatron-core's schedules instead (they need a loss and a micro-batch stream).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
from megatron.core import parallel_state


def relay_forward(hidden: torch.Tensor | None, run_stage: Callable[[torch.Tensor], torch.Tensor],
                  *, last_stage: int, shape: tuple, dtype: torch.dtype,
                  device: torch.device) -> torch.Tensor:
    """Apply ``run_stage`` on pipeline stages ``0..last_stage`` in turn; every stage gets the
    result. ``hidden``: the input on stage 0 (None elsewhere); ``shape``: what travels."""
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    stage = parallel_state.get_pipeline_model_parallel_rank()
    if 0 < stage <= last_stage:
        hidden = torch.empty(shape, dtype=dtype, device=device)
        dist.recv(hidden, src=parallel_state.get_pipeline_model_parallel_prev_rank())
    if stage <= last_stage:
        hidden = run_stage(hidden)
        if stage < last_stage:
            dist.send(hidden.contiguous(),
                      dst=parallel_state.get_pipeline_model_parallel_next_rank())
    if pp == 1:
        return hidden
    group = parallel_state.get_pipeline_model_parallel_group()
    hidden = (hidden.contiguous() if stage == last_stage
              else torch.empty(shape, dtype=dtype, device=device))
    dist.broadcast(hidden, src=dist.get_global_rank(group, last_stage), group=group)
    return hidden
