"""Video decoding behind a small interface, with a PyAV (FFmpeg, CPU) backend.

The dataset only needs two things from a decoder: how many frames a file has
and how big they are (``probe``), and a few frames by index (``decode``). A
GPU backend (DALI / NVDEC) can implement the same two methods and plug in
through ``build_decoder`` without the sampling code changing.

Frame ``i`` of a file is its ``i``-th frame in presentation order. Each
file's ``FrameIndex`` (``frame_index.py``: every frame's timestamp, keyframes,
rotation, and the policies for bad or odd files) is read once per process by
demuxing it, so PyAV's backend can seek to the keyframe before the first wanted
frame, decode forward and stop after the last one, matching frames by exact
timestamp. Decoders return frames as coded; the dataset turns them upright.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Protocol, Sequence

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from megavid.data.frame_index import (
    READ_ERRORS,
    DecodeError,
    EmptyFile,
    FrameIndex,
    NoVideoStream,
    Truncated,
    UnsupportedCodec,
    read_index,
)
from megavid.data.media import open_media

__all__ = ["DecodeError", "EmptyFile", "NoVideoStream", "Truncated", "UnsupportedCodec",
           "VideoInfo", "VideoDecoder", "PyAVDecoder"]


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int  # frames on the sampling timeline (the file's frames; see timeline)
    height: int  # coded frame size: what ``decode`` returns, before any rotation
    width: int
    fps: float = 0.0  # frame rate (mean rate if variable): maps manifest times to frames
    codec: str = ""  # FFmpeg codec name (h264, hevc, vp9, ...): lets a backend refuse early
    rotation: int = 0  # degrees counter-clockwise that show frames upright (0/90/180/270)
    # Variable frame rate only: (num_frames,) file frame shown at each tick of a
    # constant-rate grid; samples are planned on the grid and decoded through this map.
    timeline: Optional[np.ndarray] = field(default=None, compare=False, repr=False)

    @property
    def upright_size(self) -> tuple[int, int]:
        """(height, width) as displayed, after the rotation."""
        return (self.width, self.height) if self.rotation % 180 else (self.height, self.width)

    @classmethod
    def from_index(cls, index: FrameIndex) -> "VideoInfo":
        return cls(len(index.pts), index.height, index.width, index.fps, index.codec,
                   index.rotation, index.timeline)


class VideoDecoder(Protocol):
    def probe(self, path: Path) -> VideoInfo: ...

    def decode(self, path: Path, frame_indices: Sequence[int]) -> np.ndarray:
        """(len(frame_indices), H, W, 3) uint8 RGB; indices may repeat, in any order."""
        ...


class PyAVDecoder:
    """CPU decoding with PyAV; keeps the frame index of recently seen files."""

    def __init__(self, cache_size: int = 4096):
        self._cache: OrderedDict[str, FrameIndex] = OrderedDict()
        self._cache_size = cache_size
        self.frames_decoded = 0  # frames the codec produced: lets tests check we stop early
        self._reformatter: VideoReformatter | None = None  # made in the process that decodes

    def __getstate__(self) -> dict:  # a DataLoader worker under spawn gets its own
        return {**self.__dict__, "_reformatter": None}

    def probe(self, path: Path) -> VideoInfo:
        return VideoInfo.from_index(self.frame_index(path))

    def decode(self, path: Path, frame_indices: Sequence[int]) -> np.ndarray:
        index = self.frame_index(path)
        wanted = np.asarray(frame_indices, dtype=np.int64)  # (T,)
        if wanted.size == 0 or wanted.min() < 0 or wanted.max() >= len(index.pts):
            raise IndexError(f"{path}: frame indices {wanted.tolist()} outside "
                             f"[0, {len(index.pts)})")
        targets = np.unique(index.pts[wanted])  # (U,) sorted timestamps to keep
        # Seek to the last keyframe at or before the first wanted frame; if the
        # container's seek lands late (some formats seek by decode time), start over.
        key = index.key_pts[index.key_pts <= targets[0]]
        size = dict(width=index.width, height=index.height)  # a mid-stream size change is resized
        frames = self._decode_range(path, targets, int(key[-1]) if key.size else None, size)
        if len(frames) < len(targets):
            frames = self._decode_range(path, targets, None, size)
        if len(frames) < len(targets):
            raise DecodeError(f"{path}: decoded {len(frames)} of the {len(targets)} frames "
                              "its packet index lists")
        return np.stack([frames[int(t)] for t in index.pts[wanted]])  # (T, H, W, 3)

    def _decode_range(self, path: Path, targets: np.ndarray, seek_pts: int | None,
                      size: dict) -> dict:
        """{pts: (H, W, 3) uint8} for the ``targets`` met decoding from ``seek_pts`` on.

        A packet that is not a target is decoded with ``skip_frame=NONREF``: FFmpeg then
        drops it if no other frame refers to it (H.264/HEVC non-reference B-frames, half
        the frames of an x264 stream), which cannot change any frame that is kept.
        """
        wanted, last = set(targets.tolist()), int(targets[-1])
        frames: dict[int, np.ndarray] = {}
        try:
            with av.open(open_media(path)) as container:
                stream = container.streams.video[0]
                if seek_pts is not None:
                    container.seek(seek_pts, stream=stream, backward=True, any_frame=False)
                for packet in container.demux(stream):  # ends with an empty packet: flush
                    stamp = packet.pts if packet.pts is not None else packet.dts
                    wanted_packet = packet.size == 0 or stamp in wanted
                    stream.codec_context.skip_frame = "DEFAULT" if wanted_packet else "NONREF"
                    if self._keep(packet.decode(), wanted, last, frames, size):
                        break  # frames come out in presentation order: nothing later is needed
        except READ_ERRORS as err:
            raise DecodeError(f"{path}: {type(err).__name__}: {err}") from None
        return frames

    def _keep(self, decoded, wanted: set, last: int, frames: dict, size: dict) -> bool:
        """Convert the wanted ones of ``decoded`` into ``frames``; True when done."""
        for frame in decoded:
            self.frames_decoded += 1
            pts = frame.pts if frame.pts is not None else frame.dts
            if pts in wanted:
                # one reformatter keeps its swscale context across frames; frame.to_ndarray
                # would build a new one per frame (~1.5 ms each, most of a small clip's cost)
                if self._reformatter is None:
                    self._reformatter = VideoReformatter()
                frames[pts] = self._reformatter.reformat(frame, format="rgb24",
                                                         **size).to_ndarray()
            if len(frames) == len(wanted) or (pts is not None and pts > last):
                return True
        return False

    def frame_index(self, path: Path) -> FrameIndex:
        """The file's ``FrameIndex``, read on first use and cached."""
        key = str(path)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        index = read_index(path)
        self._cache[key] = index
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return index
