"""megatron-core DDP wrappers, optimizer and LR/WD schedule for the model chunks."""

from __future__ import annotations

import torch
from megatron.core.distributed import (
    DistributedDataParallel,
    DistributedDataParallelConfig,
)
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.transformer.module import Float16Module

from megavid.config import RunConfig


def wrap_model(cfg: RunConfig, chunks: list[torch.nn.Module]) -> list[DistributedDataParallel]:
    """bf16 casting (megatron's Float16Module) inside DDP's gradient buffers and DP reduction.

    Only the first chunk buckets when interleaving (megatron-core's choice: the
    other chunks' reductions overlap with the first chunk's backward).
    """
    par = cfg.parallel
    if cfg.train.precision == "bf16":
        chunks = [Float16Module(chunk.config, chunk) for chunk in chunks]
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=par.overlap_grad_reduce,
        overlap_param_gather=par.overlap_param_gather,  # dispatched in forward pre-hooks
        use_distributed_optimizer=par.use_distributed_optimizer,
        average_in_collective=False,  # scale by 1/dp before the sum: same on gloo and NCCL
    )
    return [
        DistributedDataParallel(config=chunk.config, ddp_config=ddp_config, module=chunk,
                                disable_bucketing=i > 0)
        for i, chunk in enumerate(chunks)
    ]


def build_optimizer(cfg: RunConfig, model: list[DistributedDataParallel]):
    """AdamW (decoupled weight decay, none on biases and norms) and its scheduler."""
    tc = cfg.train
    opt_config = OptimizerConfig(
        optimizer="adam",
        lr=tc.lr,
        min_lr=tc.min_lr,
        weight_decay=tc.weight_decay,
        adam_beta1=tc.adam_beta1,
        adam_beta2=tc.adam_beta2,
        adam_eps=1e-8,
        clip_grad=tc.clip_grad,
        bf16=tc.precision == "bf16",
        params_dtype=torch.bfloat16 if tc.precision == "bf16" else torch.float32,
        use_distributed_optimizer=cfg.parallel.use_distributed_optimizer,
    )
    optimizer = get_megatron_optimizer(opt_config, model)
    use_fused_torch_adam(optimizer)
    scheduler = OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=tc.lr,
        min_lr=tc.min_lr,
        lr_warmup_steps=tc.resolved_warmup_iters(),
        lr_decay_steps=tc.train_iters,
        lr_decay_style="cosine",
        start_wd=tc.weight_decay,
        end_wd=tc.weight_decay,
        wd_incr_steps=tc.train_iters,
        wd_incr_style="constant",
    )
    return optimizer, scheduler


def _torch_optimizers(optimizer) -> list[torch.optim.Optimizer]:
    """The torch optimizers inside megatron-core's wrappers (chained or single)."""
    inner = getattr(optimizer, "chained_optimizers", None) or [optimizer]
    return [getattr(opt, "optimizer", opt) for opt in inner]


def use_fused_torch_adam(optimizer) -> int:
    """Switch megatron-core's fallback torch Adam/AdamW to torch's fused kernel.

    Without TE or apex, megatron-core builds ``torch.optim.AdamW`` with default
    arguments, which on CPU means a Python loop of ~10 element-wise passes per
    tensor; the fused kernel does the same update in one pass (3x faster on the
    4DS-S parameter set here). ``fused`` is a per-group option of torch's Adam, so
    it is set on the groups. Returns the number of groups switched.
    """
    switched = 0
    for opt in _torch_optimizers(optimizer):
        if not isinstance(opt, (torch.optim.Adam, torch.optim.AdamW)):
            continue  # TE's / apex's FusedAdam already is one kernel
        for group in opt.param_groups:
            params = group["params"]
            if group.get("differentiable") or not params:
                continue
            if all(p.dtype in (torch.float32, torch.bfloat16, torch.float16) for p in params):
                group["foreach"], group["fused"] = False, True
                switched += 1
    return switched
