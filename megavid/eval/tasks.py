"""The four readout tasks: targets from ``Clip4D``s, their head, loss and metrics.

A task turns clips into a dict of stacked tensors (leading axis: clip), so the
training loop can slice batches without knowing the task. Every loss is a mean
over clips of a per-clip loss: a data-parallel step over equal slices of a
global batch then averages to exactly the single-process loss.

Losses (why each):

- depth: L1 on log-depth over valid pixels. Log makes errors relative, which is
  what AbsRel measures, and L1 ignores the few pixels at depth edges.
- tracking: Huber on positions of visible points (delta 4 px on a 256-px frame,
  TAPIR's), divided by delta so it reads in units of 4 px, plus binary
  cross-entropy on visibility (TAPIR / 4DS).
- pose: squared Frobenius distance between rotations plus L1 on translations
  in units of the training set's translation spread.
- boxes: L1 on normalised box corners over frames where the object is visible.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from megavid.eval import metrics as M
from megavid.eval.readout import BoxHead, DepthHead, PoseHead, TrackingHead

_HUBER_DELTA_PX, _HUBER_FRAME_PX = 4.0, 256.0


def _per_clip_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean over clips of the weighted mean over the other axes (empty clips count 0)."""
    dims = tuple(range(1, values.ndim))
    w = weights.to(values.dtype)
    return ((values * w).sum(dims) / w.sum(dims).clamp(min=1)).mean()


