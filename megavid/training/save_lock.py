"""One writer per ``--save`` directory: a lock file naming the job that holds it.

``DIR/megavid.lock`` holds {host, pid, pid_start, job_id, started}; rank 0 creates it
atomically (a hard link of a complete file, which fails if the lock exists, also on
NFS) before the first save can happen, refreshes its mtime every ``HEARTBEAT_S``
(a heartbeat thread), and deletes it when the run ends. A second job on the same
directory asks whether the holder is provably gone:

- same host: its pid no longer runs, or runs a younger process (pid reuse) -> gone;
- the same SLURM job id as ours (a requeue: SLURM runs one instance of a job) -> gone;
- another host: its heartbeat is older than ``STALE_S`` -> gone; a fresh heartbeat is
  waited on for up to ``STALE_S`` (one message), and refused if it stays fresh.

A gone holder's lock is taken over (renamed aside, then ours linked in; of two
contenders only one rename succeeds); a live one's is refused with an error naming
host, job and pid. A crashed job therefore never blocks its requeue, and orphans of
a killed launcher (``megavid.parallel.lifeline`` ends them) cannot share the directory.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import psutil
import torch.distributed as dist

from megavid.training.checkpoint_dirs import CheckpointError

LOCK = "megavid.lock"
HEARTBEAT_S = 10.0
STALE_S = 120.0  # a cross-host holder silent this long is gone (12 missed heartbeats)


class SaveDirLocked(CheckpointError):
    """Another live job writes to this ``--save`` directory."""


@dataclass(frozen=True)
class Holder:
    host: str
    pid: int
    pid_start: float  # the process's start time: tells a reused pid from the holder
    job_id: str | None  # SLURM_JOB_ID
    started: str

    @classmethod
    def this_process(cls) -> "Holder":
        return cls(socket.gethostname(), os.getpid(), psutil.Process().create_time(),
                   os.environ.get("SLURM_JOB_ID"), time.strftime("%Y-%m-%d %H:%M:%S"))

    def describe(self) -> str:
        job = f"SLURM job {self.job_id}, " if self.job_id else ""
        return f"{job}pid {self.pid} on {self.host} (since {self.started})"


def _read(path: Path) -> Holder | None:
    try:
        return Holder(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):  # damaged: a holder cannot be named, so none is proven alive
        return Holder("?", -1, 0.0, None, "?")


def gone_because(holder: Holder, heartbeat_age_s: float, me: Holder) -> str | None:
    """Why ``holder`` is provably gone, or None if it may be alive."""
    if holder.pid < 0:
        return "the lock file is unreadable"
    if holder.host == me.host:
        try:
            proc = psutil.Process(holder.pid)
            if abs(proc.create_time() - holder.pid_start) < 1.0:
                return None
            return f"pid {holder.pid} is now another process"
        except psutil.NoSuchProcess:
            return f"pid {holder.pid} has ended"
    if holder.job_id and holder.job_id == me.job_id:
        return f"SLURM job {holder.job_id} was requeued"
    if heartbeat_age_s > STALE_S:
        return f"no heartbeat for {heartbeat_age_s:.0f} s"
    return None


class SaveLock:
    """Held by rank 0 of a run that saves; ``release()`` at the end (idempotent)."""

    def __init__(self, root: Path, *, info: Callable[[str], None] = print,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic):
        self.path = Path(root) / LOCK
        self.info, self._sleep, self._clock = info, sleep, clock
        self.me = Holder.this_process()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        """Take the lock (creating the directory), or raise ``SaveDirLocked``."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        waited_since = None
        while not self._try_create():
            holder = _read(self.path)
            if holder is None:
                continue  # released between the two calls
            if holder == self.me:
                break
            try:
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                continue
            reason = gone_because(holder, age, self.me)
            if reason is not None:
                self._take_over(holder, reason)
                continue
            if holder.host == self.me.host or (
                    waited_since is not None and self._clock() - waited_since > STALE_S):
                raise SaveDirLocked(
                    f"--save {self.path.parent} is in use by {holder.describe()}: one writer per "
                    f"directory. Stop that job, or give this one another --save (lock: {self.path})")
            if waited_since is None:
                waited_since = self._clock()
                self.info(f"--save {self.path.parent} is locked by {holder.describe()}, "
                          f"heartbeat {age:.0f} s ago: waiting up to {STALE_S:.0f} s for it to "
                          "go silent (a dead node's job) before taking it over")
            self._sleep(HEARTBEAT_S)
        self._thread = threading.Thread(target=self._beat, name="megavid-save-lock", daemon=True)
        self._thread.start()

    def _try_create(self) -> bool:
        tmp = self.path.with_name(f"{LOCK}.{self.me.host}.{self.me.pid}.tmp")
        tmp.write_text(json.dumps(asdict(self.me)))
        try:
            os.link(tmp, self.path)  # atomic and exclusive, with the content already complete
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def _take_over(self, holder: Holder, reason: str) -> None:
        aside = self.path.with_name(f"{LOCK}.stale.{self.me.pid}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another contender moved it first; try again
        if _read(aside) != holder:  # it changed hands under us: give it back, look again
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass  # a third job took it meanwhile: its lock stands
            aside.unlink(missing_ok=True)
            return
        aside.unlink(missing_ok=True)
        self.info(f"took over the lock of --save {self.path.parent} from {holder.describe()}: "
                  f"{reason}")

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except FileNotFoundError:
                return

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            if _read(self.path) == self.me:
                self.path.unlink(missing_ok=True)


def lock_save_dir(root: str | None, *, info: Callable[[str], None]) -> SaveLock | None:
    """All ranks call: rank 0 takes ``root``'s lock (None: a run that does not save); a
    refusal is raised on every rank, so the job ends before it builds anything."""
    if not root:
        return None
    lock, refusal = None, [None]
    if dist.get_rank() == 0:
        lock = SaveLock(Path(root), info=info)
        try:
            lock.acquire()
        except SaveDirLocked as err:
            refusal = [("locked", str(err))]
        except OSError as err:  # read-only, a file in the way, quota: said in one line
            refusal = [("unwritable", f"--save {root}: cannot write the lock file there "
                                      f"({err.strerror or err})")]
    if dist.get_world_size() > 1:
        dist.broadcast_object_list(refusal, src=0)
    if refusal[0] is not None:
        kind, message = refusal[0]
        raise (SaveDirLocked if kind == "locked" else CheckpointError)(message)
    return lock
