"""The video dataset: a file list, and global position -> augmented clip.

Items are addressed by global stream position (see ``sampling.py``), not by
file, so a worker can produce any position without knowing the layout. A file
that cannot be used is replaced by the next file in dataset order, with fresh
but still position-seeded randomness, and the reason travels back with the
sample so the loader's counters (in the main process) see skips made in workers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from megavid.data.decode import DecodeError, VideoDecoder, VideoInfo
from megavid.data.media import Media
from megavid.data.sampling import EpochPermutation
from megavid.data.sources import Clip
from megavid.data.transforms import (CropPlan, FramePlan, crop_resize, plan_crop, plan_frames,
                                     sample_rng)

@dataclass(frozen=True)
class SamplePlan:
    """Everything random about one sample: which file, frames and crop."""

    file_id: int
    path: Media
    frames: FramePlan
    crop: CropPlan


class VideoClipDataset(torch.utils.data.Dataset):
    """Map-style dataset over global positions: ``ds[p]`` -> {"video", "index", "events"}."""

    def __init__(self, files: list[Clip | Path], *, decoder: VideoDecoder, num_frames: int,
                 image_size: int, frame_stride: int, value_range: str, seed: int):
        if not files:
            raise ValueError("VideoClipDataset needs at least one file")
        self.clips = [f if isinstance(f, Clip) else Clip(Path(f)) for f in files]
        self.files = [c.media for c in self.clips]
        self.decoder, self.seed = decoder, seed
        self.num_frames, self.image_size = num_frames, image_size
        self.frame_stride, self.value_range = frame_stride, value_range
        self.order = EpochPermutation(len(self.files), seed)
        self._bad: dict[int, str] = {}  # file id -> skip reason, per process

    def __len__(self) -> int:
        return len(self.files)

    def plan(self, position: int, attempt: int = 0) -> SamplePlan:
        """The random choices for ``position`` using its ``attempt``-th file; raises SkipFile."""
        file_id = (self.order(position) + attempt) % len(self.files)
        path = self.files[file_id]
        if file_id in self._bad:
            raise SkipFile(self._bad[file_id], path)
        rng = sample_rng(self.seed, position, attempt)
        try:
            info = self.decoder.probe(path)
        except DecodeError as err:
            raise self._skip(file_id, err.reason) from None
        first, stop = clip_window(self.clips[file_id], info)
        frames = plan_frames(rng, stop - first, self.num_frames, self.frame_stride)
        if frames is None:
            raise self._skip(file_id, "skipped_too_short")
        if first:
            frames = replace(frames, indices=frames.indices + first)
        return SamplePlan(file_id, path, frames, plan_crop(rng, info.height, info.width))

    def __getitem__(self, position: int) -> dict:
        """Sample at global ``position``: video (T, S, S, 3) float32, its index, and events."""
        events: list[tuple[str, str]] = []  # (counter name, file) for the loader's stats
        for attempt in range(len(self.files)):
            try:
                plan = self.plan(position, attempt)
                try:
                    pixels = self.decoder.decode(plan.path, plan.frames.indices)  # (T, H, W, 3)
                except DecodeError as err:
                    raise self._skip(plan.file_id, err.reason) from None
            except SkipFile as skip:
                events.append((skip.reason, str(skip.path)))
                continue
            if plan.frames.stride < self.frame_stride:
                events.append(("stride_lowered", str(plan.path)))
            if plan.frames.padded:
                events.append(("padded_short", str(plan.path)))
            video = crop_resize(pixels, plan.crop, self.image_size, self.value_range)
            return {"video": video, "index": position, "events": events}
        raise RuntimeError(
            f"none of the {len(self.files)} videos could be used (reasons: "
            f"{sorted(set(self._bad.values()))}); check data.path (--data)"
        )

    def _skip(self, file_id: int, reason: str) -> "SkipFile":
        """Remember a bad file (decoding it again would fail again) and say why."""
        self._bad[file_id] = reason
        return SkipFile(reason, self.files[file_id])


def clip_window(clip: Clip, info: VideoInfo) -> tuple[int, int]:
    """Frame range [first, stop) inside the clip's start/end times (the whole file if unset)."""
    fps = info.fps or 1.0
    first = 0 if clip.start is None else min(info.num_frames, round(clip.start * fps))
    stop = info.num_frames if clip.end is None else min(info.num_frames, round(clip.end * fps))
    return first, max(first, stop)


class SkipFile(Exception):
    """This file cannot give a sample; ``reason`` is the loader's counter name."""

    def __init__(self, reason: str, path: Path):
        super().__init__(f"{reason}: {path}")
        self.reason, self.path = reason, path


def collate_samples(samples: list[dict]) -> dict:
    """Stack samples into a micro-batch; events are kept as a flat list."""
    return {
        "video": torch.stack([s["video"] for s in samples]),  # (b, T, S, S, 3)
        "index": torch.tensor([s["index"] for s in samples], dtype=torch.int64),  # (b,)
        "events": [e for s in samples for e in s["events"]],
    }