class Task:
    """What a readout task needs from clips, and what it does with the head's outputs."""

    name = ""
    labels: tuple[str, ...] = ()  # Clip4D fields the task cannot run without
    default_queries = 0  # queries per clip for query-driven tasks (points, boxes)

    def __init__(self, *, num_queries: int | None = None):
        self.num_queries = num_queries or self.default_queries

    def check(self, clips, flag: str) -> None:
        """Refuse data without this task's labels, naming the flag."""
        missing = [f for f in self.labels if any(getattr(c, f) is None for c in clips)]
        if missing:
            raise ValueError(
                f"{flag}: clips lack {', '.join(missing)} needed by --task {self.name}; pass a "
                "dataset with those labels or --data synthetic (all four tasks)")

    def targets(self, clips, *, train: bool, seed: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def build_head(self, *, feature_dim: int, num_frames: int, image_size: int, width: int,
                   heads: int, train_targets: dict) -> torch.nn.Module:
        raise NotImplementedError

    def forward(self, head, features: torch.Tensor, batch: dict):
        raise NotImplementedError

    def loss(self, out, batch: dict) -> torch.Tensor:
        raise NotImplementedError

    def predictions(self, out, batch: dict) -> dict[str, np.ndarray]:
        """Outputs in the clips' units (pixels, metres), for metrics and pictures."""
        raise NotImplementedError

    def metrics(self, pred: dict, batch: dict) -> dict[str, float]:
        raise NotImplementedError


def mean_log_depth(depth: torch.Tensor) -> torch.Tensor:
    """(N, T, H, W) depths -> (T, H, W) mean log-depth over valid pixels (0 where none)."""
    valid = depth > 0
    logs = torch.where(valid, depth.clamp(min=1e-6).log(), torch.zeros_like(depth))
    return logs.sum(0) / valid.sum(0).clamp(min=1)


class DepthTask(Task):
    name, labels = "depth", ("depth",)

    def targets(self, clips, *, train, seed):
        depth = torch.from_numpy(np.stack([c.depth for c in clips])).float()  # (N, T, H, W)
        return {"depth": depth}

    def build_head(self, *, feature_dim, num_frames, image_size, width, heads, train_targets):
        offset = mean_log_depth(train_targets["depth"])  # the head predicts deviations from it
        patch = (min(2, num_frames), min(8, image_size), min(8, image_size))
        return DepthHead(feature_dim=feature_dim, num_frames=num_frames, image_size=image_size,
                         patch=patch, width=width, num_heads=heads, log_depth_offset=offset)

    def forward(self, head, features, batch):
        return head(features)  # (B, T, H, W) log-depth

    def loss(self, out, batch):
        gt = batch["depth"]
        valid = gt > 0
        err = (out - gt.clamp(min=1e-6).log()).abs()
        return _per_clip_mean(torch.where(valid, err, torch.zeros_like(err)), valid)

    def predictions(self, out, batch):
        return {"depth": out.exp().numpy()}

    def metrics(self, pred, batch):
        """``abs_rel``/``delta1`` after per-frame median scaling, which scores each frame's
        structure only, and ``abs_rel_unscaled``: AbsRel of the metric depth the readout
        regresses, each frame's depth scale included."""
        gt = batch["depth"].numpy()
        scaled = M.depth_metrics(pred["depth"], gt, gt > 0, median_scale=True)
        unscaled = M.depth_metrics(pred["depth"], gt, gt > 0, median_scale=False)
        return {**scaled, "abs_rel_unscaled": unscaled["abs_rel"]}


def _first_visible(visible: np.ndarray) -> np.ndarray:
    """(N, T) bool -> index of each row's first True (rows must have one)."""
    return visible.argmax(axis=1)


class TrackingTask(Task):
    """Queries at a track's first visible frame at test time (TAP-Vid's "first" mode);
    at a random visible frame in training, which shows the head every query time."""

    name, labels, default_queries = "tracking", ("tracks", "visible"), 64

    def targets(self, clips, *, train, seed):
        rng = np.random.default_rng(seed)
        rows = [self._clip_targets(c, rng if train else None) for c in clips]
        return {k: torch.from_numpy(np.stack([r[k] for r in rows])) for k in rows[0]}

    def _clip_targets(self, clip, rng) -> dict[str, np.ndarray]:
        t, (h, w) = clip.num_frames, clip.size
        keep = np.flatnonzero(clip.visible.any(axis=1))
        if rng is not None:
            keep = rng.permutation(keep)
        keep = keep[: self.num_queries]
        q, n = self.num_queries, len(keep)
        vis = clip.visible[keep]
        if rng is None:
            qt = _first_visible(vis)
        else:
            qt = np.array([rng.choice(np.flatnonzero(v)) for v in vis], dtype=np.int64)
        xy = clip.tracks[keep] / np.array([w, h], np.float32)  # (n, T, 2) normalised
        out = {"query_points": np.zeros((q, 3), np.float32), "query_valid": np.zeros(q, bool),
               "xy": np.zeros((q, t, 2), np.float32), "visible": np.zeros((q, t), bool),
               "size": np.array([h, w], np.float32)}
        qxy = xy[np.arange(n), qt]  # (n, 2)
        out["query_points"][:n] = np.stack([(qt + 0.5) / t, qxy[:, 1], qxy[:, 0]], axis=-1)
        out["query_valid"][:n], out["xy"][:n], out["visible"][:n] = True, xy, vis
        return out

    def build_head(self, *, feature_dim, num_frames, image_size, width, heads, train_targets):
        return TrackingHead(feature_dim=feature_dim, num_frames=num_frames, width=width,
                            num_heads=heads)

    def forward(self, head, features, batch):
        return head(features, batch["query_points"])

    def loss(self, out, batch):
        scale = _HUBER_FRAME_PX / _HUBER_DELTA_PX  # normalised units -> units of 4 px @ 256
        pos = F.huber_loss(out["xy"] * scale, batch["xy"] * scale, reduction="none",
                           delta=1.0).sum(-1)  # (B, Q, T)
        vis = batch["visible"] & batch["query_valid"][..., None]
        pos_loss = _per_clip_mean(torch.where(vis, pos, torch.zeros_like(pos)), vis)
        valid = batch["query_valid"][..., None].expand_as(vis)
        bce = F.binary_cross_entropy_with_logits(
            out["visible_logit"], batch["visible"].float(), reduction="none")
        return pos_loss + _per_clip_mean(torch.where(valid, bce, torch.zeros_like(bce)), valid)

    def predictions(self, out, batch):
        hw = batch["size"][:, None, None, [1, 0]]  # (B, 1, 1, 2) as (w, h)
        return {"tracks": (out["xy"] * hw).numpy(),  # (B, Q, T, 2) pixels
                "visible": (out["visible_logit"] > 0).numpy()}

    def metrics(self, pred, batch):
        """TAP-Vid metrics per clip ("first" queries), in its 256 x 256 raster, averaged."""
        rows = []
        for i in range(len(pred["tracks"])):
            valid = batch["query_valid"][i].numpy()
            size = tuple(batch["size"][i].tolist())  # (h, w)
            t = batch["xy"].shape[2]
            gt_xy = batch["xy"][i, valid].numpy() * np.array(size[::-1], np.float32)
            query = batch["query_points"][i, valid].numpy()
            query_yx = M.to_tapvid_raster(query[:, [2, 1]] * np.array(size[::-1]), size)
            query = np.stack([np.floor(query[:, 0] * t), query_yx[:, 1], query_yx[:, 0]], -1)
            rows.append(M.tapvid_metrics(
                query, ~batch["visible"][i, valid].numpy(), M.to_tapvid_raster(gt_xy, size),
                ~pred["visible"][i, valid], M.to_tapvid_raster(pred["tracks"][i, valid], size),
                query_mode="first"))
        return {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]}


