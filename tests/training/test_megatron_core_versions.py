"""Checkpoints cross megatron-core versions: a container upgrade mid-project loses nothing.

These tests need a second Python whose megatron-core differs from this one's, named by
MEGAVID_OTHER_MCORE_PYTHON (.ci/run's second run sets it to the first venv's python: this
run has 0.19.2, that one 0.16.1). Without it they skip, with the reason shown.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.interop.helpers import make_fourds_npz

OTHER = os.environ.get("MEGAVID_OTHER_MCORE_PYTHON")
pytestmark = pytest.mark.skipif(
    not OTHER, reason="set MEGAVID_OTHER_MCORE_PYTHON to a python with another megatron-core")

TINY = ("--preset", "tiny", "--set", "data.mock=true", "--set", "log.tensorboard=false",
        "--set", "log.plot=false", "--lr-warmup-iters", "1", "--mask-ratio", "0.8",
        "--global-batch-size", "8", "--micro-batch-size", "2")
_VERSION = "import importlib.metadata as m; print(m.version('megatron-core'))"


def mcore_version(launch, python: str) -> str:
    return launch.run("-c", _VERSION, python=python, check=True).stdout.strip()


def run(launch, python: str, *args: str) -> subprocess.CompletedProcess:
    proc = launch.run(*args, python=python, timeout=300)
    assert proc.returncode == 0, f"{python} {' '.join(args)}\n{proc.stderr[-4000:]}"
    return proc


def pretrain(launch, python: str, log_dir: Path, *args: str) -> list[tuple]:
    run(launch, python, "-m", "megavid.pretrain", "--log-dir", str(log_dir), *TINY, *args)
    rows = [json.loads(line) for line in (log_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["grad_norm"]) for r in rows]


def test_the_two_pythons_differ_in_megatron_core(launch):
    assert mcore_version(launch, OTHER) != mcore_version(launch, sys.executable)


@pytest.mark.parametrize("direction", ["other_to_this", "this_to_other"])
def test_training_checkpoint_resumes_bit_identically_across_versions(tmp_path, direction,
                                                                     launch):
    """Saved at step 3 by one megatron-core, resumed by the other: steps 4-6 equal the
    uninterrupted run's losses and grad norms bit for bit (same math on both)."""
    saver, resumer = (OTHER, sys.executable) if direction == "other_to_this" else (
        sys.executable, OTHER)
    save = tmp_path / "save"
    full = pretrain(launch, saver, tmp_path / "full", "--train-iters", "6", "--save", str(save),
                    "--save-interval", "3")
    resumed = pretrain(launch, resumer, tmp_path / "resumed", "--train-iters", "6",
                       "--load", str(save / "iter_0000003"))
    assert resumed == full[3:]


def test_weights_only_checkpoint_loads_either_way(tmp_path, launch):
    """A converted (weights-only) checkpoint written by either version gives the same
    features under the other as the source file does (three processes: the other version
    converts; this one reads that, the source file, and converts; the other reads that)."""
    npz = make_fourds_npz(tmp_path / "model.npz", layers=2)
    video = torch.rand(1, 4, 24, 24, 3, generator=torch.Generator().manual_seed(0))
    torch.save(video, tmp_path / "video.pt")
    script = """
import sys, torch
from megavid.inference import load_encoder
from megavid.tools.convert import main
args = sys.argv[1:]  # VIDEO [convert SOURCE DEST] (CHECKPOINT OUT)...
video = torch.load(args.pop(0))
if args[0] == "convert":
    main(["--from", "4ds-npz", "--to", "megavid", args[1], args[2]])
    args = args[3:]
for ckpt, out in zip(args[::2], args[1::2]):
    torch.save(load_encoder(ckpt).features(video, depth=1.0), out)
"""
    video_pt, ckpt_a, ckpt_b = tmp_path / "video.pt", tmp_path / "ckpt_a", tmp_path / "ckpt_b"
    out = {name: tmp_path / f"{name}.pt" for name in ("a", "b", "npz")}
    run(launch, OTHER, "-c", script, str(video_pt), "convert", str(npz), str(ckpt_a))
    run(launch, sys.executable, "-c", script, str(video_pt), "convert", str(npz), str(ckpt_b),
        str(ckpt_a), str(out["a"]), str(npz), str(out["npz"]))
    run(launch, OTHER, "-c", script, str(video_pt), str(ckpt_b), str(out["b"]))
    reference = torch.load(out["npz"])
    assert torch.equal(torch.load(out["a"]), reference)
    assert torch.equal(torch.load(out["b"]), reference)
