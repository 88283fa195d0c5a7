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
    features under the other as the source file does."""
    npz = make_fourds_npz(tmp_path / "model.npz", layers=2)
    video = torch.rand(1, 4, 24, 24, 3, generator=torch.Generator().manual_seed(0))
    torch.save(video, tmp_path / "video.pt")
    script = ("import sys, torch; from megavid.inference import load_encoder; "
              "v = torch.load(sys.argv[2]); "
              "torch.save(load_encoder(sys.argv[1]).features(v, depth=1.0), sys.argv[3])")
    features = {}
    for name, writer, reader in (("a", OTHER, sys.executable), ("b", sys.executable, OTHER)):
        ckpt = tmp_path / f"ckpt_{name}"
        run(launch, writer, "-m", "megavid.tools.convert", "--from", "4ds-npz", "--to", "megavid",
            str(npz), str(ckpt))
        run(launch, reader, "-c", script, str(ckpt), str(tmp_path / "video.pt"),
            str(tmp_path / f"{name}.pt"))
        features[name] = torch.load(tmp_path / f"{name}.pt")
    run(launch, sys.executable, "-c", script, str(npz), str(tmp_path / "video.pt"),
        str(tmp_path / "npz.pt"))
    reference = torch.load(tmp_path / "npz.pt")
    assert torch.equal(features["a"], reference)
    assert torch.equal(features["b"], reference)
