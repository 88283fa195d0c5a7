"""Video decoding behind a small interface, with a PyAV (FFmpeg, CPU) backend.

The dataset only needs two things from a decoder: how many frames a file has
and how big they are (``probe``), and a few frames by index (``decode``). A
GPU backend (DALI / NVDEC) can implement the same two methods and plug in
through ``build_decoder`` without the sampling code changing.

Frame ``i`` of a file is its ``i``-th frame in presentation order. PyAV's
backend learns each frame's timestamp by demuxing the file once (reading
packets, decoding nothing) and caches that per process, so a decode can seek
to the keyframe before the first wanted frame, decode forward and stop after
the last one, matching frames by exact timestamp.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import av
import numpy as np

from megavid.data.media import media_size, open_media


class DecodeError(RuntimeError):
    """The file cannot be read or does not hold the frames its index promised."""

    reason = "skipped_corrupt"  # the loader's counter for files failing this way


class EmptyFile(DecodeError):
    reason = "skipped_empty"


class NoVideoStream(DecodeError):
    reason = "skipped_no_video"


class UnsupportedCodec(DecodeError):
    """The chosen backend cannot decode this codec (e.g. DALI's CPU decoder and H.264)."""

    reason = "skipped_unsupported_codec"


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    height: int
    width: int
    fps: float = 0.0  # average frame rate: maps manifest start/end times to frame numbers
    codec: str = ""  # FFmpeg codec name (h264, hevc, vp9, ...): lets a backend refuse early


class VideoDecoder(Protocol):
    def probe(self, path: Path) -> VideoInfo: ...

    def decode(self, path: Path, frame_indices: Sequence[int]) -> np.ndarray:
        """(len(frame_indices), H, W, 3) uint8 RGB; indices may repeat, in any order."""
        ...


@dataclass(frozen=True)
class _FrameIndex:
    pts: np.ndarray  # (N,) int64 presentation timestamps, sorted: pts[i] is frame i
    key_pts: np.ndarray  # (K,) int64 timestamps of keyframes, sorted
    height: int
    width: int
    fps: float
    codec: str


# FFmpeg reports broken files through several exception types.
_READ_ERRORS = (av.error.FFmpegError, OSError, ValueError, IndexError, RuntimeError)


class PyAVDecoder:
    """CPU decoding with PyAV; keeps the frame index of recently seen files."""

    def __init__(self, cache_size: int = 4096):
        self._cache: OrderedDict[str, _FrameIndex] = OrderedDict()
        self._cache_size = cache_size
        self.frames_decoded = 0  # frames the codec produced: lets tests check we stop early

    def probe(self, path: Path) -> VideoInfo:
        index = self._index(path)
        return VideoInfo(len(index.pts), index.height, index.width, index.fps, index.codec)

    def decode(self, path: Path, frame_indices: Sequence[int]) -> np.ndarray:
        index = self._index(path)
        wanted = np.asarray(frame_indices, dtype=np.int64)  # (T,)
        if wanted.size == 0 or wanted.min() < 0 or wanted.max() >= len(index.pts):
            raise IndexError(f"{path}: frame indices {wanted.tolist()} outside "
                             f"[0, {len(index.pts)})")
        targets = np.unique(index.pts[wanted])  # (U,) sorted timestamps to keep
        # Seek to the last keyframe at or before the first wanted frame; if the
        # container's seek lands late (some formats seek by decode time), start over.
        key = index.key_pts[index.key_pts <= targets[0]]
        frames = self._decode_range(path, targets, int(key[-1]) if key.size else None)
        if len(frames) < len(targets):
            frames = self._decode_range(path, targets, None)
        if len(frames) < len(targets):
            raise DecodeError(f"{path}: decoded {len(frames)} of the {len(targets)} frames "
                              "its packet index lists")
        try:
            return np.stack([frames[int(t)] for t in index.pts[wanted]])  # (T, H, W, 3)
        except ValueError as err:  # frame size changes mid-stream
            raise DecodeError(f"{path}: {err}") from None

    def _decode_range(self, path: Path, targets: np.ndarray, seek_pts: int | None) -> dict:
        """{pts: (H, W, 3) uint8} for the ``targets`` met decoding from ``seek_pts`` on."""
        wanted, last = set(targets.tolist()), int(targets[-1])
        frames: dict[int, np.ndarray] = {}
        try:
            with av.open(open_media(path)) as container:
                stream = container.streams.video[0]
                if seek_pts is not None:
                    container.seek(seek_pts, stream=stream, backward=True, any_frame=False)
                for frame in container.decode(stream):
                    self.frames_decoded += 1
                    pts = frame.pts if frame.pts is not None else frame.dts
                    if pts in wanted:
                        frames[pts] = frame.to_ndarray(format="rgb24")
                    if len(frames) == len(wanted) or (pts is not None and pts > last):
                        break  # frames come out in presentation order: nothing later is needed
        except _READ_ERRORS as err:
            raise DecodeError(f"{path}: {type(err).__name__}: {err}") from None
        return frames

    def _index(self, path: Path) -> _FrameIndex:
        key = str(path)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        index = _read_index(path)
        self._cache[key] = index
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return index


def _read_index(path: Path) -> _FrameIndex:
    """Timestamps of every frame and keyframe, from the packets alone (no decoding)."""
    pts, key_pts = [], []
    if media_size(path) == 0:
        raise EmptyFile(f"{path}: empty file (0 bytes)")
    try:
        with av.open(open_media(path)) as container:
            if not container.streams.video:
                raise NoVideoStream(f"{path}: no video stream")
            stream = container.streams.video[0]
            height, width = stream.codec_context.height, stream.codec_context.width
            rate = stream.average_rate or stream.guessed_rate or 0
            codec, stream_frames = stream.codec_context.name, stream.frames
            for packet in container.demux(stream):
                stamp = packet.pts if packet.pts is not None else packet.dts
                if packet.size == 0 or stamp is None:  # flush packets carry no frame
                    continue
                pts.append(stamp)
                if packet.is_keyframe:
                    key_pts.append(stamp)
    except DecodeError:
        raise
    except _READ_ERRORS as err:
        raise DecodeError(f"{path}: {type(err).__name__}: {err}") from None
    if stream_frames and len(pts) < stream_frames:  # the header promised more than the file holds
        raise DecodeError(f"{path}: truncated: {len(pts)} of {stream_frames} frames present")
    if height <= 0 or width <= 0:
        raise DecodeError(f"{path}: video stream reports size {width}x{height}")
    return _FrameIndex(np.sort(np.asarray(pts, dtype=np.int64)),
                       np.sort(np.asarray(key_pts, dtype=np.int64)), height, width,
                       float(rate), codec)


DECODERS = ("auto", "dali", "pyav")  # the values of data.decoder


def build_decoder(name: str) -> VideoDecoder:
    """The decoder backend named by ``data.decoder`` (``auto``: see ``dali.pick_backend``)."""
    from megavid.data import dali  # DALI itself is imported lazily there

    if name not in DECODERS:
        raise ValueError(f"data.decoder: unknown backend {name!r}; choose one of {DECODERS}")
    if name == "pyav":
        return PyAVDecoder()
    if name == "dali":
        return dali.DALIDecoder(device=dali.require_dali())
    return dali.AutoDecoder()
