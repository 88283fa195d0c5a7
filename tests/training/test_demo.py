"""The CPU demo end to end: real encoded clips, falling loss, and everything a run leaves behind."""

from __future__ import annotations

import json

import pytest

from megavid.cli import DEMO_CONFIG, parse_args
from megavid.config import load_config
from megavid.config.preflight import resolve_layout
from tests.conftest import REPO


@pytest.mark.slow  # ~27 s: the 50-step demo
def test_demo_trains_with_falling_loss(tmp_path, launch):
    log_dir = tmp_path / "run"
    proc = launch.run("-m", "megavid.pretrain", "--log-dir", str(log_dir),
                      "--set", f"data.cache_dir={tmp_path / 'cache'}", timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in (log_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 51))
    for key in ("loss", "grad_norm", "lr", "clips_per_s", "tokens_per_s", "mfu"):
        assert all(key in r for r in rows), key
    first, last = rows[0]["loss"], rows[-1]["loss"]
    assert last < 0.5 * first, (first, last)
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]  # 4 held-out clips
    assert [s for s, _ in val] == [10, 20, 30, 40, 50] and val[-1][1] < val[0][1], val
    assert (log_dir / "reconstruction.png").stat().st_size > 20_000
    assert f"reconstruction: {log_dir / 'reconstruction.png'}" in proc.stdout
    assert len(list((tmp_path / "cache").rglob("*.mp4"))) == 32  # real encoded clips
    assert (log_dir / "loss_curve.png").stat().st_size > 10_000
    assert list((log_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert load_config(log_dir / "config.yaml").model.preset == "demo"
    assert "step 50/50" in proc.stdout and "clips/s" in proc.stdout and "MFU" in proc.stdout


def test_no_config_means_the_demo():
    assert parse_args([]) == load_config(DEMO_CONFIG)
    assert (REPO / "examples" / "demo_cpu.yaml").resolve() == DEMO_CONFIG.resolve()


@pytest.mark.parametrize("name, world", [("4ds_b_8gpu.yaml", 8), ("4ds_j_cluster.yaml", 256)])
def test_example_configs_are_valid_layouts(name, world):
    cfg = load_config(REPO / "examples" / name)
    layout = resolve_layout(cfg, world)
    assert layout.dp == world // (layout.tp * layout.pp)
