"""The loader's sample-stream contract: DP slices, determinism, resume, bad files."""

from __future__ import annotations

import logging

import pytest
import torch

from megavid.config import ConfigError, DataConfig
from megavid.data import build_train_loader
from megavid.data.mock import MockLoader
from tests.data.helpers import ARCH, make_loader, take

G, B = 8, 2  # global batch 8, micro-batches of 2


def by_index(batches: list[dict]) -> dict[int, torch.Tensor]:
    return {int(i): mb["video"][k] for mb in batches for k, i in enumerate(mb["index"])}


def test_dp1_and_dp2_see_the_same_samples(video_dir):
    steps = 2  # 16 positions over 6 videos: crosses an epoch boundary
    dp1 = take(make_loader(video_dir), steps * 4)
    ranks = [take(make_loader(video_dir, dp_rank=r, dp_size=2), steps * 2) for r in range(2)]
    for step in range(steps):
        whole = torch.cat([mb["index"] for mb in dp1[step * 4:(step + 1) * 4]])
        halves = [torch.cat([mb["index"] for mb in r[step * 2:(step + 1) * 2]]) for r in ranks]
        assert whole.tolist() == list(range(step * G, (step + 1) * G))
        assert halves[0].tolist() == whole[:4].tolist() and halves[1].tolist() == whole[4:].tolist()
    pixels_dp1 = by_index(dp1)
    pixels_dp2 = {**by_index(ranks[0]), **by_index(ranks[1])}
    assert pixels_dp1.keys() == pixels_dp2.keys()
    assert all(pixels_dp1[i].equal(pixels_dp2[i]) for i in pixels_dp1)
    assert all(mb["video"].shape == (B, ARCH.num_frames, 64, 64, 3) for mb in dp1)
    assert all(mb["index"].dtype == torch.int64 for mb in dp1)


def test_four_dp_ranks_are_disjoint_and_cover_every_epoch(video_dir):
    """4 DP ranks, 3 steps of 8 = 24 positions = 4 epochs of the 6 videos."""
    ranks = [make_loader(video_dir, dp_rank=r, dp_size=4) for r in range(4)]
    seen = [[int(i) for mb in take(loader, 3) for i in mb["index"]] for loader in ranks]
    for step in range(3):  # rank r holds the r-th quarter of every global batch
        assert [s[2 * step:2 * step + 2] for s in seen] == \
            [[8 * step + 2 * r, 8 * step + 2 * r + 1] for r in range(4)]
    assert sorted(i for s in seen for i in s) == list(range(24))  # disjoint, nothing missed
    dataset = ranks[0].dataset
    epochs = [[dataset.plan(p).file_id for p in range(6 * e, 6 * e + 6)] for e in range(4)]
    assert all(sorted(files) == list(range(6)) for files in epochs)  # each file once per epoch
    assert len({tuple(files) for files in epochs}) > 1  # reshuffled between epochs


def test_pixels_do_not_depend_on_num_workers(video_dir):
    single = take(make_loader(video_dir, num_workers=0), 6)
    multi = take(make_loader(video_dir, num_workers=2), 6)
    for a, b in zip(single, multi):
        assert a["index"].equal(b["index"]) and a["video"].equal(b["video"])


def test_resume_is_exact(video_dir):
    full = take(make_loader(video_dir), 4 * 3)  # 3 steps of 4 micro-batches
    from_step = take(make_loader(video_dir, start_step=1), 8)
    for a, b in zip(full[4:], from_step):
        assert a["index"].equal(b["index"]) and a["video"].equal(b["video"])
    # state_dict after 1.5 steps, loaded into a fresh loader
    first = make_loader(video_dir)
    it = iter(first)
    for _ in range(6):
        next(it)
    state = first.state_dict()
    assert state == {"step": 1, "micro_batch": 2}
    second = make_loader(video_dir)
    second.load_state_dict(state)
    for a, b in zip(full[6:], take(second, 6)):
        assert a["index"].equal(b["index"]) and a["video"].equal(b["video"])


def test_mock_loader_resumes_after_the_last_step(video_dir):
    kw = dict(global_batch_size=G, micro_batch_size=B, dp_rank=0, dp_size=1, seed=1)
    loader = MockLoader(ARCH, **kw)
    full = take(loader, 8)
    assert loader.state_dict() == {"step": 2, "micro_batch": 0}
    resumed = MockLoader(ARCH, **kw)
    resumed.load_state_dict({"step": 1})
    assert [mb["index"].tolist() for mb in take(resumed, 4)] == \
        [mb["index"].tolist() for mb in full[4:]]


def test_corrupt_files_are_skipped_and_counted(video_dir, caplog):
    (video_dir / "000_garbage.mp4").write_bytes(b"\x00\x01garbage" * 500)
    good = sorted(video_dir.rglob("clip_*.mp4"))[0]
    (video_dir / "001_truncated.mp4").write_bytes(good.read_bytes()[:2000])
    loader = make_loader(video_dir)
    with caplog.at_level(logging.WARNING, logger="megavid.data"):
        batches = take(loader, 8)  # 16 samples over 8 files: each file drawn twice
    assert [int(i) for mb in batches for i in mb["index"]] == list(range(16))
    assert all(torch.isfinite(mb["video"]).all() for mb in batches)
    assert loader.stats["skipped_corrupt"] >= 2 and loader.stats["clips"] == 16
    warned = [r.getMessage() for r in caplog.records if "skipped_corrupt" in r.getMessage()]
    assert len(warned) == 2  # once per bad file
    # The replacement is deterministic: same pixels with two workers.
    multi = take(make_loader(video_dir, num_workers=2), 8)
    assert all(a["video"].equal(b["video"]) for a, b in zip(batches, multi))


def test_imagenet_value_range(video_dir):
    unit = take(make_loader(video_dir), 1)[0]["video"]
    net = take(make_loader(video_dir, value_range="imagenet"), 1)[0]["video"]
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(net, (unit - mean) / std)
    assert 0.0 <= unit.min() and unit.max() <= 1.0


def test_empty_folder_names_the_setting(tmp_path):
    (tmp_path / "notes.txt").write_text("no videos here")
    with pytest.raises(ConfigError, match=r"data\.path \(--data\).*no videos"):
        make_loader(tmp_path)


def test_bad_batch_layout_names_the_flags(video_dir):
    with pytest.raises(ValueError, match="--global-batch-size"):
        make_loader(video_dir, global_batch_size=6, micro_batch_size=2, dp_size=2)


def test_demo_clips_are_the_default_source(tmp_path):
    cfg = DataConfig(cache_dir=str(tmp_path), demo_clips=3, num_workers=0,
                     decode_timeout_s=0)
    loader = build_train_loader(cfg, ARCH, global_batch_size=4, micro_batch_size=2, dp_rank=0,
                                dp_size=1, seed=0)
    mb = take(loader, 1)[0]
    assert mb["video"].shape == (2, ARCH.num_frames, ARCH.image_size, ARCH.image_size, 3)
    assert len(list(tmp_path.glob("demo-clips-v*-*/clip_*.mp4"))) == 3
