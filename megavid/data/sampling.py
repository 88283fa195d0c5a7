"""Which samples go where: the global sample stream and its per-rank slices.

The stream is defined once for the whole run, independent of the layout:
global position ``p`` is sample ``perm_e[p mod N]`` of epoch ``e = p // N``,
where ``perm_e`` is a permutation seeded by ``seed + e``. Optimizer step ``s``
consumes positions ``[s*G, (s+1)*G)``; data-parallel rank ``r`` of ``D`` takes
the contiguous slice ``[r*G/D, (r+1)*G/D)`` of it, cut into micro-batches of
``b`` in order. Because of this, DP=1 with 4 micro-batches and DP=2 with 2
each see the same samples per step, and a resume only needs a counter.
"""

from __future__ import annotations

import numpy as np

from megavid.config.preflight import micro_batches_per_step


def micro_batch_positions(micro_batch: int, *, global_batch_size: int, micro_batch_size: int,
                          dp_rank: int, dp_size: int) -> range:
    """Global positions of this rank's ``micro_batch``-th micro-batch (counted from step 0)."""
    per_step = global_batch_size // (micro_batch_size * dp_size)  # a layout the pre-flight passed
    step, k = divmod(micro_batch, per_step)
    per_rank = global_batch_size // dp_size
    start = step * global_batch_size + dp_rank * per_rank + k * micro_batch_size
    return range(start, start + micro_batch_size)


class StreamPosition:
    """Where a loader is in the global sample stream, counted in micro-batches handed out.

    Counting what the trainer received (not what workers prefetched) makes a
    ``state_dict`` taken after step s resume exactly at step s + 1.
    """

    def __init__(self, *, global_batch_size: int, micro_batch_size: int, dp_rank: int,
                 dp_size: int, start_step: int = 0):
        self.per_step = micro_batches_per_step(global_batch_size, micro_batch_size, dp_size)
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank {dp_rank} is outside [0, {dp_size})")
        self.layout = dict(global_batch_size=global_batch_size, micro_batch_size=micro_batch_size,
                           dp_rank=dp_rank, dp_size=dp_size)
        self.consumed = start_step * self.per_step

    def state_dict(self) -> dict:
        step, micro_batch = divmod(self.consumed, self.per_step)
        return {"step": step, "micro_batch": micro_batch}

    def load_state_dict(self, state: dict) -> None:
        """Resume at ``state``; takes effect at the next ``iter()``."""
        self.consumed = int(state["step"]) * self.per_step + int(state.get("micro_batch", 0))


class EpochPermutation:
    """Global position -> dataset item, reshuffled every epoch with ``seed + epoch``."""

    def __init__(self, size: int, seed: int):
        self.size, self.seed = size, seed
        self._epoch, self._perm = -1, np.empty(0, dtype=np.int64)

    def __call__(self, position: int) -> int:
        epoch, offset = divmod(position, self.size)
        if epoch != self._epoch:  # workers walk positions in order: one shuffle per epoch
            self._epoch = epoch
            self._perm = np.random.default_rng(self.seed + epoch).permutation(self.size)
        return int(self._perm[offset])


class MicroBatchSampler:
    """Endless batch sampler for ``DataLoader``: this rank's micro-batches from ``start`` on."""

    def __init__(self, *, start: int, global_batch_size: int, micro_batch_size: int,
                 dp_rank: int, dp_size: int):
        self.start = start
        self.layout = dict(global_batch_size=global_batch_size, micro_batch_size=micro_batch_size,
                           dp_rank=dp_rank, dp_size=dp_size)

    def __iter__(self):
        micro_batch = self.start
        while True:
            yield list(micro_batch_positions(micro_batch, **self.layout))
            micro_batch += 1
