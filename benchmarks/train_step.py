"""megavid's training step against Hugging Face ``VideoMAEForPreTraining`` of the same size, on CPU.

Both take one AdamW step (grad-norm clip 1.0) on a fresh micro-batch of random
clips with the same encoder/decoder widths, depths, heads, MLP widths,
tubelets and mask ratio (norm-pixel MSE on masked tubelets). The HF model is
built from a config: no weights are downloaded. The two are timed in one
process, step for step in alternation (the side that goes first alternates
too), so load drift on the machine hits both alike. Per side: median step
time, achieved model TFLOP/s (``megavid.models.flops``, the same count for
both), and that as a fraction of this machine's measured fp32 GEMM peak.
A third side (fp32, ``--decoder-mask-ratio``, default 0.5) is megavid with decoder
masking: a different algorithm, reported under ``different_algorithm_decoder_mask_*``
keys. Ratios ``step_speedup_vs_hf_<preset>_<mask>`` = HF time / megavid time (> 1:
megavid is faster), from the medians; ``spread`` in the JSON gives the ratio of
each alternation pair (min / median / max), i.e. how noisy the machine was.

bf16 (``--dtypes``): megavid with ``train.precision=bf16`` (``--bf16``: bf16
parameters in megatron-core's Float16Module, fp32 main weights and grad
buffer) against HF's fp32 model under ``torch.autocast("cpu", torch.bfloat16)``
(same shapes, fp32 AdamW); ratios ``step_speedup_vs_hf_bf16_<preset>_<mask>``.

    python benchmarks/train_step.py --out benchmarks/results/train_step_vs_hf_cpu.json
    python benchmarks/train_step.py --presets 4ds-s --masks 0.95 --steps 7
    python benchmarks/train_step.py --presets 4ds-s --masks 0.95 --dtypes bf16
    python benchmarks/train_step.py --profile 4ds-s   # megavid's step under torch.profiler
    python benchmarks/train_step.py --profile-hf 4ds-s   # HF's step under torch.profiler

Needs ``pip install 'megavid[bench]'`` (transformers).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time

import torch

from megavid.config.presets import get_preset, num_visible
from megavid.models.flops import mae_train_flops_per_clip
from megavid.models.masking import make_masks
from megavid.parallel.devices import measured_cpu_tflops
from megavid.tools.bench_results import write_results
from megavid.training.step import make_forward_step


class MegavidSide:
    """``Trainer.train_step`` on mock clips: megatron-core schedule, DDP buffer, optimizer."""

    name = "megavid"

    def __init__(self, preset: str, batch: int, mask_ratio: float, log_dir: str,
                 dtype: str = "fp32"):
        from megavid.config import load_config
        from megavid.training.trainer import Trainer

        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        cfg = load_config(overrides={
            "model.preset": preset, "model.mask_ratio": mask_ratio, "data.mock": True,
            "train.micro_batch_size": batch, "train.global_batch_size": batch,
            "train.train_iters": 10_000, "train.lr_warmup_iters": 1, "train.precision": dtype,
            "log.log_dir": log_dir, "log.tensorboard": False, "log.plot": False,
        })
        self.trainer = Trainer(cfg)
        self.params = sum(p.numel() for chunk in self.trainer.model for p in chunk.parameters())

    def step(self) -> None:
        self.trainer.train_step()

    def close(self) -> None:
        from megavid.parallel import runtime

        self.trainer.close()
        runtime.shutdown()


class DecoderMaskingSide:
    """megavid's step with ``model.decoder_mask_ratio`` (a different algorithm, not a
    like-for-like peer of HF): the same trainer, model and optimizer as ``side``, whose
    forward step is swapped for the one of the decoder-masking config while it steps."""

    def __init__(self, side: MegavidSide, ratio: float):
        self.side, self.ratio, self.params = side, ratio, side.params
        self.name = f"megavid-decoder-mask-{ratio:g}"
        cfg = side.trainer.cfg
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model,
                                                                 decoder_mask_ratio=ratio))
        self.forward_step = make_forward_step(cfg)

    def step(self) -> None:
        trainer = self.side.trainer
        full, trainer.forward_step = trainer.forward_step, self.forward_step
        try:
            trainer.train_step()
        finally:
            trainer.forward_step = full

    def close(self) -> None:
        pass


def hf_model(arch):
    """VideoMAEForPreTraining shaped like ``arch`` (no download: built from a config)."""
    from transformers import VideoMAEConfig, VideoMAEForPreTraining

    config = VideoMAEConfig(
        image_size=arch.image_size, patch_size=arch.tubelet[1], num_channels=arch.channels,
        num_frames=arch.num_frames, tubelet_size=arch.tubelet[0],
        hidden_size=arch.hidden_size, num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_attention_heads, intermediate_size=arch.ffn_hidden_size,
        decoder_hidden_size=arch.decoder_hidden_size,
        decoder_num_hidden_layers=arch.decoder_num_layers,
        decoder_num_attention_heads=arch.decoder_num_attention_heads,
        decoder_intermediate_size=arch.decoder_ffn_hidden_size,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, qkv_bias=True,
        norm_pix_loss=True, use_mean_pooling=False, attn_implementation="sdpa",
    )
    return VideoMAEForPreTraining(config)


class HFSide:
    """Forward, backward, clip, ``torch.optim.AdamW`` (torch's default implementation);
    bf16: the forward (and loss) under CPU autocast, fp32 weights and optimizer."""

    name = "hf-videomae"

    def __init__(self, arch, batch: int, mask_ratio: float, dtype: str = "fp32"):
        self.arch, self.batch = arch, batch
        self.autocast = dtype == "bf16"
        self.model = hf_model(arch).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.05)
        # HF wants the same number of masked tubelets in every clip: megavid's masks have that
        _, self.mask = make_masks(torch.arange(batch), grid=arch.grid, mask_ratio=mask_ratio,
                                  masking="random", seed=1)
        self.params = sum(p.numel() for p in self.model.parameters())

    def step(self) -> None:
        a = self.arch  # a fresh batch each step, as megavid's mock loader makes: (B, T, C, H, W)
        video = torch.rand(self.batch, a.num_frames, a.channels, a.image_size, a.image_size)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            loss = self.model(pixel_values=video, bool_masked_pos=self.mask).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()

    def close(self) -> None:
        del self.model, self.optimizer


def _timed(side) -> float:
    start = time.perf_counter()
    side.step()
    return time.perf_counter() - start


def compare(preset: str, batch: int, mask_ratio: float, steps: int, log_dir: str,
            dtype: str = "fp32", decoder_mask_ratio: float = 0.0) -> dict:
    """Alternate the sides step by step (megavid, HF, and megavid with decoder masking when
    ``decoder_mask_ratio``); seconds per step of each."""
    arch = get_preset(preset)
    sides = [MegavidSide(preset, batch, mask_ratio, log_dir, dtype),
             HFSide(arch, batch, mask_ratio, dtype)]
    if decoder_mask_ratio:
        sides.append(DecoderMaskingSide(sides[0], decoder_mask_ratio))
    times = {side.name: [] for side in sides}
    for side in sides:  # warm-up to steady state: optimizer state, thread pools, and the
        for _ in range(3):  # malloc heap (megavid's CPU runs page-fault for the first ~3 steps)
            side.step()
    for i in range(steps):
        for side in sides if i % 2 == 0 else sides[::-1]:
            times[side.name].append(_timed(side))
    params = {side.name: side.params for side in sides}
    decoder_ratios = {side.name: getattr(side, "ratio", 0.0) for side in sides}
    for side in sides[::-1]:
        side.close()
    return {"times": times, "params": params, "decoder_ratios": decoder_ratios}


def pair_spread(times: dict, side: str = "megavid") -> dict:
    """HF / ``side`` per alternation pair (step i of each side): min, median, max."""
    pairs = [hf / mv for hf, mv in zip(times["hf-videomae"], times[side])]
    return {"min": round(min(pairs), 3), "median": round(statistics.median(pairs), 3),
            "max": round(max(pairs), 3), "pairs": [round(r, 3) for r in pairs]}


def ratio_key(preset: str, mask_ratio: float, dtype: str) -> str:
    """``step_speedup_vs_hf_<preset>_<mask>`` (fp32, the original keys) or ``..._bf16_...``."""
    tag = "" if dtype == "fp32" else f"{dtype}_"
    return f"step_speedup_vs_hf_{tag}{preset}_{mask_ratio:g}"


def rows_for(preset: str, batch: int, mask_ratio: float, steps: int, result: dict,
             peak: float, dtype: str = "fp32") -> tuple[list[dict], float]:
    arch = get_preset(preset)
    rows, median = [], {}
    for side, times in result["times"].items():
        decoder_ratio = result["decoder_ratios"][side]
        # the FLOPs this side's algorithm needs (decoder masking: its decoder on fewer tokens)
        flops = batch * mae_train_flops_per_clip(arch, mask_ratio=mask_ratio,
                                                 decoder_mask_ratio=decoder_ratio)
        settings = {"preset": preset, "batch": batch, "mask_ratio": mask_ratio, "dtype": dtype,
                    "visible": num_visible(arch.grid, mask_ratio, "random"),
                    "decoder_mask_ratio": decoder_ratio, "steps": steps,
                    "model_flops_per_step": flops}
        median[side] = statistics.median(times)
        tflops = flops / median[side] / 1e12
        rows.append({"name": f"train_step {side} {preset} mask={mask_ratio:g} {dtype}",
                     "value": round(median[side] * 1e3, 2), "unit": "ms",
                     "times_ms": [round(t * 1e3, 1) for t in times],
                     "tflops": round(tflops, 4), "frac_gemm_peak": round(tflops / peak, 3),
                     "model_params": result["params"][side], "params": settings})
    return rows, {side: median["hf-videomae"] / m for side, m in median.items()}


def profile_side(side_name: str, preset: str, batch: int, mask_ratio: float,
                 dtype: str = "fp32", rows: int = 25) -> None:
    """Print where one side's step spends its time (torch.profiler, by op, self CPU time)."""
    from torch.profiler import ProfilerActivity, profile

    with tempfile.TemporaryDirectory() as log_dir:
        if side_name == "megavid":
            side = MegavidSide(preset, batch, mask_ratio, log_dir, dtype)
        else:
            side = HFSide(get_preset(preset), batch, mask_ratio, dtype)
        for _ in range(3):  # steady state, as in compare()
            side.step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            side.step()
        side.close()
    print(f"{side.name} {preset} mask={mask_ratio:g} batch={batch} {dtype}")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="4ds-s,4ds-b", help="comma-separated")
    parser.add_argument("--masks", default="0.95,0.9", help="comma-separated mask ratios")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per side")
    parser.add_argument("--dtypes", default="fp32,bf16",
                        help="comma-separated, of fp32 and bf16 (profiles: the first)")
    parser.add_argument("--decoder-mask-ratio", type=float, default=0.5,
                        help="a third side in fp32: megavid with this decoder masking "
                             "(a different algorithm; 0: leave it out)")
    parser.add_argument("--quick", action="store_true", help="tiny preset, mask 0.9, 2 steps")
    parser.add_argument("--profile", metavar="PRESET", help="profile megavid's step and exit")
    parser.add_argument("--profile-hf", metavar="PRESET", help="profile HF's step and exit")
    parser.add_argument("--out", default="train_step.json")
    args = parser.parse_args()
    masks = [float(m) for m in args.masks.split(",")]
    dtypes = args.dtypes.split(",")
    if not dtypes or set(dtypes) - {"fp32", "bf16"}:
        parser.error(f"--dtypes: fp32 and/or bf16, got {args.dtypes!r}")
    if args.profile or args.profile_hf:
        for name, preset in (("megavid", args.profile), ("hf", args.profile_hf)):
            if preset:
                profile_side(name, preset, args.batch, masks[0], dtypes[0])
        return
    presets, steps = args.presets.split(","), args.steps
    if args.quick:
        presets, masks, steps = ["tiny"], [0.9], 2
    peak = measured_cpu_tflops(2048)
    rows, ratios, spread = [], {}, {}
    with tempfile.TemporaryDirectory() as log_dir:
        for dtype in dtypes:
            for preset in presets:
                for mask in masks:
                    dual = args.decoder_mask_ratio if dtype == "fp32" else 0.0
                    result = compare(preset, args.batch, mask, steps, log_dir, dtype, dual)
                    new_rows, speedups = rows_for(preset, args.batch, mask, steps, result, peak,
                                                  dtype)
                    rows += new_rows
                    key = ratio_key(preset, mask, dtype)
                    ratios[key] = round(speedups["megavid"], 3)
                    spread[key] = pair_spread(result["times"])
                    if dual:  # labelled apart: not a like-for-like ratio
                        side = f"megavid-decoder-mask-{dual:g}"
                        dual_key = f"different_algorithm_decoder_mask_{dual:g}_{key}"
                        ratios[dual_key] = round(speedups[side], 3)
                        spread[dual_key] = pair_spread(result["times"], side)
                    for row in new_rows:
                        print(f"{row['name']:45s} {row['value']:9.1f} ms  {row['tflops']:.3f} "
                              f"TFLOP/s  {row['frac_gemm_peak']:.0%} of GEMM peak", flush=True)
                    print(f"  {key} {ratios[key]} (pairs min/median/max "
                          f"{spread[key]['min']}/{spread[key]['median']}/{spread[key]['max']})",
                          flush=True)
    notes = [
        "CPU, one process, the two sides alternated step by step; megavid: "
        "Trainer.train_step (megatron-core schedule, DDP grad buffer, megatron optimizer, grad "
        "clip, loss all-reduce, mock loader); HF: fresh torch.rand batch, forward, backward, "
        "clip, torch AdamW",
        "TFLOP/s: model FLOPs of megavid.models.flops (encoder on visible tubelets, decoder on "
        "all, 3x forward) for both sides; frac_gemm_peak against a measured 2048^3 fp32 matmul",
        "HF uses fixed sin-cos position embeddings, megavid learned ones (model_params differ)",
        "bf16: megavid train.precision=bf16 (bf16 weights, fp32 main weights and grad buffer); "
        "HF fp32 weights, forward and loss under torch.autocast('cpu', torch.bfloat16); "
        "frac_gemm_peak is still against the fp32 GEMM peak",
        "spread: HF/megavid step-time ratio of each alternation pair, min/median/max",
        "megavid-decoder-mask-R rows and different_algorithm_decoder_mask_R_* ratios: megavid "
        "with model.decoder_mask_ratio R (VideoMAE V2's dual masking: the decoder on the visible "
        "and a subset of the masked tubelets, the loss on that subset), a different algorithm "
        "than HF's, not a like-for-like ratio; its TFLOP/s count its own (smaller) FLOPs; it "
        "steps the same model and optimizer as the megavid side, alternated with both",
    ]
    obj = write_results(args.out, "benchmarks.train_step", rows, ratios, notes=notes,
                        extra={"settings": {"quick": args.quick, "gemm_peak_tflops": peak,
                                            "threads": torch.get_num_threads(),
                                            "dtypes": dtypes},
                               "spread": spread})
    print(obj["ratios"])


if __name__ == "__main__":
    main()
