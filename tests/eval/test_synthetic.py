"""The synthetic 4D benchmark: deterministic, and its labels agree with the rendered geometry."""

from __future__ import annotations

import json

import numpy as np
import pytest

from megavid.eval import load_dataset, make_synthetic

from .conftest import MITSUBA_REASON, SMALL_SYNTHETIC

pytest.importorskip("mitsuba", reason=MITSUBA_REASON)

from megavid.eval.synthetic import render  # noqa: E402  (needs mitsuba)
from megavid.eval.synthetic.labels import cast, pixel_ray, project, track_labels  # noqa: E402
from megavid.eval.synthetic.scene import ROOM_HALF, ROOM_HEIGHT  # noqa: E402


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generation_is_deterministic_and_independent_of_workers(tmp_path):
    kwargs = dict(num_scenes=2, frames=3, size=32, seed=5)
    a = make_synthetic(tmp_path / "a", workers=1, **kwargs)
    b = make_synthetic(tmp_path / "b", workers=2, **kwargs)
    assert _files(a) == _files(b)
    c = make_synthetic(tmp_path / "c", workers=1, **{**kwargs, "seed": 6})
    assert _files(a)[_any_png(a)] != _files(c)[_any_png(a)]


def _any_png(root):
    return next(p for p in sorted(root.rglob("*.png"))).relative_to(root)


def test_splits_shapes_and_index(synthetic4d_dir):
    index = json.loads((synthetic4d_dir / "synthetic4d.json").read_text())
    assert index["splits"] == {"train": [f"scene_{i:05d}" for i in range(4)],
                               "test": ["scene_00004", "scene_00005"]}
    train, test = load_dataset(str(synthetic4d_dir), split="train"), load_dataset(
        str(synthetic4d_dir))
    assert [c.name for c in test] == index["splits"]["test"] and len(train) == 4
    for clip in train + test:
        t, s = SMALL_SYNTHETIC["frames"], SMALL_SYNTHETIC["size"]
        assert clip.video.shape == (t, s, s, 3) and clip.video.dtype == np.float32
        assert 0.0 <= clip.video.min() and clip.video.max() <= 1.0
        assert clip.depth.shape == (t, s, s) and (clip.depth > 0).all()  # a closed room
        assert clip.intrinsics.shape == (t, 3, 3) and clip.cam_to_world.shape == (t, 4, 4)
        assert clip.tracks.shape == (64, t, 2) and clip.visible.shape == (64, t)
        assert clip.visible.any(axis=1).all()  # every track is queryable
        assert clip.boxes.shape[1:] == (t, 4) and clip.box_visible.shape == clip.boxes.shape[:2]


def test_pretraining_videos_decode(synthetic4d_dir):
    import av
    clip = load_dataset(str(synthetic4d_dir), split="train")[0]
    with av.open(str(synthetic4d_dir / "train" / "videos" / f"{clip.name}.mp4")) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert frames.shape == (SMALL_SYNTHETIC["frames"], 64, 64, 3)
    assert np.abs(frames / 255.0 - clip.video).mean() < 0.05  # lossy H.264 of the same frames


def _unproject(clip, t):
    """World points (H, W, 3) of every pixel centre from depth, intrinsics and pose."""
    k, c2w = clip.intrinsics[t], clip.cam_to_world[t]
    v, u = np.mgrid[: clip.size[0], : clip.size[1]] + 0.5
    cam = np.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], np.ones_like(u)], -1)
    return (cam * clip.depth[t][..., None]) @ c2w[:3, :3].T + c2w[:3, 3]


def test_depth_unprojects_onto_the_surfaces(synthetic4d_dir, synthetic4d_scene):
    clip = load_dataset(str(synthetic4d_dir), split="train")[0]  # scene 0, read from disk
    scene, spec = synthetic4d_scene, synthetic4d_scene["spec"]
    np.testing.assert_allclose(clip.depth, scene["depth"], atol=5.1e-4)  # whole millimetres
    for t in (0, clip.num_frames - 1):
        points, ids = _unproject(clip, t), scene["ids"][t]
        room = points[ids < 0]
        to_walls = np.min(np.abs(np.stack([
            np.abs(room[:, 0]) - ROOM_HALF, np.abs(room[:, 2]) - ROOM_HALF, room[:, 1],
            room[:, 1] - ROOM_HEIGHT], -1)), axis=-1)
        assert to_walls.max() < 5e-3
        for j, obj in enumerate(spec.objects):
            pose = obj.poses[t]
            local = (points[ids == j] - pose[:3, 3]) @ pose[:3, :3]  # object coordinates
            if not len(local):
                continue
            if obj.mesh.normals is None:  # a box: on its boundary
                half = np.abs(obj.mesh.vertices).max(axis=0)
                np.testing.assert_allclose(np.max(np.abs(local) / half, axis=1), 1, atol=1e-2)
            else:  # a faceted sphere: within the facets' sagitta of the radius
                radius = np.linalg.norm(obj.mesh.vertices, axis=1).max()
                np.testing.assert_allclose(np.linalg.norm(local, axis=1), radius,
                                           rtol=0.03, atol=2e-3)


def test_labels_survive_the_public_formats(synthetic4d_dir, synthetic4d_scene):
    clip, scene = load_dataset(str(synthetic4d_dir), split="train")[0], synthetic4d_scene
    np.testing.assert_array_equal(clip.video, scene["video"] / np.float32(255.0))
    np.testing.assert_allclose(clip.tracks, scene["tracks"], atol=1e-4)
    np.testing.assert_array_equal(clip.visible, scene["visible"])
    np.testing.assert_allclose(clip.intrinsics, scene["intrinsics"], rtol=1e-6)
    np.testing.assert_allclose(clip.cam_to_world, scene["cam_to_world"], atol=1e-5)
    np.testing.assert_array_equal(clip.boxes, scene["boxes"])
    np.testing.assert_array_equal(clip.box_visible, scene["box_visible"])


