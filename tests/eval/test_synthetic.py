"""The synthetic 4D benchmark: deterministic, its camera roams the room, its labels agree with
the rendered geometry, and its unlabelled videos are the labelled set's."""

from __future__ import annotations

import json

import numpy as np
import pytest

from megavid.eval import datasets, load_dataset, make_synthetic

from .conftest import MITSUBA_REASON, SMALL_SYNTHETIC

pytest.importorskip("mitsuba", reason=MITSUBA_REASON)

from megavid.eval import synthetic  # noqa: E402  (needs mitsuba)
from megavid.eval.synthetic import render, write_mp4  # noqa: E402
from megavid.eval.synthetic import scene as scene_module  # noqa: E402
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
    # what the seed was chosen for (conftest): objects in view from frame 0 where tests need them
    assert all(c.box_visible[:, 0].any() for c in [train[0], *test])
    assert not train[2].box_visible.any()  # and a clip with none (the camera looks anywhere)


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


@pytest.fixture
def untextured(monkeypatch):
    """``sample_scene`` without its textures (most of its time): geometry only."""
    monkeypatch.setattr(scene_module, "make_texture",
                        lambda rng, res=128: np.zeros((2, 2, 3), np.float32))


def test_camera_roams_the_room_clear_of_the_objects(untextured):
    """Camera v2: anywhere in the room, never near an object, looking at the room."""
    frames, seeds = 33, 300
    origins, turns, moves = [], [], []
    for i in range(seeds):
        spec = scene_module.sample_scene(np.random.default_rng([11, i]), frames=frames, size=64)
        c2w = spec.cam_to_world
        o = c2w[:, :3, 3]  # (T, 3)
        assert np.all(np.abs(o[:, [0, 2]]) <= ROOM_HALF - 0.5)
        assert np.all((o[:, 1] >= 0.4) & (o[:, 1] <= ROOM_HEIGHT - 1.0))
        for obj in spec.objects:  # x-z distance to the object at any time, any frame
            radius = np.linalg.norm(obj.mesh.vertices[:, [0, 2]], axis=1).max()
            gap = np.linalg.norm(o[:, None, [0, 2]] - obj.poses[None, :, [0, 2], 3], axis=-1)
            assert gap.min() > radius + 0.5
        forward = c2w[:, :3, 2]
        np.testing.assert_allclose(np.linalg.norm(forward, axis=1), 1.0, atol=1e-9)
        assert np.all(np.abs(forward[:, 1]) <= np.sin(np.radians(70.0)) + 1e-9)
        # Smooth: small, even steps between frames.
        steps = np.linalg.norm(np.diff(o, axis=0), axis=1)
        np.testing.assert_allclose(steps, steps[0], rtol=1e-6)
        origins.append(o[0])
        moves.append(np.linalg.norm(o[-1] - o[0]))
        turns.append(np.degrees(np.arccos(np.clip(forward[0] @ forward[-1], -1, 1))))
    origins, moves = np.array(origins), np.array(moves)
    assert 0.3 - 1e-9 <= moves.min() and moves.max() <= 1.5 + 1e-9
    assert np.median(turns) > 8.0  # the view turns: points do not stay still in the image
    # Anywhere: from near a wall to just outside the objects' reach, all around, all heights.
    distance = np.linalg.norm(origins[:, [0, 2]], axis=1)
    assert distance.min() < 4.0 and distance.max() > 9.5
    assert np.histogram(np.arctan2(origins[:, 2], origins[:, 0]), 4)[0].min() > seeds / 8
    assert origins[:, 1].min() < 1.0 and origins[:, 1].max() > 4.4


def test_scene_is_a_pure_function_of_the_generator_whatever_the_frame_count(untextured):
    for i in range(50):
        a, b, c = (scene_module.sample_scene(np.random.default_rng([3, i]), frames=f, size=64)
                   for f in (16, 16, 8))
        np.testing.assert_array_equal(a.cam_to_world, b.cam_to_world)
        # 8 and 16 frames cover one motion: the same ends, the same objects
        np.testing.assert_allclose(a.cam_to_world[[0, -1]], c.cam_to_world[[0, -1]], atol=1e-12)
        assert len(a.objects) == len(c.objects)
        for x, y in zip(a.objects, c.objects):
            np.testing.assert_allclose(x.poses[[0, -1]], y.poses[[0, -1]], atol=1e-12)


def test_camera_falls_back_to_a_fixed_clear_path(untextured, monkeypatch):
    monkeypatch.setattr(scene_module, "CAMERA_TRIES", 0)
    spec = scene_module.sample_scene(np.random.default_rng(0), frames=4, size=64)
    o = spec.cam_to_world[:, :3, 3]
    assert np.linalg.norm(o[:, [0, 2]], axis=1).min() > 2.5 + 0.5  # beyond every object's reach
    assert np.all(np.abs(o[:, [0, 2]]) <= ROOM_HALF - 0.5)


def test_a_cache_of_another_generator_version_is_not_reused(tmp_path, monkeypatch):
    settings = dict(num_scenes=2, frames=3, size=32, seed=0, workers=1)
    with monkeypatch.context() as m:  # a cache left by generator version 1
        m.setattr(datasets, "GENERATOR_VERSION", 1)
        m.setattr(synthetic, "GENERATOR_VERSION", 1)
        old = datasets.ensure_synthetic(tmp_path, **settings)
    assert synthetic.GENERATOR_VERSION == 2
    new = datasets.ensure_synthetic(tmp_path, **settings)
    assert new != old and sorted(tmp_path.glob("synthetic4d-*")) == sorted([old, new])
    versions = [json.loads((root / "synthetic4d.json").read_text())["settings"]["version"]
                for root in (old, new)]
    assert versions == [1, 2]
    with pytest.raises(FileExistsError, match="other settings"):  # nor written over
        make_synthetic(old, **settings)


def test_unlabelled_set_holds_the_labelled_sets_videos(tmp_path, synthetic4d_dir):
    import av
    root = make_synthetic(tmp_path / "videos", labels=False, workers=1,
                          **{**SMALL_SYNTHETIC, "num_scenes": 2})
    names = ["scene_00000", "scene_00001"]
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == [
        "synthetic4d.json", *(f"train/videos/{n}.mp4" for n in names)]
    index = json.loads((root / "synthetic4d.json").read_text())
    assert index["settings"]["labels"] is False and index["splits"] == {"train": names,
                                                                         "test": []}
    for name in names:  # scenes 0 and 1 of the same seed, labelled: pixel for pixel
        decoded = []
        for folder in (root, synthetic4d_dir):
            with av.open(str(folder / "train" / "videos" / f"{name}.mp4")) as container:
                decoded.append(np.stack([f.to_ndarray(format="rgb24")
                                         for f in container.decode(video=0)]))
        assert decoded[0].shape == (SMALL_SYNTHETIC["frames"], 64, 64, 3)
        np.testing.assert_array_equal(decoded[0], decoded[1])
    with pytest.raises(ValueError, match="labels=False"):
        load_dataset("synthetic", cache_dir=tmp_path, synthetic={"labels": False})


def test_x264_streams_are_reproducible(tmp_path, synthetic4d_scene):
    """The same frames encode to the same bytes (x264's macroblock tree, on, varies)."""
    streams = set()
    for k in range(12):
        write_mp4(tmp_path / f"{k}.mp4", synthetic4d_scene["video"])
        streams.add((tmp_path / f"{k}.mp4").read_bytes())
    assert len(streams) == 1
