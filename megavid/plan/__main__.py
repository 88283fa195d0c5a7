"""``python -m megavid.plan --preset 4ds-j --gpus 256 --gpu h100-80gb``: rank fitting layouts."""

from __future__ import annotations

import argparse
import dataclasses

from megavid.config import load_config
from megavid.parallel.devices import GPU_ALIASES, gpu_spec
from megavid.plan import (
    GB,
    HEADROOM,
    LEVERS,
    PlanRow,
    candidate_from_config,
    plan,
    with_levers,
)
from megavid.plan.model import (
    COMM_EFFICIENCY,
    MATMUL_EFFICIENCY,
    in_flight,
    mask_kwargs,
    peak_memory,
    stack_tokens,
)
from megavid.plan.timing import DP_EXPOSED, step_time
from megavid.tables import Column, print_table


def _layout_name(c) -> str:
    name = f"tp{c.tp} pp{c.pp}" + (f" vpp{c.vpp}" if c.vpp > 1 else "") + f" dp{c.dp}"
    return name + (" sp" if c.sequence_parallel and c.tp > 1 else "")


def plan_columns(spec: dict) -> list[Column]:
    return [
        Column("rank", "#"), Column("layout", "layout", justify="left"), Column("micro_batch_size", "mbs"),
        Column("num_microbatches", "m"), Column("recompute", "recompute"),
        Column("fp8", "fp8", lambda v: "yes" if v else "no"),
        Column("memory_gb", "mem/GPU (GB)", lambda v: f"{v:.1f} / {spec['memory_gb']:.0f}"),
        Column("step_s", "step s", "{:.2f}".format), Column("bubble", "bubble", "{:.1%}".format),
        Column("mfu", "MFU", "{:.1%}".format),
    ]


def plan_rows(rows: list[PlanRow], top: int) -> list[dict]:
    """The best ``top`` layouts as plain values (the table's cells and ``--json``'s rows)."""
    out = []
    for i, row in enumerate(rows[:top], 1):
        c, t = row.candidate, row.time
        out.append({
            "rank": i, "layout": _layout_name(c), "tp": c.tp, "pp": c.pp, "vpp": c.vpp,
            "dp": c.dp, "sequence_parallel": bool(c.sequence_parallel and c.tp > 1),
            "micro_batch_size": c.micro_batch_size, "num_microbatches": c.num_microbatches,
            "recompute": c.recompute, "fp8": bool(c.fp8),
            "distributed_optimizer": bool(c.distributed_optimizer),
            **{field: bool(getattr(c, field)) for field in LEVERS.values()},
            "memory_gb": row.memory["total"] / GB, "step_s": t["step"], "bubble": t["bubble"],
            "mfu": t["mfu"],
        })
    return out


def _padding_lines(row: PlanRow, spec: dict, cfg) -> list[str]:
    """Tokens per clip each stack runs on, and what the padding costs in step time."""
    c, arch = row.candidate, cfg.model.resolved_arch()
    kw = mask_kwargs(cfg)
    parts = []
    for decoder, name in ((False, "encoder"), (True, "decoder")):
        real, tokens = stack_tokens(arch, c, decoder=decoder, **kw)
        parts.append(f"{name} {real}" + (f" -> {tokens}" if tokens != real else " (no padding)"))
    unpadded = step_time(arch, dataclasses.replace(c, token_padding=False), spec,
                         global_batch_size=cfg.train.global_batch_size, **kw)["step"]
    cost = row.time["step"] - unpadded
    return [
        f"Tokens per clip (padded to a multiple that SP (tp {c.tp if c.sequence_parallel else 1})"
        f" and FP8 ({f'align {c.fp8_align}' if c.fp8 else 'off'}) need at micro-batch "
        f"{c.micro_batch_size}, megavid/config/fp8.py): {', '.join(parts)}",
        f"  padding costs {cost * 1e3:.1f} ms of the step ({cost / row.time['step']:.1%}); "
        "MFU counts the useful tokens only",
    ]


