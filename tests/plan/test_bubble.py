"""megatron-core's schedules on CPU show the bubble (p-1)/(v m + p - 1) predicts (loosely)."""

from __future__ import annotations

import pytest

from megavid.tools.bench_results import read_results


@pytest.mark.slow  # 31-36 s on 2 cores: the benchmark's pipeline schedules on up to 4 ranks
def test_measured_bubble_tracks_theory(tmp_path, launch):
    out = tmp_path / "bubble.json"
    launch.run("benchmarks/pipeline_bubble.py", "--quick", "--out", str(out), check=True,
               timeout=300)
    rows = {r["name"]: r for r in read_results(out)["results"]}
    for row in rows.values():
        # gloo p2p and Python overhead only ever add to the bubble, and interleaving
        # doubles the messages; 4 ranks sharing 2 cores add noise
        slack = 0.12 if row["params"]["vpp"] == 1 else 0.3
        assert row["theory"] - 0.03 <= row["value"] <= row["theory"] + slack, row
    # more micro-batches per pipeline flush shrink the bubble, as the formula says
    assert rows["bubble pp2 vpp1 m4"]["theory"] < rows["bubble pp4 vpp1 m8"]["theory"]
