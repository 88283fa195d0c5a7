"""Evaluation clips (``Clip4D``) and ``load_dataset``: the synthetic 4D benchmark or real data.

Every source becomes a list of ``Clip4D``: one video with whatever 4D labels the
source has (depth, cameras, point tracks, boxes), in one set of conventions:

* pixel coordinates are continuous with pixel centres at +0.5 (pixel ``(i, j)``
  covers ``x in [j, j + 1)``, ``y in [i, i + 1)``), so normalised = pixel / size;
* cameras are OpenCV (x right, y down, z forward); ``cam_to_world`` maps camera
  coordinates to world coordinates; depth is z-depth in metres, 0 where invalid.

``load_dataset(spec)`` detects the layout of ``spec`` in this order:

1. ``"synthetic"``: the default synthetic benchmark, generated once into
   ``<cache_dir>/synthetic4d-<hash of the generator settings>/`` and read back;
2. a ``.pkl``/``.pickle`` file: TAP-Vid point tracks (``readers.read_tapvid``);
3. a folder with ``synthetic4d.json`` or a ``<split>/`` subfolder: that split's folder;
4. a folder with any of ``scenes/ cameras/ tracks/ boxes/``: the 4D layout below;
5. a folder of ``*.pkl``: TAP-Vid (DAVIS: one pickle of many videos; Kinetics: many);
6. a folder whose subfolders hold ``color/`` and ``depth/``: ScanNet-style depth scenes.

The 4D layout (what ``make_synthetic`` writes for each split; every part optional
except the frames, and parts are joined by clip name)::

    scenes/<name>/color/00000.png   RGB frames, lossless (the frames of every other part)
    scenes/<name>/depth/00000.png   16-bit PNG depth in millimetres (ScanNet), 0 = invalid
    cameras/<name>.txt              RealEstate10K camera file (intrinsics + world-to-camera)
    tracks/<name>.pkl               TAP-Vid point-track pickle (video, points, occluded)
    boxes/<name>.json               box tracks (schema in ``readers.write_boxes``)
    videos/<name>.mp4               H.264 copy (MPEG-4 part 2 under 48 px) for pretraining
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from megavid.eval import readers
from megavid.eval.readers import Clip4D
from megavid.eval.synthetic import GENERATOR_VERSION, INDEX_FILE, write_synthetic
from megavid.eval.synthetic.render import mitsuba

LAYOUT_PARTS = ("scenes", "cameras", "tracks", "boxes")


# Default synthetic benchmark: sized for the `tiny` preset (8 frames at 64x64) on a CPU.
# 256 scenes (192 train / 64 test): 0.15 s a scene with 2 workers on 2 cores (up to 0.3 s on a
# busy machine; `benchmarks/synthetic_prior.py`), so 40-80 s the first time, then cached.
SYNTHETIC_DEFAULTS = dict(num_scenes=256, frames=8, size=64, seed=0, test_fraction=0.25)


def load_dataset(spec: str, *, split: str = "test", num_frames: int | None = None,
                 size: int | None = None, cache_dir: str | Path = "~/.cache/megavid",
                 max_clips: int | None = None, synthetic: dict | None = None) -> list[Clip4D]:
    """The clips of ``spec`` (``"synthetic"`` or a path; rules in the module docstring).

    ``num_frames`` keeps the first frames of each clip (clips shorter than that are an
    error); ``size`` centre-crops to a square and resizes to ``size`` x ``size``,
    moving every label with the pixels. For ``"synthetic"`` both are rendered
    natively instead (``frames``/``size`` of the generator), and ``synthetic``
    overrides any of ``SYNTHETIC_DEFAULTS`` (e.g. ``{"num_scenes": 200, "seed": 1}``).
    """
    if spec == "synthetic":  # rendered natively at the requested frames and size
        native = {"frames": num_frames, "size": size}
        settings = {**SYNTHETIC_DEFAULTS, **{k: v for k, v in native.items() if v},
                    **(synthetic or {})}
        if not settings.get("labels", True):
            raise ValueError("load_dataset('synthetic'): labels=False sets hold videos only, "
                             "for pretraining; write them with make_synthetic(labels=False)")
        root = ensure_synthetic(cache_dir, **settings)
    else:
        root = Path(spec).expanduser()
    clips = _read_any(root, split)
    if max_clips is not None:
        clips = clips[:max_clips]
    return [_fit(c, num_frames=num_frames, size=size) for c in clips]


def make_synthetic(out_dir: str | Path, *, num_scenes: int, frames: int = 16, size: int = 64,
                   seed: int = 0, test_fraction: float = 0.25, **render) -> Path:
    """Render ``num_scenes`` scenes into ``out_dir/{train,test}/`` (4D layout); return ``out_dir``.

    Scene ``i`` is a pure function of ``(seed, i)``; the last ``test_fraction`` of
    the indices form the test split. ``render`` takes ``spp``, ``num_tracks``,
    ``workers`` and ``labels`` (see ``megavid.eval.synthetic.write_synthetic``).

    ``labels=False`` writes only ``out_dir/train/videos/*.mp4`` of all the scenes, at a
    fraction of the cost, for MAE pretraining on more scenes than the labelled readout
    split (``python -m megavid.pretrain --data out_dir/train/videos``). Use another
    ``seed`` than the readout benchmark's (``SYNTHETIC_DEFAULTS``: 0), e.g. 1: a seed's
    scene ``i`` is the same video with or without labels, test scenes included.
    """
    return write_synthetic(Path(out_dir), num_scenes=num_scenes, frames=frames, size=size,
                           seed=seed, test_fraction=test_fraction, **render)


def ensure_synthetic(cache_dir: str | Path, **settings) -> Path:
    """The synthetic set for ``settings`` under ``cache_dir``, generated on first use.

    The folder is named by a hash of the generator version, the Mitsuba version and
    the settings (``workers`` excluded: it does not change the output).
    """
    workers = settings.pop("workers", None)
    key = json.dumps({"version": GENERATOR_VERSION, "mitsuba": mitsuba().__version__,
                      **settings}, sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    root = Path(cache_dir).expanduser() / f"synthetic4d-{digest}"
    if not (root / INDEX_FILE).is_file():  # the index is written last: its presence = complete
        root.parent.mkdir(parents=True, exist_ok=True)
        make_synthetic(root, workers=workers, **settings)
    return root


def _read_any(root: Path, split: str) -> list[Clip4D]:
    """Detect the layout of ``root`` (rules 2-6 of the module docstring) and read it."""
    if root.is_file() and root.suffix in (".pkl", ".pickle"):
        return readers.read_tapvid_clips(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such dataset file or folder; {_EXPECTED}")
    if (root / INDEX_FILE).is_file() or (root / split).is_dir():
        if not (root / split).is_dir():
            raise FileNotFoundError(f"{root}: has no '{split}' split folder ({root / split})")
        return _read_any(root / split, split)
    if any((root / part).is_dir() for part in LAYOUT_PARTS):
        return read_layout(root)
    if any(root.glob("*.pkl")) or any(root.glob("*.pickle")):
        return readers.read_tapvid_clips(root)
    scenes = sorted(p for p in root.iterdir() if (p / "color").is_dir() and (p / "depth").is_dir())
    if scenes:
        return [_depth_clip(p) for p in scenes]
    raise ValueError(f"{root}: no dataset layout recognised; {_EXPECTED}")


_EXPECTED = (
    "expected 'synthetic', a TAP-Vid .pkl file or folder of them, a folder with "
    "synthetic4d.json or a split subfolder, a 4D-layout folder (any of scenes/, cameras/, "
    "tracks/, boxes/), or ScanNet-style scene folders with color/ and depth/ "
    "(see megavid/eval/datasets.py)"
)


def read_layout(root: Path) -> list[Clip4D]:
    """Clips of a 4D-layout folder: every part that exists, joined by clip name."""
    names = sorted(_names(root))
    if not names:
        raise ValueError(f"{root}: 4D layout with no clips; {_EXPECTED}")
    return [_layout_clip(root, name) for name in names]


def _names(root: Path) -> set[str]:
    found = set()
    if (root / "scenes").is_dir():
        found |= {p.name for p in (root / "scenes").iterdir() if (p / "color").is_dir()}
    for part, suffix in (("cameras", ".txt"), ("tracks", ".pkl"), ("boxes", ".json")):
        if (root / part).is_dir():
            found |= {p.stem for p in (root / part).glob(f"*{suffix}")}
    return found


def _layout_clip(root: Path, name: str) -> Clip4D:
    """Join the parts of clip ``name``; frames come from ``scenes/`` else the track pickle."""
    scene, video, clip = root / "scenes" / name, None, {}
    if (scene / "color").is_dir():
        parts = readers.read_depth_folder(scene)
        video = parts.pop("frames")
        clip.update({k: v for k, v in parts.items() if v is not None})
    if (root / "tracks" / f"{name}.pkl").is_file():
        data = readers.read_tapvid(root / "tracks" / f"{name}.pkl")[0][1]
        video = data["video"] if video is None else video
        height, width = video.shape[1:3]
        clip["tracks"] = data["points"] * np.array([width, height], np.float32)
        clip["visible"] = ~data["occluded"]
    if video is None:
        raise ValueError(f"{root}: clip '{name}' has no frames (expected {scene}/color/ or "
                         f"tracks/{name}.pkl)")
    height, width = video.shape[1:3]
    if (root / "cameras" / f"{name}.txt").is_file():
        cams = readers.read_re10k(root / "cameras" / f"{name}.txt")
        clip["intrinsics"] = readers.re10k_intrinsics(cams, height=height, width=width)
        clip["cam_to_world"] = readers.re10k_cam_to_world(cams)
    if (root / "boxes" / f"{name}.json").is_file():
        tracks = readers.read_boxes(root / "boxes" / f"{name}.json")
        if tuple(tracks.size) != (height, width):
            raise ValueError(f"{root}: boxes/{name}.json is for frames of {tracks.size}, the "
                             f"clip's are {(height, width)}")
        clip["boxes"], clip["box_visible"] = tracks.boxes, tracks.visible
    return _checked(Clip4D(name=name, video=_to_float(video), **clip), root)


def _depth_clip(scene: Path) -> Clip4D:
    parts = readers.read_depth_folder(scene)
    video = _to_float(parts.pop("frames"))
    return _checked(Clip4D(name=scene.name, video=video, **parts), scene.parent)


def _to_float(video: np.ndarray) -> np.ndarray:
    return video.astype(np.float32) / 255.0 if video.dtype == np.uint8 else video.astype(
        np.float32)


def _checked(clip: Clip4D, root: Path) -> Clip4D:
    """Every label must have the video's frame count (and depth its size)."""
    t, h, w = clip.video.shape[:3]
    lengths = {"depth": 0, "intrinsics": 0, "cam_to_world": 0, "tracks": 1, "visible": 1,
               "boxes": 1, "box_visible": 1}
    for key, axis in lengths.items():
        value = getattr(clip, key)
        if value is not None and value.shape[axis] != t:
            raise ValueError(f"{root}: clip '{clip.name}' has {t} frames but {key} has "
                             f"{value.shape[axis]}")
    if clip.depth is not None and clip.depth.shape[1:] != (h, w):
        raise ValueError(f"{root}: clip '{clip.name}' depth {clip.depth.shape[1:]} does not "
                         f"match frames {(h, w)}")
    return clip


def _fit(clip: Clip4D, *, num_frames: int | None, size: int | None) -> Clip4D:
    """First ``num_frames`` frames, then a centre square crop resized to ``size``."""
    if num_frames is not None:
        if clip.num_frames < num_frames:
            raise ValueError(f"clip '{clip.name}' has {clip.num_frames} frames, fewer than "
                             f"num_frames={num_frames}")
        clip = _slice_time(clip, num_frames)
    if size is not None and clip.size != (size, size):
        clip = crop_resize(clip, size)
    return clip


def _slice_time(clip: Clip4D, n: int) -> Clip4D:
    out = {}
    for f in fields(clip):
        value = getattr(clip, f.name)
        if f.name in ("tracks", "visible", "boxes", "box_visible") and value is not None:
            out[f.name] = value[:, :n]
        elif f.name != "name" and value is not None:
            out[f.name] = value[:n]
    return replace(clip, **out)


def crop_resize(clip: Clip4D, size: int) -> Clip4D:
    """Centre-crop ``clip`` to a square and resize it to ``size``, labels included.

    Video: bilinear with antialiasing; depth: nearest (blending across an edge would
    invent depths nobody saw). Tracks and boxes leaving the crop become invisible;
    boxes are clipped to it. Coordinates map exactly: ``x' = (x - x0) * size / side``.
    """

    height, width = clip.size
    side = min(height, width)
    y0, x0, scale = (height - side) // 2, (width - side) // 2, size / side
    video = torch.from_numpy(np.ascontiguousarray(
        clip.video[:, y0:y0 + side, x0:x0 + side].transpose(0, 3, 1, 2)))  # (T, 3, s, s)
    video = F.interpolate(video, size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False).clamp(0, 1)
    out = {"video": video.permute(0, 2, 3, 1).numpy().astype(np.float32)}
    if clip.depth is not None:
        idx = np.minimum(((np.arange(size) + 0.5) / scale).astype(int), side - 1)
        out["depth"] = clip.depth[:, y0 + idx[:, None], x0 + idx[None, :]]
    if clip.intrinsics is not None:
        k = clip.intrinsics.copy()
        k[:, 0, 2] -= x0
        k[:, 1, 2] -= y0
        k[:, :2] *= scale
        out["intrinsics"] = k
    offset = np.array([x0, y0], np.float32)
    if clip.tracks is not None:
        tracks = (clip.tracks - offset) * scale
        inside = np.all((tracks >= 0) & (tracks < size), axis=-1)
        out["tracks"] = tracks.astype(np.float32)
        out["visible"] = clip.visible & inside if clip.visible is not None else inside
    if clip.boxes is not None:
        boxes = np.clip((clip.boxes - np.tile(offset, 2)) * scale, 0, size)
        nonempty = (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
        out["boxes"] = boxes.astype(np.float32)
        out["box_visible"] = (clip.box_visible if clip.box_visible is not None
                              else True) & nonempty
    return replace(clip, **out)
