"""Stop cleanly when the cluster asks: SIGTERM, SLURM's SIGUSR1, or a wall-clock budget.

A signal only raises a flag in the process that got it; once per step all ranks
agree (one MAX all-reduce of two flags) so every rank finishes the same step,
saves the same checkpoint and exits together.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import torch
import torch.distributed as dist

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    def __init__(self, exit_duration_in_mins: float | None):
        self.start = time.monotonic()
        self.budget_s = None if exit_duration_in_mins is None else 60.0 * exit_duration_in_mins
        self.received: int | None = None
        self.reason: str | None = None
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def agreed(self) -> bool:
        """True on every rank when any rank got a signal or ran out of time."""
        over_time = self.budget_s is not None and time.monotonic() - self.start > self.budget_s
        flags = torch.tensor([self.received or 0, int(over_time)], dtype=torch.int64).cuda()
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        signum, over = int(flags[0]), bool(flags[1])
        if signum:
            self.received = signum
            self.reason = f"received {signal.Signals(signum).name}"
        elif over:
            self.reason = f"--exit-duration-in-mins {self.budget_s / 60:g} reached"
        return bool(signum or over)

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
