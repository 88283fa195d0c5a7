"""A deadline on every decode: what each loader worker decodes, since when, and giving up on it.

A web video can make libav loop or block inside C code, where no Python signal or
exception reaches it, and one such decode would stall every rank of the job. So each
worker writes into a small shared-memory table (``DecodeClock``) which file it reads
for which position and since when. A thread of the rank (``Watchdog``) looks at it
every ``POLL_S``; for a decode past ``data.decode_timeout_s`` it has the file marked
``skipped_timeout`` (the workers that replace the old ones inherit the mark and skip
it) and SIGKILLs that worker, the only thing a C-level hang obeys. ``VideoLoader``
then restarts its DataLoader from the micro-batches it has handed out.

The watchdog is a thread, not a check in the rank's wait for a batch, because that wait
can itself hang on the worker: a batch's tensors travel as file descriptors that the
sending worker's own Python thread hands over, and a hang that holds the GIL freezes
that thread too. Killing the worker ends such a wait at once.

The cost beyond the deadline itself: at most ``POLL_S``, a fork of fresh workers and
the decode of the first micro-batch after the restart (prefetched batches are lost and
redone). With ``num_workers=0`` the decode runs in the rank and nothing can interrupt
it, so none is set there by default and ``DataConfig.check`` refuses one asked for.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.data import get_worker_info
from torch.utils.data._utils import signal_handling

POLL_S = 0.1  # how often the watchdog looks at the workers' clocks, and the rank at its queue
BATCH = -1  # file id of a row timing a batch decode (DALI's ``decode_many``: several files)


@dataclass(frozen=True)
class Overrun:
    worker: int  # the DataLoader worker id (row of the clock)
    position: int  # the sample (for a batch: its first sample)
    file_id: int  # the file being read, or BATCH
    seconds: float  # how long it had run


class DecodeClock:
    """(num_workers, 3) float64 rows in shared memory: position, file id, start time
    (``time.monotonic``, one clock for all processes of a Linux machine; 0 = idle)."""

    def __init__(self, num_workers: int):
        self.rows = torch.zeros(num_workers, 3, dtype=torch.float64).share_memory_()

    @contextlib.contextmanager
    def timing(self, position: int, file_id: int):
        """Times the body in this worker's row; does nothing outside a DataLoader worker."""
        info = get_worker_info()
        if info is None:
            yield
            return
        row = self.rows[info.id]
        row[0], row[1] = float(position), float(file_id)
        row[2] = time.monotonic()  # last: a row with a start time is complete
        try:
            yield
        finally:
            row[2] = 0.0

    def overruns(self, deadline_s: float) -> list[Overrun]:
        """Decodes running longer than ``deadline_s`` (rows read twice: a row a worker is
        rewriting just now is not overdue)."""
        first, now, again = self.rows.clone(), time.monotonic(), self.rows.clone()
        out = []
        for worker, ((position, file_id, start), same) in enumerate(
                zip(first.tolist(), (first == again).all(dim=1).tolist())):
            if same and start > 0 and now - start > deadline_s:
                out.append(Overrun(worker, int(position), int(file_id), now - start))
        return out


class Watchdog:
    """A thread that kills the workers of one DataLoader iterator whose decode overran
    ``deadline_s``, after ``on_overrun`` (in this process) marked what they were reading.

    Uses torch's private worker bookkeeping (unchanged since torch 1.x;
    ``tests/data/test_deadline.py`` breaks if it moves): the SIGCHLD handler torch installs
    would otherwise raise, in whatever the rank's main thread runs next, that a worker died.
    """

    def __init__(self, iterator, clock: DecodeClock, deadline_s: float,
                 on_overrun: Callable[[list[Overrun]], None]):
        self.clock, self.deadline_s, self.on_overrun = clock, deadline_s, on_overrun
        self._iterator = weakref.ref(iterator)
        self._pids = [w.pid for w in iterator._workers]
        self._lock = threading.Lock()
        self.overruns: list[Overrun] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="megavid-decode-watchdog",
                                        daemon=True)
        self._thread.start()

    def fired(self) -> bool:
        """Whether workers were killed (the rank's errors since then come from that)."""
        with self._lock:
            return bool(self.overruns)

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(POLL_S):
            late = self.clock.overruns(self.deadline_s)
            if late:
                with self._lock:
                    self.on_overrun(late)
                    self._kill([o.worker for o in late])
                    self.overruns = late
                return

    def _kill(self, workers: list[int]) -> None:
        iterator = self._iterator()
        if iterator is not None and iterator._worker_pids_set:
            signal_handling._remove_worker_pids(id(iterator))
            iterator._worker_pids_set = False
        for worker in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pids[worker], signal.SIGKILL)


def is_poll_timeout(err: Exception) -> bool:
    """True for the error a DataLoader built with ``timeout=POLL_S`` raises when no batch
    came within it (the iterator stays usable: nothing was taken from it)."""
    return isinstance(err, RuntimeError) and str(err).startswith("DataLoader timed out")


def shut_down_in_background(iterator) -> None:
    """Let the surviving workers of an abandoned DataLoader iterator finish the batch each
    is on and exit, while a new iterator starts now (not a daemon: an exiting interpreter
    waits for it, at most a few seconds, instead of tearing torch down under it)."""
    threading.Thread(target=iterator._shutdown_workers, name="megavid-abandoned-loader").start()
