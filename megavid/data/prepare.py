"""Transcode a folder of videos into training shards: ``python -m megavid.data.prepare``.

Raw videos are variable-frame-rate, long-GOP and large, which makes random
frame access slow and ``frame i`` mean different times in different files.
This tool re-encodes each video with PyAV to a constant frame rate, a short GOP
(cheap seeks), upright frames (a display rotation is applied) and a fixed short
side, and packs the results into uncompressed tar shards in the webdataset
layout (``shard-000000.tar`` holding ``<key>.mp4``/``.webm`` + ``<key>.json``)
plus ``index.json`` listing every shard, sample and skipped input with its
reason. Keys and shard contents depend only on the sorted input list, never on
``--workers``.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import tarfile
import tempfile
from dataclasses import asdict, dataclass
from fractions import Fraction
from multiprocessing import get_context
from pathlib import Path

import av
import numpy as np

from megavid.data.frame_index import quarter_turns
from megavid.data.sources import list_videos

_EPS = 1e-3  # seconds: timestamps are rounded to the container time base
ENCODERS = {"h264": ("libx264", ".mp4"), "hevc": ("libx265", ".mp4"),
            "vp9": ("libvpx-vp9", ".webm")}


@dataclass(frozen=True)
class Options:
    fps: float
    short_side: int
    gop: int
    codec: str
    min_frames: int


@dataclass
class Result:
    source: str  # path relative to SRC
    key: str
    file: str | None = None  # transcoded temp file, when it worked
    meta: dict | None = None
    reason: str | None = None  # why it was skipped: empty | unreadable | no_video | too_short
    error: str = ""


def output_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(H, W) with the short side at ``short_side``, aspect kept, both even (yuv420p)."""
    scale = short_side / min(height, width)
    even = lambda v: max(2, int(round(v * scale / 2)) * 2)  # noqa: E731
    return even(height), even(width)


def transcode(job: tuple[str, str, str, Options, str]) -> Result:
    """Re-encode one video into ``tmp_dir``; a Result with a skip reason if it cannot be used."""
    src_root, rel, key, opts, tmp_dir = job
    result = Result(rel, key)
    path = Path(src_root) / rel
    if path.stat().st_size == 0:
        result.reason = "empty"
        return result
    out = Path(tmp_dir) / (key + ENCODERS[opts.codec][1])
    try:
        with av.open(str(path)) as src:
            if not src.streams.video:
                result.reason = "no_video"
                return result
            meta = _encode(src, out, opts)
    except (av.error.FFmpegError, OSError, ValueError, RuntimeError) as err:
        result.reason, result.error = "unreadable", f"{type(err).__name__}: {err}"
        out.unlink(missing_ok=True)
        return result
    if meta["num_frames"] < opts.min_frames:
        result.reason = "too_short"
        result.error = (f"{meta['num_frames']} frames at {opts.fps} fps < --min-frames "
                        f"{opts.min_frames}")
        out.unlink(missing_ok=True)
        return result
    result.file, result.meta = str(out), {"key": key, "source": rel, **meta}
    return result


def _encode(src, out: Path, opts: Options) -> dict:
    """Resample to constant ``opts.fps`` (each output tick shows the latest source frame),
    turn upright (display rotation), resize and encode; returns the clip's metadata."""
    stream = src.streams.video[0]
    stream.thread_count = 1
    decoded = src.decode(stream)
    first = next(decoded, None)
    if first is None:
        raise ValueError("no decodable video frame")
    turns = quarter_turns(first.rotation)  # the shards hold upright frames, no display matrix
    coded = (stream.codec_context.height, stream.codec_context.width)
    height, width = output_size(*(coded[::-1] if turns % 2 else coded), opts.short_side)
    rate = Fraction(opts.fps).limit_denominator(1001)
    source_frames, written, prev, t0 = 0, 0, None, None
    with av.open(str(out), "w") as dst:
        enc = _add_encoder(dst, opts, rate, height, width)
        for frame in itertools.chain([first], decoded):
            t = float(frame.time if frame.time is not None else source_frames / float(rate))
            t0 = t if t0 is None else t0
            while prev is not None and written / rate < t - t0 - _EPS:
                written = _write(dst, enc, prev, written)
            prev = _upright(frame, turns).reformat(width=width, height=height, format="yuv420p")
            source_frames += 1
        src_rate = float(stream.average_rate or rate)
        end = (t - t0 + 1 / src_rate) if prev is not None else 0.0
        while prev is not None and written / rate < end - _EPS:  # hold the last frame its duration
            written = _write(dst, enc, prev, written)
        dst.mux(enc.encode(None))
    return {"num_frames": written, "fps": float(rate), "height": height, "width": width,
            "codec": opts.codec, "gop": opts.gop, "source_frames": source_frames,
            "source_fps": src_rate, "source_rotation": turns * 90}


def _upright(frame, turns: int):
    """The frame turned ``turns`` quarter turns counter-clockwise (as a player shows it)."""
    if not turns:
        return frame
    pixels = np.ascontiguousarray(np.rot90(frame.to_ndarray(format="rgb24"), turns))
    return av.VideoFrame.from_ndarray(pixels, format="rgb24")


