"""Fuzzing the decode path, and memory over a long run.

``python benchmarks/fuzz_decode.py --files 2000 [--rss-samples 2000] [--atheris-runs N]``

(1) Fuzz: ``--files`` mutated copies of real clips (``megavid.data.fuzz``: bit flips, cuts,
overwrites, splices, MP4 box and EBML size edits, swapped codec ids; H.264/HEVC MP4, H.264
MKV, VP9 WebM, odd-sized, VFR, rotated seeds) go through the real loader, one epoch (each
file is its own position's first choice once), with worker processes and the decode
deadline on, once per decoder (PyAV; DALI-CPU when installed). Reported: files tried,
outcome by reason (usable / each skipped_*), crashes (an exception other than the skip
policies, or a worker dying: each one's position and error; then the loader resumes after
it), hangs (files given up at the deadline), the longest wait for a batch, worker and rank
RSS before/after. (2) ``--rss-samples``: that many samples of the seed clips through the
loader with workers; rank and worker RSS every 100 samples and the slope of a line through
them past the first quarter (caches and DALI's buffers filling), MB per 1000 samples. (3) ``--atheris-runs``: a coverage-guided run (atheris, when
installed: ``pip install 'megavid[fuzz]'``) of the in-process dataset path on bytes grown
from the seeds.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from megavid.data import fuzz
from megavid.data.dali import DALIDecoder, dali_available
from megavid.data.dataset import VideoClipDataset
from megavid.data.decode import PyAVDecoder
from megavid.data.loader import SKIP_REASONS, VideoLoader
from megavid.tools.bench_results import write_results

T, SIZE = 8, 64  # the demo preset's clip: fuzzing is about the paths taken, not the pixels


def build_loader(files, decoder, *, workers: int, deadline: float, batch: int = 1):
    dataset = VideoClipDataset(files, decoder=decoder, num_frames=T, image_size=SIZE,
                               frame_stride=2, value_range="unit", seed=0)
    return VideoLoader(dataset, global_batch_size=batch, micro_batch_size=batch, dp_rank=0,
                       dp_size=1, num_workers=workers, seed=0, decode_timeout_s=deadline)


def rss_mb() -> tuple[float, list[float]]:
    """This process's RSS and each child's (the loader's workers), in MB."""
    me = psutil.Process()
    kids = []
    for child in me.children(recursive=True):
        try:
            kids.append(child.memory_info().rss / 2**20)
        except psutil.Error:
            pass
    return me.memory_info().rss / 2**20, kids


def run_fuzz(files: list[Path], decoder_name: str, workers: int, deadline: float) -> dict:
    """One epoch of ``files`` through the loader; crashes are recorded and stepped over."""
    make = (lambda: PyAVDecoder()) if decoder_name == "pyav" else (lambda: DALIDecoder("cpu"))
    loader = build_loader(files, make(), workers=workers, deadline=deadline)
    crashes, waits, rss_before = [], [], None
    start = time.perf_counter()
    while loader.consumed < len(files):
        it = iter(loader)
        try:
            while loader.consumed < len(files):
                t0 = time.perf_counter()
                batch = next(it)
                waits.append(time.perf_counter() - t0)
                assert bool(batch["video"].isfinite().all())
                if rss_before is None:
                    rss_before = rss_mb()
                if loader.consumed == len(files):  # while the workers still run
                    rss_after = rss_mb()
        except Exception as err:  # a crash: not a skip the policies know
            position = loader.consumed
            first = loader.dataset.files[loader.dataset.file_for(position)]
            crashes.append({"position": position, "file": Path(str(first)).name,
                            "error": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"})
            loader.consumed += 1  # step over it
        finally:
            del it
    outcome = collections.Counter(reason for reason, _ in loader.file_events)
    outcome["usable"] = len(files) - sum(outcome.values())
    return {"decoder": decoder_name, "files": len(files), "seconds": time.perf_counter() - start,
            "outcomes": dict(sorted(outcome.items())), "crashes": crashes,
            "hangs": outcome.get("skipped_timeout", 0), "restarts": loader.restarts,
            "max_wait_s": max(waits), "median_wait_s": statistics.median(waits),
            "policies": {k: v for k, v in loader.stats.items()
                         if k not in SKIP_REASONS and v},
            "rss_rank_mb": [round(rss_before[0], 1), round(rss_after[0], 1)],
            "rss_workers_mb": [[round(x, 1) for x in rss_before[1]],
                               [round(x, 1) for x in rss_after[1]]]}


def run_rss(seeds: list[Path], decoder_name: str, samples: int, workers: int,
            deadline: float) -> dict:
    """RSS of the rank and of each worker every 100 samples over ``samples`` samples of the
    seed clips (DALI-CPU: the VP9 ones)."""
    batch = 4
    if decoder_name == "pyav":
        files, decoder = seeds, PyAVDecoder()
    else:
        files, decoder = [s for s in seeds if s.suffix == ".webm"], DALIDecoder("cpu")
    loader = build_loader(files, decoder, workers=workers, deadline=deadline, batch=batch)
    it = iter(loader)
    points = []  # (samples, rank MB, [worker MB])
    for n in range(samples // batch + 1):
        next(it)
        if (n * batch) % 100 == 0:
            rank, kids = rss_mb()
            points.append((n * batch, rank, kids))
    del it
    x = np.array([p[0] for p in points], dtype=float)
    skip = len(x) // 4  # the first quarter: caches and DALI's buffers fill (~500 samples)
    slope = lambda y: float(np.polyfit(x[skip:], np.asarray(y)[skip:], 1)[0] * 1000)  # noqa: E731
    per_worker = [slope([p[2][k] for p in points]) for k in range(len(points[0][2]))]
    return {"decoder": decoder_name, "samples": int(x[-1]), "every": 100, "workers": workers,
            "rank_mb": [round(points[0][1], 1), round(points[-1][1], 1)],
            "worker_mb": [[round(v, 1) for v in points[k][2]] for k in (0, -1)],
            "rank_slope_mb_per_1000": round(slope([p[1] for p in points]), 3),
            "worker_slopes_mb_per_1000": [round(s, 3) for s in per_worker],
            "fit_from_sample": int(x[skip]),
            "series": [[n, round(r, 1), [round(v, 1) for v in w]] for n, r, w in points[::5]]}


class HangingDecoder(PyAVDecoder):
    """PyAV, but a ``hang*`` file blocks in C with the GIL held, as a libav hang can."""

    def decode(self, path, frame_indices):
        if Path(str(path)).name.startswith("hang"):
            ctypes.PyDLL(None).sleep(3600)
        return super().decode(path, frame_indices)


def run_stall(seeds: list[Path], folder: Path, workers: int, deadline: float) -> dict:
    """How long the rank waits for the batch whose decode hangs: the deadline plus the
    restart (poll, fork, one micro-batch again); an upper bound on the restart, since the
    hang may start before the rank waits for it."""
    files = [*seeds, shutil.copy(seeds[0], folder / f"hang{seeds[0].suffix}")]
    loader = build_loader(files, HangingDecoder(), workers=workers, deadline=deadline, batch=2)
    it, waits = iter(loader), []
    for _ in range(len(files)):  # two epochs: the hang is met once, then skipped at once
        t0 = time.perf_counter()
        next(it)
        waits.append(time.perf_counter() - t0)
    del it
    return {"deadline_s": deadline, "max_wait_s": round(max(waits), 3),
            "restart_s_at_most": round(max(waits) - deadline, 3), "restarts": loader.restarts,
            "skipped_timeout": loader.stats["skipped_timeout"],
            "median_wait_s": round(statistics.median(waits), 4)}


def run_atheris(seeds: list[Path], runs: int) -> dict:
    """A coverage-guided run in a child process (libFuzzer exits the process it runs in)."""
    try:
        import atheris  # noqa: F401
    except ImportError:
        return {"skipped": "atheris not installed (pip install 'megavid[fuzz]')"}
    with tempfile.TemporaryDirectory() as corpus:
        for seed in seeds:
            (Path(corpus) / seed.name).write_bytes(seed.read_bytes())
        start = time.perf_counter()
        # megavid must be imported after atheris hooks the imports: a fresh interpreter
        child = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                 "import fuzz_decode; fuzz_decode.atheris_child(sys.argv[1:])")
        proc = subprocess.run([sys.executable, "-c", child, corpus, f"-runs={runs}",
                               "-max_len=65536", "-timeout=30"], capture_output=True, text=True)
    lines = proc.stderr.splitlines()
    status = [line for line in lines if "cov:" in line]  # libFuzzer's progress lines
    errors = [line for line in lines if line.startswith(("==", "Uncaught", " === "))]
    return {"runs": runs, "returncode": proc.returncode, "crashed": proc.returncode != 0,
            "seconds": round(time.perf_counter() - start, 1),
            "libfuzzer_last": status[-1] if status else "", "errors": errors[:5]}


def atheris_child(argv: list[str]) -> None:
    """(In ``python -c``, which imports this file before megavid is instrumented: so the
    megavid imports at the top of it are what atheris must see first.)"""
    import atheris

    for name in [m for m in sys.modules if m.startswith("megavid")]:
        del sys.modules[name]  # imported by this file's header: import them again, hooked
    with atheris.instrument_imports(include=["megavid.data"]):
        from megavid.data import fuzz as fuzz_inst
        from megavid.data.decode import PyAVDecoder as Decoder
    work = Path(tempfile.mkdtemp())
    good = fuzz_inst.seed_clips(work / "good")[0]
    decoder, count = Decoder(), iter(range(1 << 62))

    def one_input(data: bytes) -> None:
        suffix = ".webm" if data[:4] == b"\x1a\x45\xdf\xa3" else ".mp4"
        path = work / f"in{next(count)}{suffix}"
        path.write_bytes(data)
        try:
            fuzz_inst.check_file(path, good, decoder=decoder, num_frames=T, image_size=SIZE)
        finally:
            path.unlink()

    atheris.Setup([sys.argv[0], *argv], one_input)
    atheris.Fuzz()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--files", type=int, default=2000, help="mutated files per decoder")
    p.add_argument("--seed", type=int, default=0, help="of the mutations")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--deadline", type=float, default=10.0, help="data.decode_timeout_s")
    p.add_argument("--rss-samples", type=int, default=4000,
                   help="samples of the RSS run, per decoder (0: skip it)")
    p.add_argument("--atheris-runs", type=int, default=0, help="0: no coverage-guided run")
    p.add_argument("--out", default="benchmarks/results/fuzz_decode_cpu.json")
    p.add_argument("--note", action="append", default=[],
                   help="a line for the results' notes (e.g. what else loaded the machine)")
    p.add_argument("--stall-deadline", type=float, default=2.0,
                   help="deadline of the hanging-decode measurement (0: skip it)")
    a = p.parse_args()
    logging.getLogger("megavid.data").setLevel(logging.ERROR)  # thousands of skip warnings
    rows, notes, extra = [], list(a.note), {}
    with tempfile.TemporaryDirectory() as tmp:
        seeds = fuzz.seed_clips(Path(tmp) / "seeds")
        files = fuzz.mutated_files(seeds, Path(tmp) / "fuzz", a.files, seed=a.seed)
        decoders = ["pyav"] + (["dali_cpu"] if dali_available() else [])
        if not dali_available():
            notes.append("dali_cpu: skipped (pip install nvidia-dali-cuda120)")
        for name in decoders:
            result = run_fuzz(files, name, a.workers, a.deadline)
            print(name, result, flush=True)
            extra[f"fuzz_{name}"] = result
            rows += [{"name": f"fuzz {name} files", "value": result["files"], "unit": "files"},
                     {"name": f"fuzz {name} crashes", "value": len(result["crashes"]),
                      "unit": "files"},
                     {"name": f"fuzz {name} hangs", "value": result["hangs"], "unit": "files"},
                     {"name": f"fuzz {name} usable", "value": result["outcomes"]["usable"],
                      "unit": "files"},
                     {"name": f"fuzz {name} max wait", "value": round(result["max_wait_s"], 3),
                      "unit": "s"},
                     {"name": f"fuzz {name} throughput",
                      "value": round(result["files"] / result["seconds"], 1), "unit": "files/s"}]
        if a.stall_deadline:
            stall = run_stall(seeds, Path(tmp), a.workers, a.stall_deadline)
            print("stall", stall, flush=True)
            extra["stall"] = stall
            rows += [{"name": "hanging decode: rank's longest wait", "value": stall["max_wait_s"],
                      "unit": "s", "deadline_s": a.stall_deadline},
                     {"name": "hanging decode: restart cost (at most)",
                      "value": stall["restart_s_at_most"], "unit": "s"}]
        for name in decoders if a.rss_samples else []:
            rss = run_rss(seeds, name, a.rss_samples, a.workers, a.deadline)
            print("rss", rss, flush=True)
            extra[f"rss_{name}"] = rss
            rows += [{"name": f"rss slope rank {name}", "value": rss["rank_slope_mb_per_1000"],
                      "unit": "MB/1000 samples"},
                     {"name": f"rss slope worker max {name}",
                      "value": max(rss["worker_slopes_mb_per_1000"]), "unit": "MB/1000 samples"}]
        if a.atheris_runs:
            extra["atheris"] = run_atheris(seeds, a.atheris_runs)
            print("atheris", extra["atheris"], flush=True)
            if "skipped" in extra["atheris"]:
                notes.append(f"atheris: {extra['atheris']['skipped']}")
    extra["settings"] = {"files": a.files, "seed": a.seed, "workers": a.workers,
                         "decode_timeout_s": a.deadline, "clip": f"{T}x{SIZE}x{SIZE}",
                         "seeds": [s.name for s in seeds], "mutations": sorted(fuzz.MUTATIONS),
                         "cpu_count": os.cpu_count()}
    write_results(a.out, "data.fuzz_decode", rows, {}, notes=notes, extra=extra)


if __name__ == "__main__":
    main()
