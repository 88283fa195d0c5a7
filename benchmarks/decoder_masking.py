"""Does decoder masking learn as well? megavid's MAE with ``model.decoder_mask_ratio`` 0 vs 0.5.

Per seed, three CPU runs of ``python -m megavid.pretrain`` on the same clips:

- ``full``: decoder_mask_ratio 0 (MAE, 4DS), ``--steps`` steps;
- ``dual_same_steps``: decoder_mask_ratio 0.5 (VideoMAE V2's ratio), the same steps;
- ``dual_same_time``: 0.5 for as many steps as fit in ``full``'s training time (its steps
  times the measured step-time ratio of the first two), the same learning-rate schedule
  stretched over them.

Judged by the validation loss at the end: every masked tubelet of a fixed held-out set
reconstructed (validation always decodes all of them, whatever the training ratio), so the
three are read on one scale. The model is the ``demo`` preset with 2x8x8 tubelets (256 per
clip; mask 0.9: 26 visible, the decoder on 256 or 26 + 115): small enough for CPU, with the
decoder doing most of the work as at 4DS-S. Targets are raw pixels (the demo's setting:
normalised targets barely move in CPU-sized runs).

    python benchmarks/decoder_masking.py --out benchmarks/results/decoder_masking_cpu.json
    python benchmarks/decoder_masking.py --quick   # 1 seed, 40 steps
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from megavid.tools.bench_results import write_results

REPO = Path(__file__).resolve().parents[1]
MODEL = ["--preset", "demo", "--set", "model.arch={tubelet: [2, 8, 8]}", "--mask-ratio", "0.9",
         "--set", "model.norm_pix_loss=false"]


def pretrain(log_dir: Path, data_dir: Path, *, ratio: float, steps: int, seed: int,
             clips: int) -> list[dict]:
    """One run; its metrics.jsonl rows."""
    cmd = [sys.executable, "-m", "megavid.pretrain", *MODEL, "--decoder-mask-ratio", str(ratio),
           "--train-iters", str(steps), "--lr", "1.5e-3", "--lr-warmup-iters", str(steps // 10),
           "--global-batch-size", "8", "--micro-batch-size", "8", "--seed", str(seed),
           "--set", f"data.demo_clips={clips}", "--set", f"data.cache_dir={data_dir}",
           "--set", "data.valid_fraction=0.125", "--set", f"train.eval_interval={steps}",
           "--set", f"train.eval_iters={clips // 8 // 8}", "--set", "data.num_workers=1",
           "--set", "log.plot=false", "--set", "log.tensorboard=false",
           "--log-interval", str(max(1, steps // 4)), "--log-dir", str(log_dir)]
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return [json.loads(line) for line in (log_dir / "metrics.jsonl").read_text().splitlines()]


def summary(rows: list[dict]) -> dict:
    train_s = sum(r["step_time_s"] for r in rows)
    return {"steps": len(rows), "train_s": round(train_s, 2),
            "median_step_ms": round(1e3 * statistics.median(r["step_time_s"] for r in rows), 2),
            "final_train_loss": rows[-1]["loss"], "val_loss": rows[-1]["val_loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", default="0,1", help="comma-separated")
    parser.add_argument("--clips", type=int, default=128, help="demo clips (1/8 held out)")
    parser.add_argument("--quick", action="store_true", help="1 seed, 40 steps, 64 clips")
    parser.add_argument("--out", default="decoder_masking.json")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    steps, clips = args.steps, args.clips
    if args.quick:
        seeds, steps, clips = seeds[:1], 40, 64
    runs: dict[str, list[dict]] = {"full": [], "dual_same_steps": [], "dual_same_time": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for seed in seeds:
            run = lambda name, ratio, n: summary(pretrain(  # noqa: E731
                tmp / f"{name}-{seed}", tmp / "clips", ratio=ratio, steps=n, seed=seed,
                clips=clips))
            full = run("full", 0.0, steps)
            dual = run("dual_same_steps", 0.5, steps)
            speedup = full["median_step_ms"] / dual["median_step_ms"]
            stretched = run("dual_same_time", 0.5, round(steps * speedup))
            for name, result in (("full", full), ("dual_same_steps", dual),
                                 ("dual_same_time", stretched)):
                runs[name].append({"seed": seed, **result})
                print(f"seed {seed} {name:16s} {result}", flush=True)
    rows, ratios = [], {}
    for name, per_seed in runs.items():
        losses = [r["val_loss"] for r in per_seed]
        rows.append({"name": f"decoder_masking {name} val_loss", "value": statistics.mean(losses),
                     "unit": "mse", "seeds": per_seed,
                     "std": statistics.stdev(losses) if len(losses) > 1 else 0.0})
    mean = {name: statistics.mean(r["val_loss"] for r in per_seed) for name, per_seed in runs.items()}
    step_ms = {name: statistics.mean(r["median_step_ms"] for r in per_seed)
               for name, per_seed in runs.items()}
    ratios["step_speedup_dual_vs_full"] = round(step_ms["full"] / step_ms["dual_same_steps"], 3)
    ratios["val_loss_dual_same_steps_over_full"] = round(mean["dual_same_steps"] / mean["full"], 4)
    ratios["val_loss_dual_same_time_over_full"] = round(mean["dual_same_time"] / mean["full"], 4)
    notes = [f"demo preset, 2x8x8 tubelets, mask 0.9, raw-pixel MSE, batch 8, {clips} demo clips "
             f"({clips // 8} held out), lr 1.5e-3 with 10% warm-up, seeds {seeds}",
             "val_loss: validation over the held-out clips with every masked tubelet decoded "
             "(the same measure for all three); lower is better",
             "dual_same_time: decoder_mask_ratio 0.5 for full's steps x the step-time ratio"]
    obj = write_results(args.out, "benchmarks.decoder_masking", rows, ratios, notes=notes,
                        extra={"settings": {"steps": steps, "seeds": seeds, "clips": clips,
                                            "quick": args.quick}})
    print(obj["ratios"])


if __name__ == "__main__":
    main()
