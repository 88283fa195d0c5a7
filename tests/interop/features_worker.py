"""Run under torchrun by test_layouts.py: features of a 4DS .npz / megavid checkpoint in a layout.

Every rank saves what it got (``OUT/rank<N>.pt``): the feature API promises the
result on every rank of the model.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from megavid.inference import load_encoder
from megavid.parallel import runtime

DEPTHS = (0.4, 0.75, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--pp", type=int, default=1)
    parser.add_argument("--source", action="append", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    runtime.init_distributed()
    runtime.init_model_parallel(tp=args.tp, pp=args.pp, vpp=None)
    runtime.set_seed(0)
    video = torch.rand(2, 4, 24, 24, 3, generator=torch.Generator().manual_seed(0))
    result = {}
    for source in args.source:
        encoder = load_encoder(source)
        result[source] = torch.stack([encoder.features(video, depth=d) for d in DEPTHS])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(result, out / f"rank{os.environ['RANK']}.pt")
    runtime.shutdown()


if __name__ == "__main__":
    main()
