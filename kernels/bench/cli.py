"""``python -m megavid.kernels.bench SUBCOMMAND``: run microbenchmarks, print, write JSON and plots."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from megavid.kernels.bench.common import DTYPES, Context, Report
from megavid.kernels.bench.compute import (
    bench_attention,
    bench_gemm,
    bench_layernorm,
    bench_patch_embed,
)
from megavid.kernels.bench.decode import bench_decode
from megavid.kernels.bench.triton_bench import bench_triton

from megavid.tables import Column, print_table
from megavid.tools.bench_results import write_results

REPORT_COLUMNS = [
    Column("name", "name", justify="left"), Column("value", "value", "{:.4g}".format),
    Column("unit", "unit"), Column("time_ms", "ms", "{:.3f}".format),
    Column("frac_peak", "% peak", lambda v: f"{100 * v:.1f}"),
]

BENCHES = {
    "gemm": bench_gemm,
    "attention": bench_attention,
    "layernorm": bench_layernorm,
    "patch_embed": bench_patch_embed,
    "triton": bench_triton,
    "decode": bench_decode,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m megavid.kernels.bench", description=__doc__)
    parser.add_argument("command", choices=[*BENCHES, "all"])
    parser.add_argument("--out", help="results JSON (default kernels-bench-COMMAND.json); "
                        "plots go next to it as STEM-PLOT.png")
    parser.add_argument("--quick", action="store_true", help="short run: small shapes, few repeats")
    parser.add_argument("--device", default="auto",
                        help="auto (cuda if available), cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="auto", choices=["auto", *DTYPES],
                        help="compute dtype; auto is bf16 on GPU, fp32 on CPU "
                        "(GEMM runs bf16 always)")
    parser.add_argument("--preset", default=None, help="attention: model preset for heads/head dim "
                        "(default 4ds-l)")
    parser.add_argument("--json", action="store_true",
                        help="print the results object (the --out file's content), no tables")
    return parser.parse_args(argv)


def make_context(args: argparse.Namespace) -> Context:
    name = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        device = torch.device("cuda", torch.cuda.current_device())
    dtype = args.dtype if args.dtype != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    return Context(device=device, dtype=DTYPES[dtype], quick=args.quick)


def print_report(name: str, rep: Report, seconds: float) -> None:
    """One benchmark's rows as a table (complete values off a terminal), its ratios, notes."""
    print_table(rep.results, REPORT_COLUMNS, title=f"{name} ({seconds:.1f} s)")
    for key, value in rep.ratios.items():
        print(f"  ratio {key}: {value:.3g}x")
    for note in rep.notes:
        print(f"  note: {note}")


def save_plot(path: Path, title: str, xlabel: str, ylabel: str, series: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for label, points in sorted(series.items()):
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker="o", label=label)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _peaks(ctx: Context) -> dict:
    peaks = {}
    for key, dtype in (("tflops", ctx.dtype), ("tflops_bf16", torch.bfloat16)):
        value, source = ctx.peak_tflops(dtype)
        if value:
            peaks[key] = {"value": round(value, 4), "source": source}
    value, source = ctx.peak_gbs()
    if value:
        peaks["gbs"] = {"value": round(value, 2), "source": source}
    return peaks


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    ctx = make_context(args)
    names = list(BENCHES) if args.command == "all" else [args.command]
    out = Path(args.out or f"kernels-bench-{args.command}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    peaks = _peaks(ctx)  # measured first on CPU (then cached), before the benchmarks heat it up
    merged = Report()
    for name in names:
        start = time.perf_counter()
        rep = BENCHES[name](ctx, args.preset) if name == "attention" else BENCHES[name](ctx)
        if not args.json:
            print_report(name, rep, time.perf_counter() - start)
        merged.results += rep.results
        merged.ratios |= rep.ratios
        merged.notes += rep.notes
        for plot, (title, xlabel, ylabel, series) in rep.plots.items():
            if series:
                save_plot(out.with_name(f"{out.stem}-{plot}.png"), title, xlabel, ylabel, series)
    settings = {"device": str(ctx.device), "dtype": str(ctx.dtype).removeprefix("torch."),
                "quick": ctx.quick, "peaks": peaks}
    obj = write_results(out, f"kernels.{args.command}", merged.results, merged.ratios,
                        notes=merged.notes, extra={"settings": settings})
    print(json.dumps(obj, indent=1) if args.json else f"wrote {out}")
    return obj
