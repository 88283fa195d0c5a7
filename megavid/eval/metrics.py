"""Metrics of the 4D readouts, numpy and vectorised, each with its published definition.

Every function takes one clip or a batch of clips (leading axis) and returns plain
floats averaged over clips, so results can be logged as they are.
"""

from __future__ import annotations

import numpy as np

TAPVID_THRESHOLDS = (1, 2, 4, 8, 16)  # pixels in the 256 x 256 raster
TAPVID_RASTER = 256


# --------------------------------------------------------------------------- depth

def depth_metrics(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray | None = None, *,
                  median_scale: bool = True, eps: float = 1e-6) -> dict[str, float]:
    """AbsRel and delta < 1.25 of depth maps (Eigen et al., NeurIPS 2014, section 4).

    ``pred`` and ``gt`` are (..., H, W); every (H, W) slice is one image. Pixels
    count where ``gt > 0`` (and ``valid``). With ``median_scale`` each prediction
    is first multiplied by ``median(gt) / median(pred)`` over its valid pixels, the
    per-image median scaling of Zhou et al. (SfMLearner, CVPR 2017) used for
    scale-ambiguous monocular depth; set it False for metric depth.
    ``abs_rel = mean |p - g| / g``; ``delta1`` is the fraction of pixels with
    ``max(p / g, g / p) < 1.25``. Both are averaged over an image's valid pixels,
    then over images (images without a valid pixel are skipped). Predictions are
    clipped to ``eps`` so that non-positive depths count as (very) wrong, not NaN.
    """
    gt = np.asarray(gt, np.float64)
    pred = np.maximum(np.asarray(pred, np.float64), eps)
    mask = np.isfinite(gt) & (gt > 0)
    if valid is not None:
        mask &= np.asarray(valid, bool)
    shape = (-1, gt.shape[-2] * gt.shape[-1])
    pred, gt, mask = pred.reshape(shape), gt.reshape(shape), mask.reshape(shape)
    count = mask.sum(axis=1)
    keep = count > 0
    if not keep.any():
        raise ValueError("depth_metrics: no valid ground-truth pixel in any image")
    pred, gt, mask, count = pred[keep], gt[keep], mask[keep], count[keep]
    if median_scale:
        gt_med = np.nanmedian(np.where(mask, gt, np.nan), axis=1)
        pred_med = np.nanmedian(np.where(mask, pred, np.nan), axis=1)
        pred = pred * (gt_med / pred_med)[:, None]
    safe_gt = np.where(mask, gt, 1.0)
    abs_rel = np.where(mask, np.abs(pred - gt) / safe_gt, 0.0).sum(axis=1) / count
    ratio = np.maximum(pred / safe_gt, safe_gt / pred)
    delta1 = np.where(mask, ratio < 1.25, False).sum(axis=1) / count
    return {"abs_rel": float(abs_rel.mean()), "delta1": float(delta1.mean())}


# --------------------------------------------------------------------------- TAP-Vid

