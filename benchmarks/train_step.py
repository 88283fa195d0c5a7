"""megavid's training step against Hugging Face ``VideoMAEForPreTraining`` of the same size, on CPU.

Both take one AdamW step (grad-norm clip 1.0) on a fresh micro-batch of random
clips with the same encoder/decoder widths, depths, heads, MLP widths,
tubelets and mask ratio (norm-pixel MSE on masked tubelets). The HF model is
built from a config: no weights are downloaded. The two are timed in one
process, step for step in alternation (the side that goes first alternates
too), so load drift on the machine hits both alike. Per side: median step
time, achieved model TFLOP/s (``megavid.models.flops``, the same count for
both), and that as a fraction of this machine's measured fp32 GEMM peak.
Ratios ``step_speedup_vs_hf_<preset>_<mask>`` = HF time / megavid time (> 1:
megavid is faster).

    python benchmarks/train_step.py --out benchmarks/results/train_step_vs_hf_cpu.json
    python benchmarks/train_step.py --presets 4ds-s --masks 0.95 --steps 7
    python benchmarks/train_step.py --profile 4ds-s   # megavid's step under torch.profiler

Needs ``pip install 'megavid[bench]'`` (transformers).
"""

from __future__ import annotations

import argparse
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


class MegavidSide:
    """``Trainer.train_step`` on mock clips: megatron-core schedule, DDP buffer, optimizer."""

    name = "megavid"

    def __init__(self, preset: str, batch: int, mask_ratio: float, log_dir: str):
        from megavid.config import load_config
        from megavid.training.trainer import Trainer

        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        cfg = load_config(overrides={
            "model.preset": preset, "model.mask_ratio": mask_ratio, "data.mock": True,
            "train.micro_batch_size": batch, "train.global_batch_size": batch,
            "train.train_iters": 10_000, "train.lr_warmup_iters": 1,
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
    """Forward, backward, clip, ``torch.optim.AdamW`` (torch's default implementation)."""

    name = "hf-videomae"

    def __init__(self, arch, batch: int, mask_ratio: float):
        self.arch, self.batch = arch, batch
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


def compare(preset: str, batch: int, mask_ratio: float, steps: int, log_dir: str) -> dict:
    """Alternate the two sides step by step; seconds per step of each."""
    arch = get_preset(preset)
    sides = [MegavidSide(preset, batch, mask_ratio, log_dir), HFSide(arch, batch, mask_ratio)]
    times = {side.name: [] for side in sides}
    for side in sides:  # warm-up to steady state: optimizer state, thread pools, and the
        for _ in range(3):  # malloc heap (megavid's CPU runs page-fault for the first ~3 steps)
            side.step()
    for i in range(steps):
        for side in sides if i % 2 == 0 else sides[::-1]:
            times[side.name].append(_timed(side))
    params = {side.name: side.params for side in sides}
    for side in sides:
        side.close()
    return {"times": times, "params": params}


def rows_for(preset: str, batch: int, mask_ratio: float, steps: int, result: dict,
             peak: float) -> tuple[list[dict], float]:
    arch = get_preset(preset)
    flops = batch * mae_train_flops_per_clip(arch, mask_ratio=mask_ratio)
    settings = {"preset": preset, "batch": batch, "mask_ratio": mask_ratio,
                "visible": num_visible(arch.grid, mask_ratio, "random"), "steps": steps,
                "model_flops_per_step": flops}
    rows, median = [], {}
    for side, times in result["times"].items():
        median[side] = statistics.median(times)
        tflops = flops / median[side] / 1e12
        rows.append({"name": f"train_step {side} {preset} mask={mask_ratio:g}",
                     "value": round(median[side] * 1e3, 2), "unit": "ms",
                     "times_ms": [round(t * 1e3, 1) for t in times],
                     "tflops": round(tflops, 4), "frac_gemm_peak": round(tflops / peak, 3),
                     "model_params": result["params"][side], "params": settings})
    return rows, median["hf-videomae"] / median["megavid"]


def profile_megavid(preset: str, batch: int, mask_ratio: float) -> None:
    """Print where megavid's step spends its time (torch.profiler, by op)."""
    from torch.profiler import ProfilerActivity, profile

    with tempfile.TemporaryDirectory() as log_dir:
        side = MegavidSide(preset, batch, mask_ratio, log_dir)
        side.step()
        side.step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            side.step()
        side.close()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="4ds-s,4ds-b", help="comma-separated")
    parser.add_argument("--masks", default="0.95,0.9", help="comma-separated mask ratios")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per side")
    parser.add_argument("--quick", action="store_true", help="tiny preset, mask 0.9, 2 steps")
    parser.add_argument("--profile", metavar="PRESET", help="profile megavid's step and exit")
    parser.add_argument("--out", default="train_step.json")
    args = parser.parse_args()
    masks = [float(m) for m in args.masks.split(",")]
    if args.profile:
        profile_megavid(args.profile, args.batch, masks[0])
        return
    presets, steps = args.presets.split(","), args.steps
    if args.quick:
        presets, masks, steps = ["tiny"], [0.9], 2
    peak = measured_cpu_tflops(2048)
    rows, ratios = [], {}
    with tempfile.TemporaryDirectory() as log_dir:
        for preset in presets:
            for mask in masks:
                result = compare(preset, args.batch, mask, steps, log_dir)
                new_rows, speedup = rows_for(preset, args.batch, mask, steps, result, peak)
                rows += new_rows
                ratios[f"step_speedup_vs_hf_{preset}_{mask:g}"] = round(speedup, 3)
                for row in new_rows:
                    print(f"{row['name']:40s} {row['value']:9.1f} ms  {row['tflops']:.3f} "
                          f"TFLOP/s  {row['frac_gemm_peak']:.0%} of GEMM peak", flush=True)
    notes = [
        "CPU fp32, one process, the two sides alternated step by step; megavid: "
        "Trainer.train_step (megatron-core schedule, DDP grad buffer, megatron optimizer, grad "
        "clip, loss all-reduce, mock loader); HF: fresh torch.rand batch, forward, backward, "
        "clip, torch AdamW",
        "TFLOP/s: model FLOPs of megavid.models.flops (encoder on visible tubelets, decoder on "
        "all, 3x forward) for both sides; frac_gemm_peak against a measured 2048^3 fp32 matmul",
        "HF uses fixed sin-cos position embeddings, megavid learned ones (model_params differ)",
    ]
    obj = write_results(args.out, "benchmarks.train_step", rows, ratios, notes=notes,
                        extra={"settings": {"quick": args.quick, "gemm_peak_tflops": peak,
                                            "threads": torch.get_num_threads()}})
    print(obj["ratios"])


if __name__ == "__main__":
    main()
