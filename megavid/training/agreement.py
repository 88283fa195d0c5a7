"""What every rank must agree on after a step's backward, in one all-reduce and one host read.

Per optimizer step all ranks must agree on the loss for the log (a mean over the
data-parallel replicas, known on the last pipeline stage), whether the step is
finite (else no rank updates), the loader's counters and whether to stop. One
collective each, with a host read after each, cost four round trips per step
whatever ``log.log_interval``; here they are named parts of one float64 vector,
summed over all ranks once and read back once (the skip decision needs the host
anyway). Sums say it all: a mean is a sum over a count, "any rank" is a sum > 0,
and float64 holds integer counters exactly up to 2**53.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def sum_over_ranks(parts: dict[str, torch.Tensor | list]) -> dict[str, list[float]]:
    """Each part (a tensor or a list of numbers) summed elementwise over all ranks, as floats.

    Every rank passes the same names with the same lengths; a rank with nothing to
    add passes zeros.
    """
    pieces = [torch.as_tensor(value, dtype=torch.float64).cuda().reshape(-1)
              for value in parts.values()]
    packed = torch.cat(pieces)  # (sum of the parts' lengths,)
    dist.all_reduce(packed)
    values = packed.tolist()
    out, start = {}, 0
    for name, piece in zip(parts, pieces):
        out[name] = values[start:start + piece.numel()]
        start += piece.numel()
    return out
