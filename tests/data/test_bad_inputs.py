"""Every kind of bad or odd input: skipped or handled by its documented policy, counted exactly."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch

from megavid.data.dali import dali_available
from megavid.data.dataset import VideoClipDataset
from megavid.data.decode import PyAVDecoder
from megavid.data.loader import STAT_KEYS
from megavid.data.transforms import crop_resize
from tests.data.helpers import (
    ARCH,
    expected_counts,
    make_bad_folder,
    make_loader,
    ramp_frames,
    take,
    write_rotated_video,
    write_vfr_video,
)

DECODERS = ["pyav", pytest.param("dali", marks=pytest.mark.skipif(
    not dali_available(), reason="DALI not installed (pip install nvidia-dali-cuda120)"))]


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory):
    return make_bad_folder(tmp_path_factory.mktemp("bad"))


def frames_and_times(path) -> tuple[np.ndarray, np.ndarray]:
    """Every frame and its time in seconds, the plain way: (N, H, W, 3) uint8, (N,)."""
    with av.open(str(path)) as container:
        decoded = [(f.to_ndarray(format="rgb24"), float(f.time)) for f in container.decode(video=0)]
    return np.stack([f for f, _ in decoded]), np.array([t for _, t in decoded])


@pytest.mark.parametrize("decoder", DECODERS)
def test_one_pass_counts_every_kind_exactly(bad_dir, decoder):
    loader = make_loader(bad_dir, decoder=decoder)  # global batch 8: 16 files = 2 steps
    batches = take(loader, 8)
    assert [int(i) for mb in batches for i in mb["index"]] == list(range(16))
    assert all(torch.isfinite(mb["video"]).all() for mb in batches)
    assert all(mb["video"].shape == (2, ARCH.num_frames, 64, 64, 3) for mb in batches)
    want = {k: expected_counts().get(k, 0) for k in STAT_KEYS}
    assert loader.stats == want
    # The same counts, and pixels, from two worker processes.
    workers = make_loader(bad_dir, decoder=decoder, num_workers=2)
    again = take(workers, 8)
    assert workers.stats == want
    assert all(a["video"].equal(b["video"]) for a, b in zip(batches, again))
    # A second epoch finds no new bad file: skips stay, per-sample counters double.
    take(loader, 8)
    assert loader.stats == {k: expected_counts(epochs=2).get(k, 0) for k in STAT_KEYS}


def test_variable_frame_rate_is_sampled_by_timestamp(tmp_path):
    # Frames shown for 20 ms and 60 ms in turn: 25 fps on average, but frame numbers are
    # not times. Grid tick k (every 40 ms) must show the last frame at or before k * 40 ms.
    path = write_vfr_video(tmp_path / "vfr.webm", ramp_frames(32, 64, 80), [20, 60])
    reference, times = frames_and_times(path)  # (32, H, W, 3), (32,)
    info = PyAVDecoder().probe(path)
    assert info.fps == pytest.approx(31 / times[-1])
    ticks = np.arange(32) * times[-1] / 31
    expected = np.array([np.flatnonzero(times <= t + 1e-6)[-1] for t in ticks])
    assert info.timeline.tolist() == expected.tolist()
    assert len(set(expected.tolist())) < 32  # fast frames are thinned, slow ones repeat
    ds = VideoClipDataset([path], decoder=PyAVDecoder(), num_frames=8, image_size=64,
                          frame_stride=2, value_range="unit", seed=3)
    for position in range(4):
        plan = ds.plan(position)
        assert plan.file_frames.tolist() == expected[plan.frames.indices].tolist()
        want = crop_resize(reference[plan.file_frames], plan.crop, 64, "unit")
        assert ds[position]["video"].equal(want)


@pytest.mark.parametrize("degrees, corner", [(-90, "top_right"), (90, "bottom_left"),
                                             (180, "bottom_right")])
def test_rotated_video_is_turned_upright(tmp_path, degrees, corner):
    # A bright block at the coded frame's top-left; a player turning the frame by the display
    # matrix (counter-clockwise degrees) shows it in ``corner``.
    frames = np.full((16, 48, 80, 3), 40, dtype=np.uint8)
    frames[:, :16, :16] = 230
    path = write_rotated_video(tmp_path / "rot.webm", frames, degrees)
    info = PyAVDecoder().probe(path)
    assert info.rotation == degrees % 360 and (info.height, info.width) == (48, 80)
    upright_hw = (80, 48) if degrees % 180 else (48, 80)
    assert info.upright_size == upright_hw
    ds = VideoClipDataset([path], decoder=PyAVDecoder(), num_frames=8, image_size=32,
                          frame_stride=1, value_range="unit", seed=0)
    plan = ds.plan(0)
    assert (plan.crop.top + plan.crop.height <= upright_hw[0]
            and plan.crop.left + plan.crop.width <= upright_hw[1])
    decoded = PyAVDecoder().decode(path, plan.file_frames)  # (T, 48, 80, 3) as coded
    upright = np.rot90(decoded, k=degrees // 90, axes=(1, 2))
    h, w = upright_hw
    rows = slice(0, 16) if corner.startswith("top") else slice(h - 16, h)
    cols = slice(0, 16) if corner.endswith("left") else slice(w - 16, w)
    assert upright[:, rows, cols].mean() > 200 and upright.mean() < 80
    assert ds[0]["video"].equal(crop_resize(upright, plan.crop, 32, "unit"))


@pytest.mark.parametrize("decoder", DECODERS)
def test_odd_sized_frames_are_resized(bad_dir, decoder):
    path = bad_dir / "b_odd.webm"
    info = PyAVDecoder().probe(path)
    assert (info.height, info.width) == (79, 95)
    ds = VideoClipDataset([path], decoder=make_loader(bad_dir, decoder=decoder).dataset.decoder,
                          num_frames=8, image_size=64, frame_stride=2, value_range="unit", seed=1)
    sample = ds[0]
    assert sample["video"].shape == (8, 64, 64, 3)
    assert ("odd_size_resized", str(path)) in sample["events"]
    reference, _ = frames_and_times(path)
    plan = ds.plan(0)
    want = crop_resize(reference[plan.file_frames], plan.crop, 64, "unit")
    assert (sample["video"] - want).abs().mean() < 2 / 255  # DALI's YUV->RGB differs slightly
