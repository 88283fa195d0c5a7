"""Video decode throughput: PyAV on CPU, and DALI on GPU when it is installed.

The benchmark encodes its own clip (a smooth moving pattern with a little
noise, so it compresses like video rather than like noise) into a temporary
directory, then decodes it, so it needs no data set and runs anywhere.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import tempfile
from pathlib import Path

import numpy as np
import torch
from megavid.kernels.bench.common import Context, Report

DALI_SEQUENCE = 16  # frames per DALI sample: one 4DS clip


def _frame(i: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Frame ``i`` of a moving sinusoid pattern, (size, size, 3) uint8."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    r = 128 + 100 * np.sin((xx + 4 * i) / 17)
    g = 128 + 100 * np.cos((yy - 3 * i) / 23)
    b = (xx + yy + 5 * i) % 256
    img = np.stack([r, g, b], axis=-1) + rng.integers(0, 8, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def encode_clip(path: Path, frames: int, size: int, fps: int = 30) -> str:
    """Write an H.264 mp4 (MPEG-4 part 2 if libx264 is missing); returns the codec."""
    import av

    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    rng = np.random.default_rng(0)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(_frame(i, size, rng), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())  # flush
    return codec


def _decode_pyav(path: Path, rgb: bool) -> int:
    """Decode every frame (and convert to an RGB array if asked); returns the count."""
    import av

    count = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame + slice threads, as a data loader would
        for frame in container.decode(stream):
            if rgb:
                frame.to_ndarray(format="rgb24")
            count += 1
    return count


def _bench_dali(ctx: Context, rep: Report, path: Path, frames: int) -> None:
    """GPU decode with DALI's video reader, if DALI imports and there is a GPU."""
    try:
        found = importlib.util.find_spec("nvidia.dali") is not None
    except ModuleNotFoundError:
        found = False
    if not found or not ctx.cuda:
        why = "not importable" if not found else "no CUDA device"
        rep.notes.append(f"decode dali: skipped ({why})")
        return
    try:
        from nvidia.dali import fn, pipeline_def

        @pipeline_def(batch_size=1, num_threads=2, device_id=ctx.device.index or 0)
        def pipe():
            return fn.readers.video(device="gpu", filenames=[str(path)],
                                    sequence_length=DALI_SEQUENCE, random_shuffle=False)

        reader = pipe()
        reader.build()
        steps = max(1, frames // DALI_SEQUENCE)
        sec = ctx.time(lambda: [reader.run() for _ in range(steps)], warmup=1, repeats=3)
    except Exception as err:  # DALI/driver mismatches are common; report, do not fail
        rep.notes.append(f"decode dali: failed ({type(err).__name__}: {err})"[:300])
        return
    rep.results.append({"name": "decode dali gpu", "value": round(steps * DALI_SEQUENCE / sec, 2),
                        "unit": "frames/s", "params": {"sequence_length": DALI_SEQUENCE}})


def bench_decode(ctx: Context) -> Report:
    """Frames per second decoded from a clip this benchmark encodes itself."""
    rep = Report()
    frames, size = (32, 224) if ctx.quick else (128, 256)
    cpu = dataclasses.replace(ctx, device=torch.device("cpu"))  # CPU work: wall clock, not events
    with tempfile.TemporaryDirectory(prefix="megavid-decode-") as tmp:
        path = Path(tmp) / "clip.mp4"
        codec = encode_clip(path, frames, size)
        params = {"frames": frames, "size": size, "codec": codec,
                  "file_kb": path.stat().st_size // 1024}
        for label, rgb in (("decode", False), ("decode+rgb", True)):
            count = _decode_pyav(path, rgb)
            sec = cpu.time(lambda: _decode_pyav(path, rgb), warmup=1, repeats=3)
            rep.results.append({"name": f"decode pyav {label}", "value": round(count / sec, 2),
                                "unit": "frames/s", "params": params})
        _bench_dali(ctx, rep, path, frames)
    return rep
