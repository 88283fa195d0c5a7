"""Readers and writers for the public 4D label formats; each writer's output reads back exactly.

* **TAP-Vid point tracks** (``tapnet/tapvid``): a pickle per video ``{"video": uint8
  [T, H, W, 3], "points": float [N, T, 2] (x, y) / (W, H), "occluded": bool [N, T]}``;
  TAP-Vid DAVIS stores one pickle of ``{name: that dict}``, TAP-Vid Kinetics a list of
  such dicts per shard, with frames possibly as JPEG bytes. Points are normalised by
  the frame size without a half-pixel shift (tapnet multiplies by (W, H) directly).
* **RealEstate10K cameras**: a ``.txt`` per clip; line 1 is the YouTube URL, then one
  line per frame ``timestamp_us fx fy cx cy 0 0 r11 r12 r13 t1 r21 ... t3``: intrinsics
  normalised by width (fx, cx) and height (fy, cy), then a row-major 3x4
  world-to-camera matrix in OpenCV axes.
* **Depth PNG folders** (ScanNet's exported layout): ``<scene>/depth/<i>.png`` 16-bit
  millimetres, 0 = invalid, with RGB frames ``<scene>/color/<i>.{png,jpg}`` beside them;
  optional ``<scene>/intrinsic/intrinsic_depth.txt`` (4x4) and ``<scene>/pose/<i>.txt``
  (4x4 camera-to-world).
* **Box tracks** (our JSON, schema in ``write_boxes``).
"""

from __future__ import annotations

import io
import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


# --------------------------------------------------------------------------- TAP-Vid


@dataclass
class Clip4D:
    """One evaluation clip; a label a source does not have is ``None``."""

    name: str
    video: np.ndarray  # (T, H, W, 3) float32 in [0, 1]
    depth: np.ndarray | None = None  # (T, H, W) float32 metres (z-depth), 0 = invalid
    intrinsics: np.ndarray | None = None  # (T, 3, 3) float32, pixels
    cam_to_world: np.ndarray | None = None  # (T, 4, 4) float32, OpenCV camera
    tracks: np.ndarray | None = None  # (N, T, 2) float32 pixel (x, y), centres at +0.5
    visible: np.ndarray | None = None  # (N, T) bool
    boxes: np.ndarray | None = None  # (M, T, 4) float32 pixel (x0, y0, x1, y1)
    box_visible: np.ndarray | None = None  # (M, T) bool

    @property
    def num_frames(self) -> int:
        return int(self.video.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        return int(self.video.shape[1]), int(self.video.shape[2])


def write_tapvid(path: str | Path, *, video: np.ndarray, points: np.ndarray,
                 occluded: np.ndarray) -> None:
    """One video's TAP-Vid pickle; ``points`` are normalised (x, y) in [0, 1]."""
    data = {"video": np.asarray(video, np.uint8), "points": np.asarray(points, np.float32),
            "occluded": np.asarray(occluded, bool)}
    _check_tapvid(data, Path(path))
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=4)


def read_tapvid(path: str | Path) -> list[tuple[str, dict]]:
    """``(name, {"video", "points", "occluded"})`` for every video in a pickle or folder.

    Accepts a per-video dict (named by the file stem), DAVIS's ``{name: dict}``,
    Kinetics' list of dicts (named ``<stem>_<index>``) and JPEG-bytes frames.
    """
    path = Path(path)
    files = sorted(path.glob("*.pkl")) + sorted(path.glob("*.pickle")) if path.is_dir() else [
        path]
    out = []
    for file in files:
        with open(file, "rb") as f:
            data = pickle.load(f)
        if isinstance(data, dict) and "video" in data:
            items = [(file.stem, data)]
        elif isinstance(data, dict):
            items = [(str(k), v) for k, v in data.items()]
        elif isinstance(data, list):
            items = [(f"{file.stem}_{i:04d}", v) for i, v in enumerate(data)]
        else:
            raise ValueError(f"{file}: not a TAP-Vid pickle (got {type(data).__name__}; "
                             "expected a dict with video/points/occluded, a dict of them or "
                             "a list of them)")
        for name, item in items:
            video = _decode_frames(item["video"])
            clean = {"video": video, "points": np.asarray(item["points"], np.float32),
                     "occluded": np.asarray(item["occluded"], bool)}
            out.append((name, _check_tapvid(clean, file)))
    return out


def read_tapvid_clips(path: str | Path) -> list:
    """``Clip4D``s with pixel tracks from a TAP-Vid pickle or folder of pickles."""
    clips = []
    for name, d in read_tapvid(path):
        height, width = d["video"].shape[1:3]
        clips.append(Clip4D(name=name, video=d["video"].astype(np.float32) / 255.0,
                            tracks=d["points"] * np.array([width, height], np.float32),
                            visible=~d["occluded"]))
    return clips


