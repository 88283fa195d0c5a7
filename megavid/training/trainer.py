"""The pretraining loop: set up once, then one optimizer step after another."""

from __future__ import annotations

import contextlib
import itertools
import math
import signal
import time
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.distributed import finalize_model_grads
from megatron.core.pipeline_parallel import get_forward_backward_func

from megavid import faults
from megavid.config import RunConfig, has_validation
from megavid.config.fp8 import stack_tokens
from megavid.config.preflight import Machine, preflight
from megavid.config.presets import num_decoded, num_visible
from megavid.data import build_train_loader
from megavid.data.stats import DataStats
from megavid.models.builder import build_model_chunks
from megavid.models.flops import mae_train_flops_per_clip
from megavid.models.initialization import initialize_chunk
from megavid.parallel import runtime
from megavid.parallel.devices import peak_tflops
from megavid.parallel.tp_overlap import initialize_userbuffers
from megavid.training.agreement import sum_over_ranks
from megavid.training.checkpoint import Checkpointer
from megavid.training.choices import describe_choices
from megavid.training.optim import build_optimizer, wrap_model
from megavid.training.preemption import StopRequest, requeue_slurm_job
from megavid.training.progress import Progress, default_log_dir
from megavid.training.save_lock import lock_save_dir
from megavid.training.step import make_forward_step
from megavid.training.validation import Validator


class TrainingStopped(RuntimeError):
    """The run cannot go on (e.g. too many non-finite steps); the last checkpoint is intact."""


class CollectiveFailed(RuntimeError):
    """A collective timed out or lost a peer; the message names the ranks that stopped answering."""


def _is_collective_failure(err: BaseException) -> bool:
    text = str(err)
    return isinstance(err, dist.DistError) or any(
        word in text for word in ("gloo", "NCCL", "Connection closed by peer", "Timed out"))


