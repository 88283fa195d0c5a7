"""The 4DS scaling figure on CPU: 4D readouts of MAE encoders against pretraining compute.

4DS (Carreira et al. 2024) reads its encoders out on 4D tasks and plots quality against
model size and compute. This is the CPU-sized counterpart on the synthetic benchmark
(generator v2): ``tiny``-class encoders at 2x8x8 tubelets in two widths, pretrained by
``python -m megavid.pretrain`` on label-free scenes of their own seed for budgets of steps
4x apart (one run per budget, each with its own cosine schedule: compute scaling, not the
checkpoints of one longer run), then read out on depth and tracking by

- the linear probe (``--readout linear``) over the pretraining seeds (error bars: the
  spread of separately pretrained encoders), and
- the attention readout on the first seed's encoders over readout seeds (error bars: the
  readout's own spread).

Budget 0 is random weights: the network saved at its initialisation (``--lr 0``, one
step). The figure plots each metric against pretraining FLOPs (log x; random weights at
the left edge), one line per width, with the task's prior (the training set's mean depth
map; points that stay still) as a horizontal line. ``--out`` receives ``scaling_4d.png``
and ``scaling_4d_cpu.json`` (the benchmark format; ``--quick``: ``scaling_4d_quick.*``).

    python benchmarks/scaling_4d.py --out benchmarks/results           # about 80 minutes
    python benchmarks/scaling_4d.py --out /tmp/scaling --quick         # about 5 minutes
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from megavid.config.schema import ModelConfig
from megavid.eval import make_synthetic
from megavid.eval.run import EvalConfig, run_eval
from megavid.eval.train import ReadoutConfig
from megavid.models.flops import mae_train_flops_per_clip
from megavid.parallel import runtime
from megavid.tools.bench_results import write_results

REPO = Path(__file__).resolve().parents[1]
TUBELET = [2, 8, 8]
WIDTHS = {  # name -> model.arch overrides of the tiny preset (6 + 2 layers)
    "w64": {"tubelet": TUBELET},
    "w128": {"tubelet": TUBELET, "hidden_size": 128, "ffn_hidden_size": 256},
}
MASK_RATIO = 0.9
CURVE_POINTS = 32  # stretches of each run's loss curve kept in the JSON
# with normalised targets a decoder that predicts each tubelet's mean scores 1.0; the MAE
# counts as off that plateau once its loss stays under this
PLATEAU_LOSS = 0.98
# what each panel shows: (readout, task, metric, higher is better)
# (abs_rel: per-frame median scaling, each frame's structure only; abs_rel_unscaled: the
# metric depth the readouts regress, each frame's depth scale included)
PANELS = [("linear", "depth", "residual_r2", True), ("linear", "depth", "abs_rel", False),
          ("linear", "depth", "abs_rel_unscaled", False),
          ("linear", "tracking", "average_jaccard", True),
          ("attention", "depth", "abs_rel", False),
          ("attention", "depth", "abs_rel_unscaled", False),
          ("attention", "tracking", "average_jaccard", True),
          ("linear", "tracking", "residual_r2", True)]
# the JSON's rows: every metric a panel plots, then the depth probe's variance shares
ROW_METRICS = tuple(dict.fromkeys([metric for _, _, metric, _ in PANELS] + [
    "r2", "residual_r2_frame_mean", "residual_r2_in_frame"]))


@dataclass
class Settings:
    bench_scenes: int = 256  # the default benchmark (192 train / 64 test clips)
    pretrain_scenes: int = 4096  # label-free, seed 1: the MAE's own data (16x the benchmark)
    budgets: tuple[int, ...] = (0, 64, 256, 1024)  # pretraining steps; 0 = random weights
    seeds: tuple[int, ...] = (1, 2, 3)  # pretraining seeds
    readout_seeds: tuple[int, ...] = (0, 1, 2)  # attention readout seeds
    readout_steps: int = 300
    batch: int = 16
    lr: float = 3e-4  # 2e-3 left the MAE on its loss plateau for most of a run (README)
    widths: dict = field(default_factory=lambda: dict(WIDTHS))


QUICK = Settings(bench_scenes=32, pretrain_scenes=48, budgets=(0, 10, 40), seeds=(1, 2),
                 readout_seeds=(0, 1), readout_steps=20)


def pretrain(work: Path, data: Path, width: str, arch: dict, steps: int, seed: int,
             s: Settings) -> Path:
    """One MAE run (or, for 0 steps, the initialisation saved); its checkpoint directory."""
    out = work / f"{width}-steps{steps}-seed{seed}"
    if (out / "ckpt" / "latest").is_file():
        return out / "ckpt"  # a rerun after an interruption keeps finished runs
    schedule = (["--train-iters", str(steps), "--lr", str(s.lr), "--lr-warmup-iters",
                 str(max(1, steps // 20))] if steps else
                ["--train-iters", "1", "--lr", "0", "--lr-warmup-iters", "0", "--set",
                 "train.min_lr=0"])
    cmd = [sys.executable, "-m", "megavid.pretrain", "--preset", "tiny", "--set",
           f"model.arch={json.dumps(arch)}", "--mask-ratio", str(MASK_RATIO), "--set",
           "model.norm_pix_loss=true", "--data", str(data), "--global-batch-size", str(s.batch),
           "--micro-batch-size", str(s.batch), "--set", "data.frame_stride=1", "--seed",
           str(seed), "--eval-interval", "1000000", "--log-interval", "1000000",
           "--set", "log.plot=false", "--set", "log.tensorboard=false", "--save",
           str(out / "ckpt"), "--log-dir", str(out / "log"), *schedule]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    (out / "seconds").write_text(f"{seconds:.1f}\n")  # for compute_seconds after a resume
    print(f"pretrained {out.name} in {seconds:.0f} s", flush=True)
    return out / "ckpt"


def compute_seconds(work: Path) -> float:
    """What every pretraining run and readout in ``work`` took, whichever invocation ran it
    (the wall time of a resumed invocation leaves out what it kept); rendering not counted."""
    runs = sum(float(f.read_text()) for f in work.glob("*/seconds"))
    readouts = sum(json.loads(f.read_text())["seconds"] for f in work.glob("eval/*/metrics.json"))
    return runs + readouts


def loss_curve(log_dir: Path, points: int = CURVE_POINTS) -> list[float]:
    """The run's training loss (``metrics.jsonl``, one line per step) as the means of
    ``points`` equal stretches of its steps (one a step for shorter runs)."""
    losses = [json.loads(line)["loss"] for line in (log_dir / "metrics.jsonl").open()]
    points = min(points, len(losses))
    edges = [round(i * len(losses) / points) for i in range(points + 1)]
    return [statistics.mean(losses[a:b]) for a, b in zip(edges, edges[1:])]


def final_loss(curve: list[float]) -> float:
    """The mean over the last eighth of a ``loss_curve``."""
    return statistics.mean(curve[-max(1, len(curve) // 8):])


def plateau_exit(curve: list[float]) -> float | None:
    """The fraction of the run after which the loss first stays under ``PLATEAU_LOSS``
    (None: it never left the plateau), from ``loss_curve``'s stretches."""
    for i in range(len(curve)):
        if all(v < PLATEAU_LOSS for v in curve[i:]):
            return i / len(curve)
    return None


