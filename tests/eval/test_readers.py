"""Readers round-trip fixtures written here, and ``load_dataset`` detects every layout."""

from __future__ import annotations

import io
import json
import pickle

import numpy as np
import pytest
from PIL import Image

from megavid.eval import load_dataset, readers
from megavid.eval.datasets import Clip4D, crop_resize

RNG = np.random.default_rng(0)


def _video(t=3, h=8, w=12):
    return RNG.integers(0, 256, size=(t, h, w, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- TAP-Vid

def test_tapvid_pickle_round_trip(tmp_path):
    video, points = _video(), RNG.uniform(0, 1, size=(5, 3, 2)).astype(np.float32)
    occluded = RNG.random((5, 3)) < 0.3
    readers.write_tapvid(tmp_path / "clip.pkl", video=video, points=points, occluded=occluded)
    [(name, data)] = readers.read_tapvid(tmp_path / "clip.pkl")
    assert name == "clip"
    np.testing.assert_array_equal(data["video"], video)
    np.testing.assert_array_equal(data["points"], points)
    np.testing.assert_array_equal(data["occluded"], occluded)
    [clip] = load_dataset(str(tmp_path / "clip.pkl"))
    np.testing.assert_allclose(clip.tracks, points * [12, 8])  # normalised (x, y) * (W, H)
    np.testing.assert_array_equal(clip.visible, ~occluded)
    assert clip.video.dtype == np.float32 and clip.video.max() <= 1.0


def test_tapvid_davis_and_kinetics_layouts(tmp_path):
    item = {"video": _video(), "points": np.zeros((2, 3, 2)), "occluded": np.zeros((2, 3), bool)}
    with open(tmp_path / "tapvid_davis.pkl", "wb") as f:  # DAVIS: {name: item}
        pickle.dump({"bear": item, "car": item}, f)
    jpegs = []
    for frame in item["video"]:
        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG")
        jpegs.append(buf.getvalue())
    with open(tmp_path / "0000_of_0010.pkl", "wb") as f:  # Kinetics: a list, JPEG frames
        pickle.dump([{**item, "video": jpegs}], f)
    clips = load_dataset(str(tmp_path))  # a folder of pickles
    assert [c.name for c in clips] == ["0000_of_0010_0000", "bear", "car"]
    assert clips[0].video.shape == (3, 8, 12, 3)


def test_tapvid_rejects_inconsistent_shapes(tmp_path):
    with pytest.raises(ValueError, match="do not agree"):
        readers.write_tapvid(tmp_path / "x.pkl", video=_video(), points=np.zeros((2, 4, 2)),
                             occluded=np.zeros((2, 4), bool))


# --------------------------------------------------------------------------- RealEstate10K

# The public layout: URL, then `timestamp fx fy cx cy 0 0` and a row-major 3x4 world-to-camera.
RE10K_FIXTURE = """https://www.youtube.com/watch?v=example
0 0.5 0.8 0.5 0.5 0 0 1 0 0 0 0 1 0 0 0 0 1 0
33366 0.5 0.8 0.5 0.5 0 0 1 0 0 -1 0 1 0 0 0 0 1 2
"""


def test_re10k_parses_the_public_layout(tmp_path):
    (tmp_path / "clip.txt").write_text(RE10K_FIXTURE)
    cams = readers.read_re10k(tmp_path / "clip.txt")
    assert cams.url.endswith("example") and cams.timestamps.tolist() == [0, 33366]
    k = readers.re10k_intrinsics(cams, height=100, width=200)
    np.testing.assert_allclose(k[0], [[100, 0, 100], [0, 80, 50], [0, 0, 1]])
    c2w = readers.re10k_cam_to_world(cams)
    # world-to-camera translation (-1, 0, 2) -> the camera centre is at (1, 0, -2).
    np.testing.assert_allclose(c2w[1, :3, 3], [1, 0, -2])
    np.testing.assert_allclose(c2w[0], np.eye(4))


def test_re10k_round_trip_is_exact(tmp_path):
    q, _ = np.linalg.qr(RNG.normal(size=(4, 3, 3)))
    c2w = np.tile(np.eye(4), (4, 1, 1))
    c2w[:, :3, :3], c2w[:, :3, 3] = q, RNG.normal(size=(4, 3))
    k = np.tile(np.array([[50.0, 0, 31.5], [0, 52.0, 30.25], [0, 0, 1]]), (4, 1, 1))
    cams = readers.re10k_from_matrices(k, c2w, height=60, width=64)
    readers.write_re10k(tmp_path / "c.txt", cams)
    back = readers.read_re10k(tmp_path / "c.txt")
    np.testing.assert_array_equal(back.world_to_cam, cams.world_to_cam)
    np.testing.assert_array_equal(back.intrinsics, cams.intrinsics)
    np.testing.assert_allclose(readers.re10k_intrinsics(back, height=60, width=64), k, rtol=1e-6)
    np.testing.assert_allclose(readers.re10k_cam_to_world(back), c2w, atol=1e-6)


def test_re10k_rejects_other_text(tmp_path):
    (tmp_path / "bad.txt").write_text("url\n1 2 3\n")
    with pytest.raises(ValueError, match="RealEstate10K"):
        readers.read_re10k(tmp_path / "bad.txt")


# --------------------------------------------------------------------------- depth folders

def test_depth_folder_round_trip_in_millimetres(tmp_path):
    frames = _video()
    depth = RNG.uniform(0.5, 9.0, size=(3, 8, 12))
    depth[0, 0, 0] = 0.0  # invalid stays invalid
    depth[0, 0, 1] = 70.0  # beyond 16 bits of millimetres: dropped to invalid
    readers.write_depth_folder(tmp_path / "scene", frames=frames, depth=depth)
    raw = np.asarray(Image.open(tmp_path / "scene" / "depth" / "00000.png"))
    assert raw.dtype == np.uint16 or raw.max() > 255  # a 16-bit PNG
    out = readers.read_depth_folder(tmp_path / "scene")
    np.testing.assert_array_equal(out["frames"], frames)
    expected = np.where(depth > 65.535, 0, np.round(depth * 1000) / 1000)
    np.testing.assert_allclose(out["depth"], expected, atol=1e-6)


def test_scannet_style_folder_with_larger_jpeg_colour(tmp_path):
    scene = tmp_path / "scene0000_00"
    for sub in ("color", "depth", "intrinsic", "pose"):
        (scene / sub).mkdir(parents=True)
    for i in (0, 1, 10):  # numeric order, not lexicographic (0, 1, 10)
        Image.fromarray(np.full((16, 24, 3), i * 20, np.uint8)).save(scene / "color" / f"{i}.jpg")
        Image.fromarray(np.full((8, 12), 1000 + i, np.uint16)).save(scene / "depth" / f"{i}.png")
        np.savetxt(scene / "pose" / f"{i}.txt", np.eye(4) + np.eye(4, k=3) * i)
    np.savetxt(scene / "intrinsic" / "intrinsic_depth.txt", np.diag([10.0, 10.0, 1.0, 1.0]))
    [clip] = load_dataset(str(tmp_path))
    assert clip.name == "scene0000_00" and clip.video.shape == (3, 8, 12, 3)  # resized
    np.testing.assert_allclose(clip.depth[:, 0, 0], [1.0, 1.001, 1.010])
    np.testing.assert_allclose(clip.cam_to_world[2, 0, 3], 10.0)
    assert clip.intrinsics.shape == (3, 3, 3) and clip.intrinsics[0, 0, 0] == 10.0


# --------------------------------------------------------------------------- boxes

def test_box_json_round_trip_with_absent_frames(tmp_path):
    boxes = RNG.uniform(0, 50, size=(2, 3, 4)).astype(np.float32)
    visible = np.array([[True, False, True], [False, False, True]])
    boxes[~visible] = 0
    tracks = readers.BoxTracks(boxes=boxes, visible=visible, size=(48, 64), ids=["car", 7])
    readers.write_boxes(tmp_path / "b.json", tracks)
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["tracks"][0]["boxes"][1] is None and data["size"] == [48, 64]
    back = readers.read_boxes(tmp_path / "b.json")
    np.testing.assert_array_equal(back.boxes, boxes)
    np.testing.assert_array_equal(back.visible, visible)
    assert back.ids == ["car", 7] and back.size == (48, 64)


def test_box_json_rejects_wrong_lengths(tmp_path):
    (tmp_path / "b.json").write_text(json.dumps(
        {"frames": 3, "size": [8, 8], "tracks": [{"id": 1, "boxes": [None]}]}))
    with pytest.raises(ValueError, match="box-track JSON"):
        readers.read_boxes(tmp_path / "b.json")


# --------------------------------------------------------------------------- detection

def test_layout_joins_parts_by_name_and_checks_lengths(tmp_path):
    frames = _video(t=4, h=8, w=8)
    readers.write_depth_folder(tmp_path / "scenes" / "a", frames=frames)
    (tmp_path / "cameras").mkdir()
    cams = readers.re10k_from_matrices(np.tile(np.eye(3), (4, 1, 1)), np.tile(np.eye(4), (
        4, 1, 1)), height=8, width=8)
    readers.write_re10k(tmp_path / "cameras" / "a.txt", cams)
    [clip] = load_dataset(str(tmp_path))
    assert clip.depth is None and clip.tracks is None and clip.cam_to_world.shape == (4, 4, 4)
    readers.write_re10k(tmp_path / "cameras" / "a.txt", readers.re10k_from_matrices(
        np.tile(np.eye(3), (2, 1, 1)), np.tile(np.eye(4), (2, 1, 1)), height=8, width=8))
    with pytest.raises(ValueError, match="has 4 frames but intrinsics has 2"):
        load_dataset(str(tmp_path))


def test_unknown_layouts_name_the_path_and_the_expected_layouts(tmp_path):
    with pytest.raises(ValueError, match=f"{tmp_path}.*expected 'synthetic'"):
        load_dataset(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="missing"):
        load_dataset(str(tmp_path / "missing"))


def test_crop_resize_moves_every_label_with_the_pixels():
    k = np.tile(np.array([[10.0, 0, 6], [0, 10.0, 4], [0, 0, 1]], np.float32), (2, 1, 1))
    clip = Clip4D(name="c", video=np.zeros((2, 8, 12, 3), np.float32),
                  depth=np.arange(96, dtype=np.float32).reshape(8, 12)[None].repeat(2, 0),
                  intrinsics=k,
                  tracks=np.array([[[6.0, 4.0]] * 2, [[1.0, 4.0]] * 2], np.float32),
                  visible=np.ones((2, 2), bool),
                  boxes=np.array([[[0.0, 0.0, 4.0, 4.0]] * 2], np.float32),
                  box_visible=np.ones((1, 2), bool))
    out = crop_resize(clip, 4)  # centre 8x8 crop (x from 2 to 10), then half size
    assert out.video.shape == (2, 4, 4, 3)
    np.testing.assert_allclose(out.tracks[0, 0], [2.0, 2.0])  # the optical centre stays put
    assert out.visible[:, 0].tolist() == [True, False]  # x = 1 is cropped away
    np.testing.assert_allclose(out.intrinsics[0], [[5, 0, 2], [0, 5, 2], [0, 0, 1]])
    np.testing.assert_allclose(out.boxes[0, 0], [0.0, 0.0, 1.0, 2.0])  # clipped to the crop
    # Nearest depth: output pixel (0, 0) covers source pixels rows 0-1, columns 2-3.
    assert out.depth[0, 0, 0] == clip.depth[0, 1, 3]
