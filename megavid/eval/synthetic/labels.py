"""Point tracks (with visibility) and boxes from a rendered scene; conventions in ``render``."""

from __future__ import annotations

import numpy as np

from megavid.eval.synthetic.render import NEAR, VISIBILITY_TOLERANCE, cast, mitsuba
from megavid.eval.synthetic.scene import SceneSpec


def project(points: np.ndarray, cam_to_world: np.ndarray, intrinsics: np.ndarray):
    """World points (..., 3) -> pixels (..., 2) and camera z (...,) for one OpenCV camera."""
    cam = (points - cam_to_world[:3, 3]) @ cam_to_world[:3, :3]  # R^T (p - c)
    z = cam[..., 2]
    safe = np.where(np.abs(z) < 1e-6, 1e-6, z)
    uv = (cam[..., :2] / safe[..., None]) * intrinsics[[0, 1], [0, 1]] + intrinsics[:2, 2]
    return uv, z


def pixel_ray(spec: SceneSpec, frame: int, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Origin and unit world direction of the ray through pixel position ``uv`` (x, y)."""
    k, c2w = spec.intrinsics, spec.cam_to_world[frame]
    d_cam = np.array([(uv[0] - k[0, 2]) / k[0, 0], (uv[1] - k[1, 2]) / k[1, 1], 1.0])
    d = c2w[:3, :3] @ d_cam
    return c2w[:3, 3].copy(), d / np.linalg.norm(d)


def sample_queries(spec: SceneSpec, rendered: dict, rng: np.random.Generator,
                   num_tracks: int) -> tuple[np.ndarray, np.ndarray]:
    """Track points in their owners' local frames: (N, 3) points and (N,) owners (-1 room).

    Two thirds are queried at frame 0 and one third at the middle frame (points that
    appear or reappear later); half of each group on objects where any is in view.
    """
    mi = mitsuba()
    frames = len(spec.cam_to_world)
    query_frames = np.where(np.arange(num_tracks) < (2 * num_tracks + 2) // 3, 0, frames // 2)
    local, owners = np.zeros((num_tracks, 3)), np.full(num_tracks, -1)
    for n, q in enumerate(query_frames):
        ids = rendered["ids"][q]
        on_objects = np.argwhere(ids >= 0)
        if n % 2 == 0 and len(on_objects):
            row, col = on_objects[rng.integers(len(on_objects))]
        else:
            row, col = rng.integers(spec.size, size=2)
        uv = np.array([col, row]) + rng.uniform(0.0, 1.0, size=2)
        origin, direction = pixel_ray(spec, int(q), uv)
        _, owner, hit = cast(mi, rendered["scenes"][q], origin, direction)
        if owner >= 0:  # object point: store it in object coordinates
            pose = spec.objects[owner].poses[q]
            hit = (hit - pose[:3, 3]) @ pose[:3, :3]
        local[n], owners[n] = hit, owner
    return local, owners


def world_tracks(spec: SceneSpec, local: np.ndarray, owners: np.ndarray) -> np.ndarray:
    """(N, T, 3) world positions: room points stay, object points move with the object."""
    out = np.repeat(local[:, None], len(spec.cam_to_world), axis=1)
    for j, obj in enumerate(spec.objects):
        mine = owners == j
        out[mine] = np.einsum("tij,nj->nti", obj.poses[:, :3, :3], local[mine]) + obj.poses[
            None, :, :3, 3]
    return out


def track_labels(spec: SceneSpec, rendered: dict, world: np.ndarray):
    """(N, T, 2) pixel tracks and (N, T) visibility by a depth test at each projection."""
    mi = mitsuba()
    n, frames = world.shape[:2]
    tracks, visible = np.zeros((n, frames, 2)), np.zeros((n, frames), bool)
    for t in range(frames):
        c2w = spec.cam_to_world[t]
        uv, z = project(world[:, t], c2w, spec.intrinsics)
        tracks[:, t] = uv
        inside = (z > NEAR) & np.all((uv >= 0) & (uv < spec.size), axis=1)
        for i in np.flatnonzero(inside):
            offset = world[i, t] - c2w[:3, 3]
            distance = np.linalg.norm(offset)
            hit, _, _ = cast(mi, rendered["scenes"][t], c2w[:3, 3], offset / distance)
            visible[i, t] = hit >= distance * (1.0 - VISIBILITY_TOLERANCE)
    return tracks.astype(np.float32), visible


def modal_boxes(ids: np.ndarray, num_objects: int) -> tuple[np.ndarray, np.ndarray]:
    """(M, T, 4) pixel bounds of each object's pixels per frame and (M, T) presence."""
    frames = ids.shape[0]
    boxes, present = np.zeros((num_objects, frames, 4), np.float32), np.zeros(
        (num_objects, frames), bool)
    for j in range(num_objects):
        for t in range(frames):
            rows, cols = np.nonzero(ids[t] == j)
            if len(rows):
                boxes[j, t] = cols.min(), rows.min(), cols.max() + 1, rows.max() + 1
                present[j, t] = True
    return boxes, present
