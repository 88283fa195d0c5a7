"""DALI decoding against PyAV (CPU here; GPU in tests/test_gpu.py), and the backend choice."""

from __future__ import annotations

import logging

import av
import numpy as np
import pytest

from megavid.config import ConfigError
from megavid.data import dali
from megavid.data.dali import build_decoder
from megavid.data.decode import DecodeError, PyAVDecoder, UnsupportedCodec
from megavid.data.frame_index import remux_segment
from tests.data.helpers import (
    make_loader,
    moving_frames,
    ramp_frames,
    take,
    write_rotated_video,
    write_video,
)

needs_dali = pytest.mark.skipif(not dali.dali_available(), reason="DALI not installed "
                                "(pip install nvidia-dali-cuda120)")
# YUV->RGB conversion differs slightly between DALI and FFmpeg's swscale: allow a mean
# absolute difference of 2 levels (of 255) and no pixel off by more than 16.
MEAN_TOL, MAX_TOL = 2.0, 16


def full_decode(path) -> np.ndarray:
    with av.open(path if hasattr(path, "read") else str(path)) as container:
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


def test_segment_holds_only_the_packets_a_clip_needs(tmp_path):
    """What DALI-CPU is handed: keyframe before the clip .. its last frame, nothing else."""
    import io


    clip = write_video(tmp_path / "long.webm", moving_frames(64, 48, 64), gop=8)
    index = PyAVDecoder().frame_index(clip)
    wanted = np.array([21, 25, 29, 21])
    data, first = remux_segment(clip, index, wanted)
    assert first == 16  # the keyframe before frame 21 (GOP 8)
    segment = full_decode(io.BytesIO(data))
    assert len(segment) == 29 - 16 + 1
    np.testing.assert_array_equal(segment[wanted - first], full_decode(clip)[wanted])


@needs_dali
def test_dali_cpu_decodes_deep_frames_exactly(tmp_path):
    clip = write_video(tmp_path / "long.webm", moving_frames(64, 48, 64), gop=8)
    indices = [50, 54, 58, 62, 41]
    frames = dali.DALIDecoder(device="cpu").decode(clip, indices).astype(int)
    reference = full_decode(clip).astype(int)
    for frame, want in zip(frames, indices):
        assert int(np.abs(reference - frame).mean(axis=(1, 2, 3)).argmin()) == want


def test_gpu_decoding_without_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(dali, "cuda_available", lambda: False)
    with pytest.raises(ConfigError, match=r"device='mixed'.*needs CUDA.*data\.decoder=auto"):
        dali.DALIDecoder(device="mixed")


@pytest.mark.gpu
@needs_dali
def test_dali_on_gpu_is_chosen_by_config_and_matches_pyav(tmp_path):
    """On a CUDA machine data.decoder=dali and =auto both decode with NVDEC (mixed), and the
    loader's samples match PyAV's, H.264 and a rotated file included (the rotation is applied
    once, by the dataset, whichever backend decodes)."""
    assert build_decoder("dali").device == "mixed"
    assert build_decoder("auto").dali.device == "mixed"
    for i in range(2):
        write_video(tmp_path / f"clip_{i}.mp4", ramp_frames(32, 80, 96, seed=i), codec="h264")
    write_video(tmp_path / "clip_2.webm", ramp_frames(32, 80, 96, seed=2))
    write_rotated_video(tmp_path / "clip_3.mp4", ramp_frames(32, 80, 96, seed=3), -90,
                        codec="h264")
    with_dali = make_loader(tmp_path, decoder="dali")
    for a, b in zip(take(with_dali, 8), take(make_loader(tmp_path, decoder="pyav"), 8)):
        assert a["index"].equal(b["index"])
        assert (a["video"] - b["video"]).abs().mean() < MEAN_TOL / 255
    assert with_dali.stats["skipped_unsupported_codec"] == 0


@needs_dali
def test_batched_decode_equals_one_by_one_and_isolates_a_bad_file(tmp_path):
    """decode_many runs a batch on the pipeline's threads: the same frames as decode, and a
    corrupt file in the batch fails only its own job."""
    clips = [write_video(tmp_path / f"c{i}.webm", moving_frames(40, 48, 64, seed=i), gop=8)
             for i in range(3)]
    bad = tmp_path / "bad.webm"
    bad.write_bytes(clips[0].read_bytes()[:300] + b"\0" * 4000)  # header kept, frames gone
    jobs = [(clips[0], [3, 7, 11]), (bad, [0, 1]), (clips[1], [30, 34, 38]),
            (clips[2], [12, 12, 5]), (clips[0], [99])]
    batched = dali.DALIDecoder(device="cpu", num_threads=2).decode_many(jobs)
    one = dali.DALIDecoder(device="cpu")
    for (path, frames), out in zip(jobs, batched):
        if path is bad:
            assert isinstance(out, DecodeError)
        elif max(frames) >= 40:
            assert isinstance(out, IndexError)
        else:
            np.testing.assert_array_equal(out, one.decode(path, frames))


@needs_dali
def test_dali_loader_batches_skip_like_pyav(tmp_path):
    """The DataLoader hands DALI whole micro-batches (__getitems__); with a corrupt and a
    zero-byte file among the clips, samples and skip counts equal the PyAV loader's."""
    for i in range(4):
        write_video(tmp_path / f"clip_{i}.webm", ramp_frames(32, 80, 96, seed=i))
    (tmp_path / "clip_4.webm").write_bytes(b"not a video" * 50)
    (tmp_path / "clip_5.webm").write_bytes(b"")
    with_dali = make_loader(tmp_path, decoder="dali", micro_batch_size=4, dali_threads=2)
    with_pyav = make_loader(tmp_path, decoder="pyav", micro_batch_size=4)
    for a, b in zip(take(with_dali, 4), take(with_pyav, 4)):
        assert a["index"].equal(b["index"])
        assert (a["video"] - b["video"]).abs().mean() < MEAN_TOL / 255
    assert with_dali.stats == with_pyav.stats
    assert with_dali.stats["skipped_corrupt"] == 1 and with_dali.stats["skipped_empty"] == 1


def test_dali_threads_must_not_be_negative(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.dali_threads"):
        make_loader(tmp_path, decoder="pyav", dali_threads=-1)
