"""What a user sees: a short demo, quiet start, validation loss, pictures, W&B offline.

One 3-step demo run on the real demo clips (eval at steps 2 and 3, a checkpoint,
TensorBoard, W&B offline) is shared by the tests that read what it left behind.
"""

from __future__ import annotations

import glob
import importlib.metadata
import importlib.util
import json
import struct

import numpy as np
import pytest
import torch
from megavid.kernels.reference import (
    mae_loss,
    normalize_patches,
    normalize_patches_per_channel,
    patchify,
)

from megavid.config.presets import get_preset
from megavid.models.masking import make_masks
from megavid.training.pictures import reconstruction_arrays

HAS_WANDB = importlib.util.find_spec("wandb") is not None


@pytest.fixture(scope="module")
def demo(tmp_path_factory, shared_launch):
    """``python -m megavid.pretrain --train-iters 3`` (the demo config), warnings not hidden."""
    tmp = tmp_path_factory.mktemp("demo")
    wandb = ["--wandb-project", "megavid-test", "--wandb-exp-name", "demo3"] if HAS_WANDB else []
    proc = shared_launch.run(
        "-m", "megavid.pretrain", "--train-iters", "3", "--eval-interval", "2",
        "--log-images-interval", "2", "--log-dir", str(tmp / "run"), "--save", str(tmp / "ck"),
        "--set", f"data.cache_dir={tmp / 'cache'}", *wandb,
        env={"PYTHONWARNINGS": None, "WANDB_MODE": "offline", "WANDB_SILENT": "true"},
        timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    return tmp, proc, rows


@pytest.mark.slow  # shares a ~25 s demo run (module fixture)
def test_short_demo_runs_quietly(demo):
    tmp, proc, rows = demo
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert "lr warm-up shortened from 5 to 2 steps: the run has 3" in proc.stdout
    assert rows[0]["lr"] > 0 and rows[2]["lr"] == pytest.approx(1e-5)  # warmed up, then decayed
    # nothing the user cannot act on: no Python warning at all on this run's stderr
    for noise in ("UserWarning", "FutureWarning", "DeprecationWarning", "Transformer Engine"):
        assert noise not in proc.stderr, proc.stderr[-3000:]
    choices = next(line for line in proc.stdout.splitlines() if line.startswith("backend "))
    assert "kernels reference (torch)" in choices and "decoder pyav" in choices
    mcore = importlib.metadata.version("megatron-core")
    assert f"torch {torch.__version__}" in choices and f"megatron-core {mcore}" in choices
    # one line per step, even through a pipe (rich's 80 columns must not wrap them)
    steps = [line for line in proc.stdout.splitlines() if line.startswith("step ")]
    assert len(steps) == 3 and all("ms/step" in line for line in steps)
    assert "val loss" in steps[1] and "val loss" in steps[2] and "val loss" not in steps[0]
    picture = tmp / "run" / "reconstruction.png"
    assert f"reconstruction: {picture}" in proc.stdout and picture.stat().st_size > 20_000


@pytest.mark.slow  # shares a ~25 s demo run (module fixture)
def test_val_loss_in_metrics_and_tensorboard(demo):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tmp, _, rows = demo
    val = {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}
    assert list(val) == [2, 3] and all(0 < v < 1 for v in val.values())
    events = EventAccumulator(str(tmp / "run" / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert [(e.step, e.value) for e in events.Scalars("val/loss")] == \
        [(s, pytest.approx(v, rel=1e-6)) for s, v in val.items()]
    assert [e.step for e in events.Images("val/reconstruction")] == [2, 3]
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3]


def _wandb_records(path):
    """The protobuf records of an offline W&B run file (LevelDB log format: 32 KiB blocks,
    7-byte record headers: crc, length, type full/first/middle/last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw, block, pos, part = open(path, "rb").read(), 32768, 7, b""  # 7: the file's own header
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        data, pos = raw[pos + 7:pos + 7 + length], pos + 7 + length
        part = data if kind in (1, 2) else part + data
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(part)
            yield record


@pytest.mark.slow  # shares a ~25 s demo run (module fixture)
@pytest.mark.skipif(not HAS_WANDB, reason="needs wandb (pip install 'megavid[wandb]')")
def test_wandb_offline_run_holds_the_scalars(demo):
    tmp, _, rows = demo
    (path,) = glob.glob(str(tmp / "run" / "wandb" / "offline-run-*" / "run-*.wandb"))
    history, config = {}, None
    for record in _wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {"/".join(i.nested_key) or i.key: json.loads(i.value_json)
                     for i in record.history.item}
            history[items["_step"]] = items
        elif kind == "run":
            config = {i.key: json.loads(i.value_json) for i in record.run.config.update}
            assert record.run.display_name == "demo3"
    assert sorted(history) == [1, 2, 3]
    for r in rows:
        got = history[r["step"]]
        assert got["train/loss"] == pytest.approx(r["loss"], rel=1e-12)
        assert got["data/clips"] == r["data"]["clips"]
        assert got.get("val/loss") == (pytest.approx(r["val_loss"]) if "val_loss" in r else None)
    assert history[2]["val/reconstruction/_type"] == "image-file"
    assert config["model"]["preset"] == "demo" and config["train"]["train_iters"] == 3


@pytest.mark.slow  # shares a ~25 s demo run (module fixture)
def test_visualize_error_is_the_model_loss(demo, tmp_path, launch):
    ckpt = demo[0] / "ck"
    proc = launch.run("-m", "megavid.visualize", "--ckpt", str(ckpt), "--out", str(tmp_path),
                      "--num-clips", "2", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for i, line in enumerate(proc.stdout.strip().splitlines()):
        model_loss = float(line.split("MAE loss ")[1].split()[0])
        picture = np.load(tmp_path / f"valid_{i:03d}.npz")
        # the error row's own data: its mean over masked pixels is the model's loss on the clip
        from_picture = float(picture["error"][picture["pixel_mask"]].mean())
        assert from_picture == pytest.approx(float(picture["model_loss"]), rel=1e-5)
        assert round(from_picture, 4) == model_loss
        assert picture["original"].shape == (8, 64, 64, 3) and picture["visible"] == 4
        assert (tmp_path / f"valid_{i:03d}.png").stat().st_size > 20_000
        assert (tmp_path / f"valid_{i:03d}.mp4").stat().st_size > 1_000


@pytest.mark.parametrize("style", ["mae", "videomae"])
def test_norm_pix_reconstruction_uses_each_tubelets_statistics(style):
    arch = get_preset("tiny")
    video = torch.rand(1, arch.num_frames, arch.image_size, arch.image_size, 3)
    _, mask = make_masks(torch.tensor([7]), grid=arch.grid, mask_ratio=0.75, masking="random",
                         seed=0)
    patches = patchify(video, arch.tubelet)
    # the normalised target itself: the picture must give back the clip
    perfect = (normalize_patches(patches) if style == "mae"
               else normalize_patches_per_channel(patches, arch.channels))
    kw = dict(arch=arch, norm_pix=True, norm_pix_style=style)
    arrays = reconstruction_arrays(video[0], perfect[0], mask[0], **kw)
    assert arrays["loss"] == pytest.approx(0.0, abs=1e-10)
    np.testing.assert_allclose(arrays["reconstruction"], video[0].numpy(), atol=1e-4)
    noisy = perfect + 0.3 * torch.randn_like(perfect)
    arrays = reconstruction_arrays(video[0], noisy[0], mask[0], **kw)
    target = perfect if style == "videomae" else patches  # what the training step feeds the loss
    want = mae_loss(noisy, target, mask, norm_pix=style == "mae").item()
    assert arrays["loss"] == pytest.approx(want, rel=1e-5)
    assert float(arrays["error"][arrays["pixel_mask"]].mean()) == pytest.approx(want, rel=1e-5)
    assert (arrays["error"][~arrays["pixel_mask"]] == 0).all()


TINY = ("--preset", "tiny", "--set", "data.mock=true", "--set", "model.norm_pix_loss=true",
        "--set", "log.tensorboard=false", "--set", "log.plot=false", "--train-iters", "3",
        "--lr-warmup-iters", "1", "--mask-ratio", "0.8", "--global-batch-size", "8",
        "--micro-batch-size", "2")
EVAL = ("--set", "data.valid_fraction=0.5", "--eval-interval", "1", "--eval-iters", "2")


@pytest.mark.slow
def test_val_loss_every_step_falls_and_leaves_training_alone(tmp_path, launch):
    """(The same validation loss on every layout: tests/parallel/test_parity.py, which
    compares each layout's, TP2+PP2+SP included, with one process's.)"""
    single = launch.pretrain(tmp_path / "single", 1, *TINY, *EVAL)
    plain = launch.pretrain(tmp_path / "plain", 1, *TINY)
    assert [r["loss"] for r in single] == [r["loss"] for r in plain]  # eval leaves training alone
    vals = [r["val_loss"] for r in single]
    assert len(vals) == 3 and vals[2] < vals[0]
