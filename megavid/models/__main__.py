"""``python -m megavid.models --list [--json]``: the preset table with exact parameter counts."""

from __future__ import annotations

import argparse

from megavid.config.presets import PRESETS, count_parameters
from megavid.models.flops import mae_forward_flops
from megavid.tables import Column, print_table

COLUMNS = [
    Column("preset", "preset", justify="left"),
    Column("hidden_size", "width"), Column("num_layers", "depth"),
    Column("ffn_hidden_size", "MLP"), Column("num_attention_heads", "heads"),
    Column("decoder", "decoder w/d/MLP/h"), Column("clip", "clip"),
    Column("encoder_params", "encoder params", "{:,}".format),
    Column("decoder_params", "decoder params", "{:,}".format),
    Column("train_flops_per_clip", "GFLOP/clip (fwd+bwd)", lambda v: f"{v / 1e9:,.1f}"),
]


def preset_rows(mask_ratio: float) -> list[dict]:
    """One row per preset: its shape, exact parameter counts and MAE training FLOPs per clip."""
    rows = []
    for name, arch in PRESETS.items():
        counts = count_parameters(arch)
        rows.append({
            "preset": name, "hidden_size": arch.hidden_size, "num_layers": arch.num_layers,
            "ffn_hidden_size": arch.ffn_hidden_size,
            "num_attention_heads": arch.num_attention_heads,
            "decoder": f"{arch.decoder_hidden_size}/{arch.decoder_num_layers}/"
                       f"{arch.decoder_ffn_hidden_size}/{arch.decoder_num_attention_heads}",
            "clip": f"{arch.num_frames}x{arch.image_size}x{arch.image_size}",
            "encoder_params": counts["encoder"], "decoder_params": counts["decoder"],
            "train_flops_per_clip": 3 * mae_forward_flops(arch, mask_ratio=mask_ratio)["total"],
        })
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m megavid.models")
    parser.add_argument("--list", action="store_true", help="print the preset table")
    parser.add_argument("--json", action="store_true", help="the table as JSON (raw numbers)")
    parser.add_argument("--mask-ratio", type=float, default=0.95)
    args = parser.parse_args(argv)
    if not (args.list or args.json):
        parser.print_help()
        return
    print_table(preset_rows(args.mask_ratio), COLUMNS, as_json=args.json,
                title=f"megavid presets (MAE training FLOPs at mask ratio {args.mask_ratio})",
                extra={"mask_ratio": args.mask_ratio})


if __name__ == "__main__":
    main()
