"""How much of the synthetic 4D benchmark a prior explains, and what a scene costs to make.

For the default benchmark (``SYNTHETIC_DEFAULTS``, or ``--num-scenes``), generated as
``--data synthetic`` would (into a temporary folder, or ``--cache-dir``):

- the depth prior: the share of the test split's log-depth variance explained by the
  training split's mean log-depth map (``megavid.eval.tasks.mean_log_depth``, the depth
  readout's offset), ``R^2 = 1 - sum((logd - prior)^2) / sum((logd - mean(logd))^2)``
  over valid test pixels;
- the tracking prior "every point stays where it was queried" (TAP-Vid query-first):
  ``pts_within_4`` (TAP-Vid's: 4 px at 256 x 256), ``within_4px_native`` (4 px at the
  clip's own size) and ``average_jaccard``;
- the share of test frames showing an object, and the pixels with no depth (0: every
  ray hits the room);
- generation time per scene, wall and CPU, labelled and videos only (``labels=False``,
  the same number of scenes from the next seed).

    python benchmarks/synthetic_prior.py --out benchmarks/results/synthetic_prior_cpu.json
    python benchmarks/synthetic_prior.py --num-scenes 48     # v1's default size
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from megavid.eval import load_dataset, make_synthetic
from megavid.eval.datasets import SYNTHETIC_DEFAULTS
from megavid.eval.metrics import first_queries, tapvid_metrics, to_tapvid_raster
from megavid.eval.tasks import mean_log_depth
from megavid.tools.bench_results import write_results


def depth_prior_r2(train, test) -> float:
    """R^2 of the training set's mean log-depth map on the test clips' valid pixels."""
    prior = mean_log_depth(torch.from_numpy(np.stack([c.depth for c in train]))).numpy()
    depth = np.stack([c.depth for c in test])  # (N, T, H, W)
    valid = depth > 0
    logd = np.log(np.where(valid, depth, 1.0))
    residual = (logd - prior[None])[valid]
    return float(1.0 - np.sum(residual**2) / np.sum((logd[valid] - logd[valid].mean()) ** 2))


def static_tracking(test) -> dict:
    """TAP-Vid metrics of predicting every track at its query position, visible throughout."""
    per_clip, within_native = [], []
    for clip in test:
        query, keep = first_queries(clip.tracks, clip.visible)
        gt, vis = clip.tracks[keep], clip.visible[keep]
        still = np.repeat(query[:, None, [2, 1]], clip.num_frames, axis=1)  # (N, T, 2) x, y
        per_clip.append(tapvid_metrics(
            query, ~vis, to_tapvid_raster(gt, clip.size), np.zeros_like(vis),
            to_tapvid_raster(still, clip.size)))
        after = np.arange(clip.num_frames)[None] > query[:, :1]  # query-first frames
        near = np.sum((still - gt) ** 2, axis=-1) < 16.0
        within_native.append((near & vis & after).sum() / max((vis & after).sum(), 1))
    return {"static_pts_within_4": float(np.mean([m["pts_within_4"] for m in per_clip])),
            "static_within_4px_native": float(np.mean(within_native)),
            "static_average_jaccard": float(np.mean([m["average_jaccard"] for m in per_clip]))}


def _object_frames(clip) -> float:
    """The share of ``clip``'s frames where some object has a box (some pixel)."""
    if clip.box_visible is None or not len(clip.box_visible):
        return 0.0
    return float(clip.box_visible.any(axis=0).mean())


def _timed(make) -> tuple:
    """``(make(), wall seconds, CPU seconds of this process and its finished children)``."""
    def cpu():
        own, kids = (resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                          resource.RUSAGE_CHILDREN))
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
    wall, used = time.perf_counter(), cpu()
    out = make()
    return out, time.perf_counter() - wall, cpu() - used


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num-scenes", type=int, default=SYNTHETIC_DEFAULTS["num_scenes"])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cache-dir", help="where to generate (default: a temporary folder; a "
                   "folder that already holds the set makes the timings meaningless)")
    p.add_argument("--out", default="synthetic_prior.json")
    args = p.parse_args()
    n = args.num_scenes
    with tempfile.TemporaryDirectory() as tmp:
        kwargs = {"cache_dir": args.cache_dir or tmp,
                  "synthetic": {"num_scenes": n, "workers": args.workers}}
        test, wall, cpu = _timed(lambda: load_dataset("synthetic", **kwargs))  # generates
        train = load_dataset("synthetic", split="train", **kwargs)
        settings = {k: v for k, v in SYNTHETIC_DEFAULTS.items() if k != "num_scenes"}
        _, *videos = _timed(lambda: make_synthetic(  # another seed, as pretraining sets should
            Path(tmp) / "videos", num_scenes=n, labels=False, workers=args.workers,
            **{**settings, "seed": settings["seed"] + 1}))
    tracking = static_tracking(test)
    rows = [{"name": "depth prior R^2 (train mean log-depth map)",
             "value": depth_prior_r2(train, test), "unit": "R^2"},
            *({"name": f"tracking prior (points stay still) {k[len('static_'):]}", "value": v,
               "unit": "fraction"} for k, v in tracking.items()),
            {"name": "test frames showing an object", "unit": "fraction",
             "value": float(np.mean([_object_frames(c) for c in test]))},
            {"name": "pixels with no depth", "unit": "pixels",
             "value": int(sum((c.depth <= 0).sum() for c in train + test))},
            {"name": "generation, labelled", "value": wall / n, "unit": "s/scene",
             "cpu_s_per_scene": cpu / n},
            {"name": "generation, videos only (labels=False)", "value": videos[0] / n,
             "unit": "s/scene", "cpu_s_per_scene": videos[1] / n}]
    write_results(args.out, "benchmarks.synthetic_prior", rows,
                  {"labelled_vs_videos_only_cpu": cpu / videos[1]},
                  extra={"settings": {**SYNTHETIC_DEFAULTS, "num_scenes": n,
                                      "workers": args.workers, "train_clips": len(train),
                                      "test_clips": len(test)}})
    for row in rows:
        print(f"{row['name']}: {row['value']:.4g} {row['unit']}")


if __name__ == "__main__":
    main()
