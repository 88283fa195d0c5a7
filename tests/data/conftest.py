"""Shared fixtures: a few small demo clips, made once per test session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from megavid.data import ensure_demo_clips
from tests.data.helpers import CLIP_FRAMES, CLIP_SIZE


@pytest.fixture(scope="session")
def demo_clips(tmp_path_factory) -> list[Path]:
    return ensure_demo_clips(tmp_path_factory.mktemp("cache"), 6, num_frames=CLIP_FRAMES,
                             size=CLIP_SIZE, seed=0)


@pytest.fixture
def video_dir(tmp_path, demo_clips) -> Path:
    """A dataset folder (with a sub-folder, to check the recursive search) of the demo clips."""
    folder = tmp_path / "videos"
    (folder / "sub").mkdir(parents=True)
    for i, clip in enumerate(demo_clips):
        shutil.copy(clip, folder / ("sub" if i % 2 else "") / clip.name)
    return folder
