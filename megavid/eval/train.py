"""Readout training on cached features: AdamW, data parallel over torchrun ranks.

The loop reads like ``megavid.pretrain``'s: a global batch of clip indices per
step (a pure function of seed and step), DP rank ``r`` takes the ``r``-th
contiguous slice, DDP averages the gradients. Every task loss is a mean of
per-clip losses, so W ranks on slices of B/W clips compute exactly the step
one process computes on B clips (``tests/eval/test_readout.py`` checks it).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


@dataclass
class ReadoutConfig:
    steps: int = 500  # optimizer steps
    batch_size: int = 16  # global batch, in clips (split over data-parallel ranks)
    lr: float = 1e-3  # peak AdamW learning rate (linear warmup, cosine decay to 0)
    weight_decay: float = 1e-4
    warmup: int = 25  # warmup steps
    width: int = 256  # readout width (the official readouts use 1024)
    heads: int = 8  # readout attention heads (official: 16)
    seed: int = 0
    log_interval: int = 25


def dp_info() -> tuple[int, int]:
    """(rank, world size) of the data-parallel group: the whole world here."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def batch_indices(num_items: int, batch_size: int, step: int, seed: int) -> np.ndarray:
    """Clip indices of global batch ``step``: consecutive slices of seeded permutations."""
    start = step * batch_size
    epochs = range(start // num_items, (start + batch_size - 1) // num_items + 1)
    stream = np.concatenate([np.random.default_rng((seed, e)).permutation(num_items)
                             for e in epochs])
    offset = start - epochs[0] * num_items
    return stream[offset:offset + batch_size]


def take(tensors: dict, idx) -> dict:
    return {k: v[idx] for k, v in tensors.items()}


def lr_at(step: int, cfg: ReadoutConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def wrap_data_parallel(head: torch.nn.Module) -> torch.nn.Module:
    """DDP over the world when there is more than one rank (identical start: rank 0's)."""
    _, world = dp_info()
    if world == 1:
        return head

    return DistributedDataParallel(head)


def train_readout(task, head: torch.nn.Module, features: torch.Tensor, targets: dict,
                  cfg: ReadoutConfig, *, device="cpu", log=print) -> list[dict]:
    """Train ``head`` in place on (features, targets); returns one record per step."""
    rank, world = dp_info()
    if cfg.batch_size % world:
        raise ValueError(f"--batch-size {cfg.batch_size} must be divisible by the {world} "
                         f"data-parallel ranks; pick a multiple of {world}")
    model = wrap_data_parallel(head.to(device))
    decay = [p for n, p in head.named_parameters() if p.ndim >= 2 and "posenc" not in n]
    other = [p for n, p in head.named_parameters() if not (p.ndim >= 2 and "posenc" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": other, "weight_decay": 0.0}], lr=cfg.lr)
    local = cfg.batch_size // world
    history, start = [], time.perf_counter()
    for step in range(cfg.steps):
        # global batch -> this rank's contiguous slice
        idx = batch_indices(len(features), cfg.batch_size, step, cfg.seed)
        idx = idx[rank * local:(rank + 1) * local]
        batch = {k: v.to(device) for k, v in take(targets, idx).items()}
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        # forward, backward (DDP averages gradients), update
        loss = task.loss(task.forward(model, features[idx].to(device), batch), batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        record = {"step": step + 1, "loss": _global_mean(loss.detach()), "lr": lr_at(step, cfg)}
        history.append(record)
        if rank == 0 and ((step + 1) % cfg.log_interval == 0 or step + 1 == cfg.steps):
            log(_progress_line(record, cfg, time.perf_counter() - start))
    return history


def _global_mean(loss: torch.Tensor) -> float:
    _, world = dp_info()
    if world > 1:
        loss = loss.clone()
        dist.all_reduce(loss)
        loss /= world
    return float(loss)


def _progress_line(record: dict, cfg: ReadoutConfig, elapsed: float) -> str:
    step = record["step"]
    eta = elapsed / step * (cfg.steps - step)
    width = len(str(cfg.steps))
    return (f"readout step {step:>{width}}/{cfg.steps} | loss {record['loss']:.4f} | "
            f"lr {record['lr']:.2e} | {step * cfg.batch_size / elapsed:.0f} clips/s | "
            f"ETA {int(eta) // 60}:{int(eta) % 60:02d}")


@torch.no_grad()
def predict(task, head: torch.nn.Module, features: torch.Tensor, targets: dict, *,
            batch_size: int = 16, device="cpu") -> dict:
    """The task's predictions for every clip (numpy, clips' units), in clip order."""
    head.eval()
    parts = []
    for start in range(0, len(features), batch_size):
        idx = slice(start, start + batch_size)
        batch = {k: v.to(device) for k, v in take(targets, idx).items()}
        out = task.forward(head, features[idx].to(device), batch)
        out = {k: v.cpu() for k, v in out.items()} if isinstance(out, dict) else out.cpu()
        parts.append(task.predictions(out, take(targets, idx)))
    head.train()
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
