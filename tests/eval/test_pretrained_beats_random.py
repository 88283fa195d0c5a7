"""Acceptance of the 4D evaluation: MAE-pretrained features read depth better than random ones.

The protocol, at the smallest size where it holds on CPU: render 96 scenes of the synthetic
4D benchmark (72 train / 24 test), pretrain the ``tiny`` preset at 2x8x8 tubelets for 250
steps with ``python -m megavid.pretrain`` on the training videos, save the same network at
its initialisation (``--lr 0``, one step) as the random-weights control, and read depth out
of both with the linear probe (``megavid.eval.probe``). Measured over seeds 1 / 2 / 3 (README,
"Random against pretrained weights, with the linear probe"), MAE against random weights:

- depth residual R^2 0.060 / 0.081 / 0.048 against 0.019 / 0.021 / 0.021 (raw pixels 0.019);
- unscaled AbsRel 0.3327 / 0.3295 / 0.3390 against 0.3489 / 0.3485 / 0.3484 (the prior 0.3539);
- AbsRel (per-frame median scaling) 0.2898 / 0.2831 / 0.2881 against 0.2904 / 0.2901 /
  0.2902 (the prior 0.2960): better than the prior at every seed, but only 0.9 seed spreads
  from random weights. The probe's single held-out split had put it 5.4 spreads away, on
  penalties that 5-fold cross-validation no longer chooses, so the test does not judge it.

The test (seed 1) asks for gaps of about half the smallest seed's: 0.013 in residual R^2,
0.004 in unscaled AbsRel, more R^2 than raw pixels, and every metric better than the prior.
Tracking runs through the same probe, recorded, not judged: no encoder adds to points that
stay still at this size.
"""

from __future__ import annotations

import json
import math

import pytest

from megavid.eval import make_synthetic
from megavid.eval.run import EvalConfig, run_eval
from megavid.parallel import runtime
from tests.eval.conftest import MITSUBA_REASON

pytestmark = pytest.mark.slow

SCENES = dict(num_scenes=96, frames=8, size=64, seed=7, test_fraction=0.25, spp=2)
MODEL = ["--preset", "tiny", "--set", "model.arch={tubelet: [2, 8, 8]}", "--mask-ratio", "0.9",
         "--set", "model.norm_pix_loss=true", "--global-batch-size", "16",
         "--micro-batch-size", "16", "--set", "data.frame_stride=1", "--set", "log.plot=false",
         "--set", "log.tensorboard=false", "--eval-interval", "100000", "--seed", "1"]
STEPS = 250
BETTER = {"residual_r2": 1, "abs_rel": -1, "abs_rel_unscaled": -1}  # the sign of better
# what the MAE must gain over random weights (the smallest of seeds 1-3: 0.027, 0.0094)
GAPS = {"residual_r2": 0.013, "abs_rel_unscaled": 0.004}


@pytest.fixture(scope="module")
def comparison(tmp_path_factory, shared_launch) -> dict:
    """{task: {"random": metrics, "pretrained": metrics}}, plus the MAE's loss curve."""
    pytest.importorskip("mitsuba", reason=MITSUBA_REASON)
    tmp = tmp_path_factory.mktemp("acceptance")
    data = make_synthetic(tmp / "data", workers=2, **SCENES)
    videos = str(data / "train" / "videos")
    runs = {"pretrained": ["--train-iters", str(STEPS), "--lr", "2e-3", "--lr-warmup-iters",
                           "20", "--log-interval", "50"],
            "random": ["--train-iters", "1", "--lr", "0", "--lr-warmup-iters", "0", "--set",
                       "train.min_lr=0"]}
    for name, flags in runs.items():
        shared_launch.run("-m", "megavid.pretrain", *MODEL, "--data", videos, "--save",
                          str(tmp / name), "--log-dir", str(tmp / f"log-{name}"), *flags,
                          check=True, timeout=600)
    table = {}
    try:  # in this process: one gloo group of one rank, torn down afterwards
        for task in ("depth", "tracking"):
            for name in runs:
                result = run_eval(EvalConfig(
                    task=task, source=str(tmp / name), data=str(data),
                    out=str(tmp / f"{task}-{name}"), pictures=False, readout_kind="linear",
                    feature_cache=str(tmp / "features")))
                table.setdefault(task, {})[name] = {**result["metrics"],
                                                    "references": result["references"]}
    finally:
        runtime.shutdown()
    print("\nrandom vs pretrained (linear probe):", json.dumps(
        {t: {n: {k: v for k, v in m.items() if k != "references"} for n, m in row.items()}
         for t, row in table.items()}, indent=1))
    curve = [json.loads(line)["loss"] for line in
             (tmp / "log-pretrained" / "metrics.jsonl").read_text().splitlines()]
    return {"tasks": table, "mae_loss": curve}


def test_the_mae_trained_and_the_instrument_reads_the_oracle(comparison):
    curve = comparison["mae_loss"]
    assert len(curve) == STEPS and sum(curve[-20:]) / 20 < 0.95 * curve[0]  # 1.007 -> 0.928
    for task, row in comparison["tasks"].items():
        for name, metrics in row.items():
            assert math.isfinite(metrics["residual_r2"]), (task, name)
            assert metrics["references"]["oracle"]["residual_r2"] > 0.9, (task, name)


def test_pretrained_features_read_depth_better_than_random_weights(comparison):
    depth = comparison["tasks"]["depth"]
    mae, rand = depth["pretrained"], depth["random"]
    for metric, gap in GAPS.items():
        assert (mae[metric] - rand[metric]) * BETTER[metric] > gap, (metric, mae[metric],
                                                                     rand[metric])
    for metric, sign in BETTER.items():
        prior = mae["references"]["prior"][metric]
        assert (mae[metric] - prior) * sign > 0, (metric, mae[metric], prior)
    assert mae["residual_r2"] > mae["references"]["pixels"]["residual_r2"], depth
