"""One clip read for inference: a video file or a .npy of frames, centre-cropped and resized.

What ``python -m megavid.features`` and the reconstruction pictures feed an
encoder; training clips go through the loader (``megavid.data.loader``) instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from megavid.data.decode import PyAVDecoder
from megavid.data.transforms import CropPlan, crop_resize


def read_clip(path: Path, *, num_frames: int, size: int, start: int = 0,
              stride: int = 1) -> torch.Tensor:
    """(1, num_frames, size, size, 3) float32 in [0, 1] from a video file or a .npy of frames."""
    indices = start + stride * np.arange(num_frames)
    if path.suffix == ".npy":
        frames = np.load(path, allow_pickle=False)
        available = len(frames)
    else:
        decoder = PyAVDecoder()
        available = decoder.probe(path).num_frames
        frames = None
    if indices[-1] >= available:
        raise ValueError(f"{path}: {available} frames; --start {start} --stride {stride} needs "
                         f"{indices[-1] + 1} for a {num_frames}-frame clip")
    frames = frames[indices] if frames is not None else decoder.decode(path, indices.tolist())
    if frames.dtype != np.uint8:  # float frames in [0, 1]
        frames = (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    height, width = frames.shape[1:3]
    side = min(height, width)
    crop = CropPlan((height - side) // 2, (width - side) // 2, side, side, flip=False)
    return crop_resize(frames, crop, size, "unit").unsqueeze(0)  # (1, T, size, size, 3)
