"""Data loading throughput: megavid's loader vs a usual whole-clip loader, and DALI-CPU vs PyAV.

``python benchmarks/data_loader.py --out results/data_loader.json [--quick]``

(1) Loaders, on 640x360 H.264 clips made here (x264 defaults: long GOP, as web video is):
megavid's ``VideoLoader`` (reads the packet index, seeks to the keyframe before the
first wanted frame, stops after the last) against a straightforward torch Dataset
that decodes every frame of the clip with PyAV and then picks 16 at stride 2, as
VideoMAE-style loaders do. Same workers, same crop/resize, clips/s.
(2) Decoders, on 640x360 VP9 clips: DALI's CPU decoder vs PyAV, 16 frames at stride 2
from a random start, one process, frames/s.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

from megavid.data.dataset import VideoClipDataset, collate_samples
from megavid.data.decode import PyAVDecoder
from megavid.data.loader import VideoLoader
from megavid.data.transforms import crop_resize, plan_crop, sample_rng
from megavid.tools.bench_results import write_results

T, STRIDE, SIZE = 16, 2, 224  # 16 frames at stride 2, resized to 224: the 4DS / VideoMAE input


def make_clips(folder: Path, n: int, frames: int, codec: str) -> list[Path]:
    """``n`` moving 640x360 clips at 30 fps; long-GOP encoder defaults (H.264) or realtime VP9."""
    paths, rng = [], np.random.default_rng(0)
    y, x = np.mgrid[0:360, 0:640]
    for i in range(n):
        path = folder / f"clip_{i:03d}.{'mp4' if codec == 'h264' else 'webm'}"
        phase = rng.uniform(0, 6, 3)
        with av.open(str(path), "w") as out:
            stream = out.add_stream("libx264" if codec == "h264" else "libvpx-vp9", rate=30)
            stream.width, stream.height, stream.pix_fmt = 640, 360, "yuv420p"
            if codec == "vp9":
                stream.options = {"deadline": "realtime", "cpu-used": "8", "crf": "32", "b:v": "0"}
            for t in range(frames):
                img = 127 + 100 * np.sin((x + 4 * t) / 37.0 + phase[:, None, None]) * \
                    np.cos((y - 2 * t) / 23.0)  # (3, H, W)
                frame = av.VideoFrame.from_ndarray(img.transpose(1, 2, 0).astype(np.uint8), "rgb24")
                out.mux(stream.encode(frame))
            out.mux(stream.encode(None))
        paths.append(path)
    return paths


class WholeClipDataset(torch.utils.data.Dataset):
    """The usual loader: decode the whole clip, then pick frames; same crop/resize as megavid."""

    def __init__(self, files: list[Path], seed: int = 0):
        self.files, self.seed = files, seed

    def __len__(self) -> int:
        return 1 << 30  # endless, like megavid's stream

    def __getitem__(self, index: int) -> dict:
        path = self.files[index % len(self.files)]
        with av.open(str(path)) as container:
            frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
        rng = sample_rng(self.seed, index)
        start = int(rng.integers(0, len(frames) - (T - 1) * STRIDE))
        clip = frames[start:start + T * STRIDE:STRIDE]  # (T, H, W, 3)
        video = crop_resize(clip, plan_crop(rng, *clip.shape[1:3]), SIZE, "unit")
        return {"video": video, "index": index, "events": []}


def clips_per_second(batches, warmup: int, measured: int, batch_size: int) -> float:
    it = iter(batches)
    for _ in range(warmup):  # worker start-up and the first prefetch are not throughput
        next(it)
    start = time.perf_counter()
    for _ in range(measured):
        next(it)
    return measured * batch_size / (time.perf_counter() - start)


def bench_loaders(files: list[Path], workers: int, batch: int, steps: int) -> dict:
    dataset = VideoClipDataset(files, decoder=PyAVDecoder(), num_frames=T, image_size=SIZE,
                               frame_stride=STRIDE, value_range="unit", seed=0)
    ours = VideoLoader(dataset, global_batch_size=batch, micro_batch_size=batch, dp_rank=0,
                       dp_size=1, num_workers=workers, seed=0)
    usual = torch.utils.data.DataLoader(WholeClipDataset(files), batch_size=batch,
                                        num_workers=workers, collate_fn=collate_samples,
                                        shuffle=False)
    return {"megavid": clips_per_second(ours, 1, steps, batch),
            "whole_clip": clips_per_second(usual, 1, steps, batch)}


def bench_decoders(files: list[Path], samples: int) -> tuple[dict, list[str]]:
    """Frames/s of DALI-CPU and PyAV decoding the same chosen frames of VP9 clips."""
    from megavid.data import dali

    decoders = {"pyav": PyAVDecoder()}
    if dali.dali_available():
        decoders["dali_cpu"] = dali.DALIDecoder(device="cpu")
    rng = np.random.default_rng(0)
    jobs = []
    for i in range(samples):
        path = files[i % len(files)]
        start = int(rng.integers(0, decoders["pyav"].probe(path).num_frames - (T - 1) * STRIDE))
        jobs.append((path, list(range(start, start + T * STRIDE, STRIDE))))
    out = {}
    for name, decoder in decoders.items():
        decoder.decode(*jobs[0])  # warm-up: DALI builds its pipeline, both read the index
        start = time.perf_counter()
        for job in jobs:
            decoder.decode(*job)
        out[name] = samples * T / (time.perf_counter() - start)
    notes = [] if "dali_cpu" in out else ["dali_cpu: skipped (pip install nvidia-dali-cuda120)"]
    return out, notes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="data_loader.json")
    p.add_argument("--quick", action="store_true", help="fewer, shorter clips and steps")
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args()
    n, frames, steps, batch = (4, 90, 4, 4) if a.quick else (16, 300, 16, 8)
    with tempfile.TemporaryDirectory() as tmp:
        h264 = make_clips(Path(tmp), n, frames, "h264")
        loaders = bench_loaders(h264, a.workers, batch, steps)
        vp9 = make_clips(Path(tmp), max(2, n // 2), frames, "vp9")
        decoders, notes = bench_decoders(vp9, 8 if a.quick else 32)
    params = {"clips": n, "frames_per_clip": frames, "fps": 30, "size": "640x360", "T": T,
              "stride": STRIDE, "image_size": SIZE, "workers": a.workers, "batch": batch}
    rows = [{"name": f"loader {k} h264", "value": round(v, 2), "unit": "clips/s", "params": params}
            for k, v in loaders.items()]
    rows += [{"name": f"decode {k} vp9", "value": round(v, 1), "unit": "frames/s",
              "params": {"samples": 8 if a.quick else 32, "T": T, "stride": STRIDE}}
             for k, v in decoders.items()]
    ratios = {"megavid_vs_whole_clip h264": round(loaders["megavid"] / loaders["whole_clip"], 3)}
    if "dali_cpu" in decoders:
        ratios["dali_cpu_vs_pyav vp9"] = round(decoders["dali_cpu"] / decoders["pyav"], 3)
    write_results(a.out, "data.loader", rows, ratios, notes=notes, extra={"settings": {
        "quick": a.quick, "h264": "x264 defaults (keyint 250)", "vp9": "realtime, cpu-used 8"}})
    print(rows, ratios)


if __name__ == "__main__":
    main()
