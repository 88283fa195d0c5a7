"""FP8 with Transformer Engine: which stacks run it, the token padding its GEMMs need, and
which GPUs can run each recipe. Pure functions of the config (and of a GPU's numbers), so
the pre-flight, the model builder and the planner read one rule.

Token padding. TE checks every FP8 GEMM input before it runs
(``transformer_engine/pytorch/utils.py``, ``assert_dim_for_fp8_exec``: rows % 8, columns %
16), and megatron-core pads to ``megatron.core.fp8_utils.get_fp8_align_size`` (16; MXFP8:
32, its block size, ``transformer_engine/pytorch/tensor/mxfp8_tensor.py``,
``MXFP8Quantizer.is_quantizable``) because the backward GEMMs use the transposed input,
whose last dimension is the rows. The rows of a linear layer's input are ``s_local x b``:
the tokens on this TP rank (``s_pad / tp`` under sequence parallelism: TE checks the
column-parallel input before its all-gather) times the micro-batch. So a stack whose ``s``
tokens per clip run through FP8 pads ``s`` to a multiple of
``t * a / gcd(a, b)`` with ``t`` the sequence-parallel split (tp, else 1), ``a`` the
alignment and ``b`` the micro-batch; without FP8 only ``t`` is needed. 4DS's 79 visible
tubelets: 80 at b = 1, 2 or 4 (no SP), 79 at b = 16, 128 at TP=8+SP with b = 1.
"""

from __future__ import annotations

import math

from megavid.config.presets import num_decoded, num_visible
from megavid.config.schema import RunConfig, TrainConfig

RECIPES = TrainConfig.CHOICES["fp8_recipe"]  # megatron-core's Fp8Recipe values

# The oldest Transformer Engine that has each recipe, as megatron-core's get_fp8_recipe
# (megatron/core/fp8_utils.py) requires it; delayed scaling: any.
MIN_TE_VERSION = {"tensorwise": "2.2.0.dev0", "blockwise": "2.3.0.dev0", "mxfp8": "2.1.0"}


def stack_fp8(cfg: RunConfig, *, decoder: bool) -> bool:
    """Whether a stack's GEMMs run in FP8: the encoder with --fp8, the decoder only with
    model.decoder_fp8 as well."""
    return cfg.train.fp8 is not None and (not decoder or cfg.model.decoder_fp8)


def fp8_alignment(recipe: str) -> int:
    """Rows and columns of an FP8 GEMM operand must be multiples of this (16; MXFP8: 32).

    megatron-core's ``fp8_utils.get_fp8_align_size``, restated so that configs and the
    planner do not import megatron-core (seconds); tests/config/test_fp8.py checks that
    the two agree for every recipe on both megatron-core versions CI runs.
    """
    return 32 if recipe == "mxfp8" else 16


def least_multiple(*, split: int, align: int, micro_batch: int) -> int:
    """Tokens per clip ``s`` such that ``s / split`` tokens x ``micro_batch`` clips is a
    multiple of ``align`` (1: no FP8) and ``s`` splits evenly over ``split`` SP ranks."""
    return split * align // math.gcd(align, micro_batch)


def automatic_multiple(cfg: RunConfig, *, decoder: bool) -> int:
    """The least token multiple a stack needs per clip: SP's split times FP8's alignment."""
    par = cfg.parallel
    split = par.tensor_model_parallel_size if par.sequence_parallel else 1
    align = fp8_alignment(cfg.train.fp8_recipe) if stack_fp8(cfg, decoder=decoder) else 1
    return least_multiple(split=split, align=align, micro_batch=cfg.train.micro_batch_size)


def token_multiple(cfg: RunConfig, *, decoder: bool) -> int:
    """The multiple a stack pads its tokens per clip to: model.pad_to_multiple_of if set
    (the pre-flight checks it is a multiple of the automatic one), else the automatic one."""
    return cfg.model.pad_to_multiple_of or automatic_multiple(cfg, decoder=decoder)


def padded(tokens: int, multiple: int) -> int:
    return -(-tokens // multiple) * multiple


def stack_tokens(cfg: RunConfig) -> dict[str, tuple[int, int]]:
    """{"encoder": (tokens per clip, padded), "decoder": (...)}: what each stack runs on."""
    arch = cfg.model.resolved_arch()
    m = cfg.model
    visible = num_visible(arch.grid, m.mask_ratio, m.masking)
    decoded = num_decoded(arch.grid, m.mask_ratio, m.masking, m.decoder_mask_ratio)
    result = {}
    for name, tokens in (("encoder", visible), ("decoder", decoded)):
        multiple = token_multiple(cfg, decoder=name == "decoder")
        result[name] = (tokens, padded(tokens, multiple))
    return result


def recipe_problem(recipe: str, capability: tuple[int, int],
                   cuda_version: str | None) -> str | None:
    """Why a GPU of ``capability`` with CUDA ``cuda_version`` cannot run ``recipe``, or None.

    Transformer Engine's rules (``transformer_engine/pytorch/quantization.py``,
    ``_compute_fp8_support`` and its siblings): FP8 needs compute capability 8.9 (Ada, with
    CUDA 12.1) or 9.0+; block scaling 9.0+ with CUDA 12.9; MXFP8 10.x-11.x (Blackwell).
    """
    cuda = tuple(int(p) for p in (cuda_version or "0.0").split(".")[:2])
    if recipe in ("delayed", "tensorwise"):
        if capability < (8, 9):
            return "FP8 needs compute capability 8.9 or newer (Ada, Hopper, Blackwell)"
        if capability < (9, 0) and cuda < (12, 1):
            return "FP8 on Ada (8.9) needs CUDA 12.1 or newer"
        return None
    if recipe == "blockwise":
        if capability < (9, 0) or cuda < (12, 9):
            return "FP8 block scaling needs compute capability 9.0 or newer and CUDA 12.9"
        return None
    if recipe == "mxfp8":
        if not (10, 0) <= capability < (12, 0):
            return "MXFP8 needs compute capability 10.x or 11.x (Blackwell)"
        return None
    return f"unknown FP8 recipe {recipe!r}; one of {RECIPES}"


def fp8_gemm_widths(cfg: RunConfig, *, decoder: bool) -> dict[str, int]:
    """The column counts of a stack's GEMM operands on one TP rank, by name."""
    arch = cfg.model.resolved_arch()
    tp = cfg.parallel.tensor_model_parallel_size
    width = arch.decoder_hidden_size if decoder else arch.hidden_size
    ffn = arch.decoder_ffn_hidden_size if decoder else arch.ffn_hidden_size
    return {"hidden": width, "qkv/tp": 3 * width // tp, "hidden/tp": width // tp,
            "ffn/tp": ffn // tp}
