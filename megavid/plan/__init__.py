"""Layout planner: which TP/PP/VPP/DP/micro-batch/recompute/FP8 layouts fit, and how fast.

``python -m megavid.plan --preset 4ds-j --gpus 256 --gpu h100-80gb`` enumerates
the layouts ``resolve_layout`` accepts, drops those whose fullest GPU exceeds
``HEADROOM`` of its memory, and ranks the rest by estimated step time. The
models (``megavid.plan.model`` for memory, ``megavid.plan.timing`` for time)
are first-order: good for ranking and for catching an out-of-memory layout
before it queues, not a substitute for a profile.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from megavid.config import RunConfig
from megavid.config.fp8 import fp8_alignment
from megavid.config.preflight import LayoutError, resolve_layout
from megavid.parallel.devices import gpu_spec
from megavid.plan.model import (
    GB,
    HEADROOM,
    RECOMPUTE_OPTIONS,
    Candidate,
    mask_kwargs,
    peak_memory,
)
from megavid.plan.timing import step_time

MICRO_BATCH_SIZES = (1, 2, 4, 8, 16, 32)
# the throughput levers the planner models (megavid.plan.timing), by their --levers names
LEVERS = {"graphs": "cuda_graphs", "tp-overlap": "tp_comm_overlap",
          "param-gather": "overlap_param_gather"}


def with_levers(c: Candidate, levers) -> Candidate:
    """``c`` with the named levers on where its layout allows them: TP overlap needs TP > 1
    with SP, the parameter all-gather overlap the distributed optimizer."""
    allowed = {"graphs": True, "tp-overlap": c.tp > 1 and c.sequence_parallel,
               "param-gather": c.distributed_optimizer and c.dp > 1}
    return dataclasses.replace(c, **{LEVERS[name]: True for name in levers if allowed[name]})
TP_SIZES = (1, 2, 4, 8)  # TP stays inside an 8-GPU NVLink node


@dataclass(frozen=True)
class PlanRow:
    """A fitting layout with its memory (bytes, fullest rank) and time estimates."""

    candidate: Candidate
    memory: dict
    time: dict


def candidate_from_config(cfg: RunConfig, world_size: int) -> Candidate:
    """The layout a config asks for (raises LayoutError as the trainer would)."""
    layout = resolve_layout(cfg, world_size)
    par, tc = cfg.parallel, cfg.train
    return Candidate(
        tp=layout.tp, pp=layout.pp, vpp=layout.vpp, dp=layout.dp,
        micro_batch_size=layout.micro_batch_size, num_microbatches=layout.num_microbatches,
        recompute=tc.recompute or "none", fp8=tc.fp8 is not None,
        sequence_parallel=par.sequence_parallel,
        distributed_optimizer=par.use_distributed_optimizer,
        bf16=tc.precision == "bf16", decoder_fp8=cfg.model.decoder_fp8,
        fp8_align=fp8_alignment(tc.fp8_recipe), pad_to_multiple_of=cfg.model.pad_to_multiple_of,
        cuda_graphs=par.cuda_graph_impl != "none", tp_comm_overlap=par.tp_comm_overlap,
        overlap_param_gather=par.overlap_param_gather,
    )


def estimate_memory_per_gpu(cfg: RunConfig, world_size: int) -> float:
    """Estimated peak memory (GB) of the fullest GPU for this config on ``world_size`` GPUs."""
    c = candidate_from_config(cfg, world_size)
    mem = peak_memory(cfg.model.resolved_arch(), c, **mask_kwargs(cfg))
    return mem["total"] / GB


def _with_layout(cfg: RunConfig, tp: int, pp: int, vpp: int, mbs: int) -> RunConfig:
    par = dataclasses.replace(cfg.parallel, tensor_model_parallel_size=tp,
                              pipeline_model_parallel_size=pp,
                              virtual_pipeline_model_parallel_size=vpp if vpp > 1 else None,
                              sequence_parallel=tp > 1)
    return dataclasses.replace(cfg, parallel=par,
                               train=dataclasses.replace(cfg.train, micro_batch_size=mbs))


def enumerate_layouts(cfg: RunConfig, world_size: int, *, fp8_options=(False, True)):
    """Every (tp, pp, vpp, mbs, recompute, fp8) that ``resolve_layout`` accepts."""
    arch = cfg.model.resolved_arch()
    layers = arch.num_layers + arch.decoder_num_layers
    for tp in TP_SIZES:
        for pp in (p for p in range(1, layers + 1) if layers % p == 0):
            vpps = [1] if pp == 1 else [v for v in range(1, layers // pp + 1)
                                        if (layers // pp) % v == 0]
            for vpp in vpps:
                for mbs in MICRO_BATCH_SIZES:
                    try:
                        base = candidate_from_config(_with_layout(cfg, tp, pp, vpp, mbs),
                                                     world_size)
                    except LayoutError:
                        continue
                    for recompute in RECOMPUTE_OPTIONS:
                        for fp8 in fp8_options:
                            yield dataclasses.replace(base, recompute=recompute, fp8=fp8)


def plan(cfg: RunConfig, world_size: int, gpu: str, *, allow_fp8: bool = True,
         levers=()) -> list[PlanRow]:
    """Fitting layouts, fastest first, with the named ``levers`` on (besides the config's)."""
    spec = gpu_spec(gpu)
    arch = cfg.model.resolved_arch()
    kw = mask_kwargs(cfg)
    fp8_options = (False, True) if allow_fp8 and spec["fp8"] else (False,)
    limit = spec["memory_gb"] * GB * HEADROOM
    rows, no_recompute = [], {}
    for c in enumerate_layouts(cfg, world_size, fp8_options=fp8_options):
        c = with_levers(c, levers)
        mem = peak_memory(arch, c, **kw)
        key = dataclasses.replace(c, recompute="none")
        if c.recompute == "none":
            no_recompute[key] = mem["total"]
        elif mem["total"] >= no_recompute.get(key, float("inf")):
            continue  # recompute that saves no memory only costs time (selective + flash)
        if mem["total"] > limit:
            continue
        t = step_time(arch, c, spec, global_batch_size=cfg.train.global_batch_size, **kw)
        rows.append(PlanRow(c, mem, t))
    rows.sort(key=lambda r: (r.time["step"], r.memory["total"]))
    return rows


__all__ = ["GB", "Candidate", "LEVERS", "PlanRow", "candidate_from_config", "enumerate_layouts",
           "estimate_memory_per_gpu", "plan", "with_levers", "HEADROOM"]
