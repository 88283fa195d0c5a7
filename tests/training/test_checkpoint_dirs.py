"""Checkpoint directory bookkeeping and the SLURM requeue, without training."""

from __future__ import annotations

import os
import stat

import pytest

from megavid.training import checkpoint_dirs as dirs
from megavid.training.preemption import requeue_slurm_job


def fake_save(root, step, files=("a.distcp", "common.pt")):
    partial = dirs.partial_dir(root, step)
    partial.mkdir(parents=True)
    for name in files:
        (partial / name).write_bytes(b"x" * (10 + step))
    return dirs.commit(root, step)


def test_commit_moves_partial_and_points_latest(tmp_path):
    fake_save(tmp_path, 5)
    assert (tmp_path / "latest").read_text().strip() == "iter_0000005"
    assert not dirs.partial_dir(tmp_path, 5).exists()
    assert dirs.verify(tmp_path / "iter_0000005") == 5


def test_interrupted_save_leaves_latest_alone(tmp_path):
    fake_save(tmp_path, 2)
    partial = dirs.partial_dir(tmp_path, 4)
    partial.mkdir()
    (partial / "a.distcp").write_bytes(b"half")
    path, notes = dirs.resolve_load_dir(tmp_path, fallback=True)
    assert path.name == "iter_0000002" and notes == []
    dirs.clean_partials(tmp_path)
    assert not partial.exists()


def test_verify_names_missing_and_truncated_files(tmp_path):
    ckpt = fake_save(tmp_path, 3)
    (ckpt / "a.distcp").write_bytes(b"x")
    (ckpt / "common.pt").unlink()
    with pytest.raises(dirs.CheckpointError) as err:
        dirs.verify(ckpt)
    assert "a.distcp has 1 bytes, expected 13" in str(err.value)
    assert "common.pt is missing" in str(err.value)


def test_fallback_and_prune(tmp_path):
    for step in (1, 2, 3):
        fake_save(tmp_path, step)
    (tmp_path / "iter_0000003" / dirs.MANIFEST).unlink()
    with pytest.raises(dirs.CheckpointError, match="never completed"):
        dirs.resolve_load_dir(tmp_path, fallback=False)
    path, notes = dirs.resolve_load_dir(tmp_path, fallback=True)
    assert path.name == "iter_0000002" and "iter_0000003" in notes[0]
    removed = dirs.prune(tmp_path, keep_last=1)
    assert sorted(p.name for p in removed) == ["iter_0000001", "iter_0000002"]


def test_requeue_calls_scontrol_with_the_job_id(tmp_path, monkeypatch):
    log = tmp_path / "calls"
    script = tmp_path / "scontrol"
    script.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert requeue_slurm_job() == "requeued SLURM job 4242"
    assert log.read_text().strip() == "requeue 4242"
    monkeypatch.delenv("SLURM_JOB_ID")
    assert "not a SLURM job" in requeue_slurm_job()
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert "scontrol is not on PATH" in requeue_slurm_job()