def read_out(ckpt: Path, bench: Path, work: Path, readout: str, task: str, seed: int,
             s: Settings) -> dict:
    out = work / "eval" / f"{ckpt.parent.name}-{readout}-{task}-{seed}"
    plotted = {metric for r, t, metric, _ in PANELS if (r, t) == (readout, task)}
    try:  # a rerun keeps finished readouts (metrics.json is written when one ends)
        result = json.loads((out / "metrics.json").read_text())
        if not plotted <= result["metrics"].keys():
            raise ValueError("an older readout, without a metric the figure now plots")
    except (OSError, ValueError):
        result = run_eval(EvalConfig(
            task=task, source=str(ckpt), data=str(bench), readout_kind=readout,
            out=str(out), pictures=False, feature_cache=str(work / "features"),
            readout=ReadoutConfig(steps=s.readout_steps, batch_size=16, lr=3e-3, warmup=10,
                                  width=64, heads=4, seed=seed, log_interval=10**6)))
    return {"metrics": result["metrics"], "prior": result["references"]["prior"]}


def flops(arch: dict, steps: int, batch: int) -> float:
    model = ModelConfig(preset="tiny", arch=arch)
    return float(steps * batch * mae_train_flops_per_clip(model.resolved_arch(),
                                                          mask_ratio=MASK_RATIO))


