"""Helpers for the data tests: a loader over a folder, and taking micro-batches."""

from __future__ import annotations

from pathlib import Path

from megavid.config import DataConfig
from megavid.data import build_train_loader
from megavid.models.presets import get_preset

ARCH = get_preset("demo")  # 8 frames of 64x64
CLIP_FRAMES, CLIP_SIZE = 32, (80, 96)


def make_loader(folder: Path, *, dp_rank: int = 0, dp_size: int = 1, global_batch_size: int = 8,
                micro_batch_size: int = 2, num_workers: int = 0, seed: int = 7,
                start_step: int = 0, **data):
    cfg = DataConfig(path=str(folder), num_workers=num_workers, **data)
    return build_train_loader(cfg, ARCH, global_batch_size=global_batch_size,
                              micro_batch_size=micro_batch_size, dp_rank=dp_rank,
                              dp_size=dp_size, seed=seed, start_step=start_step)


def take(loader, n: int) -> list[dict]:
    """The first ``n`` micro-batches of a fresh iterator over ``loader``."""
    it = iter(loader)
    return [next(it) for _ in range(n)]
