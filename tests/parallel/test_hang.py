"""A stuck rank produces an error naming it and the failed operation within a bounded time."""

from __future__ import annotations

import time

import pytest


@pytest.mark.slow  # ~20 s on 2 cores: 2 ranks wait out the collective timeout
def test_stuck_rank_is_named_within_the_timeout(tmp_path, launch):
    args = ["-m", "megavid.pretrain", "--preset", "tiny",
            "--set", "data.mock=true", "--train-iters", "4", "--lr-warmup-iters", "1",
            "--log-dir", str(tmp_path / "run"), "--set", "log.plot=false",
            "--set", "log.tensorboard=false",
            "--set", "parallel.distributed_timeout_minutes=0.1"]  # 6 s
    start = time.monotonic()
    proc = launch.run(*args, nproc=2, env={"MEGAVID_FAULT_INJECT": "hang:1:2"}, timeout=240)
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    line = next((l for l in proc.stderr.splitlines() if l.startswith("megavid: error:")), "")
    assert line, proc.stderr[-4000:]
    assert "rank 0, step 2: a collective failed" in line
    assert "Timed out" in line and "Ranks 1 failed to pass monitoredBarrier" in line
    assert elapsed < 60
