"""One evaluation run: encoder -> cached features -> readout training -> metrics, pictures.

``python -m megavid.eval`` parses flags into an ``EvalConfig`` and calls
``run_eval``; tests call it directly. Under torchrun the readout trains data
parallel; rank 0 evaluates and writes the run directory.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megavid.config.preflight import LayoutError, check_model_split, check_world_split
from megavid.eval import plots, probe
from megavid.eval.datasets import load_dataset
from megavid.eval.feature_cache import cached_features
from megavid.eval.tasks import get_task
from megavid.eval.train import ReadoutConfig, dp_info, predict, train_readout
from megavid.inference import load_encoder, source_arch
from megavid.parallel import cpu_compat, runtime
from megavid.tables import Column, print_table

METRIC_COLUMNS = [Column("metric", "metric", justify="left"),
                  Column("value", "value", "{:.4g}".format)]
# what each result is read against (megavid.eval.probe): columns of the metrics table
REFERENCE_TITLES = {"pixels": "raw pixels", "oracle": "oracle", "prior": "prior"}

DEFAULT_FEATURE_CACHE = "~/.cache/megavid/eval-features"


@dataclass
class EvalConfig:
    task: str  # depth | tracking | pose | boxes
    source: str  # encoder: a checkpoint path (megavid, 4DS .npz, HF) or a preset name
    data: str = "synthetic"  # test data: "synthetic" or a path (megavid.eval.datasets)
    train_data: str | None = None  # readout training data; default: --data's train split
    depth: float = 0.95  # relative encoder depth the features are read at (4DS: 0.95)
    out: str | None = None  # run directory; default runs/eval-<task>-<timestamp>/
    feature_cache: str | None = DEFAULT_FEATURE_CACHE  # None: always run the encoder
    data_cache: str = "~/.cache/megavid"  # where the synthetic benchmark is generated
    max_clips: int | None = None  # cap on clips per split (quick looks)
    synthetic: dict = field(default_factory=dict)  # overrides of SYNTHETIC_DEFAULTS
    num_queries: int | None = None  # tracking points / boxes per clip
    num_frames: int | None = None  # run the encoder at this clip length (default: its own)
    image_size: int | None = None  # ... and this frame size (position table resized)
    encode_batch: int = 8  # clips per encoder forward
    tp: int = 1  # tensor-parallel size of the encoder (feature extraction only)
    pp: int = 1  # pipeline-parallel size of the encoder (feature extraction only)
    readout_kind: str = "attention"  # attention (4DS's readouts) | linear (megavid.eval.probe)
    probe_depths: tuple[float, ...] = ()  # linear: concatenate features of these depths
    readout: ReadoutConfig = field(default_factory=ReadoutConfig)
    pictures: bool = True
    json: bool = False  # print metrics.json's content instead of the metrics table


def _log(message: str) -> None:
    if dp_info()[0] == 0:
        print(message, flush=True)


def _barrier() -> None:
    if dp_info()[1] > 1:
        dist.barrier()


def load_splits(cfg: EvalConfig, arch) -> tuple[list, list]:
    """(train clips, test clips) fitted to the encoder's clip shape; rank 0 generates first."""
    kwargs = dict(num_frames=arch.num_frames, size=arch.image_size, cache_dir=cfg.data_cache,
                  max_clips=cfg.max_clips, synthetic=cfg.synthetic or None)
    rank, _ = dp_info()
    for turn in (0, 1):  # rank 0 alone first: a synthetic set is generated once, not per rank
        if (rank == 0) == (turn == 0):
            test = load_dataset(cfg.data, split="test", **kwargs)
            train = load_dataset(cfg.train_data or cfg.data, split="train", **kwargs)
        _barrier()
    replicas = encoder_replicas()[1]
    for flag, clips in (("--train-data" if cfg.train_data else "--data", train), ("--data", test)):
        if len(clips) < replicas:
            raise ValueError(f"{flag}: {len(clips)} clips, fewer than the {replicas} encoder "
                             "replicas that share them; use fewer processes or more clips")
    if {c.name for c in train} == {c.name for c in test}:
        _log(f"warning: {cfg.data} has no separate train split: the readout trains on the "
             "clips it is evaluated on; pass --train-data for a fair evaluation")
    return train, test