def _add_encoder(dst, opts: Options, rate: Fraction, height: int, width: int):
    enc = dst.add_stream(ENCODERS[opts.codec][0], rate=rate)
    enc.height, enc.width, enc.pix_fmt = height, width, "yuv420p"
    enc.codec_context.gop_size = opts.gop
    enc.codec_context.thread_count = 1  # byte-identical output whatever the machine
    closed_gop = f"keyint={opts.gop}:min-keyint={opts.gop}:scenecut=0"
    if opts.codec == "h264":
        enc.options = {"preset": "veryfast", "crf": "20", "x264-params": closed_gop}
    elif opts.codec == "hevc":
        enc.options = {"preset": "veryfast", "crf": "24",
                       "x265-params": closed_gop + ":log-level=0"}
    else:
        enc.options = {"crf": "32", "b:v": "0", "deadline": "realtime", "cpu-used": "8"}
    return enc


def _write(dst, enc, frame, written: int) -> int:
    out = av.VideoFrame.from_ndarray(frame.to_ndarray(), format="yuv420p")
    out.pts = written
    dst.mux(enc.encode(out))
    return written + 1


class ShardWriter:
    """Writes samples into ``shard-NNNNNN.tar`` files of ``shard_size`` samples each."""

    def __init__(self, dst: Path, shard_size: int):
        self.dst, self.shard_size = dst, shard_size
        self.shards: list[dict] = []
        self._tar = None

    def add(self, result: Result) -> str:
        if self._tar is None or self.shards[-1]["samples"] == self.shard_size:
            self._open_next()
        suffix = Path(result.file).suffix
        self._add_bytes(result.key + suffix, Path(result.file).read_bytes())
        self._add_bytes(result.key + ".json", json.dumps(result.meta, sort_keys=True).encode())
        self.shards[-1]["samples"] += 1
        return self.shards[-1]["name"]

    def _open_next(self) -> None:
        self.close()
        name = f"shard-{len(self.shards):06d}.tar"
        self._tar = tarfile.open(self.dst / name, "w", format=tarfile.USTAR_FORMAT)
        self.shards.append({"name": name, "samples": 0})

    def _add_bytes(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)  # fixed owner, mode and time: reproducible shards
        info.size, info.mode, info.mtime = len(data), 0o644, 0
        self._tar.addfile(info, io.BytesIO(data))

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None


def prepare(src: Path, dst: Path, opts: Options, *, shard_size: int, workers: int = 1) -> dict:
    """Transcode every video under ``src`` into shards in ``dst``; returns the index."""
    if shard_size < 1:
        raise ValueError(f"--shard-size {shard_size} must be >= 1")
    files = list_videos(src)
    dst.mkdir(parents=True, exist_ok=True)
    for old in [*dst.glob("shard-*.tar"), dst / "index.json"]:
        old.unlink(missing_ok=True)
    writer, samples, skipped = ShardWriter(dst, shard_size), [], []
    with tempfile.TemporaryDirectory(dir=dst, prefix=".prepare-") as tmp:
        jobs = [(str(src), str(p.relative_to(src)), f"{i:08d}", opts, tmp)
                for i, p in enumerate(files)]
        with get_context("spawn").Pool(max(1, workers)) as pool:
            for result in pool.imap(transcode, jobs):  # imap keeps input order
                if result.reason:
                    skipped.append({"source": result.source, "reason": result.reason,
                                    "error": result.error})
                    continue
                samples.append({**result.meta, "shard": writer.add(result)})
                os.unlink(result.file)
        writer.close()
    index = {"version": 1, "options": asdict(opts), "shards": writer.shards,
             "samples": samples, "skipped": skipped}
    (dst / "index.json.tmp").write_text(json.dumps(index, indent=1))
    os.replace(dst / "index.json.tmp", dst / "index.json")
    return index


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m megavid.data.prepare", description=__doc__.split(
        "\n")[0])
    p.add_argument("src", type=Path, help="folder of videos (searched recursively)")
    p.add_argument("dst", type=Path, help="output folder for shard-*.tar and index.json")
    p.add_argument("--fps", type=float, default=24.0, help="constant output frame rate")
    p.add_argument("--short-side", type=int, default=256, help="resize so the short side is this")
    p.add_argument("--gop", type=int, default=8, help="keyframe every this many frames")
    p.add_argument("--codec", choices=sorted(ENCODERS), default="h264")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per tar shard")
    p.add_argument("--min-frames", type=int, default=16, help="skip clips shorter than this")
    p.add_argument("--workers", type=int, default=1, help="transcoding processes")
    a = p.parse_args(argv)
    opts = Options(a.fps, a.short_side, a.gop, a.codec, a.min_frames)
    index = prepare(a.src, a.dst, opts, shard_size=a.shard_size, workers=a.workers)
    print(f"wrote {len(index['samples'])} clips in {len(index['shards'])} shards to {a.dst}; "
          f"skipped {len(index['skipped'])}")
    for skip in index["skipped"]:
        print(f"  skipped {skip['source']}: {skip['reason']} {skip['error']}".rstrip())
    return index


if __name__ == "__main__":
    main()
