"""Distributed checkpoints with megatron-core ``dist_checkpointing``.

What a checkpoint holds: the model (layout-free sharded tensors, see
``VideoMAEChunk.sharded_state_dict``), the optimizer (the distributed optimizer
in its fully reshardable form), and a common part: step, LR scheduler, data
loader position, counters, the run's config and the layout it was saved with;
plus each rank's RNG states (CPU, CUDA, megatron-core's model-parallel tracker)
as a sharded object, restored only when the layout is unchanged.

Any TP/PP/VPP/DP layout loads any other's checkpoint. Files are read with
``torch.load(weights_only=True)`` by dist_checkpointing's torch_dist strategy;
nothing else is unpickled. Directory bookkeeping (atomic commit, ``latest``,
verification, pruning) lives in ``checkpoint_dirs``.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject
from megatron.core.dist_checkpointing.serialization import StrictHandling
from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue
from megatron.core.utils import get_attr_wrapped_model

from megavid.config import CheckpointConfig
from megavid.training import checkpoint_dirs as dirs

_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}


def _layout() -> dict:
    return {
        "tp": parallel_state.get_tensor_model_parallel_world_size(),
        "pp": parallel_state.get_pipeline_model_parallel_world_size(),
        "dp": parallel_state.get_data_parallel_world_size(),
        "world": dist.get_world_size(),
    }


def _rng_state() -> dict:
    state = {
        "cpu": torch.get_rng_state(),
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _unwrap(chunk):
    """The VideoMAEChunk inside DDP (and Float16Module): checkpoint names must not see wrappers."""
    return get_attr_wrapped_model(chunk, "pre_process", return_model_obj=True)


def _sharded_state(model, optimizer, *, is_loading: bool, with_rng: bool) -> dict:
    state = {
        f"model{i}": _unwrap(chunk).sharded_state_dict(metadata=_METADATA)
        for i, chunk in enumerate(model)
    }
    state["optimizer"] = optimizer.sharded_state_dict(
        {k: v for k, v in state.items()}, is_loading=is_loading, metadata=_METADATA)
    if with_rng:
        rank, world = dist.get_rank(), dist.get_world_size()
        state["rng"] = ShardedObject("rng_state", _rng_state(), (world,), (rank,), replica_id=0)
    return state


class Checkpointer:
    """Saves every ``save_interval`` steps and on demand; loads at start-up."""

    def __init__(self, cfg: CheckpointConfig, *, info=print):
        self.cfg = cfg
        self.info = info
        self.async_queue = AsyncCallsQueue() if cfg.async_save else None
        self.last_saved_step: int | None = None

    def due(self, step: int) -> bool:
        return bool(self.cfg.save and self.cfg.save_interval and step % self.cfg.save_interval == 0)

    def save(self, step: int, model, optimizer, scheduler, common: dict) -> float:
        """Write checkpoint ``step``; returns the seconds the training loop was blocked."""
        if not self.cfg.save or step == self.last_saved_step:
            return 0.0
        start = time.perf_counter()
        root = Path(self.cfg.save)
        self.finalize(blocking=True)  # one save in flight at a time
        target = dirs.partial_dir(root, step)
        if dist.get_rank() == 0:
            root.mkdir(parents=True, exist_ok=True)
            dirs.clean_partials(root)
            target.mkdir()
        dist.barrier()
        state = _sharded_state(model, optimizer, is_loading=False, with_rng=True)
        state["common"] = {**common, "step": step, "scheduler": scheduler.state_dict(),
                           "layout": _layout()}
        request = dist_checkpointing.save(state, str(target), async_sharded_save=self.async_queue
                                          is not None, content_metadata={"step": step})
        if self.async_queue is None:
            dist.barrier()  # every rank's shards are on disk
            self._commit(root, step)
        else:
            request.add_finalize_fn(lambda: self._commit(root, step))
            self.async_queue.schedule_async_request(request)
        self.last_saved_step = step
        return time.perf_counter() - start

    def _commit(self, root: Path, step: int) -> None:
        if dist.get_rank() == 0:
            path = dirs.commit(root, step)
            removed = dirs.prune(root, self.cfg.keep_last)
            note = f" (removed {', '.join(p.name for p in removed)})" if removed else ""
            self.info(f"checkpoint saved: {path}{note}")

    def finalize(self, blocking: bool = False) -> None:
        """Complete finished asynchronous saves (all ranks call this every step)."""
        if self.async_queue is not None:
            self.async_queue.maybe_finalize_async_calls(blocking=blocking)

    def load(self, model, optimizer, scheduler) -> dict | None:
        """Restore from ``cfg.load``; returns the common state, or None if there is none."""
        if not self.cfg.load:
            return None
        directory, notes = dirs.resolve_load_dir(self.cfg.load, fallback=self.cfg.load_fallback)
        for note in notes:
            self.info(f"[yellow]skipped damaged checkpoint[/yellow]: {note}")
        common = dist_checkpointing.load_common_state_dict(str(directory))["common"]
        same_layout = common["layout"] == _layout()
        state = _sharded_state(model, optimizer, is_loading=True, with_rng=same_layout)
        # a new layout cannot use the old per-rank RNG states: that key alone may go unread
        strict = StrictHandling.RAISE_ALL if same_layout else StrictHandling.LOG_UNEXPECTED
        loaded = dist_checkpointing.load(state, str(directory), strict=strict)
        for i, chunk in enumerate(model):
            _unwrap(chunk).load_state_dict(loaded[f"model{i}"])
        optimizer.load_state_dict(loaded["optimizer"])
        scheduler.load_state_dict(common["scheduler"])
        if same_layout:
            _set_rng_state(loaded["rng"])
        self.info(f"resumed from {directory} at step {common['step']}"
                  + ("" if same_layout else f" (resharded from {common['layout']})"))
        self.last_saved_step = common["step"]
        return common
