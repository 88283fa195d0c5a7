"""Decoding and per-sample choices against an independent full decode with PyAV."""

from __future__ import annotations

import pickle

import av
import numpy as np
import pytest

from megavid.data.dataset import VideoClipDataset
from megavid.data.decode import DecodeError, PyAVDecoder
from megavid.data.transforms import crop_resize, plan_frames
from tests.data.helpers import ARCH, CLIP_FRAMES, CLIP_SIZE, ramp_frames, write_video


def full_decode(path) -> np.ndarray:
    """Every frame, in order, the plain way: (N, H, W, 3) uint8."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_probe_matches_file(demo_clips):
    info = PyAVDecoder().probe(demo_clips[0])
    assert (info.num_frames, info.height, info.width) == (CLIP_FRAMES, *CLIP_SIZE)
    assert len(full_decode(demo_clips[0])) == CLIP_FRAMES


@pytest.mark.parametrize("indices", [[0, 2, 4], [9, 11, 13, 15], [17, 17, 30, 31], [31]])
def test_decode_is_exact_and_stops_early(demo_clips, indices):
    decoder = PyAVDecoder()
    frames = decoder.decode(demo_clips[1], indices)  # (k, H, W, 3)
    np.testing.assert_array_equal(frames, full_decode(demo_clips[1])[indices])
    # Seeks to the keyframe before the first index (GOP 8) and stops after the last.
    # (B-frame reordering can make the codec emit a couple of frames past the last one.)
    gop_start = indices[0] // 8 * 8
    assert decoder.frames_decoded <= indices[-1] - gop_start + 1 + 3


def test_samples_use_the_planned_frames_and_crop(demo_clips):
    ds = VideoClipDataset(demo_clips, decoder=PyAVDecoder(), num_frames=ARCH.num_frames,
                          image_size=ARCH.image_size, frame_stride=2, value_range="unit", seed=5)
    starts = set()
    for position in range(8):
        plan = ds.plan(position)
        idx = plan.frames.indices
        assert plan.frames.stride == 2 and np.all(np.diff(idx) == 2)
        assert 0 <= idx[0] and idx[-1] < CLIP_FRAMES
        starts.add(int(idx[0]))
        reference = full_decode(plan.path)[idx]  # (T, H, W, 3)
        expected = crop_resize(reference, plan.crop, ARCH.image_size, "unit")
        sample = ds[position]
        assert sample["index"] == position and sample["events"] == []
        assert sample["video"].shape == (ARCH.num_frames, ARCH.image_size, ARCH.image_size, 3)
        assert sample["video"].equal(expected)
    assert len(starts) > 1  # temporal offsets are random


def test_short_clips_lower_the_stride_then_pad_then_skip():
    rng = np.random.default_rng(0)
    plan = plan_frames(rng, 10, 8, 2)  # 8 frames at stride 2 need 15: stride 1 fits
    assert plan.stride == 1 and not plan.padded and len(plan.indices) == 8
    plan = plan_frames(rng, 5, 8, 2)  # fewer than 8 frames: the last one repeats
    assert plan.padded and plan.indices.tolist() == [0, 1, 2, 3, 4, 4, 4, 4]
    assert plan_frames(rng, 3, 8, 2) is None  # under half the clip: skipped


def test_garbage_file_raises_decode_error(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00not a video" * 100)
    with pytest.raises(DecodeError):
        PyAVDecoder().probe(bad)


def test_one_decoder_across_sizes_and_a_pickle(demo_clips, tmp_path):
    """The decoder keeps one pixel-format converter for every frame it decodes (building one
    per frame cost most of a small clip's decode); files of other sizes in between, and a
    copy sent to a spawned worker, still convert exactly."""
    other = write_video(tmp_path / "other.webm", ramp_frames(16, 48, 80, seed=2))
    decoder = PyAVDecoder()
    for path in (demo_clips[0], other, demo_clips[1]):
        np.testing.assert_array_equal(decoder.decode(path, [1, 5, 6]),
                                      full_decode(path)[[1, 5, 6]])
    copy = pickle.loads(pickle.dumps(decoder))
    np.testing.assert_array_equal(copy.decode(other, [0, 15]), full_decode(other)[[0, 15]])
