"""Metrics against values computed by hand (TAP-Vid, depth, pose and box definitions)."""

from __future__ import annotations

import numpy as np
import pytest

from megavid.eval.metrics import (
    box_iou,
    box_iou_over_time,
    depth_metrics,
    first_queries,
    pose_metrics,
    tapvid_metrics,
    to_tapvid_raster,
)

# --------------------------------------------------------------------------- depth

def test_depth_median_scaling_removes_a_global_scale():
    gt = np.array([[1.0, 2.0], [4.0, 0.0]])  # 0 = invalid
    pred = np.array([[2.0, 4.0], [8.0, 5.0]])  # 2x gt; the invalid pixel is ignored
    assert depth_metrics(pred, gt) == pytest.approx({"abs_rel": 0.0, "delta1": 1.0})
    # Unscaled: |2g - g| / g = 1 everywhere, and every ratio is 2 >= 1.25.
    assert depth_metrics(pred, gt, median_scale=False) == pytest.approx(
        {"abs_rel": 1.0, "delta1": 0.0})


def test_depth_abs_rel_and_delta_threshold_by_hand():
    gt = np.array([[1.0, 2.0, 4.0]])
    pred = np.array([[1.0, 2.0, 5.0]])  # errors 0, 0, 1/4; ratios 1, 1, 1.25 (not < 1.25)
    out = depth_metrics(pred, gt, median_scale=False)
    assert out["abs_rel"] == pytest.approx(0.25 / 3)
    assert out["delta1"] == pytest.approx(2 / 3)


def test_depth_averages_per_image_and_honours_valid():
    gt = np.ones((2, 1, 4))
    pred = np.ones((2, 1, 4))
    pred[1, 0, :2] = 3.0  # image 2: abs_rel (2 + 2 + 0 + 0) / 4 = 1
    valid = np.ones((2, 1, 4), bool)
    out = depth_metrics(pred, gt, valid, median_scale=False)
    assert out["abs_rel"] == pytest.approx(0.5)  # mean of 0 and 1, not pooled pixels
    valid[1, 0, :2] = False
    assert depth_metrics(pred, gt, valid, median_scale=False)["abs_rel"] == pytest.approx(0.0)


# --------------------------------------------------------------------------- TAP-Vid

def _two_point_video():
    """Two tracks over 4 frames (see the test below for the hand computation)."""
    gt_tracks = np.zeros((2, 4, 2))
    gt_tracks[1] = 10.0
    gt_occ = np.zeros((2, 4), bool)
    gt_occ[1, 2] = True  # B is occluded at frame 2
    gt_occ[1, 0] = True  # and before its query frame
    pred_tracks = gt_tracks.copy()
    pred_tracks[0, 1:, 0] += [0.5, 3.0, 20.0]  # A: errors 0.5, 3, 20 px at frames 1, 2, 3
    pred_occ = np.zeros((2, 4), bool)
    pred_occ[1, 3] = True  # B: predicted occluded at frame 3 (where it is visible)
    queries = np.array([[0, 0.0, 0.0], [1, 10.0, 10.0]])  # (t, y, x)
    return queries, gt_occ, gt_tracks, pred_occ, pred_tracks


def test_tapvid_average_jaccard_by_hand():
    # Evaluated (query_mode "first": frames after the query): A1 A2 A3 and B2 B3.
    # occlusion: A1-3 right, B2 (occluded, predicted visible) and B3 wrong: 3/5.
    # gt-visible evaluated points: A1 A2 A3 B3 = 4.
    # d = 1, 2: within = A1, B3 -> pts 2/4; TP = A1 (B3 predicted occluded) = 1;
    #   FP = A2, A3 (too far) + B2 (gt occluded) = 3 -> jaccard 1 / (4 + 3) = 1/7.
    # d = 4, 8, 16: within = A1, A2, B3 -> pts 3/4; TP = 2; FP = A3, B2 -> 2 / 6 = 1/3.
    out = tapvid_metrics(*_two_point_video(), query_mode="first")
    assert out["occlusion_accuracy"] == pytest.approx(3 / 5)
    assert [out[f"pts_within_{d}"] for d in (1, 2, 4, 8, 16)] == pytest.approx(
        [0.5, 0.5, 0.75, 0.75, 0.75])
    assert [out[f"jaccard_{d}"] for d in (1, 2, 4, 8, 16)] == pytest.approx(
        [1 / 7, 1 / 7, 1 / 3, 1 / 3, 1 / 3])
    assert out["average_jaccard"] == pytest.approx((2 / 7 + 1) / 5)  # 9/35
    assert out["average_pts_within_thresh"] == pytest.approx(0.65)


def test_tapvid_strided_mode_also_scores_frames_before_the_query():
    # All frames but the query's: adds B0 (occluded, predicted visible: wrong, an FP);
    # A0 is A's query frame and stays out.
    out = tapvid_metrics(*_two_point_video(), query_mode="strided")
    assert out["occlusion_accuracy"] == pytest.approx(3 / 6)
    assert out["jaccard_1"] == pytest.approx(1 / (4 + 4))  # TP A1; FP A2 A3 B0 B2


