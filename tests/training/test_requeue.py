"""A requeued job's world, with real launchers: the first job of a ``--save D --load D``
series starts from scratch, a second job on D is refused while the first lives, the
first's ranks end when its torchrun is SIGKILLed, and the next job then takes D over."""

from __future__ import annotations

import signal
import time

import psutil
import pytest

from tests.training.test_checkpoint import (
    MOCK,
    TINY,
    metrics,
    pretrain_args,
    run,
    wait_for,
)


def _alive(procs) -> list[psutil.Process]:
    return [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.slow  # ~25 s on 2 cores: a 2-rank job and two one-process jobs
def test_one_writer_per_save_dir_and_no_orphans(tmp_path, launch):
    save = tmp_path / "save"
    series = ("--save", str(save), "--load", str(save), "--save-interval", "2")
    out = tmp_path / "first.out"
    with out.open("w") as stdout:
        first = launch.start(*pretrain_args(tmp_path / "a", *TINY, *MOCK, *series,
                                            "--train-iters", "100000"), nproc=2, stdout=stdout)
    wait_for(lambda: (tmp_path / "a" / "metrics.jsonl").is_file()
             and len(metrics(tmp_path / "a")) >= 1 or first.poll() is not None,
             what="the first job's first step")
    assert first.poll() is None, out.read_text()[-3000:]
    assert metrics(tmp_path / "a")[0]["step"] == 1  # started from scratch...
    assert "holds no checkpoint yet" in out.read_text()  # ...with one warning line
    ranks = psutil.Process(first.pid).children()
    assert len(ranks) == 2
    helpers = [p for rank in ranks for p in rank.children(recursive=True)]

    second = run(launch, tmp_path / "b", *TINY, *MOCK, *series, "--train-iters", "3")
    assert second.returncode == 2, second.stderr[-3000:]
    assert f"is in use by pid {ranks[0].pid} on" in second.stderr  # rank 0 holds the lock

    first.send_signal(signal.SIGKILL)  # the launcher alone: its ranks are in sessions of their own
    killed = time.monotonic()
    while _alive(ranks + helpers) and time.monotonic() - killed < 10:
        time.sleep(0.02)
    assert not _alive(ranks + helpers), "ranks outlived their launcher"
    print(f"ranks ended {time.monotonic() - killed:.2f} s after their launcher's SIGKILL")

    third = run(launch, tmp_path / "c", *TINY, *MOCK, *series, "--train-iters", "3")
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"from pid {ranks[0].pid} on" in third.stdout and "has ended" in third.stdout
    assert not (save / "megavid.lock").exists()  # released at the end
