"""Data loading throughput: megavid's loader vs a VideoMAE-style loader, and DALI-CPU vs PyAV.

``python benchmarks/data_loader.py --out benchmarks/results/data_loader_cpu.json [--quick]``

(1) Loaders, on 640x360 H.264 clips made here (30 fps, 10 s, x264 defaults: long GOP, as
web video is): megavid's ``VideoLoader`` (reads the packet index, seeks to the keyframe
before the first wanted frame, stops after the last) against a VideoMAE-style torch
Dataset that decodes every frame of the clip with PyAV and then takes 16 at stride 4.
Same clips, same 16x224x224 output (same crop/resize code), same worker processes.
(2) Decoders, on 640x360 VP9 clips as ``prepare --codec vp9 --gop 8`` writes them:
megavid's DALI-CPU decoder vs its PyAV decoder, 16 frames at stride 4 from a random start,
one process, the same samples. DALI decodes as the loader calls it: a micro-batch of
``--dali-batch`` samples per pipeline run, on one thread per core (``data.dali_threads: 0``
with one worker); also one sample per run on one thread, and handed the whole file (what it
did before it was given keyframe-aligned segments). PyAV decodes one sample at a time, as
the loader calls it, and, as a peer for DALI's thread pool, a micro-batch on a pool of
Python threads (one per core, one decoder each).

The machine may be shared: each side runs in turn, ``--repeats`` times, interleaved
(A B A B ...), and the reported value is the median; ratios are medians of the per-round
ratios, so slow drift in background load cancels.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import numpy as np
import torch

from megavid.data import dali
from megavid.data.dataset import VideoClipDataset, collate_samples
from megavid.data.decode import PyAVDecoder
from megavid.data.loader import VideoLoader
from megavid.data.transforms import crop_resize, plan_crop, sample_rng
from megavid.tools.bench_results import write_results

T, STRIDE, SIZE = 16, 4, 224  # VideoMAE's input: 16 frames at stride 4, resized to 224
WIDTH, HEIGHT, FPS = 640, 360, 30


def make_clips(folder: Path, n: int, frames: int, codec: str) -> list[Path]:
    """``n`` moving 640x360 clips at 30 fps: H.264 with x264's defaults, or VP9 realtime
    with a keyframe every 8 frames (the prepare tool's settings)."""
    paths, rng = [], np.random.default_rng(0)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    for i in range(n):
        path = folder / f"clip_{i:03d}.{'mp4' if codec == 'h264' else 'webm'}"
        phase = rng.uniform(0, 6, 3)
        with av.open(str(path), "w") as out:
            stream = out.add_stream("libx264" if codec == "h264" else "libvpx-vp9", rate=FPS)
            stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
            if codec == "vp9":
                stream.codec_context.gop_size = 8
                stream.options = {"deadline": "realtime", "cpu-used": "8", "crf": "32",
                                  "b:v": "0"}
            for t in range(frames):
                img = 127 + 100 * np.sin((x + 4 * t) / 37.0 + phase[:, None, None]) * \
                    np.cos((y - 2 * t) / 23.0)  # (3, H, W)
                frame = av.VideoFrame.from_ndarray(img.transpose(1, 2, 0).astype(np.uint8), "rgb24")
                out.mux(stream.encode(frame))
            out.mux(stream.encode(None))
        paths.append(path)
    return paths


class WholeClipDataset(torch.utils.data.Dataset):
    """The VideoMAE-style loader: decode the whole clip with PyAV, then take T frames at
    STRIDE from a random start; the same crop/resize as megavid."""

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


def clips_per_second(loader, batches: int, batch_size: int) -> float:
    """Throughput after the first batch (worker start-up and first prefetch excluded)."""
    it = iter(loader)
    next(it)
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(it)
        assert batch["video"].shape == (batch_size, T, SIZE, SIZE, 3)
    rate = batches * batch_size / (time.perf_counter() - start)
    del it  # shut the workers down before the other side runs
    return rate


def interleave(sides: dict, repeats: int) -> dict[str, list[float]]:
    """Run each side's measurement in turn, ``repeats`` rounds: {side: [value per round]}."""
    out: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repeats):
        for name, measure in sides.items():
            out[name].append(measure())
    return out


