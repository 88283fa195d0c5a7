"""Demo clips: real encoded video, made once and reused."""

from __future__ import annotations

import numpy as np

from megavid.data import ensure_demo_clips
from megavid.data.decode import PyAVDecoder
from tests.data.helpers import CLIP_FRAMES, CLIP_SIZE


def test_second_call_reuses_the_files(tmp_path):
    first = ensure_demo_clips(tmp_path, 3, num_frames=CLIP_FRAMES, size=CLIP_SIZE, seed=0)
    stamps = [(p.stat().st_ino, p.stat().st_mtime_ns) for p in first]
    again = ensure_demo_clips(tmp_path, 3, num_frames=CLIP_FRAMES, size=CLIP_SIZE, seed=0)
    assert again == first
    assert [(p.stat().st_ino, p.stat().st_mtime_ns) for p in again] == stamps
    more = ensure_demo_clips(tmp_path, 4, num_frames=CLIP_FRAMES, size=CLIP_SIZE, seed=0)
    assert more[:3] == first and [(p.stat().st_ino, p.stat().st_mtime_ns) for p in first] == stamps
    assert not list(tmp_path.rglob("*.tmp"))  # nothing half-written left behind


def test_clips_decode_and_move(demo_clips):
    decoder = PyAVDecoder()
    for clip in demo_clips[:2]:
        frames = decoder.decode(clip, range(CLIP_FRAMES)).astype(np.float32)  # (N, H, W, 3)
        assert frames.shape == (CLIP_FRAMES, *CLIP_SIZE, 3)
        assert frames.std() > 20  # textured
        assert np.abs(frames[1:] - frames[:-1]).mean() > 2  # moving
    a, b = (decoder.decode(c, [0])[0] for c in demo_clips[:2])
    assert not np.array_equal(a, b)  # clips differ
