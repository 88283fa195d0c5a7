"""One writer per --save directory (``megavid.training.save_lock``), and Megatron-LM's
``--save D --load D`` habit (``Checkpointer.load``): in one process, in seconds."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, replace

import psutil
import pytest

from megavid.config import CheckpointConfig
from megavid.parallel import runtime
from megavid.training import save_lock
from megavid.training.checkpoint import Checkpointer
from megavid.training.checkpoint_dirs import CheckpointError
from megavid.training.save_lock import (
    LOCK,
    Holder,
    SaveDirLocked,
    SaveLock,
    lock_save_dir,
)


def write_lock(root, holder: Holder, age_s: float = 0.0):
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK
    path.write_text(json.dumps(asdict(holder)))
    then = time.time() - age_s
    os.utime(path, (then, then))
    return path


def other_live_process() -> Holder:
    """The test runner's parent: alive, on this host, not us."""
    parent = psutil.Process(os.getppid())
    return replace(Holder.this_process(), pid=parent.pid, pid_start=parent.create_time())


def test_lock_names_its_holder_and_is_released(tmp_path):
    lock = SaveLock(tmp_path / "save")
    lock.acquire()
    written = json.loads((tmp_path / "save" / LOCK).read_text())
    assert written["pid"] == os.getpid() and written["host"] == Holder.this_process().host
    lock.release()
    assert not (tmp_path / "save" / LOCK).exists()
    lock.release()  # idempotent


def test_live_holder_on_this_host_is_refused_with_its_name(tmp_path):
    holder = other_live_process()
    path = write_lock(tmp_path, holder)
    with pytest.raises(SaveDirLocked, match=rf"in use by pid {holder.pid} on .*one writer"):
        SaveLock(tmp_path).acquire()
    assert json.loads(path.read_text())["pid"] == holder.pid  # left as it was


def test_ended_and_reused_pids_are_taken_over(tmp_path, launch):
    ended = launch.run("-c", "import os; print(os.getpid())", check=True)
    cases = {
        "has ended": replace(Holder.this_process(), pid=int(ended.stdout)),
        "is now another process": replace(other_live_process(), pid_start=1.0),
    }
    for why, holder in cases.items():
        write_lock(tmp_path, holder)
        notes = []
        lock = SaveLock(tmp_path, info=notes.append)
        lock.acquire()
        assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
        assert len(notes) == 1 and why in notes[0] and str(holder.pid) in notes[0]
        lock.release()


def test_other_hosts_holder_is_waited_on_then_refused_or_taken_over(tmp_path, monkeypatch):
    remote = replace(Holder.this_process(), host="node-007", pid=4242, job_id="111")
    monkeypatch.setattr(save_lock, "STALE_S", 30.0)
    clock = [0.0]

    def alive_remote_sleep(seconds):  # the remote job keeps beating while we wait
        clock[0] += seconds
        os.utime(tmp_path / LOCK)

    path = write_lock(tmp_path, remote, age_s=5)
    notes = []
    with pytest.raises(SaveDirLocked, match="SLURM job 111, pid 4242 on node-007"):
        SaveLock(tmp_path, info=notes.append, sleep=alive_remote_sleep,
                 clock=lambda: clock[0]).acquire()
    assert len(notes) == 1 and "waiting up to 30 s" in notes[0]
    assert clock[0] > 30.0  # it waited one staleness window before refusing

    write_lock(tmp_path, remote, age_s=31)  # silent past the window: a dead node
    notes.clear()
    lock = SaveLock(tmp_path, info=notes.append, sleep=alive_remote_sleep)
    lock.acquire()
    assert "no heartbeat for 31 s" in notes[0]
    lock.release()

    monkeypatch.setenv("SLURM_JOB_ID", "111")  # our own job, requeued onto another node
    write_lock(tmp_path, remote, age_s=1)
    notes.clear()
    lock = SaveLock(tmp_path, info=notes.append)
    lock.acquire()
    assert "SLURM job 111 was requeued" in notes[0] and not path.read_text().count("4242")
    lock.release()


def test_heartbeat_refreshes_the_lock(tmp_path, monkeypatch):
    monkeypatch.setattr(save_lock, "HEARTBEAT_S", 0.05)
    lock = SaveLock(tmp_path)
    lock.acquire()
    old = time.time() - 100
    os.utime(tmp_path / LOCK, (old, old))
    time.sleep(0.3)
    assert time.time() - (tmp_path / LOCK).stat().st_mtime < 1.0
    lock.release()


def test_save_d_load_d_on_an_empty_d_starts_from_scratch(tmp_path):
    notes = []
    d = tmp_path / "run"
    first = Checkpointer(CheckpointConfig(save=str(d), load=str(d)), info=notes.append)
    assert first.load(model=None, optimizer=None, scheduler=None) is None
    assert len(notes) == 1 and "holds no checkpoint yet" in notes[0]
    # the same directory spelt differently is still the same directory
    same = Checkpointer(CheckpointConfig(save=str(d), load=f"{tmp_path}/./run/"), info=print)
    assert same.load(model=None, optimizer=None, scheduler=None) is None


def test_load_elsewhere_that_holds_nothing_stays_an_error(tmp_path):
    typo = Checkpointer(CheckpointConfig(save=str(tmp_path / "run"), load=str(tmp_path / "rnu")))
    with pytest.raises(CheckpointError, match="nothing was ever saved there"):
        typo.load(model=None, optimizer=None, scheduler=None)
    alone = Checkpointer(CheckpointConfig(load=str(tmp_path / "run")))
    with pytest.raises(CheckpointError, match="nothing was ever saved there"):
        alone.load(model=None, optimizer=None, scheduler=None)


def test_forked_helpers_die_with_their_process(launch, tmp_path):
    """A rank's forked helper (an async checkpoint writer, a data worker) ends when the rank
    is SIGKILLed (``lifeline``'s fork hook); without the hook it would live on."""
    script = (
        "import os, signal, sys, time\n"
        "from megavid.parallel import lifeline\n"
        "if sys.argv[1] == 'bound': lifeline.helpers_die_with_this_process()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    time.sleep(60); os._exit(0)\n"
        "print(pid, flush=True); time.sleep(0.5)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n")
    for mode, survives in (("bound", False), ("unbound", True)):
        out = tmp_path / f"{mode}.out"
        with out.open("w") as stdout:  # start, not run: run would kill the helper's group
            launch.start("-c", script, mode, stdout=stdout).wait(timeout=60)
        helper = int(out.read_text().split()[0])
        deadline = time.monotonic() + 3
        while psutil.pid_exists(helper) and time.monotonic() < deadline:
            time.sleep(0.02)
        alive = psutil.pid_exists(helper) and psutil.Process(helper).status() != "zombie"
        assert alive == survives, (mode, sys.platform)
        if alive:
            psutil.Process(helper).kill()


def test_unwritable_save_dir_is_one_line_before_anything_is_built(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    runtime.init_distributed()
    try:
        with pytest.raises(CheckpointError, match=r"--save .*/file/ckpt: cannot write the lock"):
            lock_save_dir(str(blocker / "ckpt"), info=print)
    finally:
        runtime.shutdown()
