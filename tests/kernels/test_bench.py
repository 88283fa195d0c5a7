"""``python -m megavid.kernels.bench``: a quick CPU run writes a valid results file and a plot."""

from __future__ import annotations

import pytest
from megavid.kernels.bench.cli import main

from megavid.tools.bench_results import read_results


@pytest.mark.parametrize("command", ["layernorm", "decode"])
def test_quick_run_writes_results(command, tmp_path):
    out = tmp_path / "bench.json"
    main([command, "--quick", "--device", "cpu", "--out", str(out)])
    obj = read_results(out)
    assert obj["benchmark"] == f"kernels.{command}" and obj["results"]
    assert all(row["name"].startswith(command) for row in obj["results"])
    assert obj["settings"]["device"] == "cpu" and obj["settings"]["quick"]
    if command == "layernorm":  # a sweep: one plot next to the JSON
        assert (tmp_path / "bench-layernorm.png").stat().st_size > 0
    else:
        assert "decode dali: skipped" in " ".join(obj["notes"]) or any(
            "dali" in row["name"] for row in obj["results"])
