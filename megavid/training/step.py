"""One micro-batch forward for megatron-core's pipeline schedules, and the step's loss."""

from __future__ import annotations

from functools import partial

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.utils import get_attr_wrapped_model

import megavid.kernels as kernels
from megavid import faults
from megavid.config import RunConfig
from megavid.kernels.reference import normalize_patches_per_channel, patchify
from megavid.models.masking import make_decoder_masks, make_masks


def _loss_func(patches: torch.Tensor, mask: torch.Tensor, norm_pix: bool, backend: str,
               keep_pred: bool, pred: torch.Tensor):
    loss = kernels.fused_mae_loss(pred, patches, mask, norm_pix, backend=backend)
    if faults.nan_now():  # fault injection for tests (nan:<step>, train.inject_nan_steps)
        loss = loss * float("nan")
    # a copy: the schedule divides the returned loss in place by the micro-batch count
    reported = {"loss": loss.detach().clone()}
    if keep_pred:  # (B, N, P) for a reconstruction picture
        reported["pred"] = pred.detach().float()
    return loss, reported


def make_forward_step(cfg: RunConfig, *, mask_seed: int | None = None, keep_pred: bool = False,
                      full_decoder: bool = False):
    """The ``forward_step_func(data_iterator, model)`` the schedules call per micro-batch.

    ``mask_seed``: the seed of the masks (default ``train.seed``; validation uses its own).
    ``keep_pred``: also report the predicted tubelets (on the last pipeline stage).
    ``full_decoder``: reconstruct every masked tubelet whatever ``model.decoder_mask_ratio``
    (validation: one loss comparable across decoder ratios).
    """
    arch = cfg.model.resolved_arch()
    seed = cfg.train.seed if mask_seed is None else mask_seed
    norm_pix = cfg.model.norm_pix_loss
    masks = dict(grid=arch.grid, mask_ratio=cfg.model.mask_ratio, masking=cfg.model.masking)
    decoder_ratio = 0.0 if full_decoder else cfg.model.decoder_mask_ratio

    def forward_step(data_iterator, model):
        batch = next(data_iterator)
        chunk = get_attr_wrapped_model(model, "pre_process", return_model_obj=True)
        # every chunk recomputes the masks from the sample ids: (B, K) and (B, N)
        ids_keep, mask = make_masks(batch["index"], seed=seed, **masks)
        ids_decode = None  # the decoder's tokens, (B, S): all N unless decoder masking
        if decoder_ratio:
            ids_decode, mask = make_decoder_masks(batch["index"], mask, seed=seed,
                                                  decoder_mask_ratio=decoder_ratio, **masks)
            ids_decode = ids_decode.cuda(non_blocking=True)
        ids_keep = ids_keep.cuda(non_blocking=True)
        video = None
        if chunk.pre_process or chunk.post_process:
            video = batch["video"].cuda(non_blocking=True)  # (B, T, H, W, C)
        # bf16 cast: Float16Module
        output = model(video if chunk.pre_process else None, ids_keep, ids_decode)
        if not chunk.post_process:
            return output, None
        if ids_decode is None:
            patches = patchify(video, arch.tubelet)  # (B, N, P) targets
        else:
            patches = kernels.patchify_gather(video, arch.tubelet, ids_decode,
                                              backend=cfg.model.kernels)  # (B, S, P)
        normalise_in_loss = norm_pix
        if norm_pix and cfg.model.norm_pix_style == "videomae":  # per channel, before the loss
            patches = normalize_patches_per_channel(patches.float(), arch.channels)
            normalise_in_loss = False
        return output, partial(_loss_func, patches, mask.cuda(non_blocking=True),
                               normalise_in_loss, cfg.model.kernels, keep_pred)

    return forward_step


def reduce_loss(losses: list[dict]) -> float:
    """Mean micro-batch loss over DP, sent from the last pipeline stage to all stages."""
    value = torch.zeros(1, dtype=torch.float64).cuda()
    if parallel_state.is_pipeline_last_stage(ignore_virtual=True):
        value += torch.stack([x["loss"].double() for x in losses]).mean()
        dist.all_reduce(value, group=parallel_state.get_data_parallel_group())
        value /= parallel_state.get_data_parallel_world_size()
    dist.broadcast(value, src=parallel_state.get_pipeline_model_parallel_last_rank(),
                   group=parallel_state.get_pipeline_model_parallel_group())
    return value.item()
