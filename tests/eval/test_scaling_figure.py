"""benchmarks/scaling_4d.py's arithmetic and figure on made-up measurements (the runs
themselves are the benchmark's; the probe and readouts have their own tests)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "scaling_4d.py"


@pytest.fixture(scope="module")
def scaling():
    spec = importlib.util.spec_from_file_location("scaling_4d", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def measured(s) -> dict:
    """Depth residual R^2 0.02 +- 0.001 at random weights, 0.05 +- 0.004 at the top budget;
    AbsRel 0.30 -> 0.29, unscaled 0.38 +- 0.001 -> 0.36 +- 0.002; tracking flat."""
    runs = {}
    for width in s.widths:
        for steps in s.budgets:
            top = steps == max(s.budgets)
            for j, sign in enumerate((-1, 1)):
                runs.setdefault(f"linear/depth/{width}/{steps}", []).append(
                    {"residual_r2": (0.05 + sign * 0.002 * 2 ** 0.5) if top else
                     (0.02 + sign * 0.0005 * 2 ** 0.5), "abs_rel": 0.29 if top else 0.30,
                     "abs_rel_unscaled": (0.36 + sign * 0.001 * 2 ** 0.5) if top else
                     (0.38 + sign * 0.0005 * 2 ** 0.5), "r2": 0.2})
                for readout, task in (("linear", "tracking"), ("attention", "depth"),
                                      ("attention", "tracking")):
                    runs.setdefault(f"{readout}/{task}/{width}/{steps}", []).append(
                        {"abs_rel": 0.3 + j * 0.01, "abs_rel_unscaled": 0.37 + j * 0.01,
                         "average_jaccard": 0.04 + j * 0.01, "residual_r2": float("nan")})
    flops = {f"{w}/{b}": 1e12 * b * (i + 1) for i, w in enumerate(s.widths) for b in s.budgets}
    curves = {f"{w}/{b}": [[1.0] * 4 + [0.9] * 4, [1.0] * 6 + [0.95, 0.9]] for w in s.widths
              for b in s.budgets if b}
    return {"runs": runs, "flops": flops, "loss_curves": curves,
            "priors": {"depth": {"abs_rel": 0.31, "residual_r2": 0.0},
                       "tracking": {"average_jaccard": 0.045}}}


def test_gains_are_the_top_budget_against_random_in_seed_spreads(scaling):
    s = scaling.QUICK
    rows, ratios = scaling.rows_and_ratios(measured(s), s)
    key = "linear_depth_residual_r2_w64_largest_budget_gain_over_random"
    assert ratios[key] == pytest.approx(0.03)
    assert ratios[key + "_in_seed_std"] == pytest.approx(0.03 / 0.004, abs=0.01)
    # lower is better for AbsRel: the gain is random's minus the top budget's
    assert ratios["linear_depth_abs_rel_w128_largest_budget_gain_over_random"] == pytest.approx(
        0.01)
    assert "linear_depth_abs_rel_w128_largest_budget_gain_over_random_in_seed_std" not in ratios
    key = "linear_depth_abs_rel_unscaled_w64_largest_budget_gain_over_random"
    assert ratios[key] == pytest.approx(0.02)
    assert ratios[key + "_in_seed_std"] == pytest.approx(0.02 / 0.002, abs=0.01)
    assert "linear_tracking_residual_r2_w64_largest_budget_gain_over_random" not in ratios  # NaN
    row = next(r for r in rows if r["name"] == "linear depth residual_r2 w128 steps=40")
    assert row["value"] == pytest.approx(0.05) and row["std"] == pytest.approx(0.004)
    assert row["seeds"] == 2 and row["flops"] == pytest.approx(80e12)
    assert row["per_seed"] == pytest.approx([0.05 - 0.002 * 2 ** 0.5, 0.05 + 0.002 * 2 ** 0.5])
    loss = next(r for r in rows if r["name"] == "pretraining final_loss w64 steps=40")
    assert loss["per_seed"] == [0.9, 0.9] and loss["plateau_exit_fraction"] == [0.5, 0.75]


def test_loss_curves_and_the_plateau(scaling, tmp_path):
    """A run's metrics.jsonl becomes the means of equal stretches of its steps; the plateau
    exit is where the loss stays under PLATEAU_LOSS for the rest of the run."""
    losses = [1.0] * 40 + [0.99, 0.975] * 4 + [0.9] * 16  # 64 steps
    (tmp_path / "metrics.jsonl").write_text(
        "".join(f'{{"step": {i + 1}, "loss": {v}}}\n' for i, v in enumerate(losses)))
    curve = scaling.loss_curve(tmp_path, points=8)
    assert curve == pytest.approx([1.0] * 5 + [0.9825, 0.9, 0.9])
    assert scaling.plateau_exit(curve) == pytest.approx(6 / 8)
    assert scaling.plateau_exit([1.0, 0.9, 0.99]) is None
    assert scaling.final_loss(curve) == pytest.approx(0.9)
    assert scaling.loss_curve(tmp_path, points=100) == pytest.approx(losses)  # a point a step


def test_the_figure_is_drawn(scaling, tmp_path):
    s = scaling.QUICK
    path = tmp_path / "scaling.png"
    scaling.draw(measured(s), s, path)
    from PIL import Image

    with Image.open(path) as image:
        assert image.size == (2500, 850)  # ten panels, 25 x 8.5 in at 100 dpi


def test_a_rerun_keeps_finished_readouts_and_counts_their_time(scaling, tmp_path, monkeypatch):
    """A resumed invocation reads a finished readout's metrics.json instead of training it
    again, and ``compute_seconds`` adds up every run and readout in the work folder."""
    run = tmp_path / "w64-steps64-seed1"
    (run / "ckpt").mkdir(parents=True)
    (run / "seconds").write_text("35.5\n")
    done = tmp_path / "eval" / "w64-steps64-seed1-linear-depth-1"
    done.mkdir(parents=True)
    metrics = {"residual_r2": 0.05, "abs_rel": 0.3, "abs_rel_unscaled": 0.36}
    (done / "metrics.json").write_text(json.dumps({
        "metrics": metrics, "references": {"prior": {"abs_rel": 0.31}}, "seconds": 4.5}))
    monkeypatch.setattr(scaling, "run_eval", lambda cfg: pytest.fail("readout rerun"))
    got = scaling.read_out(run / "ckpt", tmp_path / "bench", tmp_path, "linear", "depth", 1,
                           scaling.Settings())
    assert got == {"metrics": metrics, "prior": {"abs_rel": 0.31}}
    assert scaling.compute_seconds(tmp_path) == pytest.approx(40.0)
    calls = []
    monkeypatch.setattr(scaling, "run_eval", lambda cfg: calls.append(cfg.out) or {
        "metrics": {"abs_rel": 0.29}, "references": {"prior": {}}})
    # cut short, or from before the figure plotted abs_rel_unscaled: trained again
    for stale in ("{", json.dumps({"metrics": {"residual_r2": 0.05, "abs_rel": 0.3}})):
        (done / "metrics.json").write_text(stale)
        assert scaling.read_out(run / "ckpt", tmp_path / "bench", tmp_path, "linear", "depth",
                                1, scaling.Settings())["metrics"] == {"abs_rel": 0.29}
    assert calls == [str(done)] * 2
