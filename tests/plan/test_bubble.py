"""megatron-core's schedules on CPU show the bubble (p-1)/(v m + p - 1) predicts (loosely)."""

from __future__ import annotations

import pytest

from megavid.tools.bench_results import read_results


@pytest.mark.slow  # 40-65 s on 2 cores: the pipeline schedules on up to 4 ranks, median of 3 runs
def test_measured_bubble_tracks_theory(tmp_path, launch):
    out = tmp_path / "bubble.json"
    launch.run("benchmarks/pipeline_bubble.py", "--quick", "--out", str(out), check=True,
               timeout=300)
    rows = {r["name"]: r for r in read_results(out)["results"]}
    for row in rows.values():
        # gloo p2p and Python overhead only ever add to the bubble; the benchmark measures
        # them (the same schedule with free chunks, right after), so a busy machine, which
        # inflates both, widens the allowance instead of failing the test. Quiet, the excess
        # over theory is the overhead share to within 0.015 (results/pipeline_bubble_cpu.json)
        overhead = row["overhead_s"] / row["step_s"]
        assert row["theory"] - 0.03 <= row["value"] <= row["theory"] + overhead + 0.1, row
    # more micro-batches per pipeline flush shrink the bubble, as the formula says
    assert rows["bubble pp2 vpp1 m4"]["theory"] < rows["bubble pp4 vpp1 m8"]["theory"]
