"""In-memory clips for step timing and parity tests (``data.mock: true``).

Same sample-stream contract as the video loader (global positions, DP slices,
micro-batches in order) without decoding, so a benchmark measures the model
and a parity test depends on nothing but the layout. Clip ``i`` is a smooth
pattern drifting over time, a pure function of (seed, i).
"""

from __future__ import annotations

import math

import torch

from megavid.config.presets import ModelArch
from megavid.data.sampling import StreamPosition, micro_batch_positions


def mock_clip(arch: ModelArch, seed: int, index: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """(T, H, W, C) float32 in [0, 1], written into ``out`` when given.

    In-place ops on one buffer: the mock loader runs inside timed training steps,
    so it should cost about what ``torch.rand`` of the clip costs.
    """
    gen = torch.Generator().manual_seed(seed * 7_919 + index)
    t = torch.arange(arch.num_frames).view(-1, 1, 1, 1).float()
    y = torch.linspace(0, 1, arch.image_size).view(1, -1, 1, 1)
    x = torch.linspace(0, 1, arch.image_size).view(1, 1, -1, 1)
    freq, phase, speed = (torch.rand(3, arch.channels, generator=gen) for _ in range(3))
    freq = 2 + 6 * freq
    shape = (arch.num_frames, arch.image_size, arch.image_size, arch.channels)
    clip = torch.empty(shape) if out is None else out
    torch.rand(shape, generator=gen, out=clip)  # noise, scaled below
    space = 2 * math.pi * (freq[0] * x + freq[1] * y) + 6 * phase[0]  # (1, H, W, C)
    time = 2 * math.pi * 0.05 * speed[0] * t  # (T, 1, 1, C)
    # 0.45 sin(space + time), by the angle-addition formula: no sin over the whole clip
    clip.mul_(0.05).addcmul_(space.sin(), 0.45 * time.cos()).addcmul_(space.cos(), 0.45 * time.sin())
    return clip.add_(0.5).clamp_(0, 1)


class MockLoader(StreamPosition):
    """Iterable of micro-batches {"video": (b, T, H, W, C), "index": (b,), "label": (b,) = -1}."""

    def __init__(self, arch: ModelArch, *, global_batch_size: int, micro_batch_size: int,
                 dp_rank: int, dp_size: int, seed: int, start_step: int = 0):
        super().__init__(global_batch_size=global_batch_size, micro_batch_size=micro_batch_size,
                         dp_rank=dp_rank, dp_size=dp_size, start_step=start_step)
        self.arch, self.seed = arch, seed
        self.stats = {"clips": 0}

    def sample(self, position: int) -> dict:
        """Sample ``position`` alone as a micro-batch of one (a picture's clip)."""
        return {"video": mock_clip(self.arch, self.seed, position).unsqueeze(0),
                "index": torch.tensor([position])}

    def __iter__(self):
        while True:
            index = torch.tensor(micro_batch_positions(self.consumed, **self.layout))  # (b,)
            a = self.arch
            video = torch.empty(len(index), a.num_frames, a.image_size, a.image_size, a.channels)
            for row, i in zip(video, index.tolist()):
                mock_clip(a, self.seed, i, out=row)
            self.stats["clips"] += len(index)
            self.consumed += 1
            label = torch.full_like(index, -1)  # mock clips have no class
            yield {"video": video, "index": index, "label": label}  # video: (b, T, H, W, C)
