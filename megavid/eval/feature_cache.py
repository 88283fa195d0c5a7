"""Frozen-encoder features for readouts, cached on disk.

The encoder never trains during an evaluation, so its features are a pure
function of (weights, readout depth, clips). They are computed once and stored
under ``<cache_dir>/<key>.pt``, where the key hashes the encoder's identity
(preset name, or the checkpoint files' names, sizes and modification times),
the depth and the clips' pixels: a rerun with another readout, more steps or
another task on the same data skips the encoder. Under torchrun every model
replica (one rank, or a TP x PP group) encodes its share of the clips and the
shares are all-gathered.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

FEATURE_VERSION = 1  # bump when what is stored changes


def encoder_fingerprint(source: str) -> dict:
    """What identifies an encoder's weights: its files (checkpoint) or its name (preset)."""
    path = Path(source).expanduser()
    if not path.exists():
        return {"preset": source}
    files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
    stats = [(str(f.relative_to(path)) if path.is_dir() else f.name, f.stat().st_size,
              f.stat().st_mtime_ns) for f in files]
    return {"path": str(path.resolve()), "files": stats}


def clips_fingerprint(clips) -> str:
    """Hash of the clips' names and pixels (what the encoder sees)."""
    digest = hashlib.sha1()
    for clip in clips:
        digest.update(clip.name.encode())
        digest.update(np.ascontiguousarray(clip.video, dtype=np.float32).tobytes())
    return digest.hexdigest()


def cache_path(cache_dir: str | Path, *, source: str, depth: float, clips) -> Path:
    key = json.dumps({"version": FEATURE_VERSION, "encoder": encoder_fingerprint(source),
                      "depth": depth, "clips": clips_fingerprint(clips)}, sort_keys=True)
    return Path(cache_dir).expanduser() / f"{hashlib.sha1(key.encode()).hexdigest()[:16]}.pt"


@torch.no_grad()
def encode(encoder, clips, *, depth: float, batch_size: int = 8,
           device: str | torch.device = "cpu") -> torch.Tensor:
    """(N, T', H', W', D) float32 features of ``clips`` at relative ``depth`` of the encoder."""
    out = []
    for start in range(0, len(clips), batch_size):
        video = torch.from_numpy(np.stack([c.video for c in clips[start:start + batch_size]]))
        feats = encoder.features(video.to(device), depth=depth, grid=True)  # (B, T', H', W', D)
        out.append(feats.float().cpu())
    return torch.cat(out) if out else torch.empty(0)


def _gather_shards(local: torch.Tensor, counts: list[int], group=None) -> torch.Tensor:
    """Every rank's (n_r, ...) shard -> the (sum n_r, ...) whole, in ``group`` rank order."""
    width = max(counts)
    padded = torch.zeros(width, *local.shape[1:], dtype=local.dtype)
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([p[:n] for p, n in zip(parts, counts)])


def _all_ranks_agree(flag: bool) -> bool:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    value = torch.tensor([int(flag)])
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def cached_features(load_encoder, source: str, clips, *, depth: float,
                    cache_dir: str | Path | None, batch_size: int = 8,
                    device: str | torch.device = "cpu", log=print,
                    replicas: tuple[int, int, object] | None = None
                    ) -> tuple[torch.Tensor, dict]:
    """Features of ``clips``, from the cache when every rank has them; else encoded and saved.

    ``load_encoder(source)`` is called only on a cache miss. ``replicas`` is (this
    rank's replica, number of replicas, their process group) when the encoder is
    split over several ranks (TP/PP): every rank of a replica encodes the same clips,
    the replicas' shares are gathered. Default: every rank is a replica. Returns the
    features, on every rank, and a record of what happened (for ``metrics.json``).
    """
    path = cache_path(cache_dir, source=source, depth=depth, clips=clips) if cache_dir else None
    if _all_ranks_agree(path is not None and path.is_file()):
        log(f"features: cache hit {path}")
        return torch.load(path, weights_only=True), {"cache": "hit", "path": str(path)}
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if replicas is None:
        replicas = (dist.get_rank(), dist.get_world_size(), None) if distributed else (0, 1, None)
    replica, num_replicas, group = replicas
    bounds = np.linspace(0, len(clips), num_replicas + 1).astype(int)  # contiguous shares
    encoder = load_encoder(source)
    local = encode(encoder, clips[bounds[replica]:bounds[replica + 1]], depth=depth,
                   batch_size=batch_size, device=device)
    del encoder
    feats = _gather_shards(local, np.diff(bounds).tolist(), group) if num_replicas > 1 else local
    if path is not None and (dist.get_rank() if distributed else 0) == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(feats, tmp)
        tmp.replace(path)  # atomic: a killed run never leaves half a cache file
        log(f"features: encoded {len(clips)} clips -> {path}")
    return feats, {"cache": "miss", "path": str(path) if path else None}
