"""Transformer Engine userbuffers for overlapping tensor-parallel communication with GEMMs.

TE registers one communication buffer shape per job (``initialize_ub``): the rows and width
of a layer's input, ``tokens x micro-batch`` by ``hidden``. megavid's encoder and decoder
differ in both, so the buffers are the encoder's (its padded tokens per clip, megavid.config.fp8)
and only the encoder's TransformerConfig sets ``tp_comm_overlap`` (the decoder is a few per
cent of a large model's step). Mirrors Megatron-LM's ``_initialize_tp_communicators``.
"""

from __future__ import annotations

from packaging.version import Version

from megavid.config import RunConfig
from megavid.config.fp8 import stack_tokens


def userbuffer_shape(cfg: RunConfig) -> list[int]:
    """[padded encoder tokens per clip x micro-batch, hidden]: the whole sequence, as
    Megatron-LM passes ``seq_length * micro_batch_size`` (TE splits it over the TP group)."""
    _, tokens = stack_tokens(cfg)["encoder"]
    return [tokens * cfg.train.micro_batch_size, cfg.model.resolved_arch().hidden_size]


def initialize_userbuffers(cfg: RunConfig, tp: int) -> None:
    """Create TE's userbuffer communicators (after the process groups, before the model)."""
    import transformer_engine  # optional: the pre-flight required TE on CUDA
    from transformer_engine.pytorch.module import base

    kwargs = dict(shape=userbuffer_shape(cfg), tp_size=tp, bootstrap_backend="nccl")
    fp8 = cfg.train.fp8 is not None
    if Version(transformer_engine.__version__) >= Version("2.7.0"):
        modes = base.UserBufferQuantizationMode
        kwargs["quantization_modes"] = [modes.FP8 if fp8 else modes.NONE]
        if fp8 and cfg.train.first_last_layers_bf16:
            kwargs["quantization_modes"].append(modes.NONE)
    else:
        kwargs["use_fp8"] = fp8
    base.initialize_ub(**kwargs)
