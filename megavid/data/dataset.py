"""The video dataset: a file list, and global position -> augmented clip.

Items are addressed by global stream position (see ``sampling.py``), not by
file, so a worker can produce any position without knowing the layout. A file
that cannot be used is replaced by the next file in dataset order, with fresh
but still position-seeded randomness, and the reason travels back with the
sample so the loader's counters (in the main process) see skips made in workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from megavid.config import ConfigError
from megavid.data.decode import DecodeError, VideoDecoder
from megavid.data.sampling import EpochPermutation
from megavid.data.transforms import (CropPlan, FramePlan, crop_resize, plan_crop, plan_frames,
                                     sample_rng)

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")


def list_videos(folder: str | Path) -> list[Path]:
    """Every video under ``folder`` (recursive), sorted by relative path for determinism."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ConfigError(
            f"data.path (--data): {root} is not a directory; point --data at a folder of "
            "videos, or leave it unset to train on the demo clips"
        )
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS
                   and p.is_file())
    if not files:
        raise ConfigError(
            f"data.path (--data): no videos ({', '.join(VIDEO_EXTENSIONS)}) found under {root} "
            "(searched recursively); point --data at a folder of videos, or leave it unset "
            "to train on the demo clips"
        )
    return files


@dataclass(frozen=True)
class SamplePlan:
    """Everything random about one sample: which file, frames and crop."""

    file_id: int
    path: Path
    frames: FramePlan
    crop: CropPlan


class VideoClipDataset(torch.utils.data.Dataset):
    """Map-style dataset over global positions: ``ds[p]`` -> {"video", "index", "events"}."""

    def __init__(self, files: list[Path], *, decoder: VideoDecoder, num_frames: int,
                 image_size: int, frame_stride: int, value_range: str, seed: int):
        if not files:
            raise ValueError("VideoClipDataset needs at least one file")
        self.files, self.decoder, self.seed = list(files), decoder, seed
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
        except DecodeError:
            raise self._skip(file_id, "skipped_corrupt") from None
        frames = plan_frames(rng, info.num_frames, self.num_frames, self.frame_stride)
        if frames is None:
            raise self._skip(file_id, "skipped_too_short")
        return SamplePlan(file_id, path, frames, plan_crop(rng, info.height, info.width))

    def __getitem__(self, position: int) -> dict:
        """Sample at global ``position``: video (T, S, S, 3) float32, its index, and events."""
        events: list[tuple[str, str]] = []  # (counter name, file) for the loader's stats
        for attempt in range(len(self.files)):
            try:
                plan = self.plan(position, attempt)
                try:
                    pixels = self.decoder.decode(plan.path, plan.frames.indices)  # (T, H, W, 3)
                except DecodeError:
                    raise self._skip(plan.file_id, "skipped_corrupt") from None
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
