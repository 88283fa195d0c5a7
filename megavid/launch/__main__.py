"""``python -m megavid.launch slurm ...``: render (and submit) a checked SLURM batch file.

Arguments after ``--`` go to ``megavid.pretrain`` unchanged (they are checked by
its own parser). The summary goes to stderr, so ``--dry-run > job.sbatch`` works.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from megavid.config import ConfigError
from megavid.launch.slurm import MODES, SlurmJob, check, memory_estimate, notes, render


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: an unknown flag is an error, never a guessed prefix (--gpus)
    parser = argparse.ArgumentParser(prog="python -m megavid.launch", allow_abbrev=False,
                                     description="Launch megavid on a cluster.")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser(
        "slurm", help="render a SLURM batch file from a config", allow_abbrev=False,
        description="Render launch/slurm/pretrain.sbatch for a config after checking its layout.",
        epilog="Arguments after -- go to megavid.pretrain, e.g. -- --train-iters 100 --save ckpt",
    )
    s.add_argument("--config", required=True, help="megavid YAML config (examples/*.yaml)")
    s.add_argument("--nodes", type=_positive_int, required=True)
    s.add_argument("--gpus-per-node", type=_positive_int, required=True)
    s.add_argument("--tp", type=_positive_int, help="tensor-parallel size (default: the config's)")
    s.add_argument("--pp", type=_positive_int,
                   help="pipeline-parallel size (default: the config's)")
    s.add_argument("--mode", choices=MODES, default="torchrun",
                   help="torchrun: one task per node running torchrun; srun: one task per GPU")
    s.add_argument("--partition")
    s.add_argument("--account")
    s.add_argument("--time", help="wall-clock limit, HH:MM:SS or D-HH:MM:SS")
    s.add_argument("--container", help="pyxis/enroot image, e.g. nvcr.io#nvidia/pytorch:25.01-py3")
    s.add_argument("--container-mounts", help="SRC:DST[:FLAGS][,SRC:DST...]")
    s.add_argument("--job-name", help="default: the config's file name")
    s.add_argument("--cpus-per-task", type=_positive_int)
    out = s.add_mutually_exclusive_group()
    out.add_argument("--dry-run", action="store_true", help="print the batch file, write nothing")
    out.add_argument("--submit", action="store_true", help="write the file, then sbatch it")
    s.add_argument("--output", help="where to write the batch file (default: JOB_NAME.sbatch)")
    return parser


def _job(args: argparse.Namespace, overrides: list[str]) -> SlurmJob:
    return SlurmJob(
        config=args.config, nodes=args.nodes, gpus_per_node=args.gpus_per_node, mode=args.mode,
        tp=args.tp, pp=args.pp, partition=args.partition, account=args.account, time=args.time,
        container=args.container, container_mounts=args.container_mounts,
        job_name=args.job_name, cpus_per_task=args.cpus_per_task, overrides=tuple(overrides),
    )


def _summary(checked) -> str:
    job, lay = checked.job, checked.layout
    lines = [
        f"megavid.launch: {checked.cfg.model.preset} on {job.nodes} nodes x {job.gpus_per_node} "
        f"GPUs = {job.world_size} ranks (mode {job.mode})",
        f"  layout: tp {lay.tp} x pp {lay.pp} (vpp {lay.vpp}) x dp {lay.dp}",
        f"  data-parallel size: {lay.dp}; micro-batches per step: {lay.num_microbatches} of "
        f"{lay.micro_batch_size} per DP rank (global batch {checked.cfg.train.global_batch_size})",
        f"  memory per GPU: {memory_estimate(checked)}",
    ]
    return "\n".join(lines + [f"  note: {n}" for n in notes(checked)])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    parser = build_parser()
    args = parser.parse_args(argv[:cut])
    if args.submit and shutil.which("sbatch") is None:
        parser.error("--submit: sbatch is not on PATH (not a SLURM login node?); render with "
                     "--output FILE and run `sbatch FILE` where SLURM is installed")
    try:
        checked = check(_job(args, argv[cut + 1:]))
        text = render(checked)
    except ConfigError as err:  # LayoutError and LaunchError included
        print(f"megavid.launch: error: {err}", file=sys.stderr)
        return 2
    print(_summary(checked), file=sys.stderr)
    if args.dry_run:
        sys.stdout.write(text)
        return 0
    path = Path(args.output or f"{checked.job.name}.sbatch")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"megavid.launch: wrote {path}", file=sys.stderr)
    if not args.submit:
        return 0
    Path("logs").mkdir(exist_ok=True)  # sbatch --output=logs/%x-%j.out needs the directory
    return subprocess.run(["sbatch", str(path)]).returncode


if __name__ == "__main__":
    sys.exit(main())
