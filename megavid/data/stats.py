"""The loader's counters as the training log shows them: totals over data-parallel ranks.

Every data-parallel rank decodes its own samples, so each meets its own bad
files. Per-sample counters (clips, replaced, vfr_resampled, ...) add up over
ranks; the per-file ``skipped_*`` counters must not, or a file met by two ranks
would count twice. So each step the ranks sum their sample counters together
with how many (reason, file) pairs they met for the first time, and only when
that number is non-zero (a few times per bad file over a run) gather the new
pairs, which every rank merges into the same set.

The sum is ``totals()``'s own all-reduce, or, in training, a part of the
trainer's one per-step all-reduce (``megavid.training.agreement``): ``counts()``
gives this rank's part, ``merge()`` takes the sums.

Totals count from the start of this process: after a resume they start again
from zero (bad files are found again as the stream meets them).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from megavid.data.loader import FILE_COUNTERS, STAT_KEYS
from megavid.parallel import cpu_compat

SAMPLE_COUNTERS = tuple(k for k in STAT_KEYS if k not in FILE_COUNTERS)


class DataStats:
    """``totals()`` -> {counter: int} over the data-parallel ``group`` (a collective).

    ``counted=False``: this rank's ``counts()`` are zeros, for a sum over more ranks
    than ``group`` where the rank's replica is counted by another of its ranks.
    """

    def __init__(self, loader, group=None, *, counted: bool = True):
        self.loader, self.group, self.counted = loader, group, counted
        self._files: dict[str, set[str]] = {k: set() for k in FILE_COUNTERS}
        self._sent = 0  # how many of the loader's file_events were already shared
        self._new: list = []  # file events of the last ``counts()``, for ``merge``

    @property
    def enabled(self) -> bool:
        """Only the video loader keeps file counters (the mock loader has nothing to skip)."""
        return hasattr(self.loader, "file_events")

    def totals(self) -> dict[str, int]:
        counts = self.counts()
        if self._shared():
            summed = torch.tensor(counts, dtype=torch.int64,
                                  device=cpu_compat.collective_device(self.group))
            dist.all_reduce(summed, group=self.group)
            counts = summed.tolist()
        return self.merge(counts)

    def counts(self) -> list[int]:
        """This rank's part of the sum: the sample counters, then how many file events are new."""
        self._new = self.loader.file_events[self._sent:]
        self._sent += len(self._new)
        counts = [int(self.loader.stats.get(k, 0)) for k in SAMPLE_COUNTERS] + [len(self._new)]
        return counts if self.counted else [0] * len(counts)

    def merge(self, summed) -> dict[str, int]:
        """The totals from ``counts()`` summed over ranks; gathers the new file events over
        ``group`` when there are any (every rank of ``group`` calls it with the same sums)."""
        summed = [int(n) for n in summed]
        gathered = [self._new]
        if self._shared():
            gathered = [None] * dist.get_world_size(self.group)
            if summed[-1]:
                dist.all_gather_object(gathered, self._new, group=self.group)
        for events in gathered:
            for reason, path in events or ():
                self._files[reason].add(path)
        out = dict(zip(SAMPLE_COUNTERS, summed[:-1]))
        out.update({k: len(v) for k, v in self._files.items()})
        return {k: out[k] for k in STAT_KEYS}

    def _shared(self) -> bool:
        return dist.is_initialized() and dist.get_world_size(self.group) > 1