def start_runtime(cfg: EvalConfig, arch) -> None:
    """The process group and the encoder's TP x PP layout (a model too large for one device
    is split; the readout, small, trains data parallel over every rank). The layout is
    checked first, before any group exists."""
    world = dist.get_world_size() if dist.is_initialized() else runtime.read_dist_env().world_size
    try:
        check_world_split(world, cfg.tp, cfg.pp)
    except LayoutError:  # the same rule, in the words of a job that only reads features
        raise LayoutError(f"--tp {cfg.tp} x --pp {cfg.pp} does not divide the {world} "
                          "processes; launch a multiple of tp * pp processes") from None
    check_model_split(arch, cfg.tp, cfg.pp, decoder=False)
    runtime.init_distributed()
    if not parallel_state.model_parallel_is_initialized() or (
            parallel_state.get_tensor_model_parallel_world_size(),
            parallel_state.get_pipeline_model_parallel_world_size()) != (cfg.tp, cfg.pp):
        runtime.init_model_parallel(tp=cfg.tp, pp=cfg.pp, vpp=None)


def encoder_replicas() -> tuple[int, int, object]:
    """(this rank's encoder replica, replicas, the group joining a rank to its peers in the
    other replicas): megatron-core's data-parallel group."""
    return (parallel_state.get_data_parallel_rank(),
            parallel_state.get_data_parallel_world_size(),
            parallel_state.get_data_parallel_group())


class LazyEncoder:
    """The frozen encoder in the run's TP x PP layout, loaded on the first cache miss only."""

    def __init__(self, cfg: EvalConfig, arch, device):
        self.cfg, self.arch, self.device, self.encoder = cfg, arch, device, None

    def __call__(self, source: str):
        if self.encoder is None:
            started = time.perf_counter()
            self.encoder = load_encoder(source, device=self.device,
                                        num_frames=self.cfg.num_frames,
                                        image_size=self.cfg.image_size)
            if self.encoder.arch != self.arch:  # source_arch and load_encoder disagree: a bug
                raise RuntimeError(f"{source}: built {self.encoder.arch}, expected {self.arch}")
            _log(f"encoder: {source} loaded in {time.perf_counter() - started:.1f} s")
        return self.encoder


def run_eval(cfg: EvalConfig) -> dict:
    """Train and evaluate one readout; returns what ``metrics.json`` holds (on rank 0)."""
    task = get_task(cfg.task, num_queries=cfg.num_queries)
    if cfg.readout_kind not in ("attention", "linear"):
        raise ValueError(f"--readout {cfg.readout_kind}: choose attention or linear")
    if cfg.readout_kind == "linear":
        probe.check_task(cfg.task)
    device = cpu_compat.local_device()
    started = time.perf_counter()
    arch = source_arch(cfg.source, num_frames=cfg.num_frames, image_size=cfg.image_size)
    start_runtime(cfg, arch)
    train_clips, test_clips = load_splits(cfg, arch)
    task.check(train_clips, "--train-data" if cfg.train_data else "--data")
    task.check(test_clips, "--data")
    encoder = LazyEncoder(cfg, arch, device)  # a run whose features are cached never loads it
    depths = (cfg.probe_depths or (cfg.depth,)) if cfg.readout_kind == "linear" else (cfg.depth,)
    feats, records = {}, {}
    for split, clips in (("train", train_clips), ("test", test_clips)):
        feats[split], records[split] = features_at(cfg, encoder, clips, depths, device)
    del encoder
    seed = cfg.readout.seed
    # the attention readout trains on augmented targets (tracking: queries at random
    # frames); a linear map cannot take the query's frame as an input, so the probe trains
    # on the test's protocol (queries at each point's first visible frame)
    augment = cfg.readout_kind == "attention"
    targets = {"train": task.targets(train_clips, train=augment, seed=seed),
               "test": task.targets(test_clips, train=False, seed=seed)}
    result = {
        "task": cfg.task, "encoder": cfg.source, "readout_kind": cfg.readout_kind,
        "depth": cfg.depth, "data": cfg.data, "train_data": cfg.train_data or cfg.data,
        "clips": {"train": len(train_clips), "test": len(test_clips)},
        "arch": {k: getattr(arch, k) for k in ("num_frames", "image_size", "tubelet",
                                               "hidden_size", "num_layers")},
        "world_size": dp_info()[1], "features": records,
        "feature_shape": list(feats["train"].shape[1:])}
    read = linear_readout if cfg.readout_kind == "linear" else attention_readout
    done = read(cfg, task, arch, feats, targets, {"train": train_clips, "test": test_clips},
                depths, device)
    if done is None:  # not rank 0
        return {}
    update, pred, history = done
    result.update(update)
    result["seconds"] = round(time.perf_counter() - started, 1)
    return write_run(cfg, result, history, test_clips, pred, targets["test"])


