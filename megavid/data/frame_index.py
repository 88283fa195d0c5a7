"""What a video file holds, read once from its packets: the ``FrameIndex``.

Demuxing a file (reading packets, decoding nothing but its first frame) gives
every frame's timestamp, the keyframes, and enough to classify a bad file
before any sample depends on it. The policies for odd files live here, so
every decoding backend (PyAV, DALI on CPU or GPU) follows them:

* **truncated**: the container promised more frames than its packets hold (MP4),
  or, where it states no frame count (WebM/MKV), a video track more than 5% + two
  frames longer than its frames cover -> ``skipped_truncated``. (A file cut
  before its index, e.g. an MP4 with its ``moov`` at the end, cannot be told
  from garbage and counts as ``skipped_corrupt``.)
* **unsupported codec**: no FFmpeg decoder for the stream -> ``skipped_unsupported_codec``.
* **rotated** (a display matrix, as phones write): frames are turned upright,
  as a player shows them; the angle is rounded to a quarter turn, mirror flags
  are ignored (the random horizontal flip makes them moot).
* **variable frame rate**: frames are sampled by timestamp on a constant-rate
  grid at the file's mean rate; grid tick ``k`` shows the last frame whose
  timestamp is at or before it, so a stride means the same time everywhere in
  the file (frames repeat across gaps, fast bursts are thinned).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction
from typing import Optional

import av
import numpy as np

from megavid.data.media import Media, media_size, open_media

# FFmpeg reports broken files through several exception types.
READ_ERRORS = (av.error.FFmpegError, OSError, ValueError, IndexError, RuntimeError)
# Frame durations within this much of each other are one constant rate (timestamps are
# rounded to the container's time base, e.g. 33/34 ms at 30 fps in WebM).
VFR_TOLERANCE = 0.1  # of the mean frame duration
VFR_MIN_TICKS = 2  # ...and never less than this many time-base ticks
# A video track that ends this much before its declared duration was cut short.
TRUNCATED_SLACK = 0.05  # of the declared duration, plus two frame durations
FIRST_FRAME_PACKETS = 32  # packets fed to the decoder for a first frame (B-frame delay)


class DecodeError(RuntimeError):
    """The file cannot be read or does not hold the frames its index promised."""

    reason = "skipped_corrupt"  # the loader's counter for files failing this way


class EmptyFile(DecodeError):
    reason = "skipped_empty"


class NoVideoStream(DecodeError):
    reason = "skipped_no_video"


class Truncated(DecodeError):
    reason = "skipped_truncated"


class UnsupportedCodec(DecodeError):
    """The chosen backend cannot decode this codec (e.g. DALI's CPU decoder and H.264)."""

    reason = "skipped_unsupported_codec"


class SizeChanged(DecodeError):
    """A VP8/VP9 keyframe (or intra-only frame) of another size than the stream's: PyAV
    resizes such frames, DALI's CPU decoder writes them past its buffers (a segfault the
    fuzzer found), so DALI hands such clips to PyAV."""


@dataclass(frozen=True)
class FrameIndex:
    pts: np.ndarray  # (N,) int64 presentation timestamps, sorted: pts[i] is frame i
    key_pts: np.ndarray  # (K,) int64 timestamps of keyframes, sorted
    height: int  # coded frame size: what decoders return
    width: int
    fps: float  # frames per second (the mean rate for variable-frame-rate files)
    codec: str
    rotation: int = 0  # degrees counter-clockwise that show the frames upright: 0/90/180/270
    timeline: Optional[np.ndarray] = None  # (N,) VFR only: frame shown at each grid tick


def read_index(path: Media) -> FrameIndex:
    """Timestamps of every frame and keyframe from the packets, rotation from the first frame."""
    if media_size(path) == 0:
        raise EmptyFile(f"{path}: empty file (0 bytes)")
    try:
        with av.open(open_media(path)) as container:
            if not container.streams.video:
                raise NoVideoStream(f"{path}: no video stream")
            stream = container.streams.video[0]
            ctx = stream.codec_context
            _require_decoder(path, ctx)
            # Everything read from the stream is read here: it is freed with the container.
            height, width, codec = ctx.height, ctx.width, ctx.name
            promised, declared = stream.frames, _declared_end(stream)
            tick = float(stream.time_base or Fraction(1, 1))  # seconds per timestamp unit
            rate = float(stream.average_rate or stream.guessed_rate or 0)
            pts, key_pts, first = _scan_packets(container, stream)
            rotation = quarter_turns(first.rotation) * 90 if first is not None else 0
    except DecodeError:
        raise
    except READ_ERRORS as err:
        raise DecodeError(f"{path}: {type(err).__name__}: {err}") from None
    if promised and len(pts) < promised:  # the header promised more than the file holds
        raise Truncated(f"{path}: truncated: {len(pts)} of {promised} frames present")
    if height <= 0 or width <= 0 or first is None:
        raise DecodeError(f"{path}: no decodable frame (size {width}x{height})")
    pts = np.sort(np.asarray(pts, dtype=np.int64))
    if not promised:  # no frame count (Matroska/WebM): compare with the track's duration
        _check_complete(path, pts, declared, tick)
    timeline = vfr_timeline(pts)
    if timeline is not None:
        rate = float((len(pts) - 1) / ((pts[-1] - pts[0]) * tick))
    return FrameIndex(pts, np.sort(np.asarray(key_pts, dtype=np.int64)), height, width, rate,
                      codec, rotation, timeline)


def _scan_packets(container, stream) -> tuple[list[int], list[int], Optional[av.VideoFrame]]:
    """Packet timestamps, keyframe timestamps, and the first frame that decodes (its side
    data carries the display matrix); a broken first packet is judged after the scan, so
    a truncated file is reported as truncated rather than corrupt."""
    pts, key_pts, first = [], [], None
    ctx = stream.codec_context
    for packet in container.demux(stream):
        stamp = packet.pts if packet.pts is not None else packet.dts
        if packet.size == 0 or stamp is None:  # flush packets carry no frame
            continue
        pts.append(stamp)
        if packet.is_keyframe:
            key_pts.append(stamp)
        if first is None and len(pts) <= FIRST_FRAME_PACKETS:
            first = _decode_first(ctx, packet)
    if first is None and pts:
        first = _decode_first(ctx, None)  # frames the decoder held back
    return pts, key_pts, first


def _decode_first(ctx, packet) -> Optional[av.VideoFrame]:
    try:
        frames = ctx.decode(packet)
    except av.error.FFmpegError:
        return None
    return frames[0] if frames else None


def _require_decoder(path: Media, ctx) -> None:
    """``UnsupportedCodec`` when this FFmpeg build cannot decode the stream."""
    name = ctx.name if ctx is not None else "unknown"
    try:
        if ctx is None:
            raise ValueError(name)
        av.Codec(name, "r")
    except ValueError:  # av.codec.codec.UnknownCodecError
        raise UnsupportedCodec(f"{path}: no FFmpeg decoder for the video codec {name!r}; "
                               "transcode it with `python -m megavid.data.prepare`") from None


def _declared_end(stream) -> Optional[float]:
    """The video track's declared duration in seconds, where the container states one."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    text = (stream.metadata or {}).get("DURATION")  # Matroska/WebM: per-track tag
    if text:
        try:
            h, m, s = text.split(":")
            return int(h) * 3600 + int(m) * 60 + float(s)
        except ValueError:
            return None
    return None


def _check_complete(path: Media, pts: np.ndarray, declared: Optional[float], tick: float) -> None:
    """``Truncated`` if the last frame ends well before the track's declared duration."""
    if declared is None or len(pts) < 2:
        return
    frame = (pts[-1] - pts[0]) * tick / (len(pts) - 1)
    shown = (pts[-1] - pts[0]) * tick + frame
    if declared - shown > TRUNCATED_SLACK * declared + 2 * frame:
        raise Truncated(f"{path}: truncated: frames cover {shown:.2f}s of the declared "
                        f"{declared:.2f}s")


def quarter_turns(degrees: float) -> int:
    """A display-matrix angle (counter-clockwise) as quarter turns in [0, 4)."""
    return int(round(float(degrees or 0) / 90.0)) % 4


def vfr_timeline(pts: np.ndarray) -> Optional[np.ndarray]:
    """None for a constant frame rate; else (N,) frame number shown at each tick of a
    constant-rate grid with the file's mean frame duration, starting at its first frame."""
    if len(pts) < 3:
        return None
    steps = np.diff(pts)
    mean = (pts[-1] - pts[0]) / (len(pts) - 1)
    if steps.max() - steps.min() <= max(VFR_MIN_TICKS, VFR_TOLERANCE * mean):
        return None
    ticks = pts[0] + mean * np.arange(len(pts))  # (N,)
    # last frame at or before each tick (half a tick of slack for the float grid)
    return (np.searchsorted(pts, ticks + 0.5, side="right") - 1).astype(np.int64)


def remux_segment(path: Media, index: FrameIndex, frames: np.ndarray) -> tuple[bytes, int]:
    """The packets from the keyframe before ``frames.min()`` until every wanted frame's packet
    is in, remuxed (no decoding) into an in-memory WebM/Matroska file, and the file frame
    number of the segment's first frame. Lets a decoder that does not seek (DALI's CPU
    decoder decodes from frame 0) read only what a clip needs."""
    wanted = set(index.pts[frames].tolist())
    keys = index.key_pts[index.key_pts <= min(wanted)]
    key = int(keys[-1]) if keys.size else int(index.pts[0])
    fmt = "webm" if index.codec in ("vp8", "vp9", "av1") else "matroska"
    try:
        for seek in (True, False):  # if the container's seek lands late, read from the start
            out, first = io.BytesIO(), None
            with av.open(open_media(path)) as src, av.open(out, "w", format=fmt) as dst:
                stream = src.streams.video[0]
                target = dst.add_stream_from_template(stream)
                if seek:
                    src.seek(key, stream=stream, backward=True, any_frame=False)
                missing = set(wanted)
                for packet in src.demux(stream):
                    stamp = packet.pts if packet.pts is not None else packet.dts
                    if packet.size == 0 or stamp is None or stamp < key:
                        continue
                    first = stamp if first is None else first
                    _require_size(path, index, bytes(packet))
                    packet.stream = target
                    dst.mux(packet)
                    missing.discard(stamp)
                    if not missing:
                        break
            if first == key and not missing:
                return out.getvalue(), int(np.searchsorted(index.pts, key))
    except DecodeError:
        raise
    except READ_ERRORS as err:
        raise DecodeError(f"{path}: remuxing frames {frames.min()}..{frames.max()}: "
                          f"{type(err).__name__}: {err}") from None
    raise DecodeError(f"{path}: the packets of frames {frames.min()}..{frames.max()} are not "
                      "all in the file")


def _require_size(path: Media, index: FrameIndex, data: bytes) -> None:
    for size in vpx_frame_sizes(index.codec, data):
        if size != (index.width, index.height):
            raise SizeChanged(f"{path}: a {size[0]}x{size[1]} frame in a "
                              f"{index.width}x{index.height} stream")


def vpx_frame_sizes(codec: str, data: bytes) -> list[tuple[int, int]]:
    """(width, height) that the keyframes and intra-only frames of a VP8/VP9 packet declare
    (a VP9 superframe holds several frames); [] for other codecs and inter frames."""
    if codec == "vp8":
        key = len(data) >= 10 and not data[0] & 1 and data[3:6] == b"\x9d\x01\x2a"
        return [(int.from_bytes(data[6:8], "little") & 0x3FFF,
                 int.from_bytes(data[8:10], "little") & 0x3FFF)] if key else []
    if codec != "vp9" or not data:
        return []
    frames, marker = [data], data[-1]
    if marker & 0xE0 == 0xC0:  # superframe index: sizes of the frames it packs
        count, width = (marker & 7) + 1, ((marker >> 3) & 3) + 1
        index = data[len(data) - 2 - count * width:]
        if len(index) == 2 + count * width and index[0] == marker:
            sizes = [int.from_bytes(index[1 + k * width:1 + (k + 1) * width], "little")
                     for k in range(count)]
            starts = np.cumsum([0] + sizes)
            frames = [data[a:b] for a, b in zip(starts[:-1], starts[1:])]
    return [size for frame in frames if (size := _vp9_size(frame)) is not None]


def _vp9_size(frame: bytes) -> Optional[tuple[int, int]]:
    """The frame size in a VP9 uncompressed header, if it states one (key / intra-only)."""
    bits = iter(int(b) for byte in frame[:16] for b in f"{byte:08b}")
    read = lambda n: int("".join(str(next(bits, 0)) for _ in range(n)) or "0", 2)  # noqa: E731
    if read(2) != 2:
        return None
    low, high = read(1), read(1)
    profile = (high << 1) | low
    if profile == 3:
        read(1)
    if read(1):  # show_existing_frame
        return None
    key, show, resilient = read(1) == 0, read(1), read(1)
    intra = False if key or show else bool(read(1))
    if not key:
        if not resilient:
            read(2)  # reset_frame_context
        if not intra:
            return None
    if read(24) != 0x498342:  # frame sync code
        return None
    if key or profile > 0:  # color_config
        if profile >= 2:
            read(1)
        if read(3) != 7:  # not RGB
            read(1)
            if profile in (1, 3):
                read(3)
        elif profile in (1, 3):
            read(1)
    if not key:
        read(8)  # refresh_frame_flags
    return read(16) + 1, read(16) + 1
