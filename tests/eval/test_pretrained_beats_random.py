"""Acceptance of the 4D evaluation: readouts on a tiny MAE-pretrained encoder vs random weights.

The protocol, CPU-sized: render a synthetic 4D set, pretrain the ``tiny`` preset
with ``python -m megavid.pretrain`` on its training videos, then train the same
depth and tracking readouts on that checkpoint and on ``--preset tiny`` (random
weights) and compare them on the test split.

Measured (README.md, "4D evaluation"): at this scale both encoders' readouts
sit at the level of their priors (the training set's mean depth map; a point
that stays where it was queried), and larger CPU settings agree (1024 scenes,
finer tubelets, fixed sin-cos positions, standardised features, 3000 readout
steps: the random encoder's readout is ahead). So the comparison is an
``xfail`` with its thresholds: it records the numbers on every run and turns
into an XPASS the day it holds. What is asserted is the pipeline itself: the
MAE trained, its checkpoint ran through both readouts, and the metrics are
finite. The setting is kept small (64 scenes, 60 readout steps) because it
buys no signal, only CI minutes.
"""

from __future__ import annotations

import json
import math

import pytest

from megavid.eval import make_synthetic
from megavid.eval.run import EvalConfig, run_eval
from megavid.eval.train import ReadoutConfig
from megavid.parallel import runtime

pytestmark = pytest.mark.slow

SCENES = dict(num_scenes=64, frames=8, size=64, seed=7, test_fraction=0.25, spp=2)
PRETRAIN = ["--train-iters", "150", "--global-batch-size", "16", "--micro-batch-size", "16",
            "--lr", "2e-3", "--lr-warmup-iters", "20", "--mask-ratio", "0.75",
            "--set", "model.norm_pix_loss=true", "--set", "data.frame_stride=1",
            "--set", "log.plot=false", "--set", "log.tensorboard=false", "--log-interval", "100"]
READOUT = dict(steps=60, batch_size=16, lr=3e-3, warmup=10, width=64, heads=4)
# the metric each task is judged by, and whether lower is better
JUDGED = {"depth": ("abs_rel", True), "tracking": ("average_jaccard", False)}


@pytest.fixture(scope="module")
def comparison(tmp_path_factory, shared_launch) -> dict:
    """{task: {"random": metrics, "pretrained": metrics}}, plus the MAE's loss curve."""
    pytest.importorskip("mitsuba", reason="the synthetic 4D benchmark needs Mitsuba")

    tmp = tmp_path_factory.mktemp("acceptance")
    data = make_synthetic(tmp / "data", workers=2, **SCENES)
    ckpt = tmp / "ckpt"
    shared_launch.run("-m", "megavid.pretrain", "--preset", "tiny", "--data",
                      str(data / "train" / "videos"), "--save", str(ckpt), "--log-dir",
                      str(tmp / "pretrain"), *PRETRAIN, check=True, timeout=600)
    table = {}
    try:  # in this process: one gloo group of one rank, torn down afterwards
        for task in JUDGED:
            for name, source in (("random", "tiny"), ("pretrained", str(ckpt))):
                result = run_eval(EvalConfig(
                    task=task, source=source, data=str(data), out=str(tmp / f"{task}-{name}"),
                    pictures=False, feature_cache=str(tmp / "features"),
                    readout=ReadoutConfig(log_interval=10**6, **READOUT)))
                table.setdefault(task, {})[name] = result["metrics"]
    finally:
        runtime.shutdown()
    print("\nrandom vs pretrained:", json.dumps(table, indent=1))
    curve = [json.loads(line)["loss"]
             for line in (tmp / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    return {"tasks": table, "mae_loss": curve}


def _gain(table: dict, task: str) -> float:
    """Relative improvement of pretrained over random on the task's judged metric."""
    metric, lower_is_better = JUDGED[task]
    rand, pre = table[task]["random"][metric], table[task]["pretrained"][metric]
    return (rand - pre) / rand if lower_is_better else (pre - rand) / rand


def test_pretrained_checkpoint_runs_through_the_readouts(comparison):
    curve = comparison["mae_loss"]
    assert len(curve) == 150 and sum(curve[-20:]) / 20 < 0.9 * curve[0]  # the MAE did learn
    for task, (metric, _) in JUDGED.items():
        for name in ("random", "pretrained"):
            assert math.isfinite(comparison["tasks"][task][name][metric]), (task, name)


@pytest.mark.xfail(reason="not at CPU scale: depth and tracking readouts sit at their priors "
                          "for both encoders (README, 4D evaluation)", strict=False)
def test_pretrained_features_beat_random_on_depth_and_tracking(comparison):
    table = comparison["tasks"]
    assert _gain(table, "depth") > 0.03, table["depth"]  # AbsRel 3% lower
    assert _gain(table, "tracking") > 0.05, table["tracking"]  # average Jaccard 5% higher
