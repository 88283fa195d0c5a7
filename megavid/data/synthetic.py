"""Small real video files of each kind the loader has a policy for, made with PyAV.

The fixtures of the data tests (``tests/data/helpers.py``) and the seeds the decode
fuzzer mutates (``fuzz.py``, ``benchmarks/fuzz_decode.py``): one maker of each, so
the fuzzer starts from exactly the files the tests pin down.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

CODECS = {"h264": "libx264", "hevc": "libx265", "vp9": "libvpx-vp9"}
SUFFIX = {"h264": ".mp4", "hevc": ".mp4", "vp9": ".webm"}


def ramp_frames(n: int, height: int, width: int, seed: int = 0):
    """(n, H, W, 3) uint8: a textured gradient that brightens 6 levels a frame, so each
    frame differs clearly from its neighbours (tests can tell which frame they got)."""
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 120, width)[None, :, None] + rng.normal(0, 4, (height, width, 3))
    return np.stack([np.clip(base + 6 * i, 0, 255) for i in range(n)]).astype(np.uint8)


def moving_frames(n: int, height: int, width: int, seed: int = 0):
    """(n, H, W, 3) uint8: a smooth random texture sliding 3 px a frame, so any two of
    even a long clip's frames differ (``ramp_frames`` saturates after ~20 frames)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(30, 225, (height // 8 + 2, (width + 3 * n) // 8 + 2, 3))
    texture = coarse.repeat(8, 0).repeat(8, 1)[:height]  # (H, W + 3n + ..., 3) blocks
    return np.stack([texture[:, 3 * i:3 * i + width] for i in range(n)]).astype(np.uint8)


def write_video(path: Path, frames, *, codec: str = "vp9", fps: int = 24, gop: int = 8) -> Path:
    """Encode (T, H, W, 3) uint8 frames with PyAV (codec: h264 | hevc | vp9)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream(CODECS[codec], rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt, stream.codec_context.gop_size = "yuv420p", gop
        stream.codec_context.thread_count = 1
        for image in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode(None))
    return path


def write_audio_only(path: Path) -> Path:
    """An .mp4 with one AAC audio stream and no video."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        samples = np.zeros((1, 16000), dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            out.mux(packet)
        out.mux(stream.encode(None))
    return path


def write_vfr_video(path: Path, frames, durations_ms, *, codec: str = "vp9") -> Path:
    """Variable frame rate: frame i is shown for durations_ms[i % len] ms (1 ms time base)."""
    ms = Fraction(1, 1000)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(CODECS[codec], rate=24)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt, stream.codec_context.gop_size = "yuv420p", 8
        stream.codec_context.thread_count = 1
        stream.codec_context.time_base = stream.time_base = ms
        t = 0
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts, frame.time_base = t, ms
            t += durations_ms[i % len(durations_ms)]
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def write_rotated_video(path: Path, frames, degrees: int, *, codec: str = "vp9") -> Path:
    """A display matrix rotating by ``degrees`` counter-clockwise (phones write -90 for
    portrait: the coded frame is landscape, players turn it a quarter clockwise)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream(CODECS[codec], rate=24)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt, stream.codec_context.gop_size = "yuv420p", 8
        stream.codec_context.thread_count = 1
        stream.set_display_rotation(degrees)
        for image in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode(None))
    return path


def write_unknown_codec(path: Path, frames) -> Path:
    """An MP4 whose video sample entry names a codec no FFmpeg decodes ('avc1' -> 'mgv0')."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=24)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for image in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode(None))
    data = path.read_bytes()
    entry = data.index(b"avc1", data.index(b"stsd"))  # the sample entry, not the ftyp brand
    path.write_bytes(data[:entry] + b"mgv0" + data[entry + 4:])
    return path


def write_truncated(path: Path, frames, *, codec: str = "h264") -> Path:
    """A clip cut in half: an MP4 with its index first ("faststart": the header still
    promises every frame) or a WebM (its track duration still says the full length)."""
    full = path.with_name("full_" + path.name)
    options = {"movflags": "faststart"} if codec == "h264" else {}
    with av.open(str(full), "w", options=options) as out:
        stream = out.add_stream(CODECS[codec], rate=24)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt, stream.codec_context.gop_size = "yuv420p", 8
        for image in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode(None))
    data = full.read_bytes()
    full.unlink()
    path.write_bytes(data[:len(data) // 2])
    return path
