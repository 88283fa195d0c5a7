"""Loader counters reach the training log: console, metrics.jsonl and TensorBoard, exactly."""

from __future__ import annotations

import json

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from megavid.data.loader import FILE_COUNTERS, STAT_KEYS
from megavid.data.stats import DataStats
from tests.data.helpers import expected_counts, make_bad_folder


def test_pretrain_logs_skips_by_reason(tmp_path, launch):
    data, log_dir = make_bad_folder(tmp_path / "videos"), tmp_path / "run"
    # 16 files, global batch 8: steps 1-2 are one epoch (every file met), step 3 meets some again
    proc = launch.run(
        "-m", "megavid.pretrain", "--data", str(data), "--log-dir", str(log_dir),
        "--train-iters", "3", "--lr-warmup-iters", "1", "--global-batch-size", "8",
        "--micro-batch-size", "2", "--set", "log.plot=false",
        "--set", "data.valid_fraction=0",  # every file trains (the demo config holds some out)
        timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in (log_dir / "metrics.jsonl").read_text().splitlines()]
    want = {k: expected_counts().get(k, 0) for k in STAT_KEYS}
    assert rows[1]["data"] == want  # after one epoch: every counter exact
    assert list(rows[1]["data"]) == list(STAT_KEYS)
    assert [r["data"]["clips"] for r in rows] == [8, 16, 24]
    assert {k: rows[2]["data"][k] for k in FILE_COUNTERS} == \
        {k: want[k] for k in FILE_COUNTERS}  # skips are files: not recounted in epoch 2
    assert all(r["loss"] == r["loss"] for r in rows)  # finite: the run trained on good clips
    skipped = sum(v for k, v in want.items() if k.startswith("skipped_"))
    assert "step 3/3" in proc.stdout
    assert f"skipped {skipped} files: corrupt 2, empty 1, no_video 1" in proc.stdout

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir / "tensorboard")).Reload()
    for key in STAT_KEYS:
        logged = [(e.step, e.value) for e in events.Scalars(f"data/{key}")]
        assert logged == [(r["step"], float(r["data"][key])) for r in rows], key


def _rank_totals(rank: int, init: str, out) -> None:
    """Two DP ranks: both met b.mp4 (corrupt), each met one bad file of its own."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)

    class FakeLoader:
        stats = {"clips": 4 + rank, "replaced": 1}
        file_events = [("skipped_corrupt", "b.mp4"),
                       ("skipped_empty", "e.mp4") if rank else ("skipped_too_short", "s.mp4")]

    stats = DataStats(FakeLoader())
    first = stats.totals()
    FakeLoader.file_events = FakeLoader.file_events + [("skipped_corrupt", f"c{rank}.mp4")]
    out.put((rank, first, stats.totals(), stats.totals()))
    dist.destroy_process_group()


def test_totals_count_a_file_once_over_data_parallel_ranks(tmp_path, launch):
    out = mp.get_context("fork").Queue()  # the children only run gloo collectives
    init = f"file://{tmp_path / 'store'}"
    procs = launch.spawn(_rank_totals, init, out, nprocs=2, start_method="fork", join=False)
    results = dict((r, rest) for r, *rest in (out.get(timeout=60) for _ in procs))
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for first, second, third in results.values():
        assert first["clips"] == 9 and first["replaced"] == 2
        assert (first["skipped_corrupt"], first["skipped_empty"], first["skipped_too_short"]) == \
            (1, 1, 1)
        assert second["skipped_corrupt"] == 3 and third == second  # b, c0, c1; nothing new
    assert results[0] == results[1]
