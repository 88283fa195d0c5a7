"""Acceptance of the 4D evaluation: a tiny MAE-pretrained encoder vs random weights.

The protocol, CPU-sized: render a synthetic 4D set, pretrain the ``tiny`` preset
with ``python -m megavid.pretrain`` on its training videos, then read depth and
tracking out of that checkpoint and of ``--preset tiny`` (random weights) with the
linear probe (``megavid.eval.probe``: ridge in closed form, beside raw-pixel and
oracle references), and depth once with the attention readout.

At this size (64 scenes, 150 MAE steps) the probe cannot yet separate the two: on
the default benchmark a 1500-step MAE at 2x8x8 tubelets reads depth at residual
R^2 0.045 against 0.019 for random weights (README, "4D evaluation"), so the
comparison is a non-strict ``xfail`` that records its numbers on every run. What is
asserted is the pipeline and the instrument: the MAE trained, its checkpoint ran
through both readouts, the oracle reads near the top, the metrics are finite.
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
TASKS = ("depth", "tracking")


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
    table, attention = {}, None
    try:  # in this process: one gloo group of one rank, torn down afterwards
        for task in TASKS:
            for name, source in (("random", "tiny"), ("pretrained", str(ckpt))):
                result = run_eval(EvalConfig(
                    task=task, source=source, data=str(data), out=str(tmp / f"{task}-{name}"),
                    pictures=False, feature_cache=str(tmp / "features"), readout_kind="linear"))
                table.setdefault(task, {})[name] = {**result["metrics"],
                                                    "references": result["references"]}
        attention = run_eval(EvalConfig(
            task="depth", source=str(ckpt), data=str(data), out=str(tmp / "attention"),
            pictures=False, feature_cache=str(tmp / "features"),
            readout=ReadoutConfig(log_interval=10**6, **READOUT)))
    finally:
        runtime.shutdown()
    print("\nrandom vs pretrained (linear probe):", json.dumps(
        {t: {n: {k: v for k, v in m.items() if k != "references"} for n, m in row.items()}
         for t, row in table.items()}, indent=1))
    curve = [json.loads(line)["loss"]
             for line in (tmp / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    return {"tasks": table, "attention": attention, "mae_loss": curve}


def test_pretrained_checkpoint_runs_through_the_readouts(comparison):
    curve = comparison["mae_loss"]
    assert len(curve) == 150 and sum(curve[-20:]) / 20 < 0.95 * curve[0]  # the MAE did learn
    for task in TASKS:
        for name in ("random", "pretrained"):
            metrics = comparison["tasks"][task][name]
            assert math.isfinite(metrics["residual_r2"]), (task, name)
            assert metrics["references"]["oracle"]["residual_r2"] > 0.9, (task, name)
    assert math.isfinite(comparison["attention"]["metrics"]["abs_rel"])
    assert "prior" in comparison["attention"]["references"]


@pytest.mark.xfail(reason="not at this size: 150 MAE steps on 48 clips give the probe nothing "
                          "random weights lack (README, 4D evaluation)", strict=False)
def test_pretrained_features_beat_random_on_depth(comparison):
    depth = comparison["tasks"]["depth"]
    assert depth["pretrained"]["residual_r2"] > depth["random"]["residual_r2"] + 0.02, depth
    assert depth["pretrained"]["abs_rel"] < depth["random"]["abs_rel"], depth