def features_at(cfg: EvalConfig, encoder, clips, depths, device) -> tuple[torch.Tensor, dict]:
    """The clips' features at each depth (cached per depth), concatenated along channels,
    and the cache record (for ``metrics.json``)."""
    parts = [cached_features(encoder, cfg.source, clips, depth=d, cache_dir=cfg.feature_cache,
                             batch_size=cfg.encode_batch, device=device, log=_log,
                             replicas=encoder_replicas()) for d in depths]
    if len(parts) == 1:
        return parts[0]
    return torch.cat([f for f, _ in parts], -1), {
        "cache": "hit" if all(r["cache"] == "hit" for _, r in parts) else "miss",
        "paths": [r["path"] for _, r in parts]}


def linear_readout(cfg, task, arch, feats, targets, clips, depths, device):
    """The ridge probe and its references (a closed-form fit: rank 0 alone); returns
    (result fields, test predictions, history), or None on the other ranks."""
    if dp_info()[0] != 0:
        return None
    fitted = probe.get_probe(task, targets["train"], tuple(feats["train"].shape[1:4]))
    _log(f"linear probe: {cfg.task} on {len(clips['train'])} train / {len(clips['test'])} "
         f"test clips, features {tuple(feats['train'].shape[1:])} at depth(s) {list(depths)}")
    metrics, residual = probe.probe_features(fitted, feats["train"], feats["test"], targets)
    refs = probe.references(fitted, clips, targets, seed=cfg.readout.seed)
    update = {"probe_depths": list(depths), "metrics": _plain(metrics),
              "references": {name: _plain(m) for name, m in refs.items()}}
    return update, fitted.predictions(residual, targets["test"]), []


def attention_readout(cfg, task, arch, feats, targets, clips, depths, device):
    """4DS's attention readout, trained data parallel; the task's prior beside it. Returns
    (result fields, test predictions, training history), or None on ranks other than 0."""
    torch.manual_seed(cfg.readout.seed)  # the same head on every rank (DDP also broadcasts)
    head = task.build_head(feature_dim=feats["train"].shape[-1], num_frames=arch.num_frames,
                           image_size=arch.image_size, width=cfg.readout.width,
                           heads=cfg.readout.heads, train_targets=targets["train"])
    _log(f"readout: {cfg.task} on {len(clips['train'])} train / {len(clips['test'])} test "
         f"clips, features {tuple(feats['train'].shape[1:])} at depth {cfg.depth}, "
         f"{sum(p.numel() for p in head.parameters()) / 1e6:.2f}M parameters, "
         f"{dp_info()[1]} data-parallel rank(s)")
    history = train_readout(task, head, feats["train"], targets["train"], cfg.readout,
                            device=device, log=_log)
    if dp_info()[0] != 0:
        return None
    pred = predict(task, head, feats["test"], targets["test"], device=device)
    update = {"readout": dataclasses.asdict(cfg.readout),
              "metrics": _plain(task.metrics(pred, targets["test"])),
              "final_train_loss": float(np.mean([h["loss"] for h in history[-10:]]))}
    if task.name in probe.PROBES:  # the number every result is read against
        prior = probe.get_probe(task, targets["train"], tuple(feats["train"].shape[1:4]))
        update["references"] = {"prior": _plain(probe.prior_metrics(prior, targets["test"]))}
    return update, pred, history


