"""DALI decoding against PyAV (CPU here; GPU in tests/test_gpu.py), and the backend choice."""

from __future__ import annotations

import logging

import av
import numpy as np
import pytest

from megavid.config import ConfigError
from megavid.data import dali
from megavid.data.decode import UnsupportedCodec, build_decoder
from tests.data.helpers import make_loader, ramp_frames, take, write_video

needs_dali = pytest.mark.skipif(not dali.dali_available(), reason="DALI not installed "
                                "(pip install nvidia-dali-cuda120)")
# YUV->RGB conversion differs slightly between DALI and FFmpeg's swscale: allow a mean
# absolute difference of 2 levels (of 255) and no pixel off by more than 16.
MEAN_TOL, MAX_TOL = 2.0, 16


def full_decode(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.fixture(scope="module")
def vp9_clip(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("vp9") / "clip.webm", ramp_frames(32, 80, 96))


@needs_dali
@pytest.mark.parametrize("indices", [[0, 2, 4], [9, 11, 13, 15], [17, 17, 30, 31], [31, 3]])
def test_dali_cpu_matches_pyav_on_vp9(vp9_clip, indices):
    decoder = dali.DALIDecoder(device="cpu")
    frames = decoder.decode(vp9_clip, indices).astype(int)  # (k, H, W, 3)
    reference = full_decode(vp9_clip).astype(int)  # (32, H, W, 3)
    assert frames.shape == (len(indices), 80, 96, 3)
    diff = np.abs(frames - reference[indices])
    assert diff.mean() < MEAN_TOL and diff.max() <= MAX_TOL
    for frame, want in zip(frames, indices):  # exact indices: the nearest reference frame
        errors = np.abs(reference - frame).mean(axis=(1, 2, 3))
        assert int(errors.argmin()) == want


@needs_dali
def test_dali_cpu_refuses_h264_with_a_fix(tmp_path):
    clip = write_video(tmp_path / "clip.mp4", ramp_frames(16, 64, 64), codec="h264")
    with pytest.raises(UnsupportedCodec, match="--codec vp9"):
        dali.DALIDecoder(device="cpu").probe(clip)


@needs_dali
def test_dali_loader_matches_pyav_loader(tmp_path):
    for i in range(3):
        write_video(tmp_path / f"clip_{i}.webm", ramp_frames(32, 80, 96, seed=i))
    with_dali = take(make_loader(tmp_path, decoder="dali"), 4)
    with_pyav = take(make_loader(tmp_path, decoder="pyav"), 4)
    for a, b in zip(with_dali, with_pyav):
        assert a["index"].equal(b["index"])
        assert (a["video"] - b["video"]).abs().mean() < MEAN_TOL / 255


@needs_dali
def test_auto_uses_dali_for_vp9_and_pyav_for_h264(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(dali, "cuda_available", lambda: False)
    vp9 = write_video(tmp_path / "a.webm", ramp_frames(16, 64, 64))
    h264 = write_video(tmp_path / "b.mp4", ramp_frames(16, 64, 64), codec="h264")
    with caplog.at_level(logging.INFO, logger="megavid.data"):
        auto = build_decoder("auto")
    assert "DALI on CPU" in caplog.text
    assert auto._backend(vp9)[1] is auto.dali and auto._backend(h264)[1] is auto.pyav
    assert auto.decode(h264, [0, 5]).shape == (2, 64, 64, 3)
    assert auto.decode(vp9, [0, 5]).shape == (2, 64, 64, 3)


def test_dali_requested_but_missing_names_the_field(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(dali, "dali_available", lambda: False)
    with pytest.raises(ConfigError, match=r"data\.decoder.*pip install nvidia-dali-cuda120"):
        build_decoder("dali")
    with caplog.at_level(logging.INFO, logger="megavid.data"):
        auto = build_decoder("auto")
    assert auto.dali is None and "PyAV" in caplog.text
