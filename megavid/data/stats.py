"""The loader's counters as the training log shows them: totals over data-parallel ranks.

Every data-parallel rank decodes its own samples, so each meets its own bad
files. Per-sample counters (clips, replaced, vfr_resampled, ...) add up over
ranks; the per-file ``skipped_*`` counters must not, or a file met by two ranks
would count twice. So each step the ranks all-reduce their sample
counters together with how many (reason, file) pairs they met for the first
time, and only when that number is non-zero (a few times per bad file over a
run) gather the new pairs, which every rank merges into the same set.

Totals count from the start of this process: after a resume they start again
from zero (bad files are found again as the stream meets them).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from megavid.data.loader import FILE_COUNTERS, STAT_KEYS

SAMPLE_COUNTERS = tuple(k for k in STAT_KEYS if k not in FILE_COUNTERS)


class DataStats:
    """``totals()`` -> {counter: int} over the data-parallel ``group`` (a collective)."""

    def __init__(self, loader, group=None):
        self.loader, self.group = loader, group
        self._files: dict[str, set[str]] = {k: set() for k in FILE_COUNTERS}
        self._sent = 0  # how many of the loader's file_events were already shared

    @property
    def enabled(self) -> bool:
        """Only the video loader keeps file counters (the mock loader has nothing to skip)."""
        return hasattr(self.loader, "file_events")

    def totals(self) -> dict[str, int]:
        new = self.loader.file_events[self._sent:]
        self._sent += len(new)
        counts = [int(self.loader.stats.get(k, 0)) for k in SAMPLE_COUNTERS] + [len(new)]
        gathered = [new]
        if dist.is_initialized() and dist.get_world_size(self.group) > 1:
            device = "cuda" if dist.get_backend(self.group) == "nccl" else "cpu"
            summed = torch.tensor(counts, dtype=torch.int64, device=device)
            dist.all_reduce(summed, group=self.group)
            counts = summed.tolist()
            gathered = [None] * dist.get_world_size(self.group)
            if counts[-1]:
                dist.all_gather_object(gathered, new, group=self.group)
        for events in gathered:
            for reason, path in events or ():
                self._files[reason].add(path)
        out = dict(zip(SAMPLE_COUNTERS, counts[:-1]))
        out.update({k: len(v) for k, v in self._files.items()})
        return {k: out[k] for k in STAT_KEYS}

    def metrics(self) -> dict:
        """``{"data": totals}`` for the step's metrics, or {} for a loader without counters."""
        return {"data": self.totals()} if self.enabled else {}
