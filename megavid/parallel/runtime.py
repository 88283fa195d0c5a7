"""Process-group start-up: torch.distributed, megatron-core parallel state, RNG.

Ranks come from torchrun (RANK/WORLD_SIZE/LOCAL_RANK) or from SLURM's srun
(SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID, rendezvous at MASTER_ADDR/PORT); a
single process without either runs as world size 1. NCCL with CUDA, gloo
without: everything else is the same code.
"""

from __future__ import annotations

import datetime
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from megavid import quiet
from megavid.parallel import cpu_compat, host_memory, lifeline


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    source: str  # torchrun | slurm | single


def read_dist_env(environ=os.environ) -> DistEnv:
    """Where this process sits, from torchrun's or SLURM's variables."""
    if "RANK" in environ and "WORLD_SIZE" in environ:
        rank, world = int(environ["RANK"]), int(environ["WORLD_SIZE"])
        local = int(environ.get("LOCAL_RANK", rank))
        source = "torchrun"
    elif "SLURM_PROCID" in environ and "SLURM_NTASKS" in environ:
        rank, world = int(environ["SLURM_PROCID"]), int(environ["SLURM_NTASKS"])
        local = int(environ.get("SLURM_LOCALID", 0))
        source = "slurm"
        if world > 1 and "MASTER_ADDR" not in environ:
            raise RuntimeError(
                "SLURM launch without MASTER_ADDR: export MASTER_ADDR (the first host of "
                "`scontrol show hostnames $SLURM_JOB_NODELIST`) and MASTER_PORT before srun"
            )
    else:
        rank, world, local, source = 0, 1, 0, "single"
    addr = environ.get("MASTER_ADDR", "127.0.0.1")
    port = int(environ.get("MASTER_PORT", "29500"))
    return DistEnv(rank, world, local, addr, port, source)


_watchdog_group = None  # a gloo group kept for naming unresponsive ranks after a timeout


def init_distributed(timeout_minutes: float = 10, env: DistEnv | None = None) -> DistEnv:
    """Start the default process group (idempotent) and the CPU bridge if needed."""
    on_cpu = cpu_compat.install()
    if on_cpu:
        host_memory.keep_freed_memory()  # no per-step page faults on CPU runs (see there)
        quiet.install(cpu=True)  # GPU-only advice (megavid/quiet.py)
    env = env or read_dist_env()
    lifeline.bind_rank()  # no orphans: ranks end with torchrun, helpers with ranks
    if dist.is_initialized():
        return env
    if not on_cpu:
        torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
    backend = "gloo" if on_cpu else "nccl"
    timeout = datetime.timedelta(minutes=timeout_minutes)
    if env.source == "single":  # a lone process needs no port: lone runs never collide
        rendezvous = {"store": dist.HashStore()}
    else:
        rendezvous = {"init_method": f"tcp://{env.master_addr}:{env.master_port}"}
    dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size,
                            timeout=timeout, **rendezvous)
    global _watchdog_group
    _watchdog_group = dist.new_group(backend="gloo", timeout=timeout)
    return env


def unresponsive_ranks_report(timeout_s: float = 30.0) -> str:
    """After a failed collective: which ranks no longer answer (gloo's monitored barrier)."""
    if _watchdog_group is None:
        return "no watchdog group"
    try:
        dist.monitored_barrier(group=_watchdog_group,
                               timeout=datetime.timedelta(seconds=timeout_s), wait_all_ranks=True)
    except RuntimeError as err:
        return str(err).strip().splitlines()[0]
    return "every rank still answers"


def init_model_parallel(
    *, tp: int, pp: int, vpp: int | None, timeout_minutes: float = 10
) -> None:
    """megatron-core's groups: TP innermost, then DP, PP outermost (its default order)."""
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        virtual_pipeline_model_parallel_size=vpp if vpp and vpp > 1 else None,
        distributed_timeout_minutes=timeout_minutes,
    )
    if os.environ.get("MEGAVID_RANK_LAYOUT_DIR"):
        write_rank_layout(os.environ["MEGAVID_RANK_LAYOUT_DIR"])


# what srun and torchrun tell a process about its node and job (GROUP_RANK: torchrun's node rank)
_LAUNCHER_VARS = ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID", "SLURM_JOB_ID", "GROUP_RANK",
                  "GROUP_WORLD_SIZE", "TORCHELASTIC_RUN_ID")


def ensure_model_parallel(caller: str) -> None:
    """A one-process gloo group and TP=PP=1 when the caller has set up nothing (the feature
    API in a notebook); in a multi-process job the caller must have chosen the layout."""
    from megatron.core import parallel_state, tensor_parallel

    if not parallel_state.model_parallel_is_initialized():
        env = read_dist_env()
        if dist.is_initialized() and dist.get_world_size() > 1 or env.world_size > 1:
            raise RuntimeError(
                f"{caller} in a multi-process job: initialise the layout first, e.g. "
                "megavid.parallel.runtime.init_distributed(); "
                "runtime.init_model_parallel(tp=2, pp=1, vpp=None)")
        init_distributed(env=env)
        init_model_parallel(tp=1, pp=1, vpp=None)
    tracker = tensor_parallel.get_cuda_rng_tracker()
    if not tracker.get_states():  # megatron's TP init forks this tracker; keep the caller's RNG
        state = torch.get_rng_state()
        tensor_parallel.model_parallel_cuda_manual_seed(0)
        torch.set_rng_state(state)


def write_rank_layout(directory: str) -> dict:
    """Record where this rank landed (node, local rank, TP/PP/DP groups) as rank<N>.json.

    Set MEGAVID_RANK_LAYOUT_DIR to check a cluster launch: TP groups should stay
    inside a node and local ranks should match the GPUs (tests/launch rehearses it).
    """
    import json
    import socket
    from pathlib import Path

    from megatron.core import parallel_state as ps

    env = read_dist_env()
    groups = {
        "tp": ps.get_tensor_model_parallel_group(), "pp": ps.get_pipeline_model_parallel_group(),
        "dp": ps.get_data_parallel_group(),
    }
    layout = {
        "rank": dist.get_rank(), "world_size": dist.get_world_size(),
        "local_rank": env.local_rank, "source": env.source, "host": socket.gethostname(),
        "master": f"{env.master_addr}:{env.master_port}",
        "launcher_env": {k: os.environ[k] for k in _LAUNCHER_VARS if k in os.environ},
        "groups": {name: dist.get_process_group_ranks(g) for name, g in groups.items()},
    }
    path = Path(directory) / f"rank{layout['rank']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(layout, indent=1))
    return layout


def set_seed(seed: int, *, te_rng_tracker: bool = False) -> None:
    """Seed every generator; the model-parallel tracker gets per-TP-rank streams
    (``te_rng_tracker``: Transformer Engine's graph-safe tracker, for CUDA graphs).

    Parameter initialisation does not draw from these (see
    ``megavid.models.initialization``), so the model is the same whatever the layout.
    """
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    pp_rank = parallel_state.get_pipeline_model_parallel_rank()
    local_seed = seed + 100 * pp_rank
    random.seed(local_seed)
    np.random.seed(local_seed)
    torch.manual_seed(local_seed)
    model_parallel_cuda_manual_seed(local_seed, te_rng_tracker=te_rng_tracker)


def shutdown() -> None:
    from megatron.core import parallel_state

    global _watchdog_group
    _watchdog_group = None
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
