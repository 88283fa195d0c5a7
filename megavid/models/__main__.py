"""``python -m megavid.models --list``: the preset table with exact parameter counts."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from megavid.models.presets import PRESETS, count_parameters
from megavid.training.flops import mae_forward_flops


def preset_table(mask_ratio: float) -> Table:
    table = Table(title=f"megavid presets (MAE training FLOPs at mask ratio {mask_ratio})")
    for column in ("preset", "width", "depth", "MLP", "heads", "decoder w/d/MLP/h", "clip",
                   "encoder params", "decoder params", "GFLOP/clip (fwd+bwd)"):
        table.add_column(column, justify="right")
    for name, arch in PRESETS.items():
        counts = count_parameters(arch)
        flops = 3 * mae_forward_flops(arch, mask_ratio=mask_ratio)["total"]
        table.add_row(
            name, str(arch.hidden_size), str(arch.num_layers), str(arch.ffn_hidden_size),
            str(arch.num_attention_heads),
            f"{arch.decoder_hidden_size}/{arch.decoder_num_layers}/"
            f"{arch.decoder_ffn_hidden_size}/{arch.decoder_num_attention_heads}",
            f"{arch.num_frames}x{arch.image_size}x{arch.image_size}",
            f"{counts['encoder']:,}", f"{counts['decoder']:,}", f"{flops / 1e9:,.1f}",
        )
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m megavid.models")
    parser.add_argument("--list", action="store_true", help="print the preset table")
    parser.add_argument("--mask-ratio", type=float, default=0.95)
    args = parser.parse_args(argv)
    if not args.list:
        parser.print_help()
        return
    Console(soft_wrap=True).print(preset_table(args.mask_ratio))


if __name__ == "__main__":
    main()
