"""Command-line flags of ``python -m megavid.pretrain``: a YAML config plus overrides.

Short flags follow torchtitan/nanoGPT habits (``--tp``); Megatron-LM's long
names are accepted as aliases so existing launch scripts carry over. Each flag
maps to exactly one config field; ``--set section.key=value`` reaches the rest.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from megavid.config import RunConfig, load_config
from megavid.training.common_state import saved_arch

# What runs when no --config is given (also examples/demo_cpu.yaml).
DEMO_CONFIG = Path(__file__).parent / "configs" / "demo_cpu.yaml"

# (flags, config field, type, help)
_FLAGS = [
    (("--tp", "--tensor-model-parallel-size"), "parallel.tensor_model_parallel_size", int,
     "tensor-parallel size"),
    (("--pp", "--pipeline-model-parallel-size"), "parallel.pipeline_model_parallel_size", int,
     "pipeline-parallel size"),
    (("--vpp", "--virtual-pipeline-model-parallel-size"),
     "parallel.virtual_pipeline_model_parallel_size", int,
     "model chunks per pipeline rank (interleaved 1F1B)"),
    (("--micro-batch-size",), "train.micro_batch_size", int, "clips per micro-batch"),
    (("--global-batch-size",), "train.global_batch_size", int, "clips per optimizer step"),
    (("--train-iters",), "train.train_iters", int, "optimizer steps"),
    (("--lr",), "train.lr", float, "peak learning rate"),
    (("--lr-warmup-iters",), "train.lr_warmup_iters", int, "linear warm-up steps"),
    (("--seed",), "train.seed", int, "seed of init, data order and masks"),
    (("--fp8", "--fp8-format"), "train.fp8", str, "hybrid | e4m3 (Transformer Engine only)"),
    (("--fp8-recipe",), "train.fp8_recipe", str,
     "delayed | tensorwise | blockwise (Hopper+) | mxfp8 (Blackwell)"),
    (("--num-layers-at-start-in-bf16",), "train.num_layers_at_start_in_bf16", int,
     "with --first-last-layers-bf16: the first encoder layers kept in BF16 (default 1)"),
    (("--num-layers-at-end-in-bf16",), "train.num_layers_at_end_in_bf16", int,
     "with --first-last-layers-bf16: the last encoder layers kept in BF16 (default 1)"),
    (("--recompute", "--recompute-granularity"), "train.recompute", str, "full | selective"),
    (("--cuda-graph-impl",), "parallel.cuda_graph_impl", str,
     "none | local (megatron-core's per-layer CUDA graphs)"),
    (("--preset",), "model.preset", str, "model size (python -m megavid.models --list)"),
    (("--mask-ratio",), "model.mask_ratio", float, "fraction of tubelets masked"),
    (("--decoder-mask-ratio",), "model.decoder_mask_ratio", float,
     "fraction of the masked tubelets the decoder leaves out (VideoMAE V2: 0.5)"),
    (("--transformer-impl",), "model.transformer_impl", str,
     "local | transformer_engine | auto"),
    (("--data", "--data-path"), "data.path", str, "folder of videos (default: demo clips)"),
    (("--num-workers",), "data.num_workers", int, "decoding workers per rank"),
    (("--decode-timeout-s",), "data.decode_timeout_s", float,
     "seconds a sample's decode may take before its file is skipped (0: no deadline)"),
    (("--save",), "checkpoint.save", str, "checkpoint directory"),
    (("--save-interval",), "checkpoint.save_interval", int, "steps between checkpoints"),
    (("--load",), "checkpoint.load", str, "resume from this checkpoint directory"),
    (("--keep-last",), "checkpoint.keep_last", int, "complete checkpoints to keep"),
    (("--exit-duration-in-mins",), "checkpoint.exit_duration_in_mins", float,
     "save and exit after this many minutes"),
    (("--log-dir",), "log.log_dir", str, "run directory (default runs/<timestamp>)"),
    (("--log-interval",), "log.log_interval", int, "steps between console lines"),
    (("--eval-interval",), "train.eval_interval", int,
     "steps between validation losses (0: only after the last step)"),
    (("--eval-iters",), "train.eval_iters", int, "global batches per validation (0: none)"),
    (("--valid-data", "--valid-data-path"), "data.valid_path", str,
     "validation clips (default: data.valid_fraction of --data)"),
    (("--log-images-interval",), "log.log_images_interval", int,
     "steps between reconstruction pictures in TensorBoard/W&B"),
    (("--wandb-project",), "log.wandb_project", str, "log to this Weights & Biases project"),
    (("--wandb-exp-name",), "log.wandb_exp_name", str, "the W&B run's name"),
    (("--wandb-save-dir",), "log.wandb_save_dir", str, "W&B's files (default: the run dir)"),
]
_SWITCHES = [
    (("--sp", "--sequence-parallel"), "parallel.sequence_parallel", "sequence parallelism"),
    (("--use-distributed-optimizer",), "parallel.use_distributed_optimizer",
     "shard optimizer state over data-parallel ranks"),
    (("--overlap-grad-reduce",), "parallel.overlap_grad_reduce",
     "overlap the DP gradient reduction with backward"),
    (("--fp8-param-gather",), "train.fp8_param_gather",
     "keep weights in FP8 and all-gather them in FP8 (needs --use-distributed-optimizer)"),
    (("--first-last-layers-bf16",), "train.first_last_layers_bf16",
     "keep the encoder's first and last layers in BF16 under --fp8 (not with delayed)"),
    (("--decoder-fp8",), "model.decoder_fp8", "run the MAE decoder's GEMMs in FP8 too"),
    (("--overlap-param-gather",), "parallel.overlap_param_gather",
     "all-gather updated parameters during the next forward (distributed optimizer)"),
    (("--tp-comm-overlap",), "parallel.tp_comm_overlap",
     "overlap the encoder's TP communication with its GEMMs (TE userbuffers, --tp>1 --sp)"),
    (("--async-save",), "checkpoint.async_save", "write checkpoints in the background"),
    (("--finetune",), "checkpoint.finetune",
     "load only the model weights from --load and start at step 0"),
    (("--requeue-on-preempt",), "checkpoint.requeue_on_preempt",
     "after a SIGUSR1 save, requeue the SLURM job"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m megavid.pretrain",
        description="Pretrain a 4DS video MAE. With no arguments: the CPU demo.",
        allow_abbrev=False,  # --train-iter must not silently mean --train-iters
    )
    parser.add_argument("--config", help="YAML run config (examples/*.yaml); default: the CPU demo")
    for flags, dest, typ, text in _FLAGS:
        parser.add_argument(*flags, dest=dest, type=typ, default=None, help=text)
    for flags, dest, text in _SWITCHES:
        parser.add_argument(*flags, dest=dest, action="store_const", const=True, default=None,
                            help=text)
    parser.add_argument("--bf16", dest="train.precision", action="store_const", const="bf16",
                        default=None, help="bf16 parameters with fp32 main weights")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override any config field, e.g. --set model.masking=tube")
    return parser


def parse_args(argv: list[str] | None = None) -> RunConfig:
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if "." in k and v is not None}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            parser.error(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. model.masking=tube")
        overrides[key] = yaml.safe_load(value)
    try:
        return load_config(args.config or DEMO_CONFIG, overrides, saved_model=saved_arch)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
