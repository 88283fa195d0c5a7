"""``python -m megavid.features VIDEO --ckpt CKPT``: encoder features of a clip, saved as .npy.

VIDEO is a video file (decoded with PyAV) or a ``.npy`` array of frames
(T, H, W, 3), uint8 or float in [0, 1]. The clip is the encoder's frame count
taken from ``--start`` every ``--stride`` frames, centre-cropped to a square and
resized to the encoder's resolution, in [0, 1] (the model applies its own pixel
normalisation). CKPT is anything ``megavid.inference.load_encoder`` takes: a
megavid checkpoint, an official 4DS ``.npz``, a Hugging Face VideoMAE directory
or a preset name. Writes (T', H', W', D) float32, or (N, D) with ``--tokens``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from megavid.data.clip import read_clip
from megavid.inference import load_encoder
from megavid.parallel import cpu_compat


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m megavid.features", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("video", help="video file, or .npy of (T, H, W, 3) frames")
    parser.add_argument("--ckpt", required=True,
                        help="megavid checkpoint, 4DS .npz, HF VideoMAE directory or preset")
    parser.add_argument("--depth", type=float, default=0.95,
                        help="fractional depth, official 4DS convention (default 0.95)")
    parser.add_argument("--tokens", action="store_true", help="write (N, D) instead of a grid")
    parser.add_argument("--out", help="output .npy (default: VIDEO's name + .features.npy)")
    parser.add_argument("--start", type=int, default=0, help="first frame")
    parser.add_argument("--stride", type=int, default=1, help="take every k-th frame")
    parser.add_argument("--num-frames", type=int, help="clip length (default: the model's)")
    parser.add_argument("--image-size", type=int, help="resolution (default: the model's)")
    parser.add_argument("--device", default=str(cpu_compat.local_device()))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    encoder = load_encoder(args.ckpt, device=args.device, num_frames=args.num_frames,
                           image_size=args.image_size)
    arch = encoder.arch
    video = Path(args.video)
    try:
        clip = read_clip(video, num_frames=arch.num_frames, size=arch.image_size,
                         start=args.start, stride=args.stride)
        features = encoder.features(clip, depth=args.depth, grid=not args.tokens)[0]
    except ValueError as err:
        print(f"megavid.features: error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else video.with_name(video.name + ".features.npy")
    np.save(out, features.float().cpu().numpy())
    print(f"wrote {out}: {tuple(features.shape)} at depth {args.depth} "
          f"({encoder.blocks_for(args.depth)} of {encoder.num_layers} blocks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