def measure(s: Settings, work: Path) -> dict:
    """{(readout, task, width, steps): [metrics per seed]} plus the priors and FLOPs."""
    bench = make_synthetic(work / "bench", num_scenes=s.bench_scenes, frames=8, size=64,
                           seed=0, workers=2)
    videos = make_synthetic(work / "pretrain-data", num_scenes=s.pretrain_scenes, frames=8,
                            size=64, seed=1, labels=False, workers=2) / "train" / "videos"
    runs, priors, curves = {}, {}, {}
    try:
        for width, arch in s.widths.items():
            for steps in s.budgets:
                for seed in s.seeds:
                    ckpt = pretrain(work, videos, width, arch, steps, seed, s)
                    if steps:
                        curves.setdefault(f"{width}/{steps}", []).append(
                            loss_curve(ckpt.parent / "log"))
                    jobs = [("linear", seed)] + ([("attention", r) for r in s.readout_seeds]
                                                 if seed == s.seeds[0] else [])
                    for readout, rseed in jobs:
                        for task in ("depth", "tracking"):
                            got = read_out(ckpt, bench, work, readout, task, rseed, s)
                            runs.setdefault(f"{readout}/{task}/{width}/{steps}", []).append(
                                got["metrics"])
                            priors[task] = got["prior"]
    finally:
        runtime.shutdown()
    costs = {f"{w}/{b}": flops(arch, b, s.batch) for w, arch in s.widths.items()
             for b in s.budgets}
    return {"runs": runs, "priors": priors, "flops": costs, "loss_curves": curves}


