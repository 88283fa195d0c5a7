"""The training loader: this rank's micro-batches, decoded by worker processes.

``build_train_loader`` is the one entry point the trainer uses. The loader's
position is a count of micro-batches handed to the trainer (not of batches
the workers have prefetched), so ``state_dict`` taken after a step resumes
exactly at the next one. The same count lets it restart its workers from where it
is, bit for bit, after giving up on a decode past ``data.decode_timeout_s``.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from megavid.config import ConfigError, DataConfig
from megavid.config.presets import ModelArch
from megavid.data import dali
from megavid.data.dali import build_decoder
from megavid.data.dataset import VideoClipDataset, collate_samples
from megavid.data.deadline import (
    BATCH,
    POLL_S,
    DecodeClock,
    Overrun,
    Watchdog,
    is_poll_timeout,
    shut_down_in_background,
)
from megavid.data.demo_clips import ensure_demo_clips
from megavid.data.mock import MockLoader
from megavid.data.sampling import MicroBatchSampler, StreamPosition
from megavid.data.sources import Clip, list_clips
from megavid.parallel import cpu_compat

log = logging.getLogger(__name__)

DEMO_SEED = 0  # the demo clips are a fixed dataset: the same whatever --seed a run uses
# Validation samples are a fixed set: file order, masks (and mock clips) seeded by this, not
# by --seed, so a validation loss compares across seeds, layouts and resumes
VALID_SEED = 1_000_003
# skipped_timeout: a decode ran past data.decode_timeout_s (deadline.py)
SKIP_REASONS = ("skipped_corrupt", "skipped_empty", "skipped_no_video", "skipped_too_short",
                "skipped_too_small", "skipped_truncated", "skipped_unsupported_codec",
                "skipped_timeout")
# Policies that keep a file usable (see dataset.py); like stride_lowered and padded_short
# they count samples, so counting them needs no memory of which files were met.
POLICY_NOTES = ("vfr_resampled", "rotated_upright", "odd_size_resized")
# skipped_*: distinct files skipped for that reason (what is wrong with the data); the rest
# count samples: clips handed out, samples moved on to another file, policies applied.
FILE_COUNTERS = SKIP_REASONS
STAT_KEYS = ("clips", *SKIP_REASONS, "replaced", *POLICY_NOTES, "stride_lowered",
             "padded_short")


class VideoLoader(StreamPosition):
    """Endless, resumable iterator of {"video": (b, T, S, S, 3), "index": (b,), "label": (b,)}
    micro-batches (label -1: none).

    ``decode_timeout_s`` > 0 (needs workers): a decode running longer is given up, its
    file skipped as ``skipped_timeout`` and its worker killed (``deadline.py``); the
    workers restart from ``consumed``, so the stream is the one a file failing at once
    would give. Each restart costs the rank up to ``POLL_S`` plus a fork and one
    micro-batch's decode.
    """

    def __init__(self, dataset: VideoClipDataset, *, global_batch_size: int,
                 micro_batch_size: int, dp_rank: int, dp_size: int, num_workers: int,
                 seed: int, start_step: int = 0, decode_timeout_s: float = 0.0):
        super().__init__(global_batch_size=global_batch_size, micro_batch_size=micro_batch_size,
                         dp_rank=dp_rank, dp_size=dp_size, start_step=start_step)
        if decode_timeout_s and not num_workers:
            raise ValueError("a decode deadline needs worker processes: a hang in the rank "
                             "itself cannot be interrupted (num_workers=0: decode_timeout_s=0)")
        self.dataset, self.num_workers, self.seed = dataset, num_workers, seed
        self.decode_timeout_s = decode_timeout_s
        self.stats = dict.fromkeys(STAT_KEYS, 0)
        self.file_events: list[tuple[str, str]] = []  # (counter, file), each pair once, in order
        self._seen: set[tuple[str, str]] = set()
        self.restarts = 0  # worker restarts after a decode ran past the deadline

    def __iter__(self):
        while True:  # one DataLoader per pass; giving up on a decode ends the pass
            batches = iter(self._data_loader())
            watchdog = self._watchdog(batches)
            try:
                while (batch := self._next(batches, watchdog)) is not None:
                    self._count(batch.pop("events"))
                    self.stats["clips"] += len(batch["index"])
                    self.consumed += 1
                    yield batch
            finally:
                if watchdog is not None:
                    watchdog.stop()
            self._restart(batches, watchdog.overruns)

    def _data_loader(self) -> DataLoader:
        """Workers decoding this rank's micro-batches from ``consumed`` on."""
        sampler = MicroBatchSampler(start=self.consumed, **self.layout)
        workers = self.num_workers > 0
        if self.decode_timeout_s:  # a fresh clock: abandoned workers may still write the old
            self.dataset.clock = DecodeClock(self.num_workers)
        return DataLoader(
            self.dataset, batch_sampler=sampler, num_workers=self.num_workers,
            collate_fn=collate_samples, pin_memory=cpu_compat.pin_memory(),
            persistent_workers=workers, prefetch_factor=2 if workers else None,
            worker_init_fn=_init_worker, timeout=POLL_S if self.decode_timeout_s else 0,
            # A private generator: building the iterator must not draw from torch's global RNG.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def _watchdog(self, batches) -> Watchdog | None:
        if not self.decode_timeout_s:
            return None
        return Watchdog(batches, self.dataset.clock, self.decode_timeout_s, self._mark_overruns)

    def _next(self, batches, watchdog: Watchdog | None) -> dict | None:
        """The next micro-batch; None once the watchdog gave up on a decode and none is left."""
        if watchdog is None:
            return next(batches)
        while True:
            try:
                return next(batches)
            except Exception as err:  # no batch within POLL_S, or a worker was killed (which
                if watchdog.fired():  # breaks what the rank was receiving from it: any error)
                    return None
                if not is_poll_timeout(err):
                    raise

    def _mark_overruns(self, overruns: list[Overrun]) -> None:
        """(The watchdog's thread) skip the files that overran from now on; a batch decode
        that overran is redone one sample at a time, which names its file."""
        for late in overruns:
            if late.file_id == BATCH:
                self.dataset.unbatched.add(late.position)
            else:
                self.dataset.mark_timed_out(late.file_id)
            what = ("a batch decode" if late.file_id == BATCH else
                    str(self.dataset.files[late.file_id]))
            log.warning("data: sample %d (%s) ran %.1f s, past data.decode_timeout_s=%g; its "
                        "worker is killed and the workers restart", late.position, what,
                        late.seconds, self.decode_timeout_s)

    def _restart(self, batches, overruns: list[Overrun]) -> None:
        """After a pass given up: its surviving workers exit in the background."""
        shut_down_in_background(batches)
        self.restarts += 1
        log.info("data: workers restarted at micro-batch %d after %d decode(s) overran",
                 self.consumed, len(overruns))

    def sample(self, position: int) -> dict:
        """Sample ``position`` alone as a micro-batch of one (a picture's clip), decoded in
        this process: no deadline applies."""
        item = self.dataset[position]
        return {"video": item["video"].unsqueeze(0), "index": torch.tensor([position])}

    def _count(self, events: list[tuple[str, str]]) -> None:
        """Add workers' events to ``stats``: skips once per file (with a warning), the
        rest once per sample."""
        for reason, path in events:
            if reason not in FILE_COUNTERS:
                self.stats[reason] = self.stats.get(reason, 0) + 1
                continue
            if (reason, path) in self._seen:
                continue
            self._seen.add((reason, path))
            self.file_events.append((reason, path))
            self.stats[reason] = self.stats.get(reason, 0) + 1
            log.warning("data: %s %s; its samples are replaced by the next video", reason, path)


def _init_worker(_worker_id: int) -> None:
    # Decoding workers share the cores with the trainer: one intra-op thread each.
    torch.set_num_threads(1)


def demo_clip_shape(arch: ModelArch, frame_stride: int) -> dict:
    """Demo clips a bit larger than the model's input (so crops have room) and long
    enough for a few temporal offsets: 80x96 and 32 frames for the 8x64x64 demo."""
    even = lambda v: int(v) + int(v) % 2  # noqa: E731 (yuv420p needs even sizes)
    return dict(num_frames=max(32, 2 * arch.num_frames * frame_stride),
                size=(even(1.25 * arch.image_size), even(1.5 * arch.image_size)))


def split_clips(clips: list[Clip], fraction: float) -> tuple[list[Clip], list[Clip]]:
    """(train, validation): ``round(fraction * N)`` clips (at least one) held out, those
    whose names hash lowest, so the split depends on the files, not on their order, and
    adding files moves few clips between the splits. Both keep the listing's order."""
    def key(n_clip):
        n, clip = n_clip
        name = f"{Path(str(clip.media)).name}:{clip.start}:{clip.end}"
        return hashlib.sha1(name.encode()).hexdigest(), n

    n_valid = max(1, round(fraction * len(clips)))
    if n_valid >= len(clips):
        raise ConfigError(f"data.valid_fraction {fraction} holds out {n_valid} of "
                          f"{len(clips)} clips, leaving none to train on; lower it or give "
                          "--valid-data PATH")
    held = {n for n, _ in sorted(enumerate(clips), key=key)[:n_valid]}
    return ([c for n, c in enumerate(clips) if n not in held],
            [c for n, c in enumerate(clips) if n in held])


def _clips(cfg: DataConfig, arch: ModelArch, *, valid: bool) -> list[Clip]:
    """The training (or validation) clips of ``cfg``, the demo's when it names none."""
    cfg.check()  # the section's own rules: a loader can be built without load_config
    if valid and cfg.valid_path is not None:
        return list_clips(cfg.valid_path)
    if cfg.path is not None:
        clips = list_clips(cfg.path)
    else:
        clips = [Clip(p) for p in ensure_demo_clips(
            Path(cfg.cache_dir).expanduser(), cfg.demo_clips, seed=DEMO_SEED,
            **demo_clip_shape(arch, cfg.frame_stride))]
    if cfg.valid_fraction and cfg.valid_path is None:
        return split_clips(clips, cfg.valid_fraction)[1 if valid else 0]
    return clips


def _dataset(cfg: DataConfig, arch: ModelArch, clips: list[Clip], *, seed: int,
             augment: bool) -> VideoClipDataset:
    return VideoClipDataset(
        clips, decoder=build_decoder(cfg.decoder, cfg.dali_threads or
                                     dali.default_threads(cfg.num_workers)),
        num_frames=arch.num_frames, image_size=arch.image_size,
        frame_stride=cfg.frame_stride, value_range=cfg.value_range, seed=seed, augment=augment)


def build_train_loader(cfg: DataConfig, arch: ModelArch, *, global_batch_size: int,
                       micro_batch_size: int, dp_rank: int, dp_size: int, seed: int,
                       start_step: int = 0):
    """This data-parallel rank's training stream (without the held-out validation clips).

    TP and PP ranks of one replica pass the same ``dp_rank`` and get the same batches.
    """
    layout = dict(global_batch_size=global_batch_size, micro_batch_size=micro_batch_size,
                  dp_rank=dp_rank, dp_size=dp_size, seed=seed, start_step=start_step)
    if cfg.mock:
        return MockLoader(arch, **layout)
    dataset = _dataset(cfg, arch, _clips(cfg, arch, valid=False), seed=seed, augment=True)
    return VideoLoader(dataset, num_workers=cfg.num_workers,
                       decode_timeout_s=cfg.resolved_decode_timeout_s(), **layout)


def build_valid_loader(cfg: DataConfig, arch: ModelArch, *, global_batch_size: int,
                       micro_batch_size: int, dp_rank: int, dp_size: int,
                       num_workers: int | None = None):
    """This data-parallel rank's share of the validation stream, from position 0.

    Sample ``i`` of it is a pure function of ``i`` and the validation clips: the file
    (``VALID_SEED``'s order), the centred frames and crop. ``load_state_dict({"step": 0})``
    rewinds it, so every evaluation sees the same samples. Mock data validates on mock
    clips of ``VALID_SEED``. ``num_workers=0`` (a picture's few clips, decoded in this
    process) runs without ``data.decode_timeout_s``: nothing could interrupt a hang there.
    """
    layout = dict(global_batch_size=global_batch_size, micro_batch_size=micro_batch_size,
                  dp_rank=dp_rank, dp_size=dp_size, seed=VALID_SEED)
    if cfg.mock:
        return MockLoader(arch, **layout)
    dataset = _dataset(cfg, arch, _clips(cfg, arch, valid=True), seed=VALID_SEED, augment=False)
    workers = cfg.num_workers if num_workers is None else num_workers
    return VideoLoader(dataset, num_workers=workers,
                       decode_timeout_s=cfg.resolved_decode_timeout_s() if workers else 0.0,
                       **layout)