class Trainer:
    def __init__(self, cfg: RunConfig):
        # Processes and groups: the layout (and a fault spec) is checked before any group exists.
        faults.set_config_nan_steps(cfg.train.inject_nan_steps)  # the config's alias of nan:<step>
        env = runtime.read_dist_env()
        self.cfg = cfg
        self.machine = Machine.detect()  # what this node has: the pre-flight and the start-up line
        self.layout = layout = preflight(cfg, env.world_size, self.machine)
        runtime.init_distributed(cfg.parallel.distributed_timeout_minutes, env)
        runtime.init_model_parallel(tp=layout.tp, pp=layout.pp, vpp=layout.vpp,
                                    timeout_minutes=cfg.parallel.distributed_timeout_minutes)
        # TE modules under CUDA graphs draw from TE's graph-safe RNG tracker (Megatron-LM's rule)
        runtime.set_seed(cfg.train.seed, te_rng_tracker=layout.backend == "transformer_engine"
                         and cfg.parallel.cuda_graph_impl != "none")
        if cfg.parallel.tp_comm_overlap:  # before the model: TE modules bind the buffers
            initialize_userbuffers(cfg, layout.tp)
        self.arch = cfg.model.resolved_arch()
        log_dir = Path(cfg.log.log_dir) if cfg.log.log_dir else default_log_dir()
        self.progress = Progress(log_dir, cfg.log, total_steps=cfg.train.train_iters,
                                 enabled=dist.get_rank() == 0, resolved_config=cfg.to_dict())
        self.save_lock = None
        try:
            # One writer per --save directory, before anything is built (a refusal ends the job).
            self.save_lock = lock_save_dir(cfg.checkpoint.save, info=self.progress.info)
            self._build(cfg, env)
        except BaseException:
            self._release_lock()
            self.progress.close()
            raise

    def _build(self, cfg: RunConfig, env) -> None:
        """Model, optimizer, data, and the resumed state; the save lock is held."""
        layout = self.layout

        # Model: build this rank's chunks, give them layout-free values, wrap for DP.
        chunks = build_model_chunks(cfg, self.arch, backend=layout.backend)
        for chunk in chunks:
            initialize_chunk(chunk, seed=cfg.train.seed, std=cfg.model.init_std)
        self.model = wrap_model(cfg, chunks)
        self.optimizer, self.scheduler = build_optimizer(cfg, self.model)
        self._hook_schedules()

        # Data: one replica's stream, shared by its TP and PP ranks; the validation clips.
        self.loader = build_train_loader(
            cfg.data, self.arch, global_batch_size=cfg.train.global_batch_size,
            micro_batch_size=layout.micro_batch_size,
            dp_rank=parallel_state.get_data_parallel_rank(), dp_size=layout.dp,
            seed=cfg.train.seed,
        )
        # Skip counts for the log, summed over the replicas' loaders (each file counted once);
        # a replica's TP and PP ranks read the same stream: its first rank counts it.
        self.data_stats = DataStats(
            self.loader, parallel_state.get_data_parallel_group(),
            counted=parallel_state.get_tensor_model_parallel_rank() == 0
            and parallel_state.get_pipeline_model_parallel_rank() == 0)
        self.validator = Validator(cfg, layout, self.model) if has_validation(cfg) else None

        # Resume: model, optimizer, schedule, loader position, counters.
        self.step = 0
        self.counters = {"skipped_steps": 0, "loss_spikes": 0}
        self.checkpointer = Checkpointer(cfg.checkpoint, info=self.progress.info)
        common = self.checkpointer.load(self.model, self.optimizer, self.scheduler)
        if common is not None:
            self.step = common["step"]
            self.counters.update(common["counters"])
            self.loader.load_state_dict(common["loader"])

        # A copy of the micro-batch stream per model chunk (interleaved pipelining).
        iterators = itertools.tee(iter(self.loader), layout.vpp)
        self.data_iterator = list(iterators) if layout.vpp > 1 else iterators[0]
        self.forward_step = make_forward_step(cfg)
        self._flops_per_clip = mae_train_flops_per_clip(
            self.arch, mask_ratio=cfg.model.mask_ratio, masking=cfg.model.masking,
            decoder_mask_ratio=cfg.model.decoder_mask_ratio)
        self._peak_tflops, _ = peak_tflops(cfg.train.fp8 and "fp8" or cfg.train.precision)
        self.stop_request = StopRequest(cfg.checkpoint.exit_duration_in_mins)
        self._consecutive_skips = 0
        self._loss_ema: float | None = None
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
        lay, arch, model = self.layout, self.arch, self.cfg.model
        decoded = ""
        if model.decoder_mask_ratio:
            s = num_decoded(arch.grid, model.mask_ratio, model.masking, model.decoder_mask_ratio)
            decoded = f", decoder on {s} (decoder_mask_ratio {model.decoder_mask_ratio:g})"
        n_params = sum(p.numel() for chunk in self.model for p in chunk.parameters())
        self.progress.info(
            f"[bold]megavid[/bold] preset {self.cfg.model.preset} | world {world_size} = "
            f"tp {lay.tp} x pp {lay.pp} (vpp {lay.vpp}) x dp {lay.dp} | "
            f"micro-batch {lay.micro_batch_size} x {lay.num_microbatches} x dp {lay.dp} = "
            f"global batch {self.cfg.train.global_batch_size} | clip {arch.num_frames}x"
            f"{arch.image_size}x{arch.image_size}, {arch.num_tokens} tubelets, "
            f"{num_visible(arch.grid, model.mask_ratio, model.masking)} visible{decoded}"
            f" | rank-0 params {n_params:,} | logs {self.progress.log_dir}"
        )
        self.progress.info(describe_choices(self.cfg, self.machine, lay.backend))
        padding = [f"{stack} {real} -> {pad}"
                   for stack, (real, pad) in stack_tokens(self.cfg).items() if pad != real]
        if padding:
            self.progress.info(f"tokens per clip padded for sequence parallelism / FP8: "
                               f"{', '.join(padding)} (masked out; MFU counts the real ones)")
        tc = self.cfg.train
        if tc.resolved_warmup_iters() != tc.lr_warmup_iters:
            self.progress.info(
                f"lr warm-up shortened from {tc.lr_warmup_iters} to "
                f"{tc.resolved_warmup_iters()} steps: the run has {tc.train_iters}")
        if self.validator is not None:
            every = f"every {tc.eval_interval} steps and " if tc.eval_interval else ""
            self.progress.info(
                f"validation: {self.validator.num_clips} clips, {tc.eval_iters} x "
                f"{tc.global_batch_size} samples {every}after the last step")

    def train_step(self) -> dict:
        """One optimizer step over the global batch; returns its metrics (on every rank)."""
        for chunk in self.model:
            chunk.zero_grad_buffer()
        self.optimizer.zero_grad()
        start = time.perf_counter()
        with faults.training_step(self.step + 1):  # tests: nan:<step> poisons this loss
            losses = get_forward_backward_func()(
                forward_step_func=self.forward_step,
                data_iterator=self.data_iterator,
                model=self.model,
                num_microbatches=self.layout.num_microbatches,
                seq_length=self.arch.num_tokens,  # shapes travel with the tensors
                micro_batch_size=self.layout.micro_batch_size,
                forward_only=False,
            )
        # What every rank must agree on, in one all-reduce (megavid.training.agreement).
        stats = self.data_stats
        agreed = sum_over_ranks({
            "loss": self._replica_loss(losses),
            "non_finite": self._non_finite(losses),
            "stop": self.stop_request.flags(),
            "data": stats.counts() if stats.enabled else [],
        })
        loss = agreed["loss"][0] / self.layout.dp
        self.stop_request.agree(agreed["stop"])  # the loop stops after this step if so
        data = stats.merge(agreed["data"]) if stats.enabled else None
        # A non-finite loss or gradient anywhere skips the update everywhere.
        if not agreed["non_finite"][0]:
            _, grad_norm, _ = self.optimizer.step()
            self.scheduler.step(increment=1)
            self._consecutive_skips = 0
            skipped = False
        else:
            grad_norm, skipped = float("nan"), True
            self.counters["skipped_steps"] += 1
            self._consecutive_skips += 1
        self.step += 1
        elapsed = time.perf_counter() - start
        return self._metrics(loss, grad_norm, elapsed, skipped, data)

    def _replica_loss(self, losses: list[dict]) -> torch.Tensor:
        """This replica's mean micro-batch loss from one of its ranks (the last pipeline stage's
        first TP rank), 0 from the others: summed over all ranks, the sum over replicas."""
        if (losses and parallel_state.is_pipeline_last_stage(ignore_virtual=True)
                and parallel_state.get_tensor_model_parallel_rank() == 0):
            return torch.stack([x["loss"].double() for x in losses]).mean()
        return torch.zeros(1, dtype=torch.float64)

    def _non_finite(self, losses: list[dict]) -> torch.Tensor:
        """1 if this rank's loss or any of its gradients is not finite, else 0; a tensor, so
        the host reads it only with the rest of the agreement.

        A sum is non-finite iff some element is (or it overflows, which is as bad): one
        reduction pass per gradient buffer; torch.isfinite on the buffers cost ~20% of a CPU
        step. The check comes before ``optimizer.step()`` because megatron-core's step does
        not skip a non-finite update in fp32 or in bf16 without a loss scale (only a grad
        scaler's found-inf skips it), and it stays whole rather than being cut into its
        pieces here (0.19's adds grad-norm groups and a skip threshold between them).
        """
        sums = [buffer.grad_data.sum().double() for chunk in self.model for buffer in chunk.buffers]
        sums += [x["loss"].double() for x in losses]
        if not sums:
            return torch.zeros(1, dtype=torch.float64)
        return (~torch.isfinite(torch.stack(sums).sum())).double()

    def _metrics(self, loss: float, grad_norm, elapsed: float, skipped: bool,
                 data: dict | None) -> dict:
        tc, world = self.cfg.train, dist.get_world_size()
        clips_per_s = tc.global_batch_size / elapsed
        per_device = self._flops_per_clip * clips_per_s / world / 1e12
        peak = self._peak_tflops
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
            "skipped": skipped,
            # the memory model's peer (python -m megavid.plan --check-config): this rank's peak
            **({"max_memory_allocated_gb": torch.cuda.max_memory_allocated() / 1e9}
               if torch.cuda.is_available() else {}),
            **({"data": data} if data is not None else {}),  # loader counters, summed
        }

    def _watch_loss(self, metrics: dict) -> None:
        """Count and report skipped steps and loss spikes; stop after too many skips."""
        if metrics["skipped"]:
            self.progress.info(f"[yellow]step {self.step}: non-finite loss or gradients, update "
                               f"skipped ({self._consecutive_skips} in a row)[/yellow]")
            if self._consecutive_skips >= self.cfg.train.max_consecutive_skips:
                raise TrainingStopped(
                    f"{self._consecutive_skips} consecutive steps had non-finite loss or "
                    f"gradients (train.max_consecutive_skips={self.cfg.train.max_consecutive_skips})"
                    f"; stopping. The last checkpoint (step {self.checkpointer.last_saved_step}) "
                    "is intact: lower --lr or check the data, then --load it")
            return
        loss, ema = metrics["loss"], self._loss_ema
        if ema is not None and self.step > 10 and loss > self.cfg.train.loss_spike_factor * ema:
            self.counters["loss_spikes"] += 1
            self.progress.info(f"[yellow]step {self.step}: loss spike {loss:.4f} "
                               f"(running mean {ema:.4f})[/yellow]")
        self._loss_ema = loss if ema is None else 0.9 * ema + 0.1 * loss

    @contextlib.contextmanager
    def _parameters_gathered(self):
        """With --overlap-param-gather the step's updated parameters arrive during the next
        forward (megatron-core's forward pre-hooks); validation and saves need them now, so
        the hooks are lifted around them, which all-gathers first (as Megatron-LM does)."""
        if not self.cfg.parallel.overlap_param_gather:
            yield
            return
        for chunk in self.model:
            chunk.disable_forward_pre_hook(param_sync=True)
        try:
            yield
        finally:
            for chunk in self.model:
                chunk.enable_forward_pre_hook()

    def _save(self) -> None:
        common = {"loader": self.loader.state_dict(), "counters": dict(self.counters),
                  "config": self.cfg.to_dict()}
        with self._parameters_gathered():
            self.checkpointer.save(self.step, self.model, self.optimizer, self.scheduler, common)

    def _guarded_step(self) -> dict:
        """``train_step``, turning a failed collective into an error that names the ranks."""
        faults.hang_here(dist.get_rank(), self.step + 1)  # tests: hang:<rank>:<step>
        try:
            return self.train_step()
        except Exception as err:
            if not _is_collective_failure(err):
                raise
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            minutes = self.cfg.parallel.distributed_timeout_minutes
            raise CollectiveFailed(
                f"rank {dist.get_rank()}, step {self.step + 1}: a collective failed ({first}); "
                f"{runtime.unresponsive_ranks_report(timeout_s=min(60.0, 60 * minutes))}. Timeout is "
                f"parallel.distributed_timeout_minutes={minutes}"
            ) from err

    def _due(self, interval: int) -> bool:
        """Every ``interval`` steps (0: never) and after the last one."""
        return (bool(interval) and self.step % interval == 0
                or self.step == self.cfg.train.train_iters)

    def _validate(self, metrics: dict):
        """Validation loss into ``metrics`` and a picture to log, when due (collectives: every
        rank); returns ``progress.log_picture``'s arguments, or None."""
        if self.validator is None:
            return None
        tc, log = self.cfg.train, self.cfg.log
        boards = bool(log.log_images_interval) and self._due(log.log_images_interval)
        to_disk = log.plot and self.step == tc.train_iters
        if not (self._due(tc.eval_interval) or boards or to_disk):
            return None
        with self._parameters_gathered():
            if self._due(tc.eval_interval):
                metrics["val_loss"] = self.validator.loss()
            if not (boards or to_disk):
                return None
            arrays = self.validator.picture()  # None except on rank 0
        return arrays and (arrays, self.step, boards, to_disk)

    def train(self) -> list[dict]:
        history = []
        while self.step < self.cfg.train.train_iters:
            metrics = self._guarded_step()
            picture = self._validate(metrics)
            history.append(metrics)
            self.progress.log_step(metrics)
            if picture:
                arrays, step, boards, to_disk = picture
                self.progress.log_picture(arrays, step, boards=boards, to_disk=to_disk)
            self._watch_loss(metrics)
            self.checkpointer.finalize()
            if self.checkpointer.due(self.step) and not metrics["skipped"]:
                self._save()  # never checkpoint in the middle of a non-finite streak
            if self.stop_request.agreed:
                self.progress.info(f"stopping at step {self.step}: {self.stop_request.reason}")
                self._save()
                if (self.stop_request.received == signal.SIGUSR1
                        and self.cfg.checkpoint.requeue_on_preempt and dist.get_rank() == 0):
                    self.progress.info(requeue_slurm_job())  # once per job, not per rank
                break
        else:
            self._save()
        return history

    def _release_lock(self) -> None:
        if self.save_lock is not None:
            self.save_lock.release()

    def close(self) -> None:
        self.checkpointer.finalize(blocking=True)  # the last save is committed under the lock
        self._release_lock()
        self.stop_request.restore()
        self.progress.close()