def run_dir(cfg: EvalConfig) -> Path:
    return Path(cfg.out) if cfg.out else Path("runs") / time.strftime(
        f"eval-{cfg.task}-%Y%m%d-%H%M%S")


def write_run(cfg: EvalConfig, result: dict, history: list[dict], clips, pred: dict,
              targets: dict) -> dict:
    out = run_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "train_log.jsonl").open("w") as f:
        f.writelines(json.dumps(h) + "\n" for h in history)
    result["pictures"] = [str(p) for p in draw(cfg.task, out, clips, pred, targets)] \
        if cfg.pictures else []
    result["run_dir"] = str(out)
    (out / "metrics.json").write_text(json.dumps(result, indent=1, default=_jsonable))
    headline = [k for k, v in result["metrics"].items()  # per-threshold ones: the JSON
                if isinstance(v, float) and not re.fullmatch(r"(pts_within|jaccard)_\d+", k)]
    refs = result.get("references", {})
    columns = METRIC_COLUMNS + [Column(name, REFERENCE_TITLES[name], "{:.4g}".format)
                                for name in refs]
    rows = [{"metric": k, "value": result["metrics"][k],
             **{name: ref.get(k, float("nan")) for name, ref in refs.items()}} for k in headline]
    if dp_info()[0] == 0:
        print_table(rows, columns, title=f"{cfg.task} ({cfg.readout_kind} readout) on "
                    f"{len(clips)} test clips", as_json=cfg.json,
                    extra={"result": json.loads(json.dumps(result, default=_jsonable))})
    if not cfg.json:
        _log(f"wrote {out / 'metrics.json'}" + "".join(f", {p}" for p in result["pictures"]))
    return result


def _plain(metrics: dict) -> dict:
    """Floats stay floats; arrays (e.g. per-frame IoU) become lists with None for NaN."""
    def value(v):
        if np.ndim(v) == 0:
            return float(v)
        return [None if not np.isfinite(x) else float(x) for x in np.asarray(v).ravel()]
    return {k: value(v) for k, v in metrics.items()}


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (tuple, np.ndarray)):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def draw(task: str, out: Path, clips, pred: dict, targets: dict) -> list[Path]:
    """The task's picture(s) for the first test clips."""
    videos = np.stack([c.video for c in clips[:4]])
    if task == "depth":
        gt = targets["depth"][:4].numpy()
        return [plots.plot_depth(out / "depth.png", videos, gt, pred["depth"][:4])]
    if task == "tracking":
        valid = targets["query_valid"][0].numpy()
        h, w = targets["size"][0].tolist()
        gt = targets["xy"][0].numpy()[valid] * np.array([w, h], np.float32)
        return [plots.plot_tracks(out / "tracks.png", videos[0], gt,
                                  targets["visible"][0].numpy()[valid],
                                  pred["tracks"][0][valid], pred["visible"][0][valid])]
    if task == "pose":
        return [plots.plot_poses(out / "poses.png", targets["pose"].numpy(), pred["pose"])]
    valid = targets["query_valid"][0].numpy()
    whwh = targets["size"][0].numpy()[[1, 0, 1, 0]]
    return [plots.plot_boxes(out / "boxes.png", videos[0], targets["boxes"][0].numpy()[valid]
                             * whwh, targets["visible"][0].numpy()[valid],
                             pred["boxes"][0][valid])]
