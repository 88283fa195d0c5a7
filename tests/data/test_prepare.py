"""The preparation tool: CFR transcoding, sharding, skip reasons, deterministic output."""

from __future__ import annotations

import io
import json
import tarfile

import av
import numpy as np
import pytest

from megavid.data.decode import PyAVDecoder
from megavid.data.media import open_media
from megavid.data.prepare import main
from megavid.data.sources import list_clips
from tests.data.helpers import (
    make_loader,
    ramp_frames,
    take,
    write_audio_only,
    write_rotated_video,
    write_vfr_video,
    write_video,
)


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory):
    """Four good clips (24 fps, 32 frames, mixed sizes and codecs) and four bad inputs."""
    root = tmp_path_factory.mktemp("raw")
    (root / "sub").mkdir()
    write_video(root / "a.mp4", ramp_frames(32, 80, 96), codec="h264")
    write_video(root / "sub" / "b.mp4", ramp_frames(32, 96, 64, seed=1), codec="h264")
    write_video(root / "c.webm", ramp_frames(32, 64, 64, seed=2), codec="vp9")
    write_video(root / "d.mp4", ramp_frames(32, 72, 128, seed=3), codec="h264")
    (root / "e_garbage.mp4").write_bytes(b"\x00\x01garbage" * 300)
    (root / "f_empty.mp4").write_bytes(b"")
    write_audio_only(root / "g_audio.mp4")
    write_video(root / "h_short.mp4", ramp_frames(4, 64, 64), codec="h264")
    return root


def run(raw_dir, dst, *extra):
    return main([str(raw_dir), str(dst), "--fps", "12", "--short-side", "48", "--gop", "4",
                 "--shard-size", "3", "--min-frames", "8", *extra])


@pytest.mark.parametrize("codec", ["h264", "vp9"])
def test_prepare_writes_cfr_short_gop_shards(raw_dir, tmp_path, codec):
    index = run(raw_dir, tmp_path / "out", "--codec", codec, "--workers", "2")
    assert [s["source"] for s in index["samples"]] == ["a.mp4", "c.webm", "d.mp4", "sub/b.mp4"]
    assert {s["source"]: s["reason"] for s in index["skipped"]} == {
        "e_garbage.mp4": "unreadable", "f_empty.mp4": "empty", "g_audio.mp4": "no_video",
        "h_short.mp4": "too_short"}
    assert index["shards"] == [{"name": "shard-000000.tar", "samples": 3},
                               {"name": "shard-000001.tar", "samples": 1}]
    suffix = ".mp4" if codec == "h264" else ".webm"
    with tarfile.open(tmp_path / "out" / "shard-000000.tar") as tar:
        names = [f"0000000{k}{ext}" for k in (0, 1, 2) for ext in (suffix, ".json")]
        assert tar.getnames() == names
    clips = list_clips(tmp_path / "out")
    assert [c.media.name for c in clips] == [f"0000000{k}{suffix}" for k in (0, 1, 2, 7)]
    for clip, meta in zip(clips, index["samples"]):
        assert min(meta["height"], meta["width"]) == 48 and meta["num_frames"] == 16  # 32 @24 -> 12
        with av.open(open_media(clip.media)) as c:
            stream = c.streams.video[0]
            assert stream.codec_context.name == codec and float(stream.average_rate) == 12
            packets = [p for p in c.demux(stream) if p.size]
        assert len(packets) == 16 and [p.is_keyframe for p in packets][::4] == [True] * 4


def test_prepare_output_does_not_depend_on_workers(raw_dir, tmp_path):
    one = run(raw_dir, tmp_path / "one", "--codec", "h264", "--workers", "1")
    two = run(raw_dir, tmp_path / "two", "--codec", "h264", "--workers", "2")
    assert one == two
    for shard in one["shards"]:
        # same members in the same order with the same metadata; the encoded bytes themselves
        # were seen to differ by a few bytes between runs on a loaded machine (x264), so the
        # clips are compared decoded, frame count and size
        members = [_members(tmp_path / run_dir / shard["name"]) for run_dir in ("one", "two")]
        assert members[0] == members[1]
    assert json.loads((tmp_path / "one" / "index.json").read_text()) == one


def _members(path):
    """(name, metadata or decoded (frames, height, width)) of every member of a shard."""
    out = []
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            data = tar.extractfile(member).read()
            if member.name.endswith(".json"):
                out.append((member.name, json.loads(data)))
            else:
                with av.open(io.BytesIO(data)) as container:
                    frames = [f.to_ndarray(format="rgb24").shape for f in container.decode(video=0)]
                out.append((member.name, len(frames), frames[0]))
    return out


def test_loader_reads_prepared_shards(raw_dir, tmp_path):
    run(raw_dir, tmp_path / "shards", "--codec", "h264")
    batches = take(make_loader(tmp_path / "shards"), 4)
    assert [int(i) for mb in batches for i in mb["index"]] == list(range(8))
    assert batches[0]["video"].shape[1:] == (8, 64, 64, 3)


def test_prepare_turns_rotated_and_vfr_sources_upright_and_constant(tmp_path):
    """A phone's portrait clip (landscape coded, display matrix -90) becomes upright portrait
    frames with no display matrix; a variable-rate one becomes constant-rate."""
    src = tmp_path / "src"
    src.mkdir()
    frames = np.full((24, 48, 80, 3), 40, dtype=np.uint8)
    frames[:, :16, :16] = 230  # bright top-left as coded: top-right once upright
    write_rotated_video(src / "phone.mp4", frames, -90, codec="h264")
    write_vfr_video(src / "vfr.mp4", ramp_frames(24, 48, 64), [20, 60], codec="h264")
    index = main([str(src), str(tmp_path / "out"), "--fps", "25", "--short-side", "48",
                  "--gop", "4", "--shard-size", "4", "--min-frames", "8"])
    phone, vfr = index["samples"]
    assert (phone["height"], phone["width"], phone["source_rotation"]) == (80, 48, 270)
    clips = list_clips(tmp_path / "out")
    decoder = PyAVDecoder()
    info = decoder.probe(clips[0].media)
    assert (info.height, info.width, info.rotation) == (80, 48, 0)
    upright = decoder.decode(clips[0].media, [0])[0].astype(int)  # (80, 48, 3)
    assert upright[2:14, -14:-2].mean() > 180 and upright[-20:, :20].mean() < 90
    assert decoder.probe(clips[1].media).timeline is None  # constant rate now
    assert vfr["num_frames"] in (23, 24)  # 0.9 s + the last frame's duration, at 25 fps