def bench_loaders(files: list[Path], workers: int, batch: int, batches: int,
                  repeats: int) -> dict[str, list[float]]:
    dataset = VideoClipDataset(files, decoder=PyAVDecoder(), num_frames=T, image_size=SIZE,
                               frame_stride=STRIDE, value_range="unit", seed=0)
    layout = dict(global_batch_size=batch, micro_batch_size=batch, dp_rank=0, dp_size=1)
    ours = VideoLoader(dataset, **layout, num_workers=workers, seed=0)
    baseline = torch.utils.data.DataLoader(WholeClipDataset(files), batch_size=batch,
                                           num_workers=workers, collate_fn=collate_samples,
                                           shuffle=False, persistent_workers=False)
    return interleave({"megavid": lambda: clips_per_second(ours, batches, batch),
                       "baseline": lambda: clips_per_second(baseline, batches, batch)}, repeats)


def decode_jobs(files: list[Path], samples: int) -> list[tuple[Path, list[int]]]:
    """The same (file, 16 frames at stride 4 from a random start) for every decoder."""
    rng, probe, jobs = np.random.default_rng(0), PyAVDecoder(), []
    for i in range(samples):
        path = files[i % len(files)]
        start = int(rng.integers(0, probe.probe(path).num_frames - (T - 1) * STRIDE))
        jobs.append((path, list(range(start, start + T * STRIDE, STRIDE))))
    return jobs


class WholeFileDALI:
    """DALI-CPU handed the whole file, as megavid did before segments: decodes from frame 0."""

    def __init__(self):
        from megavid.data.dali import DALIDecoder

        self.inner = DALIDecoder(device="cpu")

    def decode(self, path: Path, frames: list[int]) -> np.ndarray:
        pipe = self.inner._pipe or self.inner._build()
        pipe.feed_input("encoded", [np.frombuffer(path.read_bytes(), dtype=np.uint8)])
        pipe.feed_input("frames", [np.asarray(frames, dtype=np.int32)])
        (video,) = pipe.run()
        return np.asarray(video[0])


class Batched:
    """Hands a decoder ``batch`` jobs at a time: DALI's ``decode_many`` (its thread pool),
    or, for PyAV, one decoder per thread of a pool."""

    def __init__(self, make_decoder, batch: int, threads: int):
        self.batch = batch
        self.decoder = make_decoder()
        self.pool = None
        if not hasattr(self.decoder, "decode_many"):
            local = threading.local()

            def decode(job):
                if not hasattr(local, "decoder"):
                    local.decoder = make_decoder()
                return local.decoder.decode(*job)
            self.pool, self.one = ThreadPoolExecutor(threads), decode

    def decode_batch(self, jobs) -> list[np.ndarray]:
        if self.pool is None:
            return self.decoder.decode_many(jobs)
        return list(self.pool.map(self.one, jobs))


def frames_per_second_batched(batched: Batched, jobs, cpu_ms: list[float]) -> float:
    """``frames_per_second`` with the jobs handed over ``batched.batch`` at a time."""
    batched.decode_batch(jobs[:batched.batch])  # warm-up
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(jobs), batched.batch):
        for frames in batched.decode_batch(jobs[i:i + batched.batch]):
            assert frames.shape == (T, HEIGHT, WIDTH, 3)
    cpu_ms.append((time.process_time() - cpu) / len(jobs) * 1e3)
    return len(jobs) * T / (time.perf_counter() - start)


def frames_per_second(decoder, jobs, cpu_ms: list[float]) -> float:
    """Wall-clock frames/s; appends the process CPU time per sample (all threads) to
    ``cpu_ms``, the work itself, which background load on a shared machine does not inflate."""
    decoder.decode(*jobs[0])  # warm-up: DALI builds its pipeline
    start, cpu = time.perf_counter(), time.process_time()
    for job in jobs:
        frames = decoder.decode(*job)
        assert frames.shape == (T, HEIGHT, WIDTH, 3)
    cpu_ms.append((time.process_time() - cpu) / len(jobs) * 1e3)
    return len(jobs) * T / (time.perf_counter() - start)


def bench_decoders(files: list[Path], samples: int, repeats: int,
                   batch: int) -> tuple[dict, dict, dict, list]:
    """Frames/s and CPU ms per sample of each decoder over the same samples, and the frames
    PyAV had to decode per sample (DALI's segments hold the same frames)."""
    jobs = decode_jobs(files, samples)
    threads = dali.default_threads(1)
    pyav = PyAVDecoder()
    decoders = {"pyav": pyav, "pyav_thread_pool": Batched(PyAVDecoder, batch, threads)}
    notes = []
    if dali.dali_available():
        decoders["dali_cpu"] = Batched(lambda: dali.DALIDecoder("cpu", threads), batch, threads)
        decoders["dali_cpu_one_by_one"] = dali.DALIDecoder(device="cpu")
        decoders["dali_cpu_whole_file"] = WholeFileDALI()
    else:
        notes.append("dali_cpu: skipped (pip install nvidia-dali-cuda120)")
    cpu = {k: [] for k in decoders}
    rounds = interleave({k: (lambda d=d, c=cpu[k]: frames_per_second_batched(d, jobs, c)
                             if isinstance(d, Batched) else frames_per_second(d, jobs, c))
                         for k, d in decoders.items()}, repeats)
    pyav.frames_decoded = 0
    for job in jobs:
        pyav.decode(*job)
    work = {"decoded_frames_per_sample": round(pyav.frames_decoded / len(jobs), 1)}
    return rounds, cpu, work, notes


