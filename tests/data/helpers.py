"""Helpers for the data tests: a loader over a folder, and taking micro-batches."""

from __future__ import annotations

from pathlib import Path

from megavid.config import DataConfig
from megavid.data import build_train_loader
from megavid.models.presets import get_preset

ARCH = get_preset("demo")  # 8 frames of 64x64
CLIP_FRAMES, CLIP_SIZE = 32, (80, 96)


def make_loader(folder: Path, *, dp_rank: int = 0, dp_size: int = 1, global_batch_size: int = 8,
                micro_batch_size: int = 2, num_workers: int = 0, seed: int = 7,
                start_step: int = 0, **data):
    cfg = DataConfig(path=str(folder), num_workers=num_workers, **data)
    return build_train_loader(cfg, ARCH, global_batch_size=global_batch_size,
                              micro_batch_size=micro_batch_size, dp_rank=dp_rank,
                              dp_size=dp_size, seed=seed, start_step=start_step)


def take(loader, n: int) -> list[dict]:
    """The first ``n`` micro-batches of a fresh iterator over ``loader``."""
    it = iter(loader)
    return [next(it) for _ in range(n)]


CODECS = {"h264": "libx264", "hevc": "libx265", "vp9": "libvpx-vp9"}
SUFFIX = {"h264": ".mp4", "hevc": ".mp4", "vp9": ".webm"}


def ramp_frames(n: int, height: int, width: int, seed: int = 0):
    """(n, H, W, 3) uint8: a textured gradient that brightens 6 levels a frame, so each
    frame differs clearly from its neighbours (tests can tell which frame they got)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    base = np.linspace(0, 120, width)[None, :, None] + rng.normal(0, 4, (height, width, 3))
    return np.stack([np.clip(base + 6 * i, 0, 255) for i in range(n)]).astype(np.uint8)


def write_video(path: Path, frames, *, codec: str = "vp9", fps: int = 24, gop: int = 8) -> Path:
    """Encode (T, H, W, 3) uint8 frames with PyAV (codec: h264 | hevc | vp9)."""
    import av

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
    import av
    import numpy as np

    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        samples = np.zeros((1, 16000), dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            out.mux(packet)
        out.mux(stream.encode(None))
    return path