def _decode_frames(video) -> np.ndarray:
    if len(video) and isinstance(video[0], bytes):  # TAP-Vid Kinetics: JPEG bytes per frame
        return np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in video])
    return np.asarray(video, np.uint8)


def _check_tapvid(d: dict, file: Path) -> dict:
    t = d["video"].shape[0]
    n = d["points"].shape[0]
    if d["video"].ndim != 4 or d["points"].shape != (n, t, 2) or d["occluded"].shape != (n, t):
        raise ValueError(f"{file}: TAP-Vid shapes video {d['video'].shape}, points "
                         f"{d['points'].shape}, occluded {d['occluded'].shape} do not agree "
                         "(expected [T,H,W,3], [N,T,2], [N,T])")
    return d


# --------------------------------------------------------------------------- RealEstate10K

@dataclass
class Re10kCameras:
    """One RealEstate10K camera file: ``intrinsics`` (T, 4) normalised fx fy cx cy."""

    url: str
    timestamps: np.ndarray  # (T,) int64 microseconds
    intrinsics: np.ndarray  # (T, 4) float64, fx/W fy/H cx/W cy/H
    world_to_cam: np.ndarray  # (T, 3, 4) float64, OpenCV axes


def write_re10k(path: str | Path, cams: Re10kCameras) -> None:
    """Write ``cams`` as text; ``%.17g`` keeps every float64 exactly."""
    lines = [cams.url]
    for ts, k, m in zip(cams.timestamps, cams.intrinsics, cams.world_to_cam):
        numbers = [*k, 0.0, 0.0, *np.asarray(m).reshape(-1)]
        lines.append(" ".join([str(int(ts))] + [f"{float(v):.17g}" for v in numbers]))
    Path(path).write_text("\n".join(lines) + "\n")


def read_re10k(path: str | Path) -> Re10kCameras:
    lines = Path(path).read_text().splitlines()
    rows = [line.split() for line in lines[1:] if line.strip()]
    if not lines or any(len(r) != 19 for r in rows) or not rows:
        raise ValueError(f"{path}: not a RealEstate10K camera file (expected a URL line, then "
                         "19 numbers per frame: timestamp fx fy cx cy 0 0 and a 3x4 matrix)")
    table = np.array([[float(v) for v in r[1:]] for r in rows])  # (T, 18)
    return Re10kCameras(url=lines[0].strip(), timestamps=np.array([int(r[0]) for r in rows]),
                        intrinsics=table[:, :4], world_to_cam=table[:, 6:].reshape(-1, 3, 4))


def re10k_intrinsics(cams: Re10kCameras, *, height: int, width: int) -> np.ndarray:
    """(T, 3, 3) float32 pixel intrinsics for frames of ``height`` x ``width``."""
    k = np.zeros((len(cams.intrinsics), 3, 3))
    k[:, 0, 0], k[:, 1, 1] = cams.intrinsics[:, 0] * width, cams.intrinsics[:, 1] * height
    k[:, 0, 2], k[:, 1, 2] = cams.intrinsics[:, 2] * width, cams.intrinsics[:, 3] * height
    k[:, 2, 2] = 1.0
    return k.astype(np.float32)


def re10k_cam_to_world(cams: Re10kCameras) -> np.ndarray:
    """(T, 4, 4) float32 camera-to-world: the inverse of the stored world-to-camera."""
    w2c = np.tile(np.eye(4), (len(cams.world_to_cam), 1, 1))
    w2c[:, :3] = cams.world_to_cam
    return np.linalg.inv(w2c).astype(np.float32)


def re10k_from_matrices(intrinsics: np.ndarray, cam_to_world: np.ndarray, *, height: int,
                        width: int, url: str = "synthetic", fps: float = 24.0) -> Re10kCameras:
    """The inverse of ``re10k_intrinsics`` / ``re10k_cam_to_world`` (frame times at ``fps``)."""
    k = np.asarray(intrinsics, np.float64)
    norm = np.stack([k[:, 0, 0] / width, k[:, 1, 1] / height, k[:, 0, 2] / width,
                     k[:, 1, 2] / height], axis=1)
    w2c = np.linalg.inv(np.asarray(cam_to_world, np.float64))[:, :3]
    ts = np.round(np.arange(len(k)) * 1e6 / fps).astype(np.int64)
    return Re10kCameras(url=url, timestamps=ts, intrinsics=norm, world_to_cam=w2c)


# --------------------------------------------------------------------------- depth folders

def write_depth_folder(scene: str | Path, *, frames: np.ndarray,
                       depth: np.ndarray | None = None) -> None:
    """``color/<i>.png`` (lossless RGB) and ``depth/<i>.png`` (uint16 millimetres, 0 = invalid).

    Depth is rounded to the nearest millimetre; depths beyond 65.535 m become 0
    (invalid), as a 16-bit sensor would drop them.
    """
    scene = Path(scene)
    (scene / "color").mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(np.asarray(frames, np.uint8)):
        Image.fromarray(image).save(scene / "color" / f"{i:05d}.png")
    if depth is None:
        return
    (scene / "depth").mkdir(exist_ok=True)
    mm = np.round(np.nan_to_num(np.asarray(depth, np.float64), nan=0.0) * 1000.0)
    mm = np.where((mm > 0) & (mm <= 65535), mm, 0).astype(np.uint16)
    for i, image in enumerate(mm):
        Image.fromarray(image).save(scene / "depth" / f"{i:05d}.png")