def spread(values: list[float]) -> tuple[float, float]:
    """Mean and standard deviation over seeds (NaN where no seed has a finite value)."""
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return math.nan, math.nan
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def draw(measured: dict, s: Settings, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 5, figsize=(25, 8.5))
    smallest = min(v for v in measured["flops"].values() if v > 0)
    random_x = smallest / 8  # random weights: drawn left of the smallest budget
    draw_pretraining(measured, s, axes[0, 4], axes[1, 4])
    for ax, (readout, task, metric, higher) in zip(axes[:, :4].ravel(), PANELS):
        for i, width in enumerate(s.widths):
            xs, means, stds = [], [], []
            for steps in s.budgets:
                values = [m[metric] for m in measured["runs"][f"{readout}/{task}/{width}/{steps}"]]
                mean, std = spread(values)
                xs.append(measured["flops"][f"{width}/{steps}"] or random_x * 1.2 ** i)
                means.append(mean)
                stds.append(std)
            ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=width)
        prior = measured["priors"][task].get(metric)
        if prior is not None:
            ax.axhline(prior, color="grey", linestyle="--", label="prior")
        ax.set_xscale("log")
        ax.set_xlabel("pretraining FLOPs (leftmost: random weights)")
        better = "higher" if higher else "lower"
        ax.set_title(f"{task} {metric} ({readout}; {better} is better)")
        ax.legend(fontsize=8)
    seeds = (f"probe: {len(s.seeds)} pretraining seeds; attention: {len(s.readout_seeds)} "
             "readout seeds")
    fig.suptitle(f"4D readouts against MAE compute, tiny-class encoders at 2x8x8 tubelets "
                 f"({seeds}; error bars: 1 std)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def draw_pretraining(measured: dict, s: Settings, curves_ax, scatter_ax) -> None:
    """Left: every run's MAE loss against the fraction of its steps (the plateau at 1.0 is
    a decoder predicting each tubelet's mean); right: each seed's linear-probe depth
    residual R^2 against its run's final loss."""
    colours = dict(zip(s.widths, ("tab:blue", "tab:orange", "tab:green", "tab:red")))
    styles = dict(zip([b for b in s.budgets if b], (":", "-.", "--", "-")))
    for key, per_seed in measured["loss_curves"].items():
        width, steps = key.split("/")
        for i, curve in enumerate(per_seed):
            xs = [(j + 0.5) / len(curve) for j in range(len(curve))]
            curves_ax.plot(xs, curve, color=colours[width], linestyle=styles[int(steps)],
                           linewidth=1, label=f"{width}, {steps} steps" if i == 0 else None)
            r2 = measured["runs"][f"linear/depth/{width}/{steps}"][i]["residual_r2"]
            top = int(steps) == max(s.budgets)
            scatter_ax.scatter(final_loss(curve), r2, color=colours[width],
                               marker="o" if top else "x", s=20)
    curves_ax.axhline(PLATEAU_LOSS, color="grey", linestyle="--", linewidth=0.8)
    curves_ax.set_xlabel("fraction of the run's steps")
    curves_ax.set_title("MAE training loss (normalised targets)")
    curves_ax.legend(fontsize=7)
    for width, colour in colours.items():
        random = [m["residual_r2"] for m in measured["runs"][f"linear/depth/{width}/0"]]
        scatter_ax.axhline(statistics.mean(random), color=colour, linestyle=":", linewidth=0.8,
                           label=f"{width} random weights")
    scatter_ax.set_xlabel("final MAE loss (last eighth of the run)")
    scatter_ax.set_title("depth residual_r2 (linear) per encoder (o: largest budget)",
                         fontsize=10)
    scatter_ax.legend(fontsize=7)


def rows_and_ratios(measured: dict, s: Settings) -> tuple[list[dict], dict]:
    rows, ratios = [], {}
    for key, per_seed in measured["runs"].items():
        readout, task, width, steps = key.split("/")
        for metric in ROW_METRICS:
            if metric in per_seed[0]:
                mean, std = spread([m[metric] for m in per_seed])
                if not math.isfinite(mean):
                    continue
                rows.append({"name": f"{readout} {task} {metric} {width} steps={steps}",
                             "value": mean, "unit": "", "std": std, "seeds": len(per_seed),
                             "per_seed": [m[metric] for m in per_seed],
                             "flops": measured["flops"][f"{width}/{steps}"]})
    for key, per_seed in measured.get("loss_curves", {}).items():
        width, steps = key.split("/")
        finals = [final_loss(c) for c in per_seed]
        rows.append({"name": f"pretraining final_loss {width} steps={steps}",
                     "value": spread(finals)[0], "per_seed": finals,
                     "unit": "", "seeds": len(per_seed),
                     "plateau_exit_fraction": [plateau_exit(c) for c in per_seed],
                     "loss_curves": per_seed})
    top = max(s.budgets)
    for width in s.widths:
        for readout, task, metric, higher in PANELS:
            runs = measured["runs"]
            big = [m[metric] for m in runs[f"{readout}/{task}/{width}/{top}"]]
            rand = [m[metric] for m in runs[f"{readout}/{task}/{width}/0"]]
            (mb, sb), (mr, sr) = spread(big), spread(rand)
            gap = (mb - mr) if higher else (mr - mb)
            noise = max(sb, sr)
            if not math.isfinite(gap):
                continue
            key = f"{readout}_{task}_{metric}_{width}_largest_budget_gain_over_random"
            ratios[key] = round(gap, 5)
            if noise > 0:
                ratios[f"{key}_in_seed_std"] = round(gap / noise, 2)
    return rows, ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for the PNG and the JSON")
    parser.add_argument("--quick", action="store_true", help="the CI-sized version (minutes)")
    parser.add_argument("--work-dir", help="runs and data (default: OUT/scaling_4d_work); a "
                        "rerun there keeps finished pretraining runs")
    args = parser.parse_args()
    s = QUICK if args.quick else Settings()
    out = Path(args.out)
    stem = "scaling_4d_quick" if args.quick else "scaling_4d"
    work = Path(args.work_dir or out / f"{stem}_work")
    for folder in (out, work):
        folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    measured = measure(s, work)
    draw(measured, s, out / f"{stem}.png")
    rows, ratios = rows_and_ratios(measured, s)
    wall = time.perf_counter() - started
    compute = compute_seconds(work)
    notes = [f"tiny preset (6 + 2 layers) at 2x8x8 tubelets, widths {list(s.widths)}, mask "
             f"{MASK_RATIO}, normalised targets, batch {s.batch}, lr {s.lr}, one cosine run per "
             f"budget {list(s.budgets)} steps (0: random weights)",
             f"benchmark: synthetic v2, {s.bench_scenes} scenes (seed 0); pretraining: "
             f"{s.pretrain_scenes} label-free scenes (seed 1)",
             f"linear probe over pretraining seeds {list(s.seeds)}; attention readout "
             f"({s.readout_steps} steps, width 64) over readout seeds {list(s.readout_seeds)} "
             f"on seed {s.seeds[0]}'s encoders",
             "ratios: the largest budget's mean minus random weights' (sign: positive is "
             "better), and that gap in units of the larger of the two seed spreads",
             f"wall time {wall:.0f} s (this invocation; runs and readouts already in the work "
             f"folder are kept, not repeated); pretraining and readouts took "
             f"{compute:.0f} s in all"]
    obj = write_results(out / f"{stem}_cpu.json", "benchmarks.scaling_4d", rows, ratios,
                        notes=notes, extra={"settings": dataclasses.asdict(s),
                                            "priors": measured["priors"],
                                            "wall_time_s": round(wall, 1),
                                            "compute_s": round(compute, 1)})
    print(json.dumps(obj["ratios"], indent=1))
    print(f"wrote {out / f'{stem}.png'} and {out / f'{stem}_cpu.json'} in {wall:.0f} s")


if __name__ == "__main__":
    main()
