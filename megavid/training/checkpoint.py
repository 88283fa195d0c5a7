"""Distributed checkpoints with megatron-core ``dist_checkpointing``.

What a checkpoint holds: the model (layout-free sharded tensors, see
``VideoMAEChunk.sharded_state_dict``), the optimizer (the distributed optimizer
in its fully reshardable form), and a common part: step, LR scheduler, data
loader position, counters, the run's config and the layout it was saved with;
plus each rank's RNG states (CPU, CUDA, megatron-core's model-parallel tracker)
as a sharded object, restored only when the layout is unchanged.

A checkpoint may also hold model weights only (``common["weights_only"]``,
what ``megavid.tools.convert`` writes): ``--load`` then sets the weights and
starts at step 0 with a fresh optimizer, schedule and data stream, as
``--finetune`` does with any checkpoint (Megatron-LM's flag of that name).

Any TP/PP/VPP/DP layout loads any other's checkpoint. Files are read with
``torch.load(weights_only=True)`` by dist_checkpointing's torch_dist strategy;
nothing else is unpickled. Directory bookkeeping (atomic commit, ``latest``,
verification, pruning) lives in ``checkpoint_dirs``.
"""

from __future__ import annotations

import inspect
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.core import CheckpointingException
from megatron.core.dist_checkpointing.mapping import ShardedObject
from megatron.core.dist_checkpointing.serialization import StrictHandling
from megatron.core.dist_checkpointing.strategies import filesystem_async
from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue
from megatron.core.dist_checkpointing.validation import (
    maybe_report_missing_and_unexpected_keys,
)
from megatron.core.utils import get_attr_wrapped_model
from torch.distributed.checkpoint.api import CheckpointException as DCPException

from megavid import faults
from megavid.config import CheckpointConfig
from megavid.training import checkpoint_dirs as dirs
from megavid.training.common_state import (
    COMMON_STATE_KEY,
    load_kwargs,
    rank_failures,
    read_common,
    weights_only_loads,
)
from megavid.training.fp8_state import FP8StateAside

_METADATA = {"distrib_optim_sharding_type": "fully_reshardable"}


