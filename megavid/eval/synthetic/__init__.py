"""The synthetic 4D benchmark: textured rooms with moving objects, rendered by Mitsuba 3.

Why Mitsuba 3's ``scalar_rgb`` variant: it is a real, physically based renderer
(textured meshes, a point light with shadows, antialiasing) installed from PyPI
as a wheel with no GPU, no system OpenGL/EGL and no compiler, and it answers the
geometric questions the labels need from the same scene it draws: an AOV pass gives
each pixel's exact 3D hit and shape, and ``ray_intersect`` gives depth tests at
sub-pixel track positions. The JIT variants (``llvm_ad_rgb``) need a recent
libLLVM: with the LLVM 15 of Debian 12 they abort in code generation
(``Cannot select ... fmaximum``), so the scalar variant is the one that runs
everywhere; at 64x64 it renders a frame in a few tens of milliseconds. A mesh
rasteriser of our own would have meant writing texturing, shading and
antialiasing, and testing the renderer as well as the benchmark.

Scene ``i`` is a pure function of ``(seed, i)``. A generated folder holds
``train/`` and ``test/`` (the last ``test_fraction`` of scene indices), each in
the 4D layout of ``megavid.eval.datasets``, written with ``megavid.eval.readers``,
and ``synthetic4d.json`` (settings and clip names), written last. With
``labels=False`` it holds only ``train/videos/*.mp4`` of every scene, for MAE
pretraining (no label pass, no track ray casts).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from megavid.eval import readers
from megavid.eval.synthetic.labels import (
    modal_boxes,
    sample_queries,
    track_labels,
    world_tracks,
)
from megavid.eval.synthetic.render import mitsuba, render_frames
from megavid.eval.synthetic.scene import sample_scene

# 2: the camera anywhere in the room looking at random points (1: an arc around the centre).
GENERATOR_VERSION = 2
# x264 is not deterministic on tiny frames: the same 3 frames of 32x32 encode to different
# streams in different processes (2 outcomes in 6 runs), which would make a set depend on how
# many workers rendered it. Smaller frames use FFmpeg's MPEG-4 part 2. At 48 and 64 px its
# macroblock-tree rate control varies too, even within one process (1 encode in 10 or so of 8
# frames differs, pixels included); with mbtree=0, 200 encodes per clip at 32-96 px gave one
# stream each, so x264 runs without it.
X264_MIN_SIDE = 48
INDEX_FILE = "synthetic4d.json"


def generate_scene(index: int, *, frames: int, size: int, seed: int, spp: int = 4,
                   num_tracks: int = 64, labels: bool = True) -> dict:
    """Scene ``index`` rendered: arrays of every label plus its ``spec`` (for tests).

    ``labels=False``: only ``spec`` and ``video`` (the same frames, a fraction of the work).
    """
    spec = sample_scene(np.random.default_rng([seed, index]), frames=frames, size=size)
    rendered = render_frames(spec, spp=spp, seed=seed * 100_003 + index, labels=labels)
    if not labels:
        return {"spec": spec, "video": rendered["video"]}
    local, owners = sample_queries(spec, rendered, np.random.default_rng([seed, index, 1]),
                                   num_tracks)
    world = world_tracks(spec, local, owners)
    tracks, visible = track_labels(spec, rendered, world)
    boxes, box_visible = modal_boxes(rendered["ids"], len(spec.objects))
    return {"spec": spec, "video": rendered["video"], "depth": rendered["depth"],
            "ids": rendered["ids"], "intrinsics": np.repeat(spec.intrinsics[None], frames, 0),
            "cam_to_world": spec.cam_to_world, "world_points": world, "owners": owners,
            "tracks": tracks, "visible": visible, "boxes": boxes, "box_visible": box_visible}


def write_scene(split_dir: Path, name: str, scene: dict) -> None:
    """One scene in the 4D layout, through the public-format writers."""
    video, (height, width) = scene["video"], scene["video"].shape[1:3]
    for part in ("scenes", "cameras", "tracks", "boxes", "videos"):
        (split_dir / part).mkdir(parents=True, exist_ok=True)
    readers.write_depth_folder(split_dir / "scenes" / name, frames=video, depth=scene["depth"])
    cams = readers.re10k_from_matrices(scene["intrinsics"], scene["cam_to_world"],
                                       height=height, width=width, url=f"synthetic://{name}")
    readers.write_re10k(split_dir / "cameras" / f"{name}.txt", cams)
    scale = np.array([width, height], np.float32)
    readers.write_tapvid(split_dir / "tracks" / f"{name}.pkl", video=video,
                         points=scene["tracks"] / scale, occluded=~scene["visible"])
    boxes = readers.BoxTracks(boxes=scene["boxes"], visible=scene["box_visible"],
                              size=(height, width), ids=[f"object_{j}" for j in range(
                                  len(scene["boxes"]))])
    readers.write_boxes(split_dir / "boxes" / f"{name}.json", boxes)
    write_mp4(split_dir / "videos" / f"{name}.mp4", video)


def write_mp4(path: Path, frames: np.ndarray, *, fps: int = 24) -> None:
    """(T, H, W, 3) uint8 as H.264, for pretraining; MPEG-4 part 2 where FFmpeg lacks libx264
    or a frame side is under ``X264_MIN_SIDE``.

    A keyframe every 8 frames keeps seeks cheap for ``megavid.data``'s decoder;
    single-threaded so parallel workers do not oversubscribe the cores; no macroblock tree
    (``X264_MIN_SIDE``), so the same frames give the same stream.
    """
    import av
    small = min(frames.shape[1:3]) < X264_MIN_SIDE
    codec = "libx264" if "libx264" in av.codecs_available and not small else "mpeg4"
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.gop_size = 8
        stream.codec_context.thread_count = 1
        if codec == "libx264":
            stream.options = {"preset": "veryfast", "crf": "18", "x264-params": "mbtree=0"}
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))  # flush delayed frames


def _write_job(job: tuple) -> None:
    split_dir, name, index, kwargs = job
    scene = generate_scene(index, **kwargs)
    if kwargs["labels"]:
        write_scene(split_dir, name, scene)
    else:
        (split_dir / "videos").mkdir(parents=True, exist_ok=True)
        write_mp4(split_dir / "videos" / f"{name}.mp4", scene["video"])


def write_synthetic(root: Path, *, num_scenes: int, frames: int, size: int, seed: int,
                    test_fraction: float = 0.25, spp: int = 4, num_tracks: int = 64,
                    labels: bool = True, workers: int | None = None) -> Path:
    """Generate the benchmark into ``root`` (see the module docstring); return ``root``.

    Written into a temporary sibling and renamed, so an interrupted run leaves
    nothing that looks complete; a ``root`` already holding these settings is kept.
    ``workers`` processes render scenes in parallel (default: the CPU count, at
    most 8); the output does not depend on it.

    ``labels=False`` writes only the videos, all scenes in ``train/videos/`` (for
    ``python -m megavid.pretrain --data ROOT/train/videos``; ``test_fraction`` and
    ``num_tracks`` are unused). Its scene ``i`` is scene ``i`` of the labelled set of
    the same seed, pixel for pixel, so pretraining scenes must come from another seed
    than the readout benchmark's, or the encoder will have seen the test scenes.
    """
    settings = dict(version=GENERATOR_VERSION, num_scenes=num_scenes, frames=frames,
                    size=size, seed=seed, test_fraction=test_fraction, spp=spp,
                    num_tracks=num_tracks, labels=labels)
    if num_scenes < 2 or size % 2 or frames < 2:
        raise ValueError(f"synthetic 4D: need num_scenes >= 2, frames >= 2 and an even size "
                         f"(H.264), got {num_scenes}, {frames}, {size}")
    if (root / INDEX_FILE).is_file():
        if json.loads((root / INDEX_FILE).read_text())["settings"] == settings:
            return root
        raise FileExistsError(f"{root} holds a synthetic set made with other settings")
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists and is not empty; pick a new folder")
    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    num_test = min(max(1, round(num_scenes * test_fraction)), num_scenes - 1) if labels else 0
    splits: dict[str, list[str]] = {"train": [], "test": []}
    jobs = []
    for i in range(num_scenes):
        name, split = f"scene_{i:05d}", "train" if i < num_scenes - num_test else "test"
        splits[split].append(name)
        jobs.append((tmp / split, name, i, dict(frames=frames, size=size, seed=seed, spp=spp,
                                                num_tracks=num_tracks, labels=labels)))
    workers = min(workers or os.cpu_count() or 1, 8, num_scenes)
    if workers > 1:  # scenes are independent: one process each (spawn: Mitsuba is threaded)
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            list(pool.map(_write_job, jobs))
    else:
        for job in jobs:
            _write_job(job)
    index = {"settings": settings, "splits": splits, "mitsuba": mitsuba().__version__,
             "layout": "megavid.eval.datasets (4D layout per split folder)" if labels else
             "train/videos/*.mp4 only (labels=False)"}
    (tmp / INDEX_FILE).write_text(json.dumps(index, indent=1))
    if root.exists():
        root.rmdir()  # empty, checked above
    try:
        os.rename(tmp, root)
    except OSError:  # another process finished first: keep its copy
        if not (root / INDEX_FILE).is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return root
