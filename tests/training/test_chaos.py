"""The crash-loop benchmark, small: a run killed 4 times (each target once: the whole job,
one rank, the launcher alone; each moment once: random, in a synchronous and in an
asynchronous save, before a commit), preempted by SIGTERM and SIGUSR1 and given a damaged
newest checkpoint, ends bit-identical to one never killed, with no process left behind.
(The benchmark's own runs make more kills: benchmarks/results/chaos_cpu.json.)"""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "benchmarks" / "chaos.py"


@pytest.mark.slow  # ~80 s on 2 cores: 8 launches of 2 ranks
def test_crash_loop_ends_bit_identical_without_orphans(tmp_path, launch):
    out = tmp_path / "chaos.json"
    proc = launch.run(str(SCRIPT), "--kills", "4", "--tp", "1", "--pp", "2", "--dp", "1",
                      "--steps", "16", "--work-dir", str(tmp_path / "work"), "--out", str(out),
                      timeout=900)
    assert out.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["kills"] == 4 and min(report["kills_by_target"].values()) >= 1, report
    assert report["kills_by_moment"] == {"random": 1, "sync_save": 1, "async_save": 1,
                                         "before_commit": 1}
    assert report["kills_that_missed_their_moment"] <= 1, report["attempts"]
    assert report["preemptions"] == 2 and report["preemptions_stopped_cleanly"]
    assert report["damaged_checkpoints"] == 1 and report["damaged_checkpoint_named_and_skipped"]
    assert report["orphans"] == []
    assert max(report["ranks_lived_on_after_launcher_kill_s"]) < 5.0
    assert report["steps_mismatched"] == [] and report["final_step"] == 16
    assert report["final_tensors_compared"] > 0 and report["final_tensors_different"] == []
    assert report["bit_identical"] and proc.returncode == 0
