"""Mutated real video files, for fuzzing the decode path (``benchmarks/fuzz_decode.py``,
``tests/data/test_fuzz.py``).

Random bytes rarely get past a container's first check, so besides bit flips and cuts the
mutations know the two containers megavid meets most: MP4 boxes (a 32-bit size, a
four-letter type, children for ``moov``/``trak``/...) and Matroska/WebM EBML elements (an
ID and a size, both variable-length integers). Editing a size or a codec id keeps the rest
of the file valid, so the damage reaches the demuxers' and decoders' deeper paths.

``check_file`` is the one property every mutated file must have: the dataset gives a
finite sample from it, or skips it with one of the loader's reasons; anything else
(another exception, a dead worker, a hang) is a bug.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Callable, Sequence

import av
import numpy as np

from megavid.data.dataset import VideoClipDataset
from megavid.data.loader import SKIP_REASONS
from megavid.data.synthetic import (
    ramp_frames,
    write_rotated_video,
    write_vfr_video,
    write_video,
)

MP4_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts", b"dinf", b"udta",
                  b"mvex", b"moof", b"traf"}
MP4_CODECS = (b"avc1", b"avc3", b"hvc1", b"hev1", b"vp09", b"av01", b"mp4v", b"mjpa", b"zzzz")
EBML_MASTERS = {0x1A45DFA3, 0x18538067, 0x114D9B74, 0x1549A966, 0x1654AE6B, 0xAE, 0xE0,
                0x1F43B675, 0xA0, 0x1C53BB6B, 0xBB, 0xB7, 0x1254C367, 0x7373, 0x4DBB}
EBML_CODEC_ID = 0x86
WEBM_CODECS = (b"V_VP8", b"V_VP9", b"V_AV1", b"V_XYZ", b"V_MPEG4/ISO/AVC", b"V_MPEGH/ISO/HEVC",
               b"A_OPUS", b"")


def seed_clips(folder: Path) -> list[Path]:
    """Small real clips of each container, codec and odd kind the loader has a policy for."""
    folder.mkdir(parents=True, exist_ok=True)
    frames = ramp_frames(20, 80, 96)
    seeds = [write_video(folder / "h264.mp4", frames, codec="h264"),
             write_video(folder / "vp9.webm", frames, codec="vp9"),
             write_video(folder / "h264.mkv", frames, codec="h264"),
             write_video(folder / "odd.webm", ramp_frames(20, 79, 95), codec="vp9"),
             write_vfr_video(folder / "vfr.webm", frames, [20, 60]),
             write_rotated_video(folder / "rotated.mp4", frames, -90, codec="h264")]
    if "libx265" in av.codecs_available:
        seeds.append(write_video(folder / "hevc.mp4", frames, codec="hevc"))
    return seeds


# ---- container structure -------------------------------------------------------------

def mp4_boxes(data: bytes, start: int = 0, end: int | None = None,
              depth: int = 0) -> list[tuple[int, int, bytes]]:
    """(offset, size, type) of every MP4 box, children of container boxes included."""
    end, out, off = len(data) if end is None else end, [], start
    while off + 8 <= end and depth < 8:
        size, kind = struct.unpack(">I4s", data[off:off + 8])
        header = 8
        if size == 1 and off + 16 <= end:
            size, header = struct.unpack(">Q", data[off + 8:off + 16])[0], 16
        elif size == 0:
            size = end - off
        if size < header or off + size > end:
            break
        out.append((off, size, kind))
        if kind in MP4_CONTAINERS:
            out += mp4_boxes(data, off + header, off + size, depth + 1)
        elif kind == b"stsd":  # version/flags, entry count, then the sample entries
            out += mp4_boxes(data, off + header + 8, off + size, depth + 1)
        off += size
    return out


def _vint(data: bytes, off: int, keep_marker: bool) -> tuple[int, int]:
    """(value, length) of the EBML variable-length integer at ``off``."""
    first = data[off]
    length = 9 - first.bit_length() if first else 9
    if length > 8 or off + length > len(data):
        raise ValueError("bad vint")
    value = first if keep_marker else first & ((1 << (8 - length)) - 1)
    for b in data[off + 1:off + length]:
        value = (value << 8) | b
    return value, length


def ebml_elements(data: bytes, start: int = 0, end: int | None = None,
                  depth: int = 0) -> list[tuple[int, int, int, int, int]]:
    """(offset, id, size offset, size length, payload size) of every EBML element."""
    end, out, off = len(data) if end is None else end, [], start
    while off < end and depth < 8:
        try:
            ident, id_len = _vint(data, off, keep_marker=True)
            size, size_len = _vint(data, off + id_len, keep_marker=False)
        except (ValueError, IndexError):
            break
        payload = off + id_len + size_len
        unknown = size == (1 << (7 * size_len)) - 1  # "unknown size": to the parent's end
        stop = end if unknown else min(end, payload + size)
        out.append((off, ident, off + id_len, size_len, stop - payload))
        if ident in EBML_MASTERS:
            out += ebml_elements(data, payload, stop, depth + 1)
        if not unknown and payload + size > end:
            break
        off = stop
    return out


# ---- mutations: (data, rng) -> (mutated data, what was done) --------------------------

def bit_flips(data: bytes, rng) -> tuple[bytes, str]:
    out = bytearray(data)
    n = int(rng.integers(1, 33))
    for bit in rng.integers(0, 8 * len(out), n):
        out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out), f"bit_flips({n})"


def truncate(data: bytes, rng) -> tuple[bytes, str]:
    # half the cuts in the first 4 KiB, where the headers are
    at = int(rng.integers(0, min(len(data), 4096) if rng.random() < 0.5 else len(data)))
    return data[:at], f"truncate({at})"


def overwrite(data: bytes, rng) -> tuple[bytes, str]:
    start = int(rng.integers(0, len(data)))
    n = int(rng.integers(1, 257))
    fill = bytes(n) if rng.random() < 0.5 else rng.bytes(n)
    return data[:start] + fill + data[start + n:], f"overwrite({start}, {n})"


def splice(data: bytes, rng) -> tuple[bytes, str]:
    a, b = sorted(int(x) for x in rng.integers(0, len(data), 2))
    if rng.random() < 0.5:
        return data[:a] + data[b:], f"delete({a}:{b})"
    return data[:b] + data[a:b] + data[b:], f"duplicate({a}:{b})"


def _new_size(size: int, bits: int, rng) -> int:
    top = (1 << bits) - 1
    return int(rng.choice([0, 1, 7, 8, max(0, size - 1), size + 1, size * 2, top,
                           int(rng.integers(0, top + 1))])) & top


def box_size(data: bytes, rng) -> tuple[bytes, str]:
    boxes = mp4_boxes(data)
    if not boxes:
        return bit_flips(data, rng)
    off, size, kind = boxes[int(rng.integers(0, len(boxes)))]
    new = _new_size(size, 32, rng)
    return (data[:off] + struct.pack(">I", new) + data[off + 4:],
            f"box_size({kind.decode('latin-1')}@{off}: {size}->{new})")


def ebml_size(data: bytes, rng) -> tuple[bytes, str]:
    elements = ebml_elements(data)
    if not elements:
        return bit_flips(data, rng)
    off, ident, size_off, size_len, size = elements[int(rng.integers(0, len(elements)))]
    new = _new_size(size, 7 * size_len, rng)
    coded = ((1 << (7 * size_len)) | new).to_bytes(size_len, "big")  # the length marker, then new
    return (data[:size_off] + coded + data[size_off + size_len:],
            f"ebml_size({ident:#x}@{off}: {size}->{new})")


def codec_swap(data: bytes, rng) -> tuple[bytes, str]:
    """Another codec's id in the MP4 sample entry or the WebM track's CodecID (the
    element's size fixed up, its parents' left as they were: a fuzz either way)."""
    for off, _, kind in mp4_boxes(data):
        if kind in MP4_CODECS:
            new = MP4_CODECS[int(rng.integers(0, len(MP4_CODECS)))]
            return (data[:off + 4] + new + data[off + 8:],
                    f"codec_swap({kind.decode()}->{new.decode()})")
    for off, ident, size_off, size_len, size in ebml_elements(data):
        if ident == EBML_CODEC_ID:
            new = WEBM_CODECS[int(rng.integers(0, len(WEBM_CODECS)))]
            coded = bytes([0x80 | len(new)])  # a one-byte size: every id above fits
            return (data[:size_off] + coded + new + data[size_off + size_len + size:],
                    f"codec_swap({data[size_off + size_len:size_off + size_len + size]!r}"
                    f"->{new!r})")
    return bit_flips(data, rng)


MUTATIONS: dict[str, Callable] = {
    "bit_flips": bit_flips, "truncate": truncate, "overwrite": overwrite, "splice": splice,
    "box_size": box_size, "ebml_size": ebml_size, "codec_swap": codec_swap,
}


def mutate(data: bytes, rng, kinds: Sequence[str] | None = None) -> tuple[bytes, list[str]]:
    """``kinds`` (default: 1-3 drawn at random) applied in turn; what each did."""
    if kinds is None:
        kinds = list(rng.choice(sorted(MUTATIONS), size=int(rng.integers(1, 4))))
    done = []
    for kind in kinds:
        if not data:
            break
        data, what = MUTATIONS[kind](data, rng)
        done.append(what)
    return data, done


def mutated_files(seeds: Sequence[Path], folder: Path, n: int, seed: int) -> list[Path]:
    """``n`` mutated copies of ``seeds`` (round robin) under ``folder``, a pure function of
    ``seed``; names keep the seed's suffix, so the loader lists them."""
    folder.mkdir(parents=True, exist_ok=True)
    rng, originals, out = np.random.default_rng(seed), [p.read_bytes() for p in seeds], []
    for i in range(n):
        k = i % len(seeds)
        data, _ = mutate(originals[k], rng)
        path = folder / f"fuzz_{i:05d}_{seeds[k].stem}{seeds[k].suffix}"
        path.write_bytes(data)
        out.append(path)
    return out


def check_file(path: Path, good: Path, *, decoder, num_frames: int = 8, image_size: int = 64
               ) -> str:
    """The outcome of reading ``path`` the dataset's way, in this process: "usable" or the
    skip reason. Raises whatever else happens (a crash, for the fuzzer to report)."""
    dataset = VideoClipDataset([path, good], decoder=decoder, num_frames=num_frames,
                               image_size=image_size, frame_stride=2, value_range="unit",
                               seed=0)
    position = 0 if dataset.file_for(0) == 0 else 1  # the sample whose first choice is path
    sample = dataset[position]
    video = sample["video"]
    if video.shape != (num_frames, image_size, image_size, 3) or not bool(video.isfinite().all()):
        raise AssertionError(f"{path}: bad sample {tuple(video.shape)}")
    skips = [reason for reason, _ in sample["events"] if reason.startswith("skipped_")]
    if skips and skips[0] not in SKIP_REASONS:
        raise AssertionError(f"{path}: unknown skip reason {skips[0]}")
    return skips[0] if skips else "usable"
