"""The pretraining loop: set up once, then one optimizer step after another."""

from __future__ import annotations

import itertools
import math
import time
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.distributed import finalize_model_grads
from megatron.core.pipeline_parallel import get_forward_backward_func

from megavid.config import RunConfig
from megavid.data.mock import MockLoader
from megavid.models.builder import build_model_chunks
from megavid.models.masking import num_visible
from megavid.parallel import runtime
from megavid.parallel.init import initialize_chunk
from megavid.parallel.layout import resolve_layout
from megavid.tools.devices import peak_tflops
from megavid.training.flops import mae_train_flops_per_clip
from megavid.training.optim import build_optimizer, wrap_model
from megavid.training.progress import Progress, default_log_dir
from megavid.training.step import make_forward_step


class Trainer:
    def __init__(self, cfg: RunConfig):
        # Processes and groups: layout is checked before any group exists.
        env = runtime.init_distributed(cfg.parallel.distributed_timeout_minutes)
        self.cfg = cfg
        self.layout = layout = resolve_layout(cfg, env.world_size)
        runtime.init_model_parallel(tp=layout.tp, pp=layout.pp, vpp=layout.vpp,
                                    timeout_minutes=cfg.parallel.distributed_timeout_minutes)
        runtime.set_seed(cfg.train.seed)
        self.arch = cfg.model.resolved_arch()

        # Model: build this rank's chunks, give them layout-free values, wrap for DP.
        chunks = build_model_chunks(cfg, self.arch)
        for chunk in chunks:
            initialize_chunk(chunk, seed=cfg.train.seed, std=cfg.model.init_std)
        self.model = wrap_model(cfg, chunks)
        self.optimizer, self.scheduler = build_optimizer(cfg, self.model)
        self._hook_schedules()

        # Data: one replica's stream, shared by its TP and PP ranks; a copy per chunk.
        if cfg.data.mock:
            source = MockLoader
        else:
            from megavid.data import build_train_loader

            source = partial(build_train_loader, cfg.data)
        loader = source(
            self.arch, global_batch_size=cfg.train.global_batch_size,
            micro_batch_size=layout.micro_batch_size,
            dp_rank=parallel_state.get_data_parallel_rank(), dp_size=layout.dp,
            seed=cfg.train.seed,
        )
        self.loader = loader
        iterators = itertools.tee(iter(loader), layout.vpp)
        self.data_iterator = list(iterators) if layout.vpp > 1 else iterators[0]

        self.forward_step = make_forward_step(cfg)
        self.step = 0
        log_dir = Path(cfg.log.log_dir) if cfg.log.log_dir else default_log_dir()
        self.progress = Progress(
            log_dir, total_steps=cfg.train.train_iters, tensorboard=cfg.log.tensorboard,
            plot=cfg.log.plot, log_interval=cfg.log.log_interval,
            enabled=dist.get_rank() == 0, resolved_config=cfg.to_dict(),
        )
        self._announce(env.world_size)

    def _hook_schedules(self) -> None:
        """Tell the schedules how to scale, sync and finish gradients (as megatron's loop does)."""
        config = self.model[0].config
        config.grad_scale_func = self.optimizer.scale_loss
        config.finalize_model_grads_func = finalize_model_grads
        if self.cfg.parallel.overlap_grad_reduce:
            no_sync = [chunk.no_sync for chunk in self.model]
            config.no_sync_func = no_sync[0] if len(no_sync) == 1 else no_sync

    def _announce(self, world_size: int) -> None:
        lay, arch = self.layout, self.arch
        n_params = sum(p.numel() for chunk in self.model for p in chunk.parameters())
        self.progress.info(
            f"[bold]megavid[/bold] preset {self.cfg.model.preset} | world {world_size} = "
            f"tp {lay.tp} x pp {lay.pp} (vpp {lay.vpp}) x dp {lay.dp} | "
            f"micro-batch {lay.micro_batch_size} x {lay.num_microbatches} x dp {lay.dp} = "
            f"global batch {self.cfg.train.global_batch_size} | clip {arch.num_frames}x"
            f"{arch.image_size}x{arch.image_size}, {arch.num_tokens} tubelets, "
            f"{num_visible(arch.grid, self.cfg.model.mask_ratio, self.cfg.model.masking)} visible"
            f" | rank-0 params {n_params:,} | logs {self.progress.log_dir}"
        )

    def train_step(self) -> dict:
        """One optimizer step over the global batch; returns its metrics (on every rank)."""
        for chunk in self.model:
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()
        start = time.perf_counter()
        losses = get_forward_backward_func()(
            forward_step_func=self.forward_step,
            data_iterator=self.data_iterator,
            model=self.model,
            num_microbatches=self.layout.num_microbatches,
            seq_length=self.arch.num_tokens,  # shapes travel with the tensors (variable_seq_lengths)
            micro_batch_size=self.layout.micro_batch_size,
            forward_only=False,
        )
        _, grad_norm, _ = self.optimizer.step()
        self.scheduler.step(increment=1)
        self.step += 1
        loss = self._reduce_loss(losses)
        elapsed = time.perf_counter() - start
        return self._metrics(loss, grad_norm, elapsed)

    def _reduce_loss(self, losses: list[dict]) -> float:
        """Mean micro-batch loss over DP, sent from the last pipeline stage to all stages."""
        value = torch.zeros(1, dtype=torch.float64).cuda()
        if parallel_state.is_pipeline_last_stage(ignore_virtual=True):
            value += torch.stack([x["loss"].double() for x in losses]).mean()
            dist.all_reduce(value, group=parallel_state.get_data_parallel_group())
            value /= parallel_state.get_data_parallel_world_size()
        dist.broadcast(value, src=parallel_state.get_pipeline_model_parallel_last_rank(),
                       group=parallel_state.get_pipeline_model_parallel_group())
        return value.item()

    def _metrics(self, loss: float, grad_norm, elapsed: float) -> dict:
        tc, world = self.cfg.train, dist.get_world_size()
        clips_per_s = tc.global_batch_size / elapsed
        flops = mae_train_flops_per_clip(self.arch, mask_ratio=self.cfg.model.mask_ratio,
                                         masking=self.cfg.model.masking)
        per_device = flops * clips_per_s / world / 1e12
        peak, _ = peak_tflops(tc.fp8 and "fp8" or tc.precision)
        return {
            "step": self.step,
            "loss": loss,
            "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
            "lr": self.optimizer.param_groups[0]["lr"],
            "clips_per_s": clips_per_s,
            "tokens_per_s": clips_per_s * self.arch.num_tokens,
            "model_tflops_per_device": per_device,
            "mfu": per_device / peak if peak and not math.isnan(peak) else float("nan"),
            "step_time_s": elapsed,
        }

    def train(self) -> list[dict]:
        history = []
        while self.step < self.cfg.train.train_iters:
            metrics = self.train_step()
            history.append(metrics)
            self.progress.log_step(metrics)
        return history

    def close(self) -> None:
        self.progress.close()