def _layout(optimizer) -> dict:
    return {
        "distributed_optimizer": type(optimizer).__name__ == "DistributedOptimizer"
        or any(type(o).__name__ == "DistributedOptimizer"
               for o in getattr(optimizer, "chained_optimizers", [])),
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


def _prepare_fresh_optimizer(optimizer) -> None:
    """Give a never-stepped optimizer the state an untouched Adam would have.

    megatron-core's ``DistributedOptimizer.state_dict()`` (called to build the
    loading view) asserts that all of torch Adam's states share one ``step`` when
    neither apex nor TE supplies the fused Adam; a fresh optimizer has no states at
    all, so loading into it would fail. Its own ``init_state_fn`` adds the moments
    but not the step. Seen on megatron-core 0.16.1 and 0.19.2 (without this, 0.19.2
    fails the reshard test with an AssertionError).
    """
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        if inner is None or any(len(s) for s in inner.state.values()):
            continue
        if opt.init_state_fn is not None:
            opt.init_state_fn(inner, opt.config)
        for group in inner.param_groups:
            for param in group["params"]:
                inner.state[param].setdefault("step", torch.zeros((), dtype=torch.float32))


def _first_reason(err: Exception) -> str:
    """The underlying message (it names the tensor and both shapes), not DCP's per-rank dump."""
    return str(rank_failures(err)[0])


def _load_optimizer(optimizer, state: dict) -> None:
    """``optimizer.load_state_dict``, around a megatron-core slip with torch's Adam.

    Without apex/TE, ``DistributedOptimizer.load_state_dict`` first gives every Adam
    state its ``step`` and then copies the loaded tensors into *every* key of that
    state, ``step`` included, which the loaded tensors never carry (KeyError). So the
    parameter state is loaded here with ``step`` set aside for the copy. Seen on
    megatron-core 0.16.1 and 0.19.2 (``KeyError: 'step'`` without it).

    That step is also one tensor shared by every parameter's state, and torch's Adam
    adds 1 to each parameter's step in place: the first update after a resume counted
    the step once per parameter, so its bias correction was wrong (DP=2, distributed
    optimizer: the loss two steps after the resume off by 1e-2). Each state gets its own.
    """
    inner = getattr(optimizer, "chained_optimizers", [optimizer])
    if (len(inner) != 1 or type(inner[0]).__name__ != "DistributedOptimizer"
            or state.get("param_state_sharding_type") != "fully_reshardable"):
        optimizer.load_state_dict(state)
        _own_steps(inner)
        return
    dist_opt, param_state = inner[0], state.pop("param_state")
    state.pop("param_state_sharding_type")
    dist_opt.load_state_dict(state)  # param groups, scaler, Adam state allocation
    adam_state = dist_opt.optimizer.state
    steps = {p: s.pop("step") for p, s in adam_state.items() if "step" in s}
    try:
        dist_opt.load_parameter_state_from_fully_reshardable(param_state)
    finally:
        for param, step in steps.items():
            adam_state[param]["step"] = step
    _own_steps(inner)


def _own_steps(optimizers) -> None:
    """Give every Adam state a ``step`` tensor of its own (see ``_load_optimizer``)."""
    for opt in optimizers:
        for param_state in getattr(getattr(opt, "optimizer", None), "state", {}).values():
            if torch.is_tensor(param_state.get("step")):
                param_state["step"] = param_state["step"].clone()


def _load(state: dict, directory: Path, strict: StrictHandling):
    """``dist_checkpointing.load`` as every megavid load calls it: either megatron-core
    version's files, and no pickled objects (see ``common_state.weights_only_loads``)."""
    with weights_only_loads():
        return dist_checkpointing.load(state, str(directory), strict=strict, **load_kwargs())


def _load_sharded(state: dict, directory: Path, *, every_key: bool,
                  fp8: FP8StateAside) -> dict:
    """``dist_checkpointing.load``; ``every_key``: the checkpoint and ``state`` hold the same keys.

    A new layout cannot use the old per-rank RNG states, so that key alone may go
    unread. megatron-core 0.17+ also stores the common state as a ``common_state``
    object among the sharded ones: its own loader skips that key, 0.16's would call
    it missing, so it is set aside here (``common_state`` reads it).
    """
    if not every_key:
        return _load(state, directory, StrictHandling.LOG_UNEXPECTED)
    loaded, missing, unexpected = _load(state, directory, StrictHandling.RETURN_ALL)
    maybe_report_missing_and_unexpected_keys(missing - {COMMON_STATE_KEY} - fp8.saved, unexpected)
    return loaded


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


def _rank0_stderr(line: str) -> None:
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(f"megavid: {line}", file=sys.stderr, flush=True)


def load_weights(model, directory: Path, *, info: Callable[[str], None] = _rank0_stderr) -> None:
    """Model tensors only, into this rank's chunks (any layout); optimizer state is not read.

    Also loads a part of a model (the feature API's encoder-only chunks): tensors
    the chunks do not ask for are left in the checkpoint; one they ask for and
    the checkpoint lacks is an error. Either backend's checkpoint loads into either
    (``fp8_state``).
    """
    state = {f"model{i}": _unwrap(chunk).sharded_state_dict(metadata=_METADATA)
             for i, chunk in enumerate(model)}
    fp8 = FP8StateAside([_unwrap(chunk) for chunk in model], state, directory)
    try:
        loaded = _load(state, directory, StrictHandling.RAISE_UNEXPECTED)
    except (CheckpointingException, DCPException) as err:  # e.g. a shape mismatch
        raise dirs.CheckpointError(f"{directory}: {_first_reason(err)}") from None
    fp8.restore(loaded)
    for i, chunk in enumerate(model):
        _unwrap(chunk).load_state_dict(loaded[f"model{i}"])
    fp8.report(info)


def _fork_results_queue() -> None:
    """Have dist_checkpointing's writer report through a queue whose manager is forked.

    Its writer sends each save's results through a multiprocessing Manager queue that it
    starts with "spawn" at the first save; that fresh interpreter imports the main module
    again (megavid.pretrain: torch and megatron-core) and torch once more to unpickle the
    first results: 7 s on 2 cores, on every rank of every job. Forked, the manager shares
    the rank's imports, and dies with the rank (``lifeline``). 0.17+ names
    this choice (``get_write_results_queue(mp_mode)``); 0.16 has only the module's global.
    """
    if getattr(filesystem_async, "_results_queue", False) is not None:
        return  # made already (or a version without it)
    chooses = getattr(filesystem_async, "get_write_results_queue", None)
    if chooses is not None:
        chooses("fork")
    else:
        filesystem_async._results_queue = multiprocessing.get_context("fork").Manager().Queue()


def _prepare_partial(root: Path, step: int) -> Path:
    """Rank 0 makes ``root/iter_<step>.partial`` (dropping stale partials); all ranks wait."""
    target = dirs.partial_dir(root, step)
    if dist.get_rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        dirs.clean_partials(root)
        target.mkdir()
    dist.barrier()
    return target


def save_weights(model, root: Path, *, step: int, common: dict) -> Path:
    """Write a weights-only checkpoint ``root/iter_<step>`` (all ranks call; the converter's).

    The same directory protocol as training saves (``*.partial``, manifest,
    ``latest``), so ``--load root`` and the feature API read it.
    """
    root = Path(root)
    target = _prepare_partial(root, step)
    _fork_results_queue()
    state = {f"model{i}": _unwrap(chunk).sharded_state_dict(metadata=_METADATA)
             for i, chunk in enumerate(model)}
    state["common"] = {**common, "step": step, "weights_only": True}
    dist_checkpointing.save(state, str(target), content_metadata={"step": step})
    dist.barrier()
    path = dirs.commit(root, step) if dist.get_rank() == 0 else root / dirs.iter_name(step)
    dist.barrier()
    return path


# 0.17+ chooses among asynchronous writers; 0.16 has only its own.
_CHOOSES_ASYNC_WRITER = "async_strategy" in inspect.signature(dist_checkpointing.save).parameters


def _async_writer() -> tuple[AsyncCallsQueue, dict]:
    """(calls queue, ``dist_checkpointing.save`` kwargs) for asynchronous saves.

    megatron-core 0.16 has one asynchronous writer, its own, in a forked process.
    0.17+ adds ``async_strategy``, defaulting to ``"nvrx"`` (NVIDIA Resiliency
    Extension), which needs nvidia-resiliency-ext >= 0.6 (0.19.2's minimum); PyPI's
    newest is 0.4.1, whose mere presence makes 0.19.2's checkpoint module fail to
    import. megavid therefore asks for megatron-core's own writer, ``"mcore"``, on
    every version in the supported range (megavid.quiet drops the line in which 0.17+
    calls that writer deprecated).
    """
    return AsyncCallsQueue(), ({"async_strategy": "mcore"} if _CHOOSES_ASYNC_WRITER else {})


class Checkpointer:
    """Saves every ``save_interval`` steps and on demand; loads at start-up."""

    def __init__(self, cfg: CheckpointConfig, *, info=print):
        self.cfg = cfg
        self.info = info
        self.async_queue, self._async_kwargs = _async_writer() if cfg.async_save else (None, {})
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
        _fork_results_queue()
        target = _prepare_partial(root, step)
        state = _sharded_state(model, optimizer, is_loading=False, with_rng=True)
        state["common"] = {**common, "step": step, "scheduler": scheduler.state_dict(),
                           "layout": _layout(optimizer)}
        request = dist_checkpointing.save(state, str(target), async_sharded_save=self.async_queue
                                          is not None, content_metadata={"step": step},
                                          **self._async_kwargs)
        if self.async_queue is None:
            dist.barrier()  # every rank's shards are on disk
            faults.crash_point("before_commit", step)  # tests: kill_before_commit:<step>
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

    def _first_of_a_series(self) -> bool:
        """``--save D --load D`` on a D without checkpoints (Megatron-LM's habit for jobs that
        requeue): the first job. A --load elsewhere that holds nothing stays an error, as a
        typo must not silently train from scratch."""
        load, save = self.cfg.load, self.cfg.save
        return bool(save) and Path(load).resolve() == Path(save).resolve() and \
            not dirs.holds_checkpoint(Path(load))

    def load(self, model, optimizer, scheduler) -> dict | None:
        """Restore from ``cfg.load``; returns the common state, or None if there is none
        (no --load, or the first job of a ``--save D --load D`` series).

        A weights-only load (``--finetune``, or a checkpoint holding only weights)
        sets the model and returns None: training starts at step 0.
        """
        if not self.cfg.load:
            return None
        if self._first_of_a_series():
            self.info(f"[yellow]warning[/yellow]: --load {self.cfg.load} holds no checkpoint yet; "
                      "as it is also --save, this run starts from scratch (requeues resume it)")
            return None
        directory, notes = dirs.resolve_load_dir(self.cfg.load, fallback=self.cfg.load_fallback)
        for note in notes:
            self.info(f"[yellow]skipped damaged checkpoint[/yellow]: {note}")
        common = read_common(directory)
        if self.cfg.finetune or common.get("weights_only"):
            load_weights(model, directory, info=self.info)
            optimizer.reload_model_params()  # bf16: the fp32 main copies follow the weights
            why = "--finetune" if self.cfg.finetune else "the checkpoint holds weights only"
            self.info(f"loaded model weights from {directory} ({why}): starting at step 0 with "
                      "a fresh optimizer, schedule and data stream")
            return None
        saved, current = common["layout"], _layout(optimizer)
        if saved["distributed_optimizer"] != current["distributed_optimizer"]:
            flag = "with" if saved["distributed_optimizer"] else "without"
            raise dirs.CheckpointError(
                f"{directory} was saved {flag} --use-distributed-optimizer; its optimizer state "
                f"loads only into the same kind of optimizer: run {flag} it")
        same_layout = saved == current
        _prepare_fresh_optimizer(optimizer)
        state = _sharded_state(model, optimizer, is_loading=True, with_rng=same_layout)
        fp8 = FP8StateAside([_unwrap(chunk) for chunk in model], state, directory)
        try:
            loaded = _load_sharded(state, directory, every_key=same_layout, fp8=fp8)
        except (CheckpointingException, DCPException) as err:  # e.g. a shape mismatch
            raise dirs.CheckpointError(f"{directory}: {_first_reason(err)}") from None
        fp8.restore(loaded)
        for i, chunk in enumerate(model):
            _unwrap(chunk).load_state_dict(loaded[f"model{i}"])
        fp8.report(self.info)
        _load_optimizer(optimizer, loaded["optimizer"])
        scheduler.load_state_dict(common["scheduler"])
        if same_layout:
            _set_rng_state(loaded["rng"])
        self.info(f"resumed from {directory} at step {common['step']}"
                  + ("" if same_layout else f" (resharded from {saved} to {current})"))
        self.last_saved_step = common["step"]
        return common