def test_track_depth_matches_rendered_depth_where_visible(synthetic4d_scene):
    scene, spec = synthetic4d_scene, synthetic4d_scene["spec"]
    rel = []
    for t in range(len(spec.cam_to_world)):
        uv, z = project(scene["world_points"][:, t], spec.cam_to_world[t], spec.intrinsics)
        np.testing.assert_allclose(uv, scene["tracks"][:, t], atol=1e-3)
        vis = scene["visible"][:, t]
        px = np.floor(uv[vis]).astype(int)
        rel.append(np.abs(scene["depth"][t, px[:, 1], px[:, 0]] - z[vis]) / z[vis])
    rel = np.concatenate(rel)
    # Tracks sit at sub-pixel positions, depth at pixel centres: equal up to the surface
    # slope across half a pixel, except at silhouettes.
    assert np.median(rel) < 0.01 and np.mean(rel < 0.05) > 0.9


def test_points_behind_objects_are_not_visible(synthetic4d_scene):
    spec = synthetic4d_scene["spec"]
    rendered = render.render_frames(spec, spp=1, seed=0)
    mi = render.mitsuba()
    ids = rendered["ids"][0]
    row, col = np.argwhere(ids >= 0)[len(np.argwhere(ids >= 0)) // 2]
    origin, direction = pixel_ray(spec, 0, np.array([col + 0.5, row + 0.5]))
    t_front, owner, front = cast(mi, rendered["scenes"][0], origin, direction)
    assert owner == ids[row, col]
    centre = spec.objects[owner].poses[0, :3, 3]
    points = np.stack([
        front,  # on the object, facing the camera: visible
        origin + direction * (t_front + 2.0),  # 2 m further along the same ray: hidden
        2 * centre - front,  # through the object on its far side: hidden by itself
        origin - direction,  # behind the camera: not visible
    ])
    world = np.repeat(points[:, None], len(spec.cam_to_world), axis=1)
    tracks, visible = track_labels(spec, rendered, world)
    assert visible[:, 0].tolist() == [True, False, False, False]
    np.testing.assert_allclose(tracks[0, 0], [col + 0.5, row + 0.5], atol=1e-3)


def test_boxes_contain_the_objects_visible_points(synthetic4d_scene):
    scene = synthetic4d_scene
    inside = []
    for j in range(len(scene["boxes"])):
        on_j = scene["owners"] == j
        for t in range(scene["tracks"].shape[1]):
            vis = on_j & scene["visible"][:, t]
            if not vis.any():
                continue
            assert scene["box_visible"][j, t]
            x0, y0, x1, y1 = scene["boxes"][j, t]
            x, y = scene["tracks"][vis, t].T
            # Boxes bound the pixels whose centre sees the object; a visible point may lie
            # in the outer half of a boundary pixel, so allow one pixel.
            inside.append((x >= x0 - 1) & (x <= x1 + 1) & (y >= y0 - 1) & (y <= y1 + 1))
    assert np.concatenate(inside).all() and len(np.concatenate(inside)) > 10


def test_mitsuba_depth_aov_is_range_from_the_near_plane(synthetic4d_scene):
    """Why depth comes from the position AOV: Mitsuba's ``depth`` AOV is not z-depth."""
    spec, mi = synthetic4d_scene["spec"], render.mitsuba()
    textures = {**spec.room_textures, **{o.name: o.texture for o in spec.objects}}
    bitmaps = {n: mi.Bitmap(x) for n, x in textures.items()}
    bitmaps.update({f"ambient_{n}": mi.Bitmap(x) for n, x in textures.items()})
    scene = render.build_frame(mi, spec, 0, bitmaps, spp=1)
    sensor = mi.load_dict(render._sensor(mi, spec, 0, spp=1, exact=True))
    aov = np.array(mi.render(scene, sensor=sensor, integrator=mi.load_dict(
        {"type": "aov", "aovs": "dd.y:depth"}), seed=0))[..., 0]
    k = spec.intrinsics
    v, u = np.mgrid[: spec.size, : spec.size] + 0.5
    secant = np.sqrt(1 + ((u - k[0, 2]) / k[0, 0]) ** 2 + ((v - k[1, 2]) / k[1, 1]) ** 2)
    near = mi.traverse(sensor)["near_clip"]
    z = synthetic4d_scene["depth"][0]
    np.testing.assert_allclose(aov + near * secant, z * secant, rtol=1e-4)


def test_load_dataset_synthetic_generates_once_into_the_cache(tmp_path):
    kwargs = dict(cache_dir=tmp_path, num_frames=3, size=32,
                  synthetic={"num_scenes": 2, "workers": 1})
    [clip] = load_dataset("synthetic", **kwargs)  # 2 scenes: 1 train, 1 test
    assert clip.video.shape == (3, 32, 32, 3) and clip.depth.shape == (3, 32, 32)
    [folder] = tmp_path.glob("synthetic4d-*")
    stamp = (folder / "synthetic4d.json").stat().st_mtime_ns
    assert load_dataset("synthetic", split="train", **kwargs)[0].name == "scene_00000"
    assert (folder / "synthetic4d.json").stat().st_mtime_ns == stamp
    assert list(tmp_path.glob("synthetic4d-*")) == [folder]