def relative_poses(cam_to_world: torch.Tensor) -> torch.Tensor:
    """(N, T, 4, 4) camera-to-world -> frame-t camera to frame-0 camera."""
    return torch.linalg.inv(cam_to_world[:, :1]) @ cam_to_world


class PoseTask(Task):
    name, labels = "pose", ("cam_to_world",)
    translation_scale = 1.0  # metres; set from the training set by build_head

    def targets(self, clips, *, train, seed):
        c2w = torch.from_numpy(np.stack([c.cam_to_world for c in clips])).double()
        return {"pose": relative_poses(c2w).float()}  # (N, T, 4, 4)

    def build_head(self, *, feature_dim, num_frames, image_size, width, heads, train_targets):
        spread = train_targets["pose"][..., :3, 3].std().item()
        self.translation_scale = spread if spread > 1e-6 else 1.0
        return PoseHead(feature_dim=feature_dim, num_frames=num_frames, width=width,
                        num_heads=heads, translation_scale=self.translation_scale)

    def forward(self, head, features, batch):
        return head(features)  # (B, T, 4, 4)

    def loss(self, out, batch):
        gt = batch["pose"]
        rot = ((out[..., :3, :3] - gt[..., :3, :3]) ** 2).sum((-2, -1))  # (B, T)
        trans = (out[..., :3, 3] - gt[..., :3, 3]).abs().sum(-1) / self.translation_scale
        return (rot + trans).mean()

    def predictions(self, out, batch):
        return {"pose": out.numpy()}

    def metrics(self, pred, batch):
        return M.pose_metrics(pred["pose"], batch["pose"].numpy())


class BoxTask(Task):
    """Queries: every box visible in frame 0 (up to ``num_queries``); targets: its frames."""

    name, labels, default_queries = "boxes", ("boxes", "box_visible"), 8

    def targets(self, clips, *, train, seed):
        rows = [self._clip_targets(c) for c in clips]
        return {k: torch.from_numpy(np.stack([r[k] for r in rows])) for k in rows[0]}

    def _clip_targets(self, clip):
        (h, w), t, m = clip.size, clip.num_frames, self.num_queries
        keep = np.flatnonzero(clip.box_visible[:, 0])[:m]
        n = len(keep)
        out = {"boxes": np.zeros((m, t, 4), np.float32), "visible": np.zeros((m, t), bool),
               "query_valid": np.zeros(m, bool), "size": np.array([h, w], np.float32)}
        out["boxes"][:n] = clip.boxes[keep] / np.array([w, h, w, h], np.float32)
        out["visible"][:n], out["query_valid"][:n] = clip.box_visible[keep], True
        return out

    def build_head(self, *, feature_dim, num_frames, image_size, width, heads, train_targets):
        return BoxHead(feature_dim=feature_dim, num_frames=num_frames, width=width,
                       num_heads=heads)

    def forward(self, head, features, batch):
        return head(features, batch["boxes"][:, :, 0])  # (B, M, T, 4)

    def loss(self, out, batch):
        vis = batch["visible"] & batch["query_valid"][..., None]
        err = (out - batch["boxes"]).abs().sum(-1)
        return _per_clip_mean(torch.where(vis, err, torch.zeros_like(err)), vis)

    def predictions(self, out, batch):
        whwh = batch["size"][:, None, None, [1, 0, 1, 0]]
        return {"boxes": (out * whwh).numpy()}

    def metrics(self, pred, batch):
        whwh = batch["size"][:, None, None, [1, 0, 1, 0]]
        gt = (batch["boxes"] * whwh).numpy()
        vis = (batch["visible"] & batch["query_valid"][..., None]).numpy()
        return M.box_iou_over_time(pred["boxes"], gt, vis)


TASKS = {"depth": DepthTask, "tracking": TrackingTask, "pose": PoseTask, "boxes": BoxTask}


def get_task(name: str, *, num_queries: int | None = None) -> Task:
    if name not in TASKS:
        raise ValueError(f"--task: unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[name](num_queries=num_queries)
