"""Layout checks that need the world size, run before any group is created.

Each failure is one line naming the flag and the fix, so a bad layout costs a
second instead of a queue wait and a stack trace on 256 GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass

from megavid.config import ConfigError, RunConfig


class LayoutError(ConfigError):
    pass


@dataclass(frozen=True)
class Layout:
    tp: int
    pp: int
    vpp: int
    dp: int
    micro_batch_size: int
    num_microbatches: int  # per data-parallel rank and optimizer step


def check_model_split(arch, tp: int, pp: int, vpp: int = 1, *, decoder: bool = True) -> None:
    """TP must divide each head count and FFN width it shards, PP x VPP the layers it
    cuts; ``decoder=False`` checks the encoder alone (feature extraction)."""
    heads = [(arch.num_attention_heads, "num_attention_heads")]
    widths = [(arch.ffn_hidden_size, "ffn_hidden_size")]
    layers, which = arch.num_layers, "of the encoder"
    if decoder:
        heads.append((arch.decoder_num_attention_heads, "decoder_num_attention_heads"))
        widths.append((arch.decoder_ffn_hidden_size, "decoder_ffn_hidden_size"))
        layers += arch.decoder_num_layers
        which = f"(encoder {arch.num_layers} + decoder {arch.decoder_num_layers})"
    for count, flag in heads:
        if count % tp:
            raise LayoutError(
                f"--tp {tp} does not divide model.arch.{flag}={count}; pick a --tp that divides it"
            )
    for width, flag in widths:
        if width % tp:
            raise LayoutError(f"--tp {tp} does not divide model.arch.{flag}={width}")
    if layers % (pp * vpp):
        raise LayoutError(
            f"--pp {pp} x --vpp {vpp} = {pp * vpp} does not divide the {layers} layers {which}; "
            "pick pp*vpp dividing the layer count"
        )


def resolve_layout(cfg: RunConfig, world_size: int) -> Layout:
    """Derive DP and micro-batches per step from the config and world size."""
    par, tc = cfg.parallel, cfg.train
    tp, pp = par.tensor_model_parallel_size, par.pipeline_model_parallel_size
    vpp = par.virtual_pipeline_model_parallel_size or 1
    arch = cfg.model.resolved_arch()
    if tp < 1 or pp < 1:
        raise LayoutError("--tp and --pp must be >= 1")
    if world_size % (tp * pp):
        raise LayoutError(
            f"world size {world_size} is not divisible by --tp {tp} x --pp {pp} = {tp * pp}; "
            "change --tp/--pp or the number of processes"
        )
    check_model_split(arch, tp, pp, vpp)
    dp = world_size // (tp * pp)
    per_step = tc.micro_batch_size * dp
    if tc.global_batch_size % per_step:
        raise LayoutError(
            f"--global-batch-size {tc.global_batch_size} is not a multiple of "
            f"--micro-batch-size {tc.micro_batch_size} x data-parallel size {dp} = {per_step}"
        )
    num_microbatches = tc.global_batch_size // per_step
    if vpp > 1 and num_microbatches % pp:
        raise LayoutError(
            f"interleaved pipelining (--vpp {vpp}) needs micro-batches per step "
            f"({num_microbatches}) to be a multiple of --pp {pp}; raise --global-batch-size"
        )
    return Layout(tp, pp, vpp, dp, tc.micro_batch_size, num_microbatches)
