"""Checkpoint cost for a real model size: size on disk, save and load time, async overhead.

    python benchmarks/checkpoint_io.py --preset 4ds-s --out results/checkpoint_io.json

One process (world size 1), mock data: the step time without saving, a
synchronous save (time the loop is blocked), the directory size, the time to
load it back into a fresh model, and the step time when an asynchronous save is
started after every step, as a ratio to the plain step time.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from megavid.cli import parse_args
from megavid.parallel import runtime
from megavid.tools.bench_results import write_results
from megavid.training.checkpoint import Checkpointer


def _median_step(trainer, steps: int, after_step=None) -> float:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        trainer.train_step()
        if after_step:
            after_step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run(preset: str, steps: int, workdir: Path) -> tuple[list[dict], dict]:
    from megavid.training.trainer import Trainer

    save = workdir / "save"
    cfg = parse_args(["--preset", preset, "--set", "data.mock=true", "--micro-batch-size", "2",
                      "--global-batch-size", "2", "--train-iters", "1000", "--lr-warmup-iters", "1",
                      "--log-dir", str(workdir / "log"), "--set", "log.tensorboard=false",
                      "--set", "log.plot=false", "--save", str(save)])
    trainer = Trainer(cfg)
    trainer.train_step()  # warm-up
    plain = _median_step(trainer, steps)
    blocked = trainer.checkpointer.save(trainer.step, trainer.model, trainer.optimizer,
                                        trainer.scheduler, {"loader": {}, "counters": {},
                                                            "config": {}})
    size = _dir_bytes(save / f"iter_{trainer.step:07d}")
    cfg.checkpoint.load = str(save)
    start = time.perf_counter()
    Checkpointer(cfg.checkpoint, info=lambda _: None).load(trainer.model, trainer.optimizer,
                                                           trainer.scheduler)
    load_s = time.perf_counter() - start
    cfg.checkpoint.async_save = True
    trainer.checkpointer = asynchronous = Checkpointer(cfg.checkpoint, info=lambda _: None)

    def save_async():
        asynchronous.finalize()
        asynchronous.save(trainer.step, trainer.model, trainer.optimizer, trainer.scheduler,
                          {"loader": {}, "counters": {}, "config": {}})

    with_async = _median_step(trainer, steps, after_step=save_async)
    asynchronous.finalize(blocking=True)
    trainer.close()
    runtime.shutdown()
    results = [
        {"name": f"{preset} step time (batch 2, mask 0.95), no saving", "value": plain, "unit": "s"},
        {"name": f"{preset} synchronous save, loop blocked", "value": blocked, "unit": "s"},
        {"name": f"{preset} checkpoint size", "value": size / 2**20, "unit": "MiB"},
        {"name": f"{preset} load into a fresh optimizer", "value": load_s, "unit": "s"},
        {"name": f"{preset} step time with an async save after every step", "value": with_async,
         "unit": "s"},
    ]
    ratios = {f"async_save_step_time_vs_plain_{preset}": with_async / plain,
              f"sync_save_vs_step_time_{preset}": blocked / plain}
    return results, ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="4ds-s")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per measurement")
    parser.add_argument("--quick", action="store_true", help="tiny preset, one timed step")
    parser.add_argument("--out", default="checkpoint_io.json")
    args = parser.parse_args()
    preset, steps = ("tiny", 1) if args.quick else (args.preset, args.steps)
    workdir = Path(tempfile.mkdtemp(prefix="megavid-ckpt-bench-"))
    try:
        results, ratios = run(preset, steps, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    write_results(args.out, "benchmarks.checkpoint_io", results, ratios,
                  extra={"settings": {"preset": preset, "steps": steps, "world_size": 1}})
    for row in results:
        print(f"{row['name']}: {row['value']:.3f} {row['unit']}")
    for name, value in ratios.items():
        print(f"{name}: {value:.3f}")


if __name__ == "__main__":
    main()