def read_depth_folder(scene: str | Path) -> dict:
    """``{"frames": uint8 (T,H,W,3), "depth": float32 metres | None, "intrinsics",
    "cam_to_world"}`` from a ScanNet-style scene folder.

    Frames are ordered by the integer in their file names. Colour frames of another
    size than the depth maps (ScanNet: 1296x968 colour, 640x480 depth) are resized
    to the depth size, whose intrinsics ``intrinsic_depth.txt`` gives.
    """
    scene = Path(scene)
    colors = _numbered(scene / "color", IMAGE_SUFFIXES)
    if not colors:
        raise ValueError(f"{scene}: no frames in {scene / 'color'} (expected <i>.png or <i>.jpg)")
    frames = [np.asarray(Image.open(p).convert("RGB")) for p in colors]
    out = {"frames": None, "depth": None, "intrinsics": None, "cam_to_world": None}
    depths = _numbered(scene / "depth", (".png",))
    if depths:
        if len(depths) != len(colors):
            raise ValueError(f"{scene}: {len(colors)} colour frames but {len(depths)} depth maps")
        depth = np.stack([np.asarray(Image.open(p), dtype=np.float32) for p in depths]) / 1000.0
        out["depth"] = depth.astype(np.float32)
        h, w = depth.shape[1:]
        frames = [f if f.shape[:2] == (h, w) else np.asarray(
            Image.fromarray(f).resize((w, h), Image.BILINEAR)) for f in frames]
    out["frames"] = np.stack(frames)
    k_file = scene / "intrinsic" / "intrinsic_depth.txt"
    if k_file.is_file():
        out["intrinsics"] = np.tile(np.loadtxt(k_file)[:3, :3], (len(colors), 1, 1)).astype(
            np.float32)
    poses = _numbered(scene / "pose", (".txt",))
    if len(poses) == len(colors):
        out["cam_to_world"] = np.stack([np.loadtxt(p) for p in poses]).astype(np.float32)
    return out


def _numbered(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    if not folder.is_dir():
        return []
    files = [p for p in folder.iterdir() if p.suffix.lower() in suffixes]
    try:
        return sorted(files, key=lambda p: int(p.stem.split("_")[-1]))
    except ValueError:
        return sorted(files)


# --------------------------------------------------------------------------- box tracks

@dataclass
class BoxTracks:
    boxes: np.ndarray  # (M, T, 4) float32 pixel (x0, y0, x1, y1); 0 where absent
    visible: np.ndarray  # (M, T) bool
    size: tuple[int, int]  # (H, W) of the frames the pixels refer to
    ids: list


def write_boxes(path: str | Path, tracks: BoxTracks) -> None:
    """Box tracks as JSON, one file per video::

        {"frames": T, "size": [H, W],
         "tracks": [{"id": ..., "boxes": [[x0, y0, x1, y1] | null, ...one per frame]}]}

    Pixel coordinates (pixel centres at +0.5, so a box around pixel (i, j) alone is
    [j, i, j + 1, i + 1]); ``null`` marks a frame where the object is not visible.
    """
    m, t = tracks.visible.shape
    out = {"frames": int(t), "size": [int(s) for s in tracks.size], "tracks": []}
    for j in range(m):
        boxes = [[float(v) for v in tracks.boxes[j, i]] if tracks.visible[j, i] else None
                 for i in range(t)]
        out["tracks"].append({"id": tracks.ids[j], "boxes": boxes})
    Path(path).write_text(json.dumps(out))


def read_boxes(path: str | Path) -> BoxTracks:
    data = json.loads(Path(path).read_text())
    try:
        t, tracks = int(data["frames"]), data["tracks"]
        boxes = np.zeros((len(tracks), t, 4), np.float32)
        visible = np.zeros((len(tracks), t), bool)
        for j, track in enumerate(tracks):
            if len(track["boxes"]) != t:
                raise ValueError(f"track {track['id']} has {len(track['boxes'])} boxes, not {t}")
            for i, box in enumerate(track["boxes"]):
                if box is not None:
                    boxes[j, i], visible[j, i] = box, True
        return BoxTracks(boxes=boxes, visible=visible, size=tuple(data["size"]),
                         ids=[tr["id"] for tr in tracks])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: not a box-track JSON ({err}); expected {{'frames': T, "
                         "'size': [H, W], 'tracks': [{'id', 'boxes': [[x0,y0,x1,y1]|null]}]}")