def ratio(rounds: dict[str, list[float]], a: str, b: str) -> float:
    return round(statistics.median(x / y for x, y in zip(rounds[a], rounds[b])), 3)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="benchmarks/results/data_loader_cpu.json")
    p.add_argument("--quick", action="store_true", help="fewer, shorter clips and rounds")
    p.add_argument("--workers", type=int, default=2, help="loader worker processes, both sides")
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds per side")
    p.add_argument("--dali-batch", type=int, default=4, help="samples per DALI pipeline run")
    a = p.parse_args()
    n, frames, batches, batch, samples = (4, 90, 2, 4, 8) if a.quick else (16, 300, 2, 8, 24)
    repeats = a.repeats or (2 if a.quick else 3)
    with tempfile.TemporaryDirectory() as tmp:
        h264 = make_clips(Path(tmp), n, frames, "h264")
        loaders = bench_loaders(h264, a.workers, batch, batches, repeats)
        vp9 = make_clips(Path(tmp), max(2, n // 2), frames, "vp9")
        decoders, cpu, work, notes = bench_decoders(vp9, samples, repeats, a.dali_batch)
    clip = {"clips": n, "frames_per_clip": frames, "fps": FPS, "size": f"{WIDTH}x{HEIGHT}",
            "T": T, "stride": STRIDE, "image_size": SIZE}
    rows = [{"name": f"loader {k} h264", "value": round(statistics.median(v), 2),
             "unit": "clips/s", "rounds": [round(x, 2) for x in v],
             "params": {**clip, "workers": a.workers, "batch": batch, "batches": batches}}
            for k, v in loaders.items()]
    rows += [{"name": f"decode {k} vp9", "value": round(statistics.median(v), 1),
              "unit": "frames/s", "rounds": [round(x, 1) for x in v],
              "cpu_ms_per_sample": round(statistics.median(cpu[k]), 1),
              "params": {**clip, "clips": max(2, n // 2), "gop": 8, "samples": samples, **work}}
             for k, v in decoders.items()]
    ratios = {"loader_vs_baseline_h264": ratio(loaders, "megavid", "baseline")}
    if "dali_cpu" in decoders:
        ratios["dali_cpu_vs_pyav_vp9"] = ratio(decoders, "dali_cpu", "pyav")
        ratios["dali_cpu_vs_pyav_thread_pool_vp9"] = ratio(decoders, "dali_cpu", "pyav_thread_pool")
        ratios["dali_cpu_one_by_one_vs_pyav_vp9"] = ratio(decoders, "dali_cpu_one_by_one", "pyav")
        ratios["dali_cpu_segment_vs_whole_file_vp9"] = ratio(decoders, "dali_cpu_one_by_one",
                                                             "dali_cpu_whole_file")
        # the same comparison in CPU time per sample (inverse: less CPU is faster)
        ratios["dali_cpu_vs_pyav_vp9_cpu_time"] = ratio(cpu, "pyav", "dali_cpu")
    write_results(a.out, "data.loader", rows, ratios, notes=notes, extra={"settings": {
        "quick": a.quick, "repeats": repeats, "interleaved": True,
        "h264": "x264 defaults (keyint 250)", "vp9": "realtime, cpu-used 8, keyint 8",
        "pyav_threads": "FFmpeg defaults (slice threads, auto count)",
        "dali": f"keyframe-aligned segment per sample; dali_cpu: {a.dali_batch} samples per "
                f"run on {dali.default_threads(1)} threads (the loader's way, one worker); "
                "dali_cpu_one_by_one: 1 sample, 1 thread",
        "pyav_thread_pool": f"{a.dali_batch} samples at a time on a pool of "
                            f"{dali.default_threads(1)} threads, one PyAVDecoder per thread"}})
    print(rows, ratios)


if __name__ == "__main__":
    main()
