"""Convert model weights between megavid checkpoints, the official 4DS .npz and HF VideoMAE.

Every conversion goes through one representation: a ModelConfig (which carries
the architecture options) and a layout-free state dict of whole tensors
(``megavid.models.layout_free``). Formats map to and from it
(``megavid.models.fourds``, ``megavid.models.hf_videomae``); a megavid checkpoint
is written from it in any TP/PP layout by building that layout's model chunks
and setting each rank's shards, then saving a weights-only checkpoint that
``python -m megavid.pretrain --load DST`` and ``load_encoder(DST)`` read (any
layout loads it again; ``--tp/--pp`` choose how it is written, e.g. to
convert a model too large for one process's memory).

Weights without an MAE decoder (4DS, ``VideoMAEModel``) get one initialised as
megavid initialises a new model with ``--seed`` (seeded per tensor name, so the
same whatever the layout).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megavid.config import ConfigError, ModelConfig, RunConfig, validate
from megavid.models.builder import build_model_chunks
from megavid.models.fourds import FormatError, read_npz, write_npz
from megavid.models.hf_videomae import read_hf, write_hf
from megavid.models.initialization import initialize_chunk
from megavid.models.layout_free import layout_free_state, load_layout_free_state
from megavid.models.mae import DECODER_PREFIXES
from megavid.models.posembed import INTERPOLATIONS, resize_pos_embed
from megavid.parallel import runtime
from megavid.training.checkpoint import load_weights, save_weights
from megavid.training.checkpoint_dirs import CheckpointError, resolve_load_dir
from megavid.training.common_state import read_common

FORMATS_IN = ("4ds-npz", "hf-videomae", "megavid")
FORMATS_OUT = ("megavid", "hf-videomae", "4ds-npz")
_BASE = "https://storage.googleapis.com/representations4d/checkpoints"
EPILOG = f"""\
examples (official 4DS release, files from {_BASE}/):
  # 4DS-B-dist-e (ViT-B, 88M), then continue pretraining or read features
  python -m megavid.tools.convert --from 4ds-npz --to megavid scaling4d_dist_b.npz ckpt/4ds_b
  python -m megavid.pretrain --load ckpt/4ds_b --data /path/to/videos
  # 4DS-e (3.8B, 14 GB): one process, ~2x the file in memory; any TP/PP layout loads the result
  python -m megavid.tools.convert --from 4ds-npz --to megavid scaling4d_e.npz ckpt/4ds_e
  # ... or written by 8 processes as TP=4 x PP=2 (each process reads the whole file)
  python -m megavid.tools.convert --from 4ds-npz --to megavid scaling4d_e.npz ckpt/4ds_e --tp 4 --pp 2
  # the ScanNet depth checkpoint: its encoder (the readout under params/layers_2/ is skipped)
  python -m megavid.tools.convert --from 4ds-npz --to megavid scaling4d_dist_b_depth.npz ckpt/4ds_b_depth
  # back to the official layout
  python -m megavid.tools.convert --from megavid --to 4ds-npz ckpt/4ds_b my_4ds_b.npz
Hugging Face VideoMAE (a save_pretrained directory; nothing is downloaded):
  python -m megavid.tools.convert --from hf-videomae --to megavid videomae-base/ ckpt/videomae_b
  python -m megavid.tools.convert --from megavid --to hf-videomae ckpt/videomae_b videomae-out/