def to_tapvid_raster(xy: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Pixel (x, y) of an (H, W) clip -> the 256 x 256 raster TAP-Vid's thresholds assume.

    Continuous coordinates scale exactly (``x * 256 / W``): TAP-Vid stores points
    normalised by the frame size and multiplies them by the raster size.
    """
    height, width = size
    scale = np.array([TAPVID_RASTER / width, TAPVID_RASTER / height])
    return np.asarray(xy, np.float64) * scale


def first_queries(tracks: np.ndarray, visible: np.ndarray):
    """TAP-Vid "query first" queries: ``(query_points (N, 3) as (t, y, x), keep (N,))``.

    Each track is queried at its first visible frame (Doersch et al., TAP-Vid,
    NeurIPS 2022 Datasets and Benchmarks, section 4); tracks never visible cannot
    be queried and are dropped (``keep`` is False): index the tracks with it.
    """
    visible = np.asarray(visible, bool)
    keep = visible.any(axis=1)
    t = np.argmax(visible[keep], axis=1)
    xy = np.asarray(tracks)[keep, t]
    return np.stack([t, xy[:, 1], xy[:, 0]], axis=1).astype(np.float64), keep


def tapvid_metrics(query_points: np.ndarray, gt_occluded: np.ndarray, gt_tracks: np.ndarray,
                   pred_occluded: np.ndarray, pred_tracks: np.ndarray,
                   query_mode: str = "first") -> dict[str, float]:
    """TAP-Vid's metrics (Doersch et al. 2022, section 4; ``compute_tapvid_metrics`` in
    google-deepmind/tapnet ``tapnet/tapvid/evaluation_datasets.py``), reimplemented.

    Inputs are (B, N, ...) or one video (N, ...): ``query_points`` (t, y, x),
    occlusion flags (B, N, T) (True = occluded) and tracks (B, N, T, 2) as (x, y),
    all in the 256 x 256 raster (``to_tapvid_raster``). Frames evaluated: after the
    query frame (``"first"``) or all but it (``"strided"``). For each threshold
    d in {1, 2, 4, 8, 16} px, a prediction is within d when its squared distance is
    < d^2; ``pts_within_d`` = (gt-visible points within d) / (gt-visible points);
    ``jaccard_d`` = TP / (gt-visible + FP) with TP = visible in both and within d,
    FP = predicted visible and (gt-occluded or not within d). ``average_jaccard`` and
    ``average_pts_within_thresh`` average over thresholds; ``occlusion_accuracy`` is
    the fraction of evaluated points whose occlusion flag is right. Every metric is
    computed per video, then averaged over videos (``nanmean``: a video with no
    evaluable point is skipped where tapnet would return NaN).
    """
    q = np.asarray(query_points, np.float64)
    gt_occ, pred_occ = np.asarray(gt_occluded, bool), np.asarray(pred_occluded, bool)
    gt_xy, pred_xy = np.asarray(gt_tracks, np.float64), np.asarray(pred_tracks, np.float64)
    if gt_occ.ndim == 2:  # one video
        q, gt_occ, pred_occ, gt_xy, pred_xy = q[None], gt_occ[None], pred_occ[None], gt_xy[
            None], pred_xy[None]
    frames = np.arange(gt_occ.shape[-1])
    query_t = np.round(q[..., 0]).astype(int)[..., None]  # (B, N, 1)
    if query_mode == "first":
        evaluated = frames > query_t
    elif query_mode == "strided":
        evaluated = frames != query_t
    else:
        raise ValueError(f"tapvid_metrics: query_mode must be 'first' or 'strided', got "
                         f"{query_mode!r}")
    visible, pred_visible = ~gt_occ, ~pred_occ
    per_video = lambda x: np.sum(x & evaluated, axis=(1, 2))  # noqa: E731  (B,)
    out = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        out["occlusion_accuracy"] = per_video(gt_occ == pred_occ) / per_video(
            np.ones_like(gt_occ))
        sq_dist = np.sum((pred_xy - gt_xy) ** 2, axis=-1)
        for d in TAPVID_THRESHOLDS:
            within = sq_dist < d**2
            correct = within & visible
            out[f"pts_within_{d}"] = per_video(correct) / per_video(visible)
            false_pos = pred_visible & (~visible | ~within)
            out[f"jaccard_{d}"] = per_video(correct & pred_visible) / (
                per_video(visible) + per_video(false_pos))
    out["average_jaccard"] = np.mean([out[f"jaccard_{d}"] for d in TAPVID_THRESHOLDS], 0)
    out["average_pts_within_thresh"] = np.mean(
        [out[f"pts_within_{d}"] for d in TAPVID_THRESHOLDS], 0)
    return {k: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
            for k, v in out.items()}


# --------------------------------------------------------------------------- camera pose

def relative_poses(cam_to_world: np.ndarray) -> np.ndarray:
    """(..., T, 4, 4) poses of every frame in the coordinates of frame 0's camera."""
    c2w = np.asarray(cam_to_world, np.float64)
    return np.linalg.inv(c2w[..., :1, :, :]) @ c2w


