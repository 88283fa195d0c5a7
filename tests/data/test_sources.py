"""Every data.path source keeps the sample-stream contract; bad inputs are counted by reason."""

from __future__ import annotations

import json

import pytest
import torch

from megavid.config import ConfigError
from megavid.data.dali import dali_available
from megavid.data.dataset import clip_window
from megavid.data.decode import VideoInfo
from megavid.data.prepare import main as prepare
from megavid.data.sources import Clip, list_clips
from tests.data.helpers import (
    make_loader,
    ramp_frames,
    take,
    write_audio_only,
    write_video,
)


@pytest.fixture(scope="module")
def clips_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    for i in range(4):
        write_video(root / f"clip_{i}.mp4", ramp_frames(48, 80, 96, seed=i), codec="h264")
    return root


def write_manifest(path, rows):
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        keys = ["path", "start", "end", "label"]
        path.write_text("\n".join([",".join(keys)] + [",".join(str(r.get(k, "")) for k in keys)
                                                      for r in rows]) + "\n")
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_manifest_matches_folder_and_resumes(clips_dir, tmp_path, suffix):
    rows = [{"path": str(clips_dir / f"clip_{i}.mp4"), "label": f"c{i}"} for i in range(4)]
    manifest = write_manifest(tmp_path / f"train{suffix}", rows)
    clips = list_clips(manifest)
    assert [c.label for c in clips] == ["c0", "c1", "c2", "c3"] and clips[0].start is None
    from_folder, from_manifest = take(make_loader(clips_dir), 8), take(make_loader(manifest), 8)
    for a, b in zip(from_folder, from_manifest):
        assert a["index"].equal(b["index"]) and a["video"].equal(b["video"])
    resumed = take(make_loader(manifest, start_step=1), 4)
    for a, b in zip(from_manifest[4:], resumed):
        assert a["index"].equal(b["index"]) and a["video"].equal(b["video"])


def test_manifest_times_limit_the_frames(clips_dir, tmp_path):
    rel = write_manifest(tmp_path / "m.jsonl", [{"path": str(clips_dir / "clip_0.mp4"),
                                                 "start": 0.5, "end": 1.5}])
    clip = list_clips(rel)[0]
    assert clip_window(clip, VideoInfo(48, 80, 96, fps=24.0)) == (12, 36)
    loader = make_loader(rel)
    for position in range(6):
        plan = loader.dataset.plan(position)
        assert 12 <= plan.frames.indices.min() and plan.frames.indices.max() < 36


def test_manifest_paths_are_relative_to_it(clips_dir):
    manifest = write_manifest(clips_dir / "rel.csv", [{"path": "clip_1.mp4", "end": 1.0}])
    assert list_clips(manifest) == [Clip(clips_dir / "clip_1.mp4", None, 1.0, None)]


