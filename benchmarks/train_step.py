"""megavid's training step against Hugging Face ``VideoMAEForPreTraining`` of the same size, on CPU.

Both take one AdamW step on a micro-batch of random clips with the same
encoder/decoder widths, depths, heads, MLP widths, tubelets and mask ratio
(norm-pixel MSE on masked tubelets). The HF model is built from a config:
no weights are downloaded. Reports the median step time of each and
``step_speedup_vs_hf_<preset>_<mask>`` (HF time / megavid time: > 1 means megavid is faster).

    python benchmarks/train_step.py --out results/train_step.json [--quick] [--preset 4ds-s]

Needs ``pip install transformers`` for the HF side; without it the megavid
row is written alone with a note.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

from megavid.models.masking import make_masks, num_visible
from megavid.tools.bench_results import write_results


def time_megavid(preset: str, batch: int, mask_ratio: float, steps: int) -> list[float]:
    """Seconds per ``Trainer.train_step`` (fp32, mock data, one process)."""
    from megavid.config import load_config
    from megavid.parallel import runtime
    from megavid.training.trainer import Trainer

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    with tempfile.TemporaryDirectory() as log_dir:
        cfg = load_config(overrides={
            "model.preset": preset, "model.mask_ratio": mask_ratio, "data.mock": True,
            "train.micro_batch_size": batch, "train.global_batch_size": batch,
            "train.train_iters": steps + 2, "train.lr_warmup_iters": 1,
            "log.log_dir": log_dir, "log.tensorboard": False, "log.plot": False,
        })
        trainer = Trainer(cfg)
        times = []
        for _ in range(steps + 1):  # the first step warms up
            start = time.perf_counter()
            trainer.train_step()
            times.append(time.perf_counter() - start)
        trainer.close()
        runtime.shutdown()
    return times[1:]


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


def time_hf(arch, batch: int, mask_ratio: float, steps: int) -> tuple[list[float], int]:
    """(seconds per forward + backward + AdamW step, parameter count) of the HF model."""
    model = hf_model(arch).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    _, mask = make_masks(torch.arange(batch), grid=arch.grid, mask_ratio=mask_ratio,
                         masking="random", seed=1)
    # HF wants (B, T, C, H, W) and the same number of masked tubelets per clip
    video = torch.rand(batch, arch.num_frames, arch.channels, arch.image_size, arch.image_size)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = model(pixel_values=video, bool_masked_pos=mask).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        times.append(time.perf_counter() - start)
    return times[1:], sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="4ds-s")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--mask-ratio", type=float, default=0.9)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after one warm-up)")
    parser.add_argument("--quick", action="store_true", help="tiny preset, 2 timed steps")
    parser.add_argument("--out", default="train_step.json")
    args = parser.parse_args()
    preset, steps = ("tiny", 2) if args.quick else (args.preset, args.steps)
    from megavid.models.presets import count_parameters, get_preset

    arch = get_preset(preset)
    params = {"preset": preset, "batch": args.batch, "mask_ratio": args.mask_ratio,
              "visible": num_visible(arch.grid, args.mask_ratio, "random"), "steps": steps}
    mv = statistics.median(time_megavid(preset, args.batch, args.mask_ratio, steps))
    rows = [{"name": f"train_step megavid {preset}", "value": round(mv * 1e3, 2), "unit": "ms",
             "params": params, "model_params": count_parameters(arch)["total"]}]
    ratios, notes = {}, []
    try:
        hf_times, hf_params = time_hf(arch, args.batch, args.mask_ratio, steps)
        hf = statistics.median(hf_times)
    except ImportError as err:
        notes.append(f"hf VideoMAEForPreTraining: skipped ({err}); pip install transformers")
    else:
        rows.append({"name": f"train_step hf-videomae {preset}", "value": round(hf * 1e3, 2),
                     "unit": "ms", "params": params, "model_params": hf_params})
        ratios[f"step_speedup_vs_hf_{preset}_{args.mask_ratio:g}"] = round(hf / mv, 3)
    notes.append("CPU fp32, one process; megavid: Trainer.train_step (megatron-core schedule, "
                 "DDP grad buffer, megatron optimizer, grad clip, loss all-reduce); HF: forward, "
                 "backward, clip, torch AdamW; HF uses fixed sin-cos position embeddings "
                 "(model_params differ by megavid's learned ones)")
    obj = write_results(args.out, "benchmarks.train_step", rows, ratios, notes=notes,
                        extra={"settings": {"quick": args.quick,
                                            "threads": torch.get_num_threads()}})
    for row in obj["results"]:
        print(f"{row['name']:36s} {row['value']:10.1f} ms")
    print(obj["ratios"], obj.get("notes"))


if __name__ == "__main__":
    main()