"""


# -- reading -------------------------------------------------------------------------------------
def read_megavid(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """A megavid checkpoint -> (its ModelConfig, whole tensors), in the current layout."""


    directory, _ = resolve_load_dir(path, fallback=False)
    saved = read_common(directory).get("config", {}).get("model", {})
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    model_cfg = ModelConfig(**{k: v for k, v in saved.items() if k in known})
    cfg = _run_config(model_cfg, parallel_state.get_tensor_model_parallel_world_size(),
                      parallel_state.get_pipeline_model_parallel_world_size())
    chunks = build_model_chunks(cfg)
    load_weights(chunks, directory)
    return model_cfg, layout_free_state(chunks)


def read(kind: str, src: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    if kind == "4ds-npz":

        return read_npz(src)
    if kind == "hf-videomae":

        return read_hf(src)
    return read_megavid(src)


def resize(model_cfg: ModelConfig, state: dict, *, num_frames: int | None,
           image_size: int | None, method: str) -> ModelConfig:
    """Move the weights to another clip size (learned position tables are interpolated)."""
    arch = model_cfg.resolved_arch()
    new = arch.replace(num_frames=num_frames or arch.num_frames,
                       image_size=image_size or arch.image_size)
    if new == arch:
        return model_cfg
    model_cfg = dataclasses.replace(model_cfg, arch={**model_cfg.arch,
                                                     "num_frames": new.num_frames,
                                                     "image_size": new.image_size})
    validate(RunConfig(model=model_cfg))
    for name in ("pos_embed", "decoder_pos_embed"):
        if name in state:
            state[name] = resize_pos_embed(state[name], arch.grid, new.grid, method)
    return model_cfg


# -- writing -------------------------------------------------------------------------------------
def _run_config(model_cfg: ModelConfig, tp: int, pp: int) -> RunConfig:
    cfg = RunConfig(model=dataclasses.replace(model_cfg, transformer_impl="local"))
    cfg.parallel.tensor_model_parallel_size, cfg.parallel.pipeline_model_parallel_size = tp, pp
    return cfg


def write_megavid(model_cfg: ModelConfig, state: dict, dst: str | Path, *, seed: int,
                  source: str) -> Path:
    """A weights-only megavid checkpoint ``dst/iter_0000000`` in the current TP/PP layout."""


    tp = parallel_state.get_tensor_model_parallel_world_size()
    pp = parallel_state.get_pipeline_model_parallel_world_size()
    cfg = _run_config(model_cfg, tp, pp)
    cfg.train.seed = seed
    validate(cfg)
    has_decoder = "head.weight" in state
    chunks = build_model_chunks(cfg)
    problem = None
    for chunk in chunks:
        initialize_chunk(chunk, seed=seed, std=model_cfg.init_std)  # the decoder if absent
        try:
            load_layout_free_state(chunk, state,
                                   optional=() if has_decoder else DECODER_PREFIXES)
        except (KeyError, ValueError) as err:
            problem = err.args[0]
    problems = [None] * dist.get_world_size()
    dist.all_gather_object(problems, problem)  # a stage's problem stops every rank, not a hang
    if any(problems):
        raise FormatError(next(p for p in problems if p))
    saved = dataclasses.replace(cfg.model, transformer_impl=model_cfg.transformer_impl)
    common = {"config": {**cfg.to_dict(), "model": dataclasses.asdict(saved)},
              "layout": {"tp": tp, "pp": pp}, "source": source,
              "decoder": "converted" if has_decoder else f"initialised (seed {seed})"}
    return save_weights(chunks, Path(dst), step=0, common=common)


def write(kind: str, model_cfg: ModelConfig, state: dict, dst: str | Path, *, seed: int,
          source: str) -> None:

    if kind == "megavid":
        write_megavid(model_cfg, state, dst, seed=seed, source=source)
        return
    if dist.get_rank() == 0:
        if kind == "4ds-npz":

            write_npz(model_cfg, state, dst)
        else:

            write_hf(model_cfg, state, dst)
    dist.barrier()


def convert(src_kind: str, dst_kind: str, src, dst, *, seed: int = 1234,
            num_frames: int | None = None, image_size: int | None = None,
            interpolation: str = "trilinear", decoder: dict | None = None) -> ModelConfig:
    """Convert in the current process group and parallel layout (every rank calls it)."""
    model_cfg, state = read(src_kind, src)
    if decoder:
        if "head.weight" in state:
            raise FormatError("--decoder: the source has an MAE decoder; its shape is fixed")
        model_cfg = dataclasses.replace(model_cfg, arch={**model_cfg.arch, **decoder})
    model_cfg = resize(model_cfg, state, num_frames=num_frames, image_size=image_size,
                       method=interpolation)
    write(dst_kind, model_cfg, state, dst, seed=seed, source=f"{src_kind}: {src}")
    return model_cfg


# -- command line --------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m megavid.tools.convert", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
        description="Convert weights between the official 4DS .npz, Hugging Face VideoMAE "
                    "and megavid checkpoints (sharded for any TP/PP).")
    parser.add_argument("--from", dest="src_kind", required=True, choices=FORMATS_IN)
    parser.add_argument("--to", dest="dst_kind", required=True, choices=FORMATS_OUT)
    parser.add_argument("src", help="source file or directory")
    parser.add_argument("dst", help="destination file or directory")
    parser.add_argument("--tp", type=int, default=1, help="write the megavid checkpoint from "
                        "this many tensor-parallel ranks (started here unless under torchrun)")
    parser.add_argument("--pp", type=int, default=1, help="... and pipeline stages")
    parser.add_argument("--seed", type=int, default=1234,
                        help="seed of the MAE decoder when the source has none")
    parser.add_argument("--decoder", action="append", default=[], metavar="FIELD=VALUE",
                        help="decoder shape when the source has none, e.g. "
                             "decoder_hidden_size=384 (default: VideoMAE's 512/4/2048/8)")
    parser.add_argument("--num-frames", type=int, help="convert to this clip length")
    parser.add_argument("--image-size", type=int, help="convert to this resolution")
    parser.add_argument("--interpolation", choices=INTERPOLATIONS, default="trilinear",
                        help="how learned position tables follow --num-frames/--image-size")
    return parser


def _decoder_fields(items: list[str], parser) -> dict:
    fields = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("decoder_") or not value.isdigit():
            parser.error(f"--decoder {item!r}: expected decoder_<field>=<int>, e.g. "
                         "decoder_num_layers=4")
        fields[key] = int(value)
    return fields


def _relaunch(world: int, argv: list[str]) -> int:
    """Run this command again as ``world`` processes (torchrun), for --tp/--pp."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc-per-node", str(world), "-m", "megavid.tools.convert", *argv]
    return subprocess.call(cmd)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    decoder = _decoder_fields(args.decoder, parser)
    world = args.tp * args.pp
    if world > 1 and args.dst_kind != "megavid":
        parser.error("--tp/--pp apply to --to megavid only")

    env = runtime.read_dist_env()
    if env.world_size != world:
        if env.world_size == 1:
            return _relaunch(world, sys.argv[1:] if argv is None else argv)
        parser.error(f"world size {env.world_size} is not --tp {args.tp} x --pp {args.pp}")
    runtime.init_distributed(env=env)
    runtime.init_model_parallel(tp=args.tp, pp=args.pp, vpp=None)
    runtime.set_seed(args.seed)
    try:
        model_cfg = convert(args.src_kind, args.dst_kind, args.src, args.dst, seed=args.seed,
                            num_frames=args.num_frames, image_size=args.image_size,
                            interpolation=args.interpolation, decoder=decoder)
    except (FormatError, ConfigError, CheckpointError, ValueError, FileNotFoundError) as err:
        print(f"megavid.tools.convert: error: {err}", file=sys.stderr)
        return 2
    finally:
        runtime.shutdown()
    if env.rank == 0:
        arch = model_cfg.resolved_arch()
        print(f"wrote {args.dst} ({args.dst_kind}): {arch.hidden_size} wide, {arch.num_layers} "
              f"blocks, {arch.num_frames}x{arch.image_size}x{arch.image_size} clips")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
