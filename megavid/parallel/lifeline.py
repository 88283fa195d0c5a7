"""Ranks end with their launcher, and a rank's helper processes end with the rank.

torchrun starts each rank in a POSIX session of its own, so when torchrun itself is
SIGKILLed (an OOM killer, a node agent, ``kill -9`` on the launcher) nothing reaches
the ranks: they train on as orphans and keep writing checkpoints, and a requeued job
then shares ``--save`` with them. Likewise a SIGKILLed rank leaves its forked helpers
(dist_checkpointing's asynchronous writer, data workers) behind.

Linux's parent-death signal closes both holes without a watchdog thread: the kernel
sends the signal the moment the parent goes. The signal is SIGKILL, as the launcher's
death means the job is over; a checkpoint is never damaged by it (a save becomes a
checkpoint only at its commit, ``checkpoint_dirs``). Limits: the kernel's "parent" is
the thread that forked, so helpers must be forked from a thread that lives as long as the
rank (megavid forks from the main thread); helpers started with "spawn" are bound only
where they import a module that calls ``bind_rank`` (spawn imports the main module again,
and ``megavid.pretrain`` calls it); a launcher that died before the rank's first line ran
cannot be noticed (the rank is then the reaper's child). On other systems these calls do nothing.
"""

from __future__ import annotations

import ctypes
import multiprocessing.spawn
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_libc = None
_fork_hook_installed = False


def _prctl_pdeathsig(sig: int) -> bool:
    global _libc
    if not sys.platform.startswith("linux"):
        return False
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """Have the kernel send ``sig`` to this process when its parent dies; if the parent
    died before the call took effect, die now. Returns whether the platform supports it."""
    parent = os.getppid()
    if not _prctl_pdeathsig(sig):
        return False
    if os.getppid() != parent:  # the parent went between the two calls
        os.kill(os.getpid(), sig)
    return True


def _child_dies_with_parent() -> None:
    die_with_parent(signal.SIGKILL)


def helpers_die_with_this_process() -> None:
    """Every process this one forks from now on (async checkpoint writers, data workers)
    dies with it. Idempotent; the hook runs only in forked children that go on in Python
    (``os.register_at_fork``), not in ``subprocess`` launches."""
    global _fork_hook_installed
    if not _fork_hook_installed and sys.platform.startswith("linux"):
        os.register_at_fork(after_in_child=_child_dies_with_parent)
        _fork_hook_installed = True


def launched_by_torchrun() -> bool:
    """torchrun (its elastic agent) exports a run id to every worker it starts."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def _spawned_helper() -> bool:
    """A multiprocessing child started with "spawn" (dist_checkpointing's results-queue
    manager): it imports the main module again, so this module's caller runs in it too."""
    return multiprocessing.spawn.is_forking(sys.argv)


def bind_rank() -> None:
    """What a rank does at start-up: under torchrun it dies with torchrun (srun's step
    daemon ends its own tasks), and its helpers die with it in any case: forked ones by
    the fork hook, spawned ones here, as they import the main module. A lone process
    (``python -m megavid.pretrain``, perhaps under nohup) outlives its shell. Idempotent."""
    if launched_by_torchrun() or _spawned_helper():
        die_with_parent(signal.SIGKILL)
    helpers_die_with_this_process()
