"""``python -m megavid.eval --task TASK --ckpt PATH|--preset NAME --data synthetic|PATH``.

Trains a readout on frozen features of the encoder (4DS's attention readout, or
with ``--readout linear`` a ridge probe beside raw-pixel and oracle references),
evaluates it on the test split and writes ``metrics.json``, ``train_log.jsonl`` and
a picture into the run directory. Runs data parallel under torchrun (``--tp/--pp`` split an encoder
too large for one device). Thin on purpose: parse,
validate, ``megavid.eval.run.run_eval``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from megavid.config.presets import PRESETS
from megavid.eval.run import DEFAULT_FEATURE_CACHE, EvalConfig, run_eval
from megavid.eval.tasks import TASKS
from megavid.eval.train import ReadoutConfig
from megavid.parallel import runtime


def _depth_list(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated depths, e.g. "
                                         "0.5,0.95") from None


def build_parser() -> argparse.ArgumentParser:
    d = ReadoutConfig()
    p = argparse.ArgumentParser(prog="python -m megavid.eval", description=(
        "Train a readout on an encoder's frozen features, evaluate it on the test split, and "
        "write metrics.json, train_log.jsonl and a picture into the run directory. Runs data "
        "parallel under torchrun."))
    p.add_argument("--task", required=True, choices=sorted(TASKS))
    enc = p.add_mutually_exclusive_group(required=True)
    enc.add_argument("--ckpt", help="megavid checkpoint dir, 4DS .npz or Hugging Face dir")
    enc.add_argument("--preset", help="a preset name: its seeded random weights (a baseline)")
    p.add_argument("--data", default="synthetic",
                   help="'synthetic' or a dataset path (see megavid/eval/datasets.py)")
    p.add_argument("--train-data", help="readout training data (default: --data's train split)")
    p.add_argument("--depth", type=float, default=0.95,
                   help="relative encoder depth of the features, in (0, 1] (4DS: 0.95)")
    p.add_argument("--readout", choices=("attention", "linear"), default="attention",
                   help="attention: a trained cross-attention readout (4DS's); linear: a ridge "
                   "probe in closed form, beside raw-pixel and oracle references "
                   "(megavid/eval/probe.py)")
    p.add_argument("--probe-depths", type=_depth_list, default=(),
                   help="--readout linear: concatenate the features of these relative depths, "
                   "e.g. 0.5,0.75,0.95 (default: --depth)")
    p.add_argument("--num-frames", type=int,
                   help="clip length to run the encoder at (default: its own)")
    p.add_argument("--image-size", type=int,
                   help="frame size to run the encoder at (its position table is resized)")
    p.add_argument("--tp", "--tensor-model-parallel-size", dest="tp", type=int, default=1,
                   help="split the encoder over this many ranks (tensor parallel)")
    p.add_argument("--pp", "--pipeline-model-parallel-size", dest="pp", type=int, default=1,
                   help="split the encoder's blocks into this many stages (pipeline parallel)")
    p.add_argument("--out", help="run directory (default runs/eval-<task>-<timestamp>/)")
    p.add_argument("--steps", type=int, default=d.steps, help="readout optimizer steps")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch (clips)")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--readout-width", type=int, default=d.width)
    p.add_argument("--readout-heads", type=int, default=d.heads)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--log-interval", type=int, default=d.log_interval)
    p.add_argument("--num-queries", type=int, help="tracking points / boxes per clip")
    p.add_argument("--max-clips", type=int, help="use at most this many clips per split")
    p.add_argument("--synthetic-scenes", type=int, help="scenes in the synthetic set")
    p.add_argument("--feature-cache", default=None,
                   help="feature cache dir (default ~/.cache/megavid/eval-features)")
    p.add_argument("--no-feature-cache", action="store_true", help="always run the encoder")
    p.add_argument("--no-pictures", action="store_true")
    p.add_argument("--json", action="store_true",
                   help="print the metrics (and metrics.json's content) as JSON, no table")
    return p


def validate(args) -> str | None:
    """One line naming the flag and the fix, or None."""
    if not 0 < args.depth <= 1:
        return f"--depth {args.depth}: must be in (0, 1] (a fraction of the encoder's layers)"
    if args.probe_depths and args.readout != "linear":
        return "--probe-depths applies only with --readout linear"
    for depth in args.probe_depths:
        if not 0 < depth <= 1:
            return f"--probe-depths {depth}: each must be in (0, 1]"
    for flag in ("steps", "batch_size", "readout_width", "readout_heads", "log_interval", "tp",
                 "pp"):
        if getattr(args, flag) < 1:
            return f"--{flag.replace('_', '-')} must be at least 1"
    if args.readout_width % args.readout_heads:
        return (f"--readout-width {args.readout_width} is not divisible by --readout-heads "
                f"{args.readout_heads}; pick a width that is a multiple of the heads")
    if args.warmup < 0 or args.lr <= 0:
        return "--warmup must be >= 0 and --lr > 0"
    for flag in ("num_queries", "max_clips", "synthetic_scenes", "num_frames", "image_size"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            return f"--{flag.replace('_', '-')} must be at least 1"
    if args.ckpt and not Path(args.ckpt).expanduser().exists():
        return f"--ckpt {args.ckpt}: no such file or directory"
    if args.preset:
        if args.preset.lower() not in PRESETS:
            return f"--preset {args.preset}: unknown; choose one of {', '.join(PRESETS)}"
    for flag in ("data", "train_data"):
        value = getattr(args, flag)
        if value and value != "synthetic" and not Path(value).expanduser().exists():
            return (f"--{flag.replace('_', '-')} {value}: no such file or directory "
                    "(or pass 'synthetic' for the built-in benchmark)")
    if args.synthetic_scenes and args.data != "synthetic":
        return "--synthetic-scenes applies only with --data synthetic"
    return None


def config_from_args(args):
    readout = ReadoutConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                            weight_decay=args.weight_decay, warmup=args.warmup,
                            width=args.readout_width, heads=args.readout_heads, seed=args.seed,
                            log_interval=args.log_interval)
    cache = None if args.no_feature_cache else (args.feature_cache or DEFAULT_FEATURE_CACHE)
    return EvalConfig(
        task=args.task, source=args.ckpt or args.preset, data=args.data,
        train_data=args.train_data, depth=args.depth, readout_kind=args.readout,
        probe_depths=args.probe_depths, out=args.out, feature_cache=cache,
        max_clips=args.max_clips, num_queries=args.num_queries, num_frames=args.num_frames,
        image_size=args.image_size, tp=args.tp, pp=args.pp, readout=readout,
        synthetic={"num_scenes": args.synthetic_scenes} if args.synthetic_scenes else {},
        pictures=not args.no_pictures, json=args.json)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problem = validate(args)
    if problem:
        print(f"megavid.eval: error: {problem}", file=sys.stderr)
        return 2
    try:
        run_eval(config_from_args(args))
    except (ValueError, FileNotFoundError) as err:  # data that cannot serve the task
        print(f"megavid.eval: error: {err}", file=sys.stderr)
        return 2
    finally:
        runtime.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
