"""``python -m megavid.eval`` end to end on the small synthetic set: tasks, torchrun, 4DS .npz."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from megavid.eval.__main__ import main

# a readout small enough for seconds on a CPU; every task, a few steps
_QUICK = ["--steps", "6", "--batch-size", "2", "--warmup", "2", "--readout-width", "32",
          "--readout-heads", "4", "--log-interval", "3", "--num-queries", "8"]


def _run(launch, args: list[str], *, nproc: int = 1,
         timeout: int = 240) -> subprocess.CompletedProcess:
    return launch.run("-m", "megavid.eval", *args, nproc=None if nproc == 1 else nproc,
                      timeout=timeout, check=True)


def _check_run(out, task: str, picture: str) -> dict:
    result = json.loads((out / "metrics.json").read_text())
    assert result["task"] == task
    assert result["metrics"] and all(np.isfinite(v) for v in result["metrics"].values()
                                     if isinstance(v, float))
    assert (out / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((out / "train_log.jsonl").read_text().splitlines()) == result["readout"]["steps"]
    return result


_EXPECTED = {"depth": ("depth.png", "abs_rel"), "tracking": ("tracks.png", "average_jaccard"),
             "pose": ("poses.png", "epe"), "boxes": ("boxes.png", "mean_iou")}


@pytest.mark.slow  # ~15 s: four readouts
def test_every_task_end_to_end_and_features_are_cached_across_tasks(synthetic4d_dir, tmp_path,
                                                                     launch, capsys):
    """The first task as a command (a fresh process); the other three through the same
    ``main`` in this process, which reads the cache the command wrote."""
    cache = tmp_path / "features"
    for i, (task, (picture, metric)) in enumerate(_EXPECTED.items()):
        out = tmp_path / task
        args = ["--task", task, "--preset", "tiny", "--data", str(synthetic4d_dir),
                "--out", str(out), "--feature-cache", str(cache), *_QUICK]
        if i == 0:
            stdout = _run(launch, args).stdout
        else:
            assert main(args) == 0
            stdout = capsys.readouterr().out
        assert "readout step 6/6 | loss" in stdout
        result = _check_run(out, task, picture)
        assert metric in result["metrics"]
        # the first task encodes; every later one reads the same features back and never
        # loads the encoder
        assert result["features"]["test"]["cache"] == ("miss" if i == 0 else "hit")
        assert ("encoder: tiny loaded in" in stdout) == (i == 0), stdout


def test_data_parallel_run_writes_one_result(synthetic4d_dir, tmp_path, launch):
    out = tmp_path / "dp"
    _run(launch, ["--task", "tracking", "--preset", "tiny", "--data", str(synthetic4d_dir),
          "--out", str(out), "--no-feature-cache", *_QUICK], nproc=2)
    assert _check_run(out, "tracking", "tracks.png")["world_size"] == 2


@pytest.mark.slow  # ~20 s on 2 cores: two evaluations, one of them torchrun with 4 ranks
def test_encoder_split_by_tp_gives_the_single_process_features(synthetic4d_dir, tmp_path,
                                                               launch):
    """4 ranks as 2 TP-2 replicas sharing the clips vs one process. (PP-split feature
    extraction against one process: tests/interop/test_layouts.py.)"""
    import torch

    quick = [*_QUICK[:2], "--batch-size", "4", *_QUICK[4:]]
    runs = {"single": ([], 1), "tp2x2": (["--tp", "2"], 4)}
    features, metrics = {}, {}
    for name, (layout, nproc) in runs.items():
        args = ["--task", "depth", "--preset", "tiny", "--data", str(synthetic4d_dir), "--out",
                str(tmp_path / name), "--feature-cache", str(tmp_path / f"cache-{name}"),
                "--no-pictures", *layout, *quick]
        if nproc == 1:  # in this process: a launch less
            assert main(args) == 0
        else:
            _run(launch, args, nproc=nproc)
        files = sorted((tmp_path / f"cache-{name}").glob("*.pt"))  # same keys: same names
        features[name] = {f.name: torch.load(f, weights_only=True) for f in files}
        metrics[name] = json.loads((tmp_path / name / "metrics.json").read_text())["metrics"]
    want = features["single"]
    assert len(want) == 2  # train and test
    for name in ("tp2x2",):
        assert features[name].keys() == want.keys()
        for key, value in want.items():
            torch.testing.assert_close(features[name][key], value, rtol=1e-5, atol=1e-5)
        assert metrics[name]["abs_rel"] == pytest.approx(metrics["single"]["abs_rel"], rel=1e-3)


@pytest.mark.slow  # ~23 s: convert, then evaluate
def test_converted_4ds_checkpoint_runs_through_eval(synthetic4d_dir, tmp_path, launch):
    """Official key layout (random arrays) -> megavid checkpoint -> depth readout at 8x64x64."""
    from tests.interop.helpers import make_fourds_npz

    npz = make_fourds_npz(tmp_path / "4ds.npz", width=32, layers=4, heads=4, ffn=48,
                          tubelet=(2, 8, 8), grid=(2, 3, 3))
    ckpt = tmp_path / "ckpt"
    launch.run("-m", "megavid.tools.convert", "--from", "4ds-npz", "--to",
               "megavid", str(npz), str(ckpt), check=True, timeout=240)
    out = tmp_path / "run"
    _run(launch, ["--task", "depth", "--ckpt", str(ckpt), "--data", str(synthetic4d_dir),
          "--num-frames", "8", "--image-size", "64", "--out", str(out), "--no-feature-cache",
          *_QUICK])
    result = _check_run(out, "depth", "depth.png")
    assert result["arch"]["hidden_size"] == 32 and result["arch"]["image_size"] == 64


@pytest.mark.parametrize("args, flag", [
    (["--depth", "1.5"], "--depth"),
    (["--readout-width", "30", "--readout-heads", "4"], "--readout-width"),
    (["--data", "/no/such/dataset"], "--data"),
    (["--batch-size", "0"], "--batch-size"),
    (["--synthetic-scenes", "4", "--data", "/tmp"], "--synthetic-scenes"),
    (["--tp", "0"], "--tp"),
    (["--tp", "3"], "--tp 3 x --pp 1 does not divide the 1 processes"),
    (["--pp", "4"], "--tp 1 x --pp 4 does not divide the 1 processes"),
    (["--probe-depths", "0.5,0.95"], "--probe-depths applies only with --readout linear"),
    (["--readout", "linear", "--probe-depths", "0.5,0"], "--probe-depths 0.0"),
])
def test_bad_flags_stop_with_the_flag_and_the_fix(args, flag, capsys):
    assert main(["--task", "depth", "--preset", "tiny", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("megavid.eval: error: ") and flag in err


def test_linear_readout_names_the_tasks_it_has_before_any_work(capsys):
    assert main(["--task", "boxes", "--preset", "tiny", "--readout", "linear"]) == 2
    err = capsys.readouterr().err
    assert "--readout linear: no linear probe for --task boxes" in err and "encoder" not in err


def test_unknown_preset_and_missing_checkpoint_are_named(capsys, tmp_path):
    assert main(["--task", "pose", "--preset", "4ds-xl"]) == 2
    assert "--preset 4ds-xl" in capsys.readouterr().err
    assert main(["--task", "pose", "--ckpt", str(tmp_path / "nothing")]) == 2
    assert "--ckpt" in capsys.readouterr().err
