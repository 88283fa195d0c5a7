"""Helpers for the data tests: a loader over a folder, and taking micro-batches."""

from __future__ import annotations

from pathlib import Path

from megavid.config import DataConfig
from megavid.config.presets import get_preset
from megavid.data import build_train_loader

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


def moving_frames(n: int, height: int, width: int, seed: int = 0):
    """(n, H, W, 3) uint8: a smooth random texture sliding 3 px a frame, so any two of
    even a long clip's frames differ (``ramp_frames`` saturates after ~20 frames)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    coarse = rng.uniform(30, 225, (height // 8 + 2, (width + 3 * n) // 8 + 2, 3))
    texture = coarse.repeat(8, 0).repeat(8, 1)[:height]  # (H, W + 3n + ..., 3) blocks
    return np.stack([texture[:, 3 * i:3 * i + width] for i in range(n)]).astype(np.uint8)


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


def write_vfr_video(path: Path, frames, durations_ms, *, codec: str = "vp9") -> Path:
    """Variable frame rate: frame i is shown for durations_ms[i % len] ms (1 ms time base)."""
    from fractions import Fraction

    import av

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
    import av

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
    import av

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
    import av

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


# One folder with every kind of bad or odd input the loader has a policy for. Sorted order
# matters: a skipped file's sample moves to the next file, and every bad file sits between
# the policy files and o_good, so one pass (16 positions = one epoch) meets each file once as
# its own position's file and the per-sample counters are exact too.
POLICY_FILES = {"b_odd.webm": "odd_size_resized", "c_rotated.webm": "rotated_upright",
                "d_vfr.webm": "vfr_resampled", "e_padded.webm": "padded_short"}
BAD_FILES = {
    "f_empty.webm": "skipped_empty",
    "g_truncated.mp4": "skipped_truncated",
    "h_truncated.webm": "skipped_truncated",
    "i_garbage.webm": "skipped_corrupt",
    "j_text.mp4": "skipped_corrupt",
    "k_audio_only.mp4": "skipped_no_video",
    "l_unknown_codec.mp4": "skipped_unsupported_codec",
    "m_short.webm": "skipped_too_short",
    "n_tiny.webm": "skipped_too_small",
}


def make_bad_folder(root: Path) -> Path:
    """Three good VP9 clips, four usable by a policy, nine bad: 16 files."""
    root.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(("a_good.webm", "o_good.webm", "p_good.webm")):
        write_video(root / name, ramp_frames(32, 80, 96, seed=seed))
    write_video(root / "b_odd.webm", ramp_frames(32, 79, 95, seed=6))
    write_rotated_video(root / "c_rotated.webm", ramp_frames(32, 80, 96, seed=5), -90)
    write_vfr_video(root / "d_vfr.webm", ramp_frames(32, 80, 96, seed=4), [20, 60])
    write_video(root / "e_padded.webm", ramp_frames(6, 80, 96, seed=3))  # 4 <= 6 < 8 frames
    (root / "f_empty.webm").write_bytes(b"")
    write_truncated(root / "g_truncated.mp4", ramp_frames(32, 80, 96), codec="h264")
    write_truncated(root / "h_truncated.webm", ramp_frames(32, 80, 96), codec="vp9")
    (root / "i_garbage.webm").write_bytes(b"\x00\x01garbage" * 300)
    (root / "j_text.mp4").write_text("this is a text file, not a video\n" * 20)
    write_audio_only(root / "k_audio_only.mp4")
    write_unknown_codec(root / "l_unknown_codec.mp4", ramp_frames(16, 64, 64))
    write_video(root / "m_short.webm", ramp_frames(3, 80, 96))  # < 4 of the demo's 8 frames
    write_video(root / "n_tiny.webm", ramp_frames(32, 12, 14))  # short side 12 < 64 / 4
    return root


def expected_counts(epochs: int = 1) -> dict[str, int]:
    """Every counter after ``epochs`` full passes over ``make_bad_folder`` (demo preset):
    skipped_* count files (once, however often met); the rest count samples."""
    counts = {"clips": 16 * epochs, "replaced": len(BAD_FILES) * epochs, "stride_lowered": 0}
    for counter in BAD_FILES.values():
        counts[counter] = counts.get(counter, 0) + 1
    for counter in POLICY_FILES.values():
        counts[counter] = epochs
    return counts
