"""Tables off a terminal (pipes, SLURM/CI logs) print every value whole; --json parses."""

from __future__ import annotations

import io
import json

from megavid.tables import Column, markdown_table, print_table


def _piped(launch, *args: str) -> str:
    """stdout of ``python -m ARGS`` off a terminal, as ``| cat`` or a SLURM log sees it."""
    proc = launch.run("-m", *args, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_piped_preset_list_is_complete(launch):
    out = _piped(launch, "megavid.models", "--list")
    assert "87,439,104" in out and "21,766,182,912" in out and "16x224x224" in out
    assert "…" not in out and "..." not in out
    row = next(line for line in out.splitlines() if line.startswith("| 4ds-b "))
    assert [c.strip() for c in row.strip("|").split("|")][:5] == ["4ds-b", "768", "12", "3072", "12"]


def test_preset_json_has_raw_numbers(launch):
    rows = {r["preset"]: r
            for r in json.loads(_piped(launch, "megavid.models", "--json"))["rows"]}
    assert rows["4ds-b"]["encoder_params"] == 87_439_104
    assert rows["4ds-e"]["encoder_params"] == 3_809_464_064


def test_piped_planner_is_complete_and_json_parses(launch):
    out = _piped(launch, "megavid.plan", "--preset", "4ds-j", "--gpus", "256", "--top", "3")
    assert "…" not in out
    assert "| tp8 pp4 vpp13 dp8 sp |" in out.replace("  ", " ")
    assert "10.6 / 80" in out and "28.2%" in out
    plan = json.loads(_piped(launch, "megavid.plan", "--preset", "4ds-j", "--gpus", "256",
                             "--top", "3",
                             "--json"))
    best = plan["rows"][0]
    assert (best["tp"], best["pp"], best["vpp"], best["dp"]) == (8, 4, 13, 8)
    assert len(plan["rows"]) == 3 and plan["fitting_layouts"] == 521


def test_markdown_table_widths_and_json():
    cols = [Column("name", "name", justify="left"), Column("n", "count", "{:,}".format)]
    rows = [{"name": "a", "n": 1234567}, {"name": "longer name", "n": 5}]
    assert markdown_table(rows, cols).splitlines() == [
        "| name        |     count |",
        "| ----------- | --------: |",
        "| a           | 1,234,567 |",
        "| longer name |         5 |",
    ]
    buf = io.StringIO()
    print_table(rows, cols, title="t", as_json=True, file=buf)
    assert json.loads(buf.getvalue()) == {"title": "t", "rows": rows}