def test_tapvid_threshold_is_strict_and_videos_average_not_pool():
    tracks = np.zeros((1, 2, 2))
    occ = np.zeros((1, 2), bool)
    pred = tracks.copy()
    pred[0, 1] = [4.0, 0.0]  # exactly 4 px: within 8 and 16, not within 4 (< d, strict)
    out = tapvid_metrics(np.zeros((1, 3)), occ, tracks, occ, pred)
    assert out["average_pts_within_thresh"] == pytest.approx(2 / 5)
    # Batch: video 1 perfect (AJ 1), video 2 all wrong (AJ 0): the mean is 0.5.
    good, bad = tracks, tracks + 100.0
    out = tapvid_metrics(np.zeros((2, 1, 3)), np.stack([occ, occ]), np.stack([good, good]),
                         np.stack([occ, occ]), np.stack([good, bad]))
    assert out["average_jaccard"] == pytest.approx(0.5)


def test_tapvid_raster_and_first_queries():
    assert to_tapvid_raster(np.array([32.0, 16.0]), (64, 128)) == pytest.approx([64.0, 64.0])
    tracks = np.arange(2 * 3 * 2, dtype=float).reshape(3, 2, 2)  # (N=3, T=2, 2)
    visible = np.array([[False, True], [True, True], [False, False]])
    queries, keep = first_queries(tracks, visible)
    assert keep.tolist() == [True, True, False]
    assert queries.tolist() == [[1, 3.0, 2.0], [0, 5.0, 4.0]]  # (t, y, x)


# --------------------------------------------------------------------------- pose

def _yaw(deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _trajectory(rotations, centres) -> np.ndarray:
    out = np.tile(np.eye(4), (len(centres), 1, 1))
    out[:, :3, :3], out[:, :3, 3] = rotations, centres
    return out


def test_pose_errors_by_hand():
    centres = np.array([[0, 0, 0], [1.0, 0, 0], [2.0, 0, 0]])
    gt = _trajectory([np.eye(3)] * 3, centres)
    # Another world frame for the prediction: relative poses are unchanged.
    world = _trajectory([_yaw(30)], [[5.0, -1.0, 2.0]])[0]
    assert pose_metrics(world @ gt, gt) == pytest.approx(
        {"rotation_error_deg": 0, "translation_error": 0, "translation_angle_deg": 0,
         "epe": 0, "final_epe": 0}, abs=1e-6)
    # Frame 1 turned by 10 degrees, frame 2 exact: mean 5 degrees.
    pred = _trajectory([np.eye(3), _yaw(10), np.eye(3)], centres)
    assert pose_metrics(pred, gt)["rotation_error_deg"] == pytest.approx(5.0)
    # Twice the distances: translation errors 1 and 2 m (mean 1.5), scale-aligned EPE 0.
    scaled = _trajectory([np.eye(3)] * 3, 2 * centres)
    out = pose_metrics(scaled, gt)
    assert out["translation_error"] == pytest.approx(1.5)
    assert out["epe"] == pytest.approx(0.0, abs=1e-9)
    assert pose_metrics(scaled, gt, align_scale=False)["final_epe"] == pytest.approx(2.0)
    # A sideways trajectory: 90 degrees between translation directions.
    side = _trajectory([np.eye(3)] * 3, centres[:, [1, 0, 2]])
    assert pose_metrics(side, gt)["translation_angle_deg"] == pytest.approx(90.0)


# --------------------------------------------------------------------------- boxes

def test_box_iou_by_hand():
    assert box_iou([0, 0, 2, 2], [1, 1, 3, 3]) == pytest.approx(1 / 7)
    assert box_iou([0, 0, 2, 2], [0, 0, 2, 2]) == pytest.approx(1.0)
    assert box_iou([0, 0, 1, 1], [2, 2, 3, 3]) == 0.0
    assert box_iou([0, 0, 0, 0], [0, 0, 0, 0]) == 0.0  # degenerate: no NaN
    many = box_iou(np.zeros((3, 1, 4)) + [0, 0, 2, 2], np.array([[0, 0, 2, 1]]))
    assert many.shape == (3, 1) and many == pytest.approx(0.5)


def test_box_iou_over_time_averages_visible_pairs():
    gt = np.tile([0.0, 0.0, 2.0, 2.0], (2, 3, 1))  # (M=2, T=3, 4)
    pred = gt.copy()
    pred[0, 1] = [1, 1, 3, 3]  # IoU 1/7
    pred[1, 2] = [5, 5, 6, 6]  # IoU 0, but track 1 is not visible at frame 2
    visible = np.array([[True, True, True], [True, False, False]])
    out = box_iou_over_time(pred, gt, visible)
    assert out["mean_iou"] == pytest.approx((1 + 1 / 7 + 1 + 1) / 4)
    assert out["per_frame"] == pytest.approx([1.0, 1 / 7, 1.0])
    assert box_iou_over_time(pred, gt, visible, skip_first=True)["mean_iou"] == pytest.approx(
        (1 / 7 + 1) / 2)
