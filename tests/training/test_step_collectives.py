"""A steady-state training step runs one collective of megavid's own and reads the host once.

Everything the ranks must agree on per step (loss, finite flag, data counters, stop
request) travels in one all-reduce (``megavid.training.agreement``); megatron-core's
own collectives (gradient reduction, grad norm, pipeline sends) are not megavid's to
count. Host reads of tensors the loader builds on the CPU (sample ids, mock clips)
are no device syncs and are left out.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

HOST_SIDE = ("megavid.data.", "megavid.models.masking")  # CPU tensors of the input pipeline
LAYOUTS = {
    "dp2": [],
    "tp2": ["parallel.tensor_model_parallel_size=2"],
    "pp2": ["parallel.pipeline_model_parallel_size=2"],
}


def step_counts(launch, tmp_path, overrides: list[str]) -> dict[int, Counter]:
    out = tmp_path / "counts.json"
    launch.run("-m", "tests.training.step_collectives_worker", str(out), *overrides, nproc=2,
               check=True)
    return {int(step): Counter(c) for step, c in json.loads(out.read_text()).items()}


def megavid_own(counts: Counter, kind: str) -> dict[str, int]:
    return {key: n for key, n in counts.items()
            if key.startswith(f"{kind}:megavid") and not key.split(":")[1].startswith(HOST_SIDE)}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_one_collective_and_one_host_read_per_step(launch, tmp_path, layout):
    counts = step_counts(launch, tmp_path, LAYOUTS[layout])
    steady = [counts[step] for step in range(2, 6)]  # not the first step nor the last (a log step)
    for step in steady:
        assert megavid_own(step, "collective") == {
            "collective:megavid.training.agreement:all_reduce": 1}
        assert megavid_own(step, "sync") == {"sync:megavid.training.agreement:tolist": 1}
    assert all(step == steady[0] for step in steady)  # and megatron-core's own: the same each step