def _lever_lines(row: PlanRow, spec: dict, cfg) -> list[str]:
    """Step time and MFU of this layout with no lever, each lever alone, and all of them."""
    c, arch = row.candidate, cfg.model.resolved_arch()
    kw = dict(**mask_kwargs(cfg), global_batch_size=cfg.train.global_batch_size)
    bare = dataclasses.replace(c, **{field: False for field in LEVERS.values()})
    cases = [("no lever", bare)] + [(f"+ {name}", with_levers(bare, [name])) for name in LEVERS]
    cases.append(("all levers", with_levers(bare, LEVERS)))
    parts = []
    for name, case in cases:
        t = step_time(arch, case, spec, **kw)
        parts.append(f"{name} {t['step']:.3f} s ({t['mfu']:.1%})")
    on = [name for name, field in LEVERS.items() if getattr(c, field)] or ["none"]
    return [f"Levers (this row has: {', '.join(on)}; a lever the layout cannot use changes "
            f"nothing): {'; '.join(parts)}"]


def explain(row: PlanRow, spec: dict, cfg) -> str:
    """The arithmetic behind one row, for humans checking the planner."""
    c, mem, t = row.candidate, row.memory, row.time
    global_batch_size = cfg.train.global_batch_size
    mb = t["per_microbatch"]
    lines = [
        f"Layout {_layout_name(c)}, micro-batch {c.micro_batch_size}, "
        f"{c.num_microbatches} micro-batches/step, recompute {c.recompute}, fp8 {c.fp8}, "
        f"distributed optimizer {c.distributed_optimizer}",
        f"Memory on the fullest GPU (pipeline rank {mem['rank']}):",
        f"  parameters {mem['parameters'] / 1e9:.3f} B (its layers / tp + its embeddings)",
        f"  weights {'bf16 2' if c.bf16 else 'fp32 4'} B/param{' + fp8 copy 1 B' if c.fp8 else ''}"
        f" = {mem['weights'] / GB:.2f} GB; fp32 main grads 4 B/param = {mem['grads'] / GB:.2f} GB",
        f"  Adam {'master+m+v 12' if c.bf16 else 'm+v 8'} B/param"
        f"{f' / dp {c.dp}' if c.distributed_optimizer else ''} = {mem['optimizer'] / GB:.2f} GB",
        f"  activations: per-layer (8sbh + 2sbf) elements, sharded by tp (sp shards the rest); "
        f"x {in_flight(c, mem['rank']):.2f} micro-batches in flight (+ the stack's ends) = "
        f"{mem['activations'] / GB:.2f} GB",
        f"  total {mem['total'] / GB:.2f} GB <= {HEADROOM:.0%} x {spec['memory_gb']:.0f} GB "
        f"= {HEADROOM * spec['memory_gb']:.1f} GB",
        f"Time per micro-batch on the slowest stage: compute {mb['compute'] * 1e3:.1f} ms "
        f"(matmul efficiency {MATMUL_EFFICIENCY}), TP comm {mb['tp_comm'] * 1e3:.1f} ms, "
        f"PP p2p {mb['pp_p2p'] * 1e3:.1f} ms (links at {COMM_EFFICIENCY:.0%} of "
        f"NVLink {spec['nvlink_gbs']:.0f} / IB {spec['ib_gbs']:.0f} GB/s)",
        f"Pipeline: {c.num_microbatches} x {mb['total'] * 1e3:.1f} ms / (1 - bubble "
        f"(p-1)/(v m + p - 1) = {t['bubble']:.3f}) = {t['pipeline']:.2f} s",
        f"DP grad reduce-scatter + param all-gather, {DP_EXPOSED:.0%} exposed: {t['dp']:.2f} s",
        f"Adam update (~32 B/param of its shard over HBM): {t['optimizer'] * 1e3:.1f} ms",
        f"Step {t['step']:.2f} s; model FLOPs {t['model_flops'] / 1e15:.1f} PFLOP for "
        f"{global_batch_size} clips; MFU = FLOPs / (step x {c.tp * c.pp * c.dp} GPUs x "
        f"{spec['bf16']:.0f} TF) = {t['mfu']:.1%}",
    ]
    return "\n".join(lines[:1] + _padding_lines(row, spec, cfg) + lines[1:]
                     + _lever_lines(row, spec, cfg))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m megavid.plan", description=__doc__)
    parser.add_argument("--preset", default=None, help="model preset (default: the config's)")
    parser.add_argument("--config", default=None, help="YAML run config to start from")
    parser.add_argument("--gpus", type=int, required=True, help="world size")
    parser.add_argument("--gpu", default="h100-80gb", help=f"one of {', '.join(GPU_ALIASES)}")
    parser.add_argument("--global-batch-size", type=int, default=None,
                        help="clips per step (default: the config's, or 2048)")
    parser.add_argument("--mask-ratio", type=float, default=None)
    parser.add_argument("--decoder-mask-ratio", type=float, default=None,
                        help="fraction of the masked tubelets the decoder leaves out")
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--no-fp8", action="store_true", help="leave FP8 layouts out")
    parser.add_argument("--no-distributed-optimizer", action="store_true",
                        help="replicate Adam state on every DP rank (without --config)")
    parser.add_argument("--explain", action="store_true", help="show the best row's arithmetic")
    parser.add_argument("--levers", default="", metavar="LIST",
                        help=f"throughput levers to model on top of the config's: comma-separated "
                             f"from {', '.join(LEVERS)}, or all (CUDA graphs, TP comm overlap, "
                             "parameter all-gather overlap)")
    parser.add_argument("--check-config", action="store_true",
                        help="estimate the --config's own layout instead of searching")
    parser.add_argument("--json", action="store_true",
                        help="print the ranked layouts as JSON (raw numbers) instead of a table")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    overrides = {"train.precision": "bf16"}
    if not args.config:  # a search starts from megatron's large-model defaults
        overrides["parallel.use_distributed_optimizer"] = not args.no_distributed_optimizer
    if args.preset:
        overrides["model.preset"] = args.preset
    for name in ("mask_ratio", "decoder_mask_ratio"):
        if getattr(args, name) is not None:
            overrides[f"model.{name}"] = getattr(args, name)
    if args.global_batch_size or not args.config:
        overrides["train.global_batch_size"] = args.global_batch_size or 2048
    cfg = load_config(args.config, overrides)
    spec = gpu_spec(args.gpu)
    if args.check_config:
        return _check_config(cfg, args.gpus, spec)
    levers = _levers(args.levers)
    rows = plan(cfg, args.gpus, args.gpu, allow_fp8=not args.no_fp8, levers=levers)
    title = (f"{cfg.model.preset} on {args.gpus} x {spec['name']}, global batch "
             f"{cfg.train.global_batch_size}, mask ratio {cfg.model.mask_ratio}"
             + (f", decoder mask ratio {cfg.model.decoder_mask_ratio}"
                if cfg.model.decoder_mask_ratio else "")
             + (f", levers {', '.join(levers)}" if levers else "")
             + f": {len(rows)} fitting layouts")
    if not rows and not args.json:
        print(f"{title}: none fits; add GPUs or lower the batch")
        return 1
    extra = {"gpus": args.gpus, "gpu": spec["name"], "fitting_layouts": len(rows)}
    if args.explain and rows:
        extra["explain"] = explain(rows[0], spec, cfg)
    print_table(plan_rows(rows, args.top), plan_columns(spec), title=title, as_json=args.json,
                extra=extra)
    if args.explain and rows and not args.json:
        print(extra["explain"])
    return 0 if rows else 1


def _levers(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["all"]:
        return list(LEVERS)
    unknown = [n for n in names if n not in LEVERS]
    if unknown:
        raise SystemExit(f"megavid.plan: error: --levers {text!r}: unknown {unknown}; "
                         f"choose from {', '.join(LEVERS)}, or all")
    return names


def _check_config(cfg, world: int, spec: dict) -> int:
    """Memory and time of the config's own layout; exit 1 if it does not fit."""
    c = candidate_from_config(cfg, world)
    kw = mask_kwargs(cfg)
    arch = cfg.model.resolved_arch()
    row = PlanRow(c, peak_memory(arch, c, **kw),
                  step_time(arch, c, spec, global_batch_size=cfg.train.global_batch_size, **kw))
    print(explain(row, spec, cfg))
    fits = row.memory["total"] <= HEADROOM * spec["memory_gb"] * GB
    print("fits" if fits else "does NOT fit")
    return 0 if fits else 1


if __name__ == "__main__":
    raise SystemExit(main())
