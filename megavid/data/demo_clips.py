"""Synthetic but real encoded demo clips, so a first run needs no dataset.

Each clip is a procedurally textured background drifting at a per-clip
velocity with two textured shapes moving over it: enough motion and texture
for an MAE to learn something, and real H.264 (or MPEG-4 part 2) files, so
the demo exercises the same decoding path as a real dataset. Clip ``i`` is a
pure function of ``(seed, i)``; asking for more clips later only adds files.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path

import av
import numpy as np

_VERSION = 4
_FPS = 24
_GOP = 8  # a keyframe every 8 frames keeps seeks cheap


def pick_codec() -> str:
    """H.264 when PyAV's FFmpeg has libx264, else MPEG-4 part 2 (always built in)."""
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def ensure_demo_clips(cache_dir: str | Path, n: int, *, num_frames: int,
                      size: int | tuple[int, int], seed: int) -> list[Path]:
    """Paths of ``n`` demo clips of ``num_frames`` frames at ``size`` ((height, width) or square).

    Made on first use under ``<cache_dir>/demo-clips-v1-<hash of the parameters>/``
    and reused afterwards; a file lock lets several ranks on one machine call this
    at once, and every clip is written to a temporary name and renamed, so a
    killed run never leaves a half-written clip behind.
    """
    if n < 1:
        raise ValueError(f"data.demo_clips: {n} must be >= 1")
    height, width = (size, size) if isinstance(size, int) else size
    codec = pick_codec()
    params = dict(version=_VERSION, num_frames=num_frames, height=height, width=width,
                  seed=seed, codec=codec, fps=_FPS, gop=_GOP)
    digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    folder = Path(cache_dir).expanduser() / f"demo-clips-v{_VERSION}-{digest}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"clip_{i:05d}.mp4" for i in range(n)]
    if all(p.is_file() for p in paths):
        return paths
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        for i, path in enumerate(paths):
            if path.is_file():
                continue
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            frames = render_clip(np.random.default_rng([seed, i]), num_frames, height, width)
            write_clip(tmp, frames, codec=codec)
            os.replace(tmp, path)
    return paths


def _texture(rng: np.random.Generator, waves: int = 4):
    """A random RGB texture of (y, x) pixel coordinates: sinusoids plus a checker.

    Separable on purpose (sin(a + b) = sin a cos b + cos a sin b): it takes the 1-D
    row and column coordinates, so a frame costs O(H + W) sines, not O(H * W).
    """
    # About one period per 16-px tubelet: strong structure after per-tubelet
    # normalisation (flat tubelets would normalise codec noise into the target).
    freq = rng.uniform(0.03, 0.07, size=(waves, 2)) * rng.choice([-1, 1], size=(waves, 2))
    phase = rng.uniform(0, 2 * np.pi, size=(waves, 3))
    amp = rng.uniform(0.06, 0.2, size=(waves, 3))
    cell = rng.uniform(12, 24)
    checker_rgb = rng.uniform(-0.15, 0.15, size=3)
    base = rng.uniform(0.3, 0.7, size=3)

    def sample(y: np.ndarray, x: np.ndarray) -> np.ndarray:  # (H,), (W,) -> (H, W, 3)
        a = 2 * np.pi * freq[:, 0, None] * y  # (waves, H)
        b = 2 * np.pi * freq[:, 1, None, None] * x[:, None] + phase[:, None, :]  # (waves, W, 3)
        rows = np.concatenate([np.sin(a), np.cos(a)])[..., None] * np.tile(amp, (2, 1))[:, None]
        # rows: (2 * waves, H, 3)
        cols = np.concatenate([np.cos(b), np.sin(b)])  # (2w, W, 3)
        out = np.matmul(rows.transpose(2, 1, 0), cols.transpose(2, 0, 1))  # (3, H, W)
        out = out.transpose(1, 2, 0)  # (H, W, 3)
        checker = (np.floor(y / cell)[:, None] + np.floor(x / cell)[None, :]) % 2  # (H, W)
        return out + base + checker[..., None] * checker_rgb

    return sample


def _bounce(p0: float, v: float, t: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Position of a point moving at speed ``v`` reflecting between ``lo`` and ``hi``."""
    span = hi - lo
    u = np.mod(p0 - lo + v * t, 2 * span)
    return lo + np.where(u < span, u, 2 * span - u)


def render_clip(rng: np.random.Generator, num_frames: int, height: int,
                width: int) -> np.ndarray:
    """(T, H, W, 3) uint8 frames: a drifting textured background and two moving shapes."""
    ys, xs = np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64)
    t = np.arange(num_frames, dtype=np.float64)
    background = _texture(rng, waves=1)  # one orientation per clip: learnable in a demo
    velocity = rng.uniform(-2.0, 2.0, size=2)  # pixels per frame (y, x)
    shapes = []
    for is_disc in (True, False):  # one disc, one square
        radius = rng.uniform(0.12, 0.25) * min(height, width)
        cy = _bounce(rng.uniform(0, height), rng.uniform(-3, 3), t, radius, height - radius)
        cx = _bounce(rng.uniform(0, width), rng.uniform(-3, 3), t, radius, width - radius)
        shapes.append((radius, cy, cx, is_disc, _texture(rng, waves=2)))
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for f in range(num_frames):
        img = background(ys - velocity[0] * f, xs - velocity[1] * f)  # (H, W, 3)
        for radius, cy, cx, is_disc, texture in shapes:
            dy, dx = ys - cy[f], xs - cx[f]  # (H,), (W,)
            inside = (dy[:, None] ** 2 + dx[None, :] ** 2 <= radius**2) if is_disc else (
                np.maximum(np.abs(dy)[:, None], np.abs(dx)[None, :]) <= radius * 0.85)
            img = np.where(inside[..., None], texture(dy, dx), img)
        frames[f] = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return frames


def write_clip(path: Path, frames: np.ndarray, *, codec: str) -> None:
    """Encode (T, H, W, 3) uint8 frames as yuv420p video in an MP4 container."""
    _, height, width, _ = frames.shape
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=_FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = _GOP
        stream.codec_context.thread_count = 1  # several ranks may encode at once
        if codec == "libx264":
            stream.options = {"preset": "veryfast", "crf": "18", "x264-params": "scenecut=0"}
        else:
            stream.codec_context.bit_rate = 4_000_000
        for image in frames:
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))  # flush delayed frames
