"""Validation: the MAE loss on a fixed set of clips, and the reconstruction of one of them.

An evaluation runs megatron-core's own pipeline schedule with ``forward_only=True``
(as Megatron-LM's ``evaluate`` does) over ``train.eval_iters`` global batches of the
validation stream, always from its position 0. Validation sample ``i`` has fixed
frames and crop (``data.build_valid_loader``) and a mask drawn from
``(VALID_SEED, i)``, so the loss depends only on the weights: it compares across
steps, layouts and resumes, and a TP x PP run reports the one-process number.
"""

from __future__ import annotations

import itertools

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func

from megavid.config import RunConfig
from megavid.config.preflight import Layout
from megavid.data import VALID_SEED, build_valid_loader
from megavid.models.masking import make_masks
from megavid.training.pictures import reconstruction_arrays
from megavid.training.step import make_forward_step, reduce_loss


class Validator:
    """``loss()`` and ``picture()`` for this rank's model chunks (collectives: all ranks call)."""

    def __init__(self, cfg: RunConfig, layout: Layout, model: list):
        self.cfg, self.layout, self.model = cfg, layout, model
        self.arch = cfg.model.resolved_arch()
        kwargs = dict(global_batch_size=cfg.train.global_batch_size,
                      micro_batch_size=layout.micro_batch_size,
                      dp_rank=parallel_state.get_data_parallel_rank(), dp_size=layout.dp)
        self.loader = build_valid_loader(cfg.data, self.arch, **kwargs)
        # every masked tubelet reconstructed: the loss does not depend on decoder masking
        self.forward_step = make_forward_step(cfg, mask_seed=VALID_SEED, full_decoder=True)
        self.picture_step = make_forward_step(cfg, mask_seed=VALID_SEED, keep_pred=True,
                                              full_decoder=True)

    @property
    def num_clips(self) -> int:
        """Distinct validation clips (files), or the samples one evaluation sees for mock data."""
        dataset = getattr(self.loader, "dataset", None)
        return len(dataset) if dataset is not None else self.samples_per_eval

    @property
    def samples_per_eval(self) -> int:
        return self.cfg.train.eval_iters * self.cfg.train.global_batch_size

    def _run(self, step_func, batches: int, stream) -> list[dict]:
        """``batches`` global batches of ``stream`` through the schedule, forward only."""
        iterators = itertools.tee(stream, self.layout.vpp)
        data = list(iterators) if self.layout.vpp > 1 else iterators[0]
        for chunk in self.model:
            chunk.eval()
        losses: list[dict] = []
        try:
            with torch.no_grad():
                for _ in range(batches):
                    losses += get_forward_backward_func()(
                        forward_step_func=step_func, data_iterator=data, model=self.model,
                        num_microbatches=self.layout.num_microbatches,
                        seq_length=self.arch.num_tokens,
                        micro_batch_size=self.layout.micro_batch_size, forward_only=True)
        finally:
            for chunk in self.model:
                chunk.train()
        return losses

    def _stream(self):
        self.loader.load_state_dict({"step": 0})  # every evaluation: the same samples
        return iter(self.loader)

    def loss(self) -> float:
        """Mean MAE loss over ``train.eval_iters`` validation batches (the same on every rank)."""
        stream = self._stream()
        try:
            losses = self._run(self.forward_step, self.cfg.train.eval_iters, stream)
        finally:
            stream.close()  # let the loader's workers go
        return reduce_loss(losses)

    def picture(self) -> dict | None:
        """The reconstruction of validation sample 0 (``pictures.reconstruction_arrays``) on
        global rank 0, None elsewhere; one forward-only pass over the first global batch."""
        stream = self._stream()
        first = next(stream)  # DP rank 0's first micro-batch starts with sample 0
        try:
            losses = self._run(self.picture_step, 1, itertools.chain([first], stream))
        finally:
            stream.close()
        pred = torch.zeros(1, self.arch.num_tokens, self.arch.patch_dim).cuda()
        if parallel_state.is_pipeline_last_stage(ignore_virtual=True):
            pred.copy_(losses[0]["pred"][:1])
        dist.broadcast(pred, src=parallel_state.get_pipeline_model_parallel_last_rank(),
                       group=parallel_state.get_pipeline_model_parallel_group())
        if dist.get_rank() != 0:
            return None
        _, mask = make_masks(first["index"][:1], grid=self.arch.grid,
                             mask_ratio=self.cfg.model.mask_ratio,
                             masking=self.cfg.model.masking, seed=VALID_SEED)
        arrays = reconstruction_arrays(
            first["video"][0], pred[0].cpu(), mask[0], arch=self.arch,
            norm_pix=self.cfg.model.norm_pix_loss, norm_pix_style=self.cfg.model.norm_pix_style,
            value_range=self.cfg.data.value_range)
        arrays["sample"] = int(first["index"][0])
        return arrays