def test_manifest_errors_name_the_setting(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.path.*does not exist"):
        list_clips(tmp_path / "missing.jsonl")
    bad = write_manifest(tmp_path / "bad.jsonl", [{"label": 3}])
    with pytest.raises(ConfigError, match=r"data\.path.*entry 1 has no 'path'"):
        list_clips(bad)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_missing_manifest_path_fails_at_start_up(clips_dir, tmp_path, suffix):
    rows = [{"path": str(clips_dir / "clip_0.mp4")}, {"path": "typo/clip_9.mp4", "label": "x"}]
    manifest = write_manifest(tmp_path / f"m{suffix}", rows)
    missing = str(tmp_path / "typo" / "clip_9.mp4")
    with pytest.raises(ConfigError, match=rf"data\.path.*1 file\(s\).*entry 2: {missing}"):
        make_loader(manifest)  # before any worker or decoder exists


def test_missing_shard_fails_at_start_up(clips_dir, tmp_path):
    prepare([str(clips_dir), str(tmp_path / "shards"), "--fps", "12", "--short-side", "48",
          "--shard-size", "2", "--min-frames", "8"])
    assert len(list_clips(tmp_path / "shards")) == 4
    (tmp_path / "shards" / "shard-000001.tar").unlink()
    with pytest.raises(ConfigError, match=r"index\.json lists 1 file\(s\).*shard-000001\.tar"):
        make_loader(tmp_path / "shards")


def test_labels_travel_in_batches(clips_dir, tmp_path):
    """Manifest labels come out as batch["label"] (int64) for the clip actually used."""
    named = write_manifest(tmp_path / "named.jsonl", [
        {"path": str(clips_dir / f"clip_{i}.mp4"), "label": name}
        for i, name in enumerate(["dog", "cat", "", "dog"])])
    loader = make_loader(named)
    assert loader.dataset.label_names == ["cat", "dog"]
    assert loader.dataset.labels.tolist() == [1, 0, -1, 1]  # "" = no label = -1
    for mb in take(loader, 4):
        files = [loader.dataset.plan(int(i)).file_id for i in mb["index"]]
        assert mb["label"].dtype == torch.int64
        assert mb["label"].tolist() == [[1, 0, -1, 1][f] for f in files]
    numeric = write_manifest(tmp_path / "numeric.csv", [
        {"path": str(clips_dir / f"clip_{i}.mp4"), "label": 10 + i} for i in range(4)])
    assert make_loader(numeric).dataset.labels.tolist() == [10, 11, 12, 13]
    assert take(make_loader(clips_dir), 1)[0]["label"].tolist() == [-1, -1]  # folder: none


def test_a_replaced_sample_carries_the_label_of_the_clip_used(clips_dir, tmp_path):
    (tmp_path / "broken.mp4").write_bytes(b"\x00garbage" * 100)
    manifest = write_manifest(tmp_path / "m.jsonl", [
        {"path": str(tmp_path / "broken.mp4"), "label": 7},
        {"path": str(clips_dir / "clip_0.mp4"), "label": 3}])
    loader = make_loader(manifest, global_batch_size=2, micro_batch_size=2)
    batch = take(loader, 1)[0]  # positions 0 and 1: one lands on the broken file, moves on
    assert batch["label"].tolist() == [3, 3] and loader.stats["skipped_corrupt"] == 1


def test_every_bad_kind_is_skipped_and_counted(tmp_path):
    """Two good VP9 clips, one H.264 (unsupported by DALI-CPU) and one file of each bad kind."""
    write_video(tmp_path / "a_good.webm", ramp_frames(32, 64, 64))
    write_video(tmp_path / "b_good.webm", ramp_frames(32, 64, 64, seed=1))
    h264 = write_video(tmp_path / "h_h264.mp4", ramp_frames(32, 64, 64), codec="h264")
    (tmp_path / "c_truncated.mp4").write_bytes(h264.read_bytes()[:-300])  # cut inside the index
    (tmp_path / "d_garbage.mp4").write_bytes(b"\x00\x01garbage" * 300)
    (tmp_path / "e_empty.mp4").write_bytes(b"")
    write_audio_only(tmp_path / "f_audio.mp4")
    write_video(tmp_path / "g_short.webm", ramp_frames(3, 64, 64))  # < 4 of the 8 frames
    decoder = "dali" if _have_dali() else "pyav"
    loader = make_loader(tmp_path, decoder=decoder, global_batch_size=8)
    batches = take(loader, 8)  # 16 positions = 2 epochs of the 8 files: every file is met
    assert [int(i) for mb in batches for i in mb["index"]] == list(range(16))
    assert all(torch.isfinite(mb["video"]).all() for mb in batches)
    skips = {k: v for k, v in loader.stats.items() if k.startswith("skipped") and v}
    # Files, not samples: truncated + garbage are corrupt; the rest one each.
    expected = {"skipped_corrupt": 2, "skipped_empty": 1, "skipped_no_video": 1,
                "skipped_too_short": 1}
    if decoder == "dali":
        expected["skipped_unsupported_codec"] = 1
    assert skips == expected and loader.stats["clips"] == 16
    assert loader.stats["replaced"] >= sum(expected.values())
    workers = make_loader(tmp_path, decoder=decoder, global_batch_size=8, num_workers=2)
    again = take(workers, 8)
    assert all(a["video"].equal(b["video"]) for a, b in zip(batches, again))
    assert {k: v for k, v in workers.stats.items() if k.startswith("skipped") and v} == expected


def _have_dali() -> bool:
    return dali_available()
