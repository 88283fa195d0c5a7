"""Everything one GPU can measure about megavid, in one command of under 10 minutes.

    python benchmarks/gpu_acceptance.py --out benchmarks/results/gpu_acceptance_<gpu>.json
    python benchmarks/gpu_acceptance.py --dry-run      # any machine: preconditions and plan

Parts, each in its own processes with its own time budget, so that one failing or slow part
does not stop the others (its failure is a note in the results, and the script goes on):

- ``pytest_gpu``: every ``gpu``-marked test;
- ``te_vs_local``: 4DS-S, same weights, BF16, 3 steps, TE spec against the local spec;
- ``step_time``: 4DS-B/L/H at the micro-batch the planner picks for one GPU, BF16 then FP8
  (each recipe the GPU supports on 4DS-B, the first on L/H), CUDA graphs off and on: step time,
  clips/s, MFU, and the planner's memory model against ``torch.cuda.max_memory_allocated``;
- ``decode``: DALI mixed (NVDEC) decoding of H.264 and VP9 clips made on the fly, against
  DALI's CPU decoder (VP9) and PyAV, frames/s;
- ``kernels``: the Triton kernels against their PyTorch references (``megavid.kernels.bench``).

Results go to ``--out`` in the benchmark format (``megavid/tools/bench_results.py``) and are
printed as a table. Nothing here runs without CUDA except ``--dry-run``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import torch

from megavid.config import load_config
from megavid.config.fp8 import RECIPES, recipe_problem
from megavid.data.dali import DALIDecoder
from megavid.data.decode import PyAVDecoder
from megavid.data.demo_clips import render_clip, write_clip
from megavid.plan import estimate_memory_per_gpu, plan
from megavid.tables import Column, print_table
from megavid.tools.bench_results import write_results

REPO = Path(__file__).resolve().parents[1]
MOCK = ("--set", "data.mock=true", "--set", "data.valid_fraction=0", "--eval-iters", "0",
        "--set", "log.tensorboard=false", "--set", "log.plot=false", "--lr-warmup-iters", "1")
STEP_PRESETS = ("4ds-b", "4ds-l", "4ds-h")
STEPS = 8  # per step-time run; the median of the steps after the first 3 (warm-up, capture)


@dataclass
class Part:
    name: str
    budget_s: float
    needs: list[str]  # what must be present: cuda, te, dali, triton
    run: object  # fn(part, tmp: Path, deadline: float) -> (results, ratios, notes)
    what: str
    results: list = field(default_factory=list)
    ratios: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)


def _present() -> dict[str, bool]:
    return {"cuda": torch.cuda.is_available(),
            "te": importlib.util.find_spec("transformer_engine") is not None,
            "dali": importlib.util.find_spec("nvidia.dali") is not None,
            "triton": importlib.util.find_spec("triton") is not None}


def supported_recipes() -> list[str]:
    if not torch.cuda.is_available():
        return []
    capability = tuple(torch.cuda.get_device_capability())
    return [r for r in RECIPES if recipe_problem(r, capability, torch.version.cuda) is None]


def _pretrain(tmp: Path, name: str, args: tuple, timeout: float) -> list[dict]:
    log_dir = tmp / name
    cmd = [sys.executable, "-m", "megavid.pretrain", "--log-dir", str(log_dir), *MOCK, *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: exit {proc.returncode}: {proc.stderr.strip()[-400:]}")
    return [json.loads(line) for line in (log_dir / "metrics.jsonl").read_text().splitlines()]


def run_pytest_gpu(part: Part, tmp: Path, deadline: float):
    proc = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-ra", "-p",
                           "no:cacheprovider", "tests"], cwd=REPO, capture_output=True, text=True,
                          timeout=max(1.0, deadline - time.monotonic()))
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "(no output)"
    counts = {kind: 0 for kind in ("passed", "failed", "skipped", "error")}
    for number, kind in re.findall(r"(\d+) (passed|failed|skipped|error)", summary):
        counts[kind] = int(number)
    part.results += [{"name": f"pytest_gpu_{k}", "value": v, "unit": "tests"}
                     for k, v in counts.items()]
    part.notes.append(f"pytest -m gpu: {summary}")


def run_te_vs_local(part: Part, tmp: Path, deadline: float):
    common = ("--preset", "4ds-s", "--bf16", "--train-iters", "3", "--micro-batch-size", "4",
              "--global-batch-size", "4")
    rows = {}
    for impl in ("local", "transformer_engine"):
        rows[impl] = _pretrain(tmp, f"te_vs_local_{impl}", (*common, "--transformer-impl", impl),
                               deadline - time.monotonic())
    for local, te in zip(rows["local"], rows["transformer_engine"]):
        step = local["step"]
        for key in ("loss", "grad_norm"):
            part.results.append({"name": f"{key}_step{step}", "value": local[key], "unit": "",
                                 "spec": "local"})
            part.results.append({"name": f"{key}_step{step}", "value": te[key], "unit": "",
                                 "spec": "transformer_engine"})
    last_local, last_te = rows["local"][-1], rows["transformer_engine"][-1]
    part.ratios["te_vs_local_loss_step3"] = last_te["loss"] / last_local["loss"]
    part.ratios["te_vs_local_grad_norm_step3"] = last_te["grad_norm"] / last_local["grad_norm"]


def _one_gpu_micro_batch(preset: str, fp8: bool, gpu: str) -> int:
    cfg = load_config(overrides={"model.preset": preset, "train.precision": "bf16",
                                 "train.global_batch_size": 256})
    rows = [r for r in plan(cfg, 1, gpu, allow_fp8=fp8) if r.candidate.fp8 == fp8]
    return rows[0].candidate.micro_batch_size if rows else 1


def step_cases(recipes: list[str]) -> list[tuple[str, str | None, bool]]:
    """(preset, FP8 recipe or None, CUDA graphs) in the order they run."""
    cases = []
    for preset in STEP_PRESETS:
        fp8 = recipes if preset == "4ds-b" else recipes[:1]
        for recipe in [None, *fp8]:
            for graphs in (False, True):
                if graphs and recipe not in (None, (recipes or [None])[0]):
                    continue  # graphs on/off for BF16 and the first recipe
                cases.append((preset, recipe, graphs))
    return cases


def run_step_time(part: Part, tmp: Path, deadline: float):
    gpu = _gpu_alias()
    base = {}
    for preset, recipe, graphs in step_cases(supported_recipes()):
        left = deadline - time.monotonic()
        if left < 30:
            part.notes.append(f"step_time: out of budget before {preset} {recipe} graphs={graphs}")
            break
        mbs = _one_gpu_micro_batch(preset, recipe is not None, gpu)
        args = ["--preset", preset, "--bf16", "--transformer-impl", "transformer_engine",
                "--train-iters", str(STEPS), "--micro-batch-size", str(mbs),
                "--global-batch-size", str(mbs)]
        if recipe:
            args += ["--fp8", "hybrid", "--fp8-recipe", recipe]
        if graphs:
            args += ["--cuda-graph-impl", "local"]
        name = f"{preset}_{recipe or 'bf16'}_{'graphs' if graphs else 'eager'}"
        try:
            rows = _pretrain(tmp, name, tuple(args), left)
        except Exception as err:  # noqa: BLE001 - one case failing must not stop the part
            part.notes.append(f"step_time {name}: {err}")
            continue
        steady = rows[3:] or rows
        step_s = statistics.median(r["step_time_s"] for r in steady)
        tags = {"preset": preset, "recipe": recipe or "bf16", "cuda_graphs": graphs, "mbs": mbs}
        part.results += [
            {"name": f"{name}_step_ms", "value": 1e3 * step_s, "unit": "ms", **tags},
            {"name": f"{name}_clips_per_s", "value": mbs / step_s, "unit": "clips/s", **tags},
            {"name": f"{name}_mfu", "value": statistics.median(r["mfu"] for r in steady),
             "unit": "", **tags},
        ]
        measured = max((r.get("max_memory_allocated_gb", float("nan")) for r in rows),
                       default=float("nan"))
        cfg = load_config(overrides={"model.preset": preset, "train.precision": "bf16",
                                     "train.micro_batch_size": mbs, "train.global_batch_size": mbs,
                                     **({"train.fp8": "hybrid", "train.fp8_recipe": recipe}
                                        if recipe else {})})
        part.results += [
            {"name": f"{name}_memory_measured_gb", "value": measured, "unit": "GB", **tags},
            {"name": f"{name}_memory_model_gb", "value": estimate_memory_per_gpu(cfg, 1),
             "unit": "GB", **tags}]
        key = (preset, recipe)
        if not graphs:
            base[key] = step_s
        elif key in base:
            part.ratios[f"graphs_speedup_{preset}_{recipe or 'bf16'}"] = base[key] / step_s
        if recipe and not graphs and (preset, None) in base:
            part.ratios[f"fp8_{recipe}_speedup_{preset}"] = base[(preset, None)] / step_s


def run_decode(part: Part, tmp: Path, deadline: float):
    frames = render_clip(np.random.default_rng(0), 64, 256, 256)
    indices = list(range(0, 64, 2))[:16]
    for codec, suffix in (("libx264", "mp4"), ("libvpx-vp9", "webm")):
        if codec not in av.codecs_available:
            part.notes.append(f"decode: {codec} encoder not in this FFmpeg")
            continue
        path = tmp / f"clip.{suffix}"
        write_clip(path, frames, codec=codec)
        decoders = {"pyav": PyAVDecoder(), "dali_mixed": DALIDecoder(device="mixed")}
        if codec == "libvpx-vp9":
            decoders["dali_cpu"] = DALIDecoder(device="cpu")
        rates = {}
        for name, decoder in decoders.items():
            decoder.decode(path, indices)  # warm-up: pipeline build, index
            start, n = time.perf_counter(), 0
            while time.perf_counter() - start < 3 and time.monotonic() < deadline:
                n += len(decoder.decode(path, indices))
            rates[name] = n / (time.perf_counter() - start)
            part.results.append({"name": f"{codec}_{name}_frames_per_s", "value": rates[name],
                                 "unit": "frames/s", "codec": codec, "decoder": name})
        part.ratios[f"dali_mixed_vs_pyav_{codec}"] = rates["dali_mixed"] / rates["pyav"]


def run_kernels(part: Part, tmp: Path, deadline: float):
    out = tmp / "kernels.json"
    proc = subprocess.run([sys.executable, "-m", "megavid.kernels.bench", "triton", "--quick",
                           "--device", "cuda", "--out", str(out)], cwd=REPO, capture_output=True,
                          text=True, timeout=max(1.0, deadline - time.monotonic()))
    if proc.returncode != 0:
        raise RuntimeError(f"kernels.bench: exit {proc.returncode}: {proc.stderr[-400:]}")
    report = json.loads(out.read_text())
    part.results += report["results"]
    part.ratios.update(report.get("ratios", {}))


PARTS = [
    Part("pytest_gpu", 150, ["cuda"], run_pytest_gpu, "python -m pytest -m gpu tests"),
    Part("te_vs_local", 60, ["cuda", "te"], run_te_vs_local,
         "4DS-S bf16, 3 steps: --transformer-impl local vs transformer_engine"),
    Part("step_time", 240, ["cuda", "te"], run_step_time,
         "4DS-B/L/H at the planner's 1-GPU micro-batch: bf16 / fp8 recipes x graphs off/on"),
    Part("decode", 40, ["cuda", "dali"], run_decode,
         "DALI mixed vs DALI CPU (VP9) vs PyAV, H.264 and VP9, frames/s"),
    Part("kernels", 50, ["cuda", "triton"], run_kernels,
         "python -m megavid.kernels.bench triton --quick --device cuda"),
]


def _gpu_alias() -> str:
    name = torch.cuda.get_device_name(0).lower() if torch.cuda.is_available() else ""
    for alias in ("b200", "h200", "h100", "a100"):
        if alias in name:
            return {"h100": "h100-80gb", "a100": "a100-80gb"}.get(alias, alias)
    return "h100-80gb"


def preflight_table(present: dict) -> list[dict]:
    rows = []
    for part in PARTS:
        missing = [need for need in part.needs if not present[need]]
        rows.append({"part": part.name, "budget_s": part.budget_s,
                     "runs": "yes" if not missing else f"no: needs {', '.join(missing)}",
                     "what": part.what})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="gpu_acceptance.json", help="results JSON")
    parser.add_argument("--dry-run", action="store_true",
                        help="check each part's preconditions and print the plan; run nothing")
    parser.add_argument("--parts", default=",".join(p.name for p in PARTS),
                        help="comma-separated subset of the parts")
    args = parser.parse_args(argv)
    present = _present()
    chosen = set(args.parts.split(","))
    unknown = chosen - {p.name for p in PARTS}
    if unknown:
        parser.error(f"--parts: unknown {sorted(unknown)}; choose from "
                     f"{', '.join(p.name for p in PARTS)}")
    columns = [Column("part", "part", justify="left"), Column("budget_s", "budget s"),
               Column("runs", "runs", justify="left"), Column("what", "what", justify="left")]
    plan_rows = [r for r in preflight_table(present) if r["part"] in chosen]
    recipes = supported_recipes()
    budget = sum(r["budget_s"] for r in plan_rows)
    print_table(plan_rows, columns, title=f"GPU acceptance plan ({budget:.0f} s of budgets; FP8 "
                f"recipes here: {', '.join(recipes) or 'none'})")
    if args.dry_run:
        gpu = _gpu_alias()
        cases = [{"preset": p, "recipe": r or "bf16", "cuda_graphs": g,
                  "mbs": _one_gpu_micro_batch(p, r is not None, gpu)}
                 for p, r, g in step_cases(recipes or ["tensorwise"])]
        print_table(cases, [Column("preset", "preset", justify="left"),
                            Column("recipe", "recipe", justify="left"),
                            Column("cuda_graphs", "graphs", lambda v: "on" if v else "off"),
                            Column("mbs", "mbs")],
                    title=f"step_time cases on {gpu} (FP8 shown as tensorwise where this machine "
                          "has none)")
        print("--dry-run: nothing ran")
        return 0
    results, ratios, notes = [], {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for part, row in zip([p for p in PARTS if p.name in chosen], plan_rows):
            if row["runs"] != "yes":
                notes.append(f"{part.name}: skipped ({row['runs']})")
                continue
            start = time.monotonic()
            part_dir = Path(tmp) / part.name
            part_dir.mkdir()
            try:
                part.run(part, part_dir, start + part.budget_s)
            except Exception as err:  # noqa: BLE001 - isolate: the next part still runs
                part.notes.append(f"{part.name}: failed: {type(err).__name__}: {err}")
            elapsed = time.monotonic() - start
            results += [{**r, "part": part.name} for r in part.results]
            results.append({"name": f"{part.name}_wall_s", "value": elapsed, "unit": "s",
                            "part": part.name})
            ratios.update(part.ratios)
            notes += part.notes
    write_results(args.out, "gpu_acceptance", results, ratios=ratios, notes=notes)
    path = args.out
    print_table([{"name": r["name"], "value": r["value"], "unit": r.get("unit", "")}
                 for r in results],
                [Column("name", "result", justify="left"),
                 Column("value", "value", "{:.4g}".format),
                 Column("unit", "unit", justify="left")], title=f"GPU acceptance: {path}")
    for note in notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
