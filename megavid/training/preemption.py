"""Stop cleanly when the cluster asks: SIGTERM, SLURM's SIGUSR1, or a wall-clock budget.

A signal only raises a flag in the process that got it; once per step all ranks
agree, so every rank finishes the same step, saves the same checkpoint and exits
together. The flags travel in the trainer's one per-step all-reduce
(``megavid.training.agreement``): ``flags()`` is this rank's vote, ``agree()`` reads
the votes summed over all ranks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    def __init__(self, exit_duration_in_mins: float | None):
        self.start = time.monotonic()
        self.budget_s = None if exit_duration_in_mins is None else 60.0 * exit_duration_in_mins
        self.received: int | None = None
        self.reason: str | None = None
        self.agreed = False  # set by ``agree``: every rank stops after this step
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def flags(self) -> list[int]:
        """This rank's vote: 1 per stop signal it got (in ``STOP_SIGNALS`` order), then 1 if
        it ran out of time; 0s otherwise."""
        over_time = self.budget_s is not None and time.monotonic() - self.start > self.budget_s
        return [int(self.received == sig) for sig in STOP_SIGNALS] + [int(over_time)]

    def agree(self, summed) -> bool:
        """True on every rank when any rank got a signal or ran out of time; ``summed``: every
        rank's ``flags()`` added up. With several signals the largest number wins (SIGTERM)."""
        *got, over = summed
        signums = [sig for sig, n in zip(STOP_SIGNALS, got) if n > 0]
        if signums:
            self.received = max(signums)
            self.reason = f"received {signal.Signals(self.received).name}"
        elif over > 0:
            self.reason = f"--exit-duration-in-mins {self.budget_s / 60:g} reached"
        self.agreed = bool(signums or over > 0)
        return self.agreed

    def restore(self) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)


def requeue_slurm_job() -> str:
    """``scontrol requeue $SLURM_JOB_ID``; returns what happened, for the log."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return "not requeued: SLURM_JOB_ID is not set (not a SLURM job)"
    try:
        proc = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    except FileNotFoundError:
        return f"not requeued: scontrol is not on PATH (job {job}); resubmit by hand"
    if proc.returncode != 0:
        return f"scontrol requeue {job} failed: {proc.stderr.strip()}"
    return f"requeued SLURM job {job}"