def pose_metrics(pred_cam_to_world: np.ndarray, gt_cam_to_world: np.ndarray, *,
                 align_scale: bool = True) -> dict[str, float]:
    """Errors of predicted camera trajectories relative to their first frame.

    Both trajectories are first expressed relative to frame 0 (``inv(P_0) @ P_t``),
    so the readout need not know the world frame; frames 1..T-1 are scored:

    * ``rotation_error_deg``: geodesic angle ``arccos((tr(R^T R_gt) - 1) / 2)``;
    * ``translation_error``: ``|t - t_gt|`` of the camera centres, in the data's units;
    * ``translation_angle_deg``: angle between ``t`` and ``t_gt`` (scale-free, the
      RelPose/PoseDiffusion convention for RealEstate10K);
    * ``epe``: end-point error, ``|s t - t_gt|`` averaged over frames, with the
      per-clip least-squares scale ``s = sum(t . t_gt) / sum(t . t)`` when
      ``align_scale`` (RealEstate10K's SLAM poses have no metric scale);
      ``final_epe`` is the same at the last frame.

    4DS (Carreira et al. 2024) reports an end-point error on RealEstate10K but its
    exact formula is not published with code (google-deepmind/representations4d
    ships models and readouts, not this metric); the EPE above, over camera
    centres relative to frame 0 after scale alignment, is our documented choice.
    Each value is a mean over frames, then over clips.
    """
    pred, gt = relative_poses(pred_cam_to_world), relative_poses(gt_cam_to_world)
    if gt.ndim == 3:
        pred, gt = pred[None], gt[None]
    pred, gt = pred[:, 1:], gt[:, 1:]  # (B, T-1, 4, 4); frame 0 is the identity
    if gt.shape[1] == 0:
        raise ValueError("pose_metrics: need at least two frames")
    cos = (np.trace(np.swapaxes(pred[..., :3, :3], -1, -2) @ gt[..., :3, :3], axis1=-2,
                    axis2=-1) - 1) / 2
    rot = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
    t, t_gt = pred[..., :3, 3], gt[..., :3, 3]  # (B, T-1, 3)
    norms = np.linalg.norm(t, axis=-1) * np.linalg.norm(t_gt, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        angle = np.degrees(np.arccos(np.clip(np.sum(t * t_gt, -1) / norms, -1.0, 1.0)))
        scale = np.sum(t * t_gt, axis=(1, 2)) / np.sum(t * t, axis=(1, 2))
    scale = np.where(np.isfinite(scale), scale, 1.0) if align_scale else np.ones(len(t))
    end_point = np.linalg.norm(scale[:, None, None] * t - t_gt, axis=-1)  # (B, T-1)
    return {"rotation_error_deg": float(rot.mean()),
            "translation_error": float(np.linalg.norm(t - t_gt, axis=-1).mean()),
            "translation_angle_deg": float(np.nanmean(np.where(norms > 1e-12, angle, np.nan)))
            if np.any(norms > 1e-12) else float("nan"),
            "epe": float(end_point.mean()), "final_epe": float(end_point[:, -1].mean())}


# --------------------------------------------------------------------------- boxes

def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of (..., 4) boxes (x0, y0, x1, y1), broadcasting.

    Continuous pixel coordinates (area = width * height, no +1); empty or
    degenerate pairs (union 0) give 0.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = w * h
    area = lambda x: np.clip(x[..., 2] - x[..., 0], 0, None) * np.clip(  # noqa: E731
        x[..., 3] - x[..., 1], 0, None)
    union = area(a) + area(b) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def box_iou_over_time(pred: np.ndarray, gt: np.ndarray, visible: np.ndarray, *,
                      skip_first: bool = False) -> dict:
    """Mean IoU of box tracks over the frames where the ground-truth box exists.

    ``pred``/``gt`` are (M, T, 4) or (B, M, T, 4), ``visible`` (M, T) / (B, M, T).
    ``mean_iou`` averages over every visible (track, frame) pair, the box-tracking
    score 4DS reports on Waymo Open; ``per_frame`` (T,) averages over the tracks
    visible at each frame (NaN where none is). ``skip_first`` leaves frame 0 out,
    for when its box was given to the tracker as the query.
    """
    iou = box_iou(pred, gt)
    visible = np.asarray(visible, bool).copy()
    if skip_first:
        visible[..., 0] = False
    if not visible.any():
        raise ValueError("box_iou_over_time: no visible ground-truth box")
    frames = visible.shape[-1]
    iou, visible = iou.reshape(-1, frames), visible.reshape(-1, frames)
    with np.errstate(invalid="ignore"):
        per_frame = np.where(visible, iou, 0).sum(0) / visible.sum(0)
    return {"mean_iou": float(iou[visible].mean()), "per_frame": per_frame}
