"""The video dataset: a file list, and global position -> augmented clip.

Items are addressed by global stream position (see ``sampling.py``), not by
file, so a worker can produce any position without knowing the layout. A file
that cannot be used is replaced by the next file in dataset order, with fresh
but still position-seeded randomness, and the reason travels back with the
sample so the loader's counters (in the main process) see skips made in workers.
Each read of a file runs under ``clock`` (``deadline.py``) when the loader set one,
so a decode that never returns can be found, and its file marked ``skipped_timeout``.

Odd files that can be used are, by these policies (counted per sample):
variable frame rate -> sampled on a constant-rate timestamp grid (``vfr_resampled``);
a display rotation -> frames turned upright before cropping (``rotated_upright``);
an odd width or height, or any size and aspect -> the random resized crop and resize
to the model's resolution (``odd_size_resized`` for odd sides); frames whose short
side is under ``MIN_SIDE_FRACTION`` of the model's resolution -> ``skipped_too_small``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from megavid.data.deadline import BATCH, DecodeClock
from megavid.data.decode import DecodeError, VideoDecoder, VideoInfo
from megavid.data.media import Media
from megavid.data.sampling import EpochPermutation
from megavid.data.sources import Clip, label_ids
from megavid.data.transforms import (
    CropPlan,
    FramePlan,
    crop_resize,
    plan_centre_crop,
    plan_crop,
    plan_frames,
    sample_rng,
)

# Upsampling more than 4x invents the pixels an MAE is asked to reconstruct.
MIN_SIDE_FRACTION = 0.25  # of the model's image size: shorter frames are skipped_too_small


@dataclass(frozen=True)
class SamplePlan:
    """Everything random about one sample: which file, frames and crop."""

    file_id: int
    path: Media
    frames: FramePlan  # on the sampling timeline (constant rate)
    crop: CropPlan  # in upright (displayed) coordinates
    file_frames: np.ndarray  # (T,) frames of the file to decode (differs from frames if VFR)
    rotation: int = 0  # degrees counter-clockwise that turn decoded frames upright
    notes: tuple[str, ...] = ()  # policies applied to this file, for the loader's counters


class VideoClipDataset(torch.utils.data.Dataset):
    """Map-style dataset over global positions: ``ds[p]`` -> {"video", "index", "events"}.

    ``augment=False`` (validation): the centred frame window and the centred square
    crop, unflipped; which file a position reads still follows the seeded order.
    """

    def __init__(self, files: list[Clip | Path], *, decoder: VideoDecoder, num_frames: int,
                 image_size: int, frame_stride: int, value_range: str, seed: int,
                 augment: bool = True):
        if not files:
            raise ValueError("VideoClipDataset needs at least one file")
        self.clips = [f if isinstance(f, Clip) else Clip(Path(f)) for f in files]
        self.files = [c.media for c in self.clips]
        self.decoder, self.seed = decoder, seed
        self.num_frames, self.image_size = num_frames, image_size
        self.frame_stride, self.value_range = frame_stride, value_range
        self.augment = augment
        self.order = EpochPermutation(len(self.files), seed)
        self.labels, self.label_names = label_ids(self.clips)  # (N,) int64, -1 = no label
        self._bad: dict[int, str] = {}  # file id -> skip reason, per process
        self.clock: DecodeClock | None = None  # set by the loader for a deadline on decodes
        # first positions of micro-batches whose batch decode overran the deadline: decoded
        # one sample at a time, so the file that hangs can be named
        self.unbatched: set[int] = set()

    def __len__(self) -> int:
        return len(self.files)

    def file_for(self, position: int, attempt: int = 0) -> int:
        """The file ``position`` reads at its ``attempt``-th try (a skip moves to the next)."""
        return (self.order(position) + attempt) % len(self.files)

    def mark_timed_out(self, file_id: int) -> None:
        """Skip this file from now on (``skipped_timeout``): its decode ran past the deadline.
        Called in the rank; workers started afterwards inherit it."""
        self._bad[file_id] = "skipped_timeout"

    def plan(self, position: int, attempt: int = 0) -> SamplePlan:
        """The random choices for ``position`` using its ``attempt``-th file; raises SkipFile."""
        file_id = self.file_for(position, attempt)
        path = self.files[file_id]
        if file_id in self._bad:
            raise SkipFile(self._bad[file_id], path)
        rng = sample_rng(self.seed, position, attempt)
        try:
            info = self.decoder.probe(path)
        except DecodeError as err:
            raise self._skip(file_id, err.reason) from None
        height, width = info.upright_size
        if min(height, width) < MIN_SIDE_FRACTION * self.image_size:
            raise self._skip(file_id, "skipped_too_small")
        first, stop = clip_window(self.clips[file_id], info)
        frames = plan_frames(rng if self.augment else None, stop - first, self.num_frames,
                             self.frame_stride)
        if frames is None:
            raise self._skip(file_id, "skipped_too_short")
        if first:
            frames = replace(frames, indices=frames.indices + first)
        file_frames = frames.indices if info.timeline is None else info.timeline[frames.indices]
        notes = tuple(note for note, applies in (
            ("vfr_resampled", info.timeline is not None), ("rotated_upright", info.rotation != 0),
            ("odd_size_resized", height % 2 == 1 or width % 2 == 1)) if applies)
        crop = plan_crop(rng, height, width) if self.augment else plan_centre_crop(height, width)
        return SamplePlan(file_id, path, frames, crop, file_frames, info.rotation, notes)

    def __getitem__(self, position: int) -> dict:
        """Sample at global ``position``: video (T, S, S, 3) float32, its index, label
        (-1 if none) and events."""
        return self._sample(position)

    def __getitems__(self, positions: list[int]) -> list[dict]:
        """A micro-batch (the DataLoader calls this with a batch sampler). A decoder with
        ``decode_many`` (DALI) decodes the batch's first-choice files together, in parallel
        on its threads; a sample whose file fails goes the one-by-one way, with the same
        skips and replacements as ``__getitem__``."""
        decode_many = getattr(self.decoder, "decode_many", None)
        if decode_many is None or len(positions) < 2 or positions[0] in self.unbatched:
            return [self._sample(p) for p in positions]
        plans = {}
        for position in positions:
            try:
                with self._timing(position, self.file_for(position)):
                    plans[position] = self.plan(position)
            except SkipFile:
                pass  # _sample meets the same skip and moves on
        with self._timing(positions[0], BATCH):
            decoded = decode_many([(plan.path, plan.file_frames) for plan in plans.values()])
        first = {position: (plan, pixels) for (position, plan), pixels
                 in zip(plans.items(), decoded) if isinstance(pixels, np.ndarray)}
        return [self._sample(p, first.get(p)) for p in positions]

    def _sample(self, position: int, first: tuple[SamplePlan, np.ndarray] | None = None) -> dict:
        """``first``: attempt 0's plan and its decoded frames, when already decoded."""
        events: list[tuple[str, str]] = []  # (counter name, file) for the loader's stats
        for attempt in range(len(self.files)):
            try:
                if attempt == 0 and first is not None:
                    plan, pixels = first
                else:
                    with self._timing(position, self.file_for(position, attempt)):
                        plan = self.plan(position, attempt)
                        try:
                            # (T, H, W, 3) uint8
                            pixels = self.decoder.decode(plan.path, plan.file_frames)
                        except DecodeError as err:
                            raise self._skip(plan.file_id, err.reason) from None
            except SkipFile as skip:
                events.append((skip.reason, str(skip.path)))
                continue
            if events:  # earlier files were skipped: this sample moved on
                events.append(("replaced", str(plan.path)))
            events += [(note, str(plan.path)) for note in plan.notes]
            if plan.frames.padded:  # fewer than T frames: stride 1, last frame repeated
                events.append(("padded_short", str(plan.path)))
            elif plan.frames.stride < self.frame_stride:
                events.append(("stride_lowered", str(plan.path)))
            pixels = np.rot90(pixels, k=plan.rotation // 90, axes=(1, 2))  # upright (T, H', W', 3)
            video = crop_resize(pixels, plan.crop, self.image_size, self.value_range)
            return {"video": video, "index": position, "label": int(self.labels[plan.file_id]),
                    "events": events}
        raise RuntimeError(
            f"none of the {len(self.files)} videos could be used (reasons: "
            f"{sorted(set(self._bad.values()))}); check data.path (--data)"
        )

    def _timing(self, position: int, file_id: int):
        return self.clock.timing(position, file_id) if self.clock else contextlib.nullcontext()

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
        "label": torch.tensor([s.get("label", -1) for s in samples], dtype=torch.int64),  # (b,)
        "events": [e for s in samples for e in s["events"]],
    }
