"""``python -m megavid.visualize --ckpt CKPT [VIDEO ...] --out DIR``: what the MAE reconstructs.

For each clip, writes ``DIR/<name>.png``: a grid whose rows are the original
frames, the masked input, the reconstruction (predicted tubelets where the
encoder saw nothing, the input elsewhere) and the per-pixel squared error, one
column per frame; ``DIR/<name>.mp4``, the same rows side by side as a video; and
``DIR/<name>.npz``, the picture's data. With ``norm_pix_loss`` the prediction is
un-normalised with each masked tubelet's own mean and std, as VideoMAE's
visualisation does, and the picture says so.

CKPT is a megavid checkpoint directory (a save root with ``latest``, or an
``iter_*`` directory). VIDEO files are read as ``megavid.features`` reads them
(the model's frame count from ``--start`` every ``--stride`` frames, centre crop);
without any, the first ``--num-clips`` validation clips of the checkpoint's run
(or of ``--valid-data``) are used, with the fixed frames, crops and masks the
training log's validation loss uses. Masks: validation sample ``i`` of
``VALID_SEED``; VIDEO number ``i`` gets the same mask as validation sample ``i``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import megavid.kernels as kernels
from megavid.config import ConfigError, RunConfig, config_from_dict, has_validation
from megavid.data import VALID_SEED, build_valid_loader
from megavid.data.clip import read_clip
from megavid.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from megavid.kernels.reference import normalize_patches_per_channel, patchify
from megavid.models.builder import build_model_chunks
from megavid.models.masking import make_masks
from megavid.parallel import runtime
from megavid.training.checkpoint import load_weights, read_common
from megavid.training.checkpoint_dirs import CheckpointError, resolve_load_dir
from megavid.training.pictures import reconstruction_arrays, save_picture


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m megavid.visualize", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("videos", nargs="*", metavar="VIDEO", help="video files or .npy frames")
    parser.add_argument("--ckpt", required=True, help="megavid checkpoint directory")
    parser.add_argument("--out", required=True, help="directory for the PNG/MP4/NPZ files")
    parser.add_argument("--num-clips", type=int, default=4,
                        help="validation clips to draw when no VIDEO is given")
    parser.add_argument("--valid-data", help="validation clips (default: the run's own)")
    parser.add_argument("--start", type=int, default=0, help="VIDEO: first frame")
    parser.add_argument("--stride", type=int, default=1, help="VIDEO: take every k-th frame")
    parser.add_argument("--no-video", action="store_true", help="PNG and NPZ only, no MP4")
    return parser


def load_run_config(ckpt: str, valid_data: str | None) -> tuple[RunConfig, Path]:
    """The checkpoint's run config, set up for one process (fp32 on CPU), and its directory."""
    directory, _ = resolve_load_dir(ckpt, fallback=True)
    data = read_common(directory).get("config")
    if not data:
        raise CheckpointError(f"--ckpt {ckpt}: the checkpoint holds no run config")
    data = {**data, "parallel": {}, "checkpoint": {}, "log": {}}  # one process, no logging
    if valid_data:
        data["data"] = {**data.get("data", {}), "valid_path": valid_data, "valid_fraction": 0.0}
    if not torch.cuda.is_available():
        data["train"] = {**data.get("train", {}), "precision": "fp32", "fp8": None}
    return config_from_dict(data), directory


def model_loss(cfg: RunConfig, video: torch.Tensor, pred: torch.Tensor,
               mask: torch.Tensor) -> float:
    """The training step's MAE loss of one clip (the same function and targets)."""
    patches = patchify(video, cfg.model.resolved_arch().tubelet)
    norm_pix = cfg.model.norm_pix_loss
    if norm_pix and cfg.model.norm_pix_style == "videomae":
        patches = normalize_patches_per_channel(patches.float(), cfg.model.resolved_arch().channels)
        norm_pix = False
    return float(kernels.fused_mae_loss(pred, patches, mask, norm_pix, backend="torch"))


def clips(args, cfg: RunConfig):
    """(name, video (1, T, H, W, C) as the model takes it, sample index) per clip."""
    arch = cfg.model.resolved_arch()
    if args.videos:
        for i, path in enumerate(args.videos):
            clip = read_clip(Path(path), num_frames=arch.num_frames, size=arch.image_size,
                             start=args.start, stride=args.stride)  # [0, 1]
            if cfg.data.value_range == "imagenet":
                clip = (clip - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
            yield Path(path).stem, clip, i
        return
    if not has_validation(cfg):
        raise ConfigError("the checkpoint's run had no validation clips; pass VIDEO files or "
                          "--valid-data PATH")
    loader = build_valid_loader(cfg.data, arch, global_batch_size=1, micro_batch_size=1,
                                dp_rank=0, dp_size=1, num_workers=0)
    for i in range(args.num_clips):
        yield f"valid_{i:03d}", loader.sample(i)["video"], i


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg, directory = load_run_config(args.ckpt, args.valid_data)
        runtime.init_distributed(env=runtime.read_dist_env())
        runtime.init_model_parallel(tp=1, pp=1, vpp=None)
        runtime.set_seed(cfg.train.seed)
        (chunk,) = build_model_chunks(cfg)
        load_weights([chunk], directory)
        chunk.eval()
        out = Path(args.out)
        arch = cfg.model.resolved_arch()
        for name, video, index in clips(args, cfg):
            ids_keep, mask = make_masks(torch.tensor([index]), grid=arch.grid,
                                        mask_ratio=cfg.model.mask_ratio,
                                        masking=cfg.model.masking, seed=VALID_SEED)
            with torch.no_grad():
                pred = chunk(video.cuda(), ids_keep.cuda()).float().cpu()  # (1, N, P)
            loss = model_loss(cfg, video, pred, mask)
            arrays = reconstruction_arrays(
                video[0], pred[0], mask[0], arch=arch, norm_pix=cfg.model.norm_pix_loss,
                norm_pix_style=cfg.model.norm_pix_style, value_range=cfg.data.value_range)
            arrays["model_loss"] = loss
            paths = save_picture(arrays, out / name, video=not args.no_video,
                                 title=f"{name} ({directory.name})")
            print(f"{name}: MAE loss {loss:.4f} | " + ", ".join(str(p) for p in paths))
    except (ConfigError, CheckpointError, ValueError, FileNotFoundError) as err:
        print(f"megavid.visualize: error: {err}", file=sys.stderr)
        return 2
    finally:
        runtime.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
