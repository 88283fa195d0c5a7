"""FP8: the token-padding rule per recipe, the GPU capability rules, the flags' own rules,
and the fields reaching megatron-core's TransformerConfig (no GPU needed)."""

from __future__ import annotations

import time

import pytest
from megatron.core.fp8_utils import get_fp8_align_size, is_first_last_bf16_layer

from megavid.cli import build_parser, parse_args
from megavid.config import ConfigError, Machine, load_config, preflight
from megavid.config.fp8 import (
    RECIPES,
    automatic_multiple,
    fp8_alignment,
    least_multiple,
    recipe_problem,
    stack_tokens,
)
from megavid.models.builder import transformer_config

H100 = dict(cuda=True, transformer_engine=True, dali=False, gpu_name="NVIDIA H100 80GB HBM3",
            capability=(9, 0), cuda_version="12.9", te_version="2.8.0")


def _cfg(**overrides):
    return load_config(overrides={"model.preset": "4ds-b", **overrides})


def test_alignment_is_megatron_cores_per_recipe():
    assert [fp8_alignment(r) for r in RECIPES] == [get_fp8_align_size(r) for r in RECIPES]
    assert [fp8_alignment(r) for r in ("delayed", "tensorwise", "blockwise", "mxfp8")] == \
        [16, 16, 16, 32]


@pytest.mark.parametrize("split, align, mbs, multiple", [
    (1, 1, 1, 1),  # no SP, no FP8
    (2, 1, 3, 2),  # SP alone: the TP split
    (1, 16, 1, 16), (1, 16, 2, 8), (1, 16, 4, 4), (1, 16, 16, 1), (1, 16, 48, 1),
    (8, 16, 1, 128), (8, 16, 32, 8), (2, 16, 2, 16),
    (1, 32, 2, 16), (1, 32, 64, 1),  # MXFP8
])
def test_least_multiple(split, align, mbs, multiple):
    assert least_multiple(split=split, align=align, micro_batch=mbs) == multiple
    # the padded rows per TP rank divide by the alignment, for any tokens per clip
    for tokens in (1, 79, 80, 1568):
        padded = -(-tokens // multiple) * multiple
        assert padded % split == 0 and (padded // split * mbs) % align == 0


def test_4ds_encoder_pads_79_visible_tubelets_per_recipe_and_micro_batch():
    """16x224x224 at mask 0.95: 79 visible of 1568 tubelets."""
    def tokens(**overrides):
        return stack_tokens(_cfg(**overrides))

    assert tokens() == {"encoder": (79, 79), "decoder": (1568, 1568)}  # bf16: no padding
    fp8 = {"train.fp8": "hybrid", "train.micro_batch_size": 1}
    assert tokens(**fp8)["encoder"] == (79, 80)
    assert tokens(**{**fp8, "train.micro_batch_size": 16})["encoder"] == (79, 79)
    assert tokens(**{**fp8, "train.fp8_recipe": "mxfp8"})["encoder"] == (79, 96)
    sp8 = {**fp8, "parallel.tensor_model_parallel_size": 4, "parallel.sequence_parallel": True}
    assert tokens(**sp8)["encoder"] == (79, 128)  # 32 rows per rank: 16-aligned
    assert tokens(**{**sp8, "train.micro_batch_size": 8})["encoder"] == (79, 80)
    # the decoder pads only with decoder_fp8 (1568 = 98 x 16 needs none anyway)
    assert automatic_multiple(_cfg(**fp8), decoder=True) == 1
    assert automatic_multiple(_cfg(**fp8, **{"model.decoder_fp8": True}), decoder=True) == 16
    assert tokens(**{"model.pad_to_multiple_of": 48}) == {"encoder": (79, 96),
                                                          "decoder": (1568, 1584)}


def test_an_explicit_multiple_must_cover_what_fp8_needs():
    with pytest.raises(ConfigError, match=r"model.pad_to_multiple_of: 8 is not a multiple of 16"):
        _cfg(**{"train.fp8": "hybrid", "train.micro_batch_size": 1, "model.pad_to_multiple_of": 8})
    with pytest.raises(ConfigError, match="model.pad_to_multiple_of: -1 must be >= 0"):
        _cfg(**{"model.pad_to_multiple_of": -1})


@pytest.mark.parametrize("recipe, capability, cuda, ok", [
    ("delayed", (8, 0), "12.4", False),  # A100
    ("delayed", (8, 9), "12.1", True),  # L40S
    ("tensorwise", (8, 9), "12.0", False),  # Ada needs CUDA 12.1
    ("tensorwise", (9, 0), "12.0", True),  # H100
    ("blockwise", (9, 0), "12.8", False), ("blockwise", (9, 0), "12.9", True),
    ("blockwise", (8, 9), "12.9", False),
    ("mxfp8", (9, 0), "12.9", False), ("mxfp8", (10, 0), "12.8", True),  # B200
    ("mxfp8", (12, 0), "12.9", False),  # RTX 50xx: not yet in TE
])
def test_capability_rules(recipe, capability, cuda, ok):
    assert (recipe_problem(recipe, capability, cuda) is None) == ok


def test_a_recipe_the_gpu_cannot_run_is_refused_naming_gpu_capability_and_recipe():
    cfg = _cfg(**{"train.fp8": "hybrid", "train.fp8_recipe": "mxfp8"})
    with pytest.raises(ConfigError) as err:
        preflight(cfg, 1, Machine(**H100))
    message = str(err.value)
    assert "\n" not in message
    for needle in ("--fp8-recipe mxfp8", "NVIDIA H100 80GB HBM3", "compute capability 9.0",
                   "10.x or 11.x (Blackwell)"):
        assert needle in message
    assert preflight(_cfg(**{"train.fp8": "hybrid"}), 1, Machine(**H100)).backend == \
        "transformer_engine"
    old_te = Machine(**{**H100, "te_version": "2.1.0"})
    with pytest.raises(ConfigError, match="blockwise needs Transformer Engine >= 2.3.0.dev0"):
        preflight(_cfg(**{"train.fp8": "hybrid", "train.fp8_recipe": "blockwise"}), 1, old_te)


@pytest.mark.parametrize("overrides, needle", [
    ({"train.fp8_param_gather": True}, "--fp8-param-gather needs --fp8"),
    ({"model.decoder_fp8": True}, "model.decoder_fp8 needs --fp8"),
    ({"train.fp8": "hybrid", "train.fp8_param_gather": True},
     "--fp8-param-gather needs --use-distributed-optimizer"),
    ({"train.fp8": "hybrid", "train.first_last_layers_bf16": True},
     "--first-last-layers-bf16 does not work with --fp8-recipe delayed"),
    ({"train.fp8": "hybrid", "train.fp8_recipe": "tensorwise", "train.first_last_layers_bf16": True,
      "train.num_layers_at_start_in_bf16": 7, "train.num_layers_at_end_in_bf16": 6},
     "exceed the encoder's 12 layers"),
    ({"train.fp8": "hybrid", "train.fp8_recipe": "tensorwise", "train.first_last_layers_bf16": True,
      "parallel.pipeline_model_parallel_size": 4, "train.num_layers_at_end_in_bf16": 1},
     "at most 4 BF16 layers at each end per pipeline stage"),
    ({"train.fp8_recipe": "fp4"}, "train.fp8_recipe: 'fp4' is not one of"),
])
def test_fp8_flag_rules(overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        _cfg(**overrides)


def test_fp8_gemm_widths_per_tp_rank_are_checked_after_the_layout():
    cfg = _cfg(**{"train.fp8": "hybrid", "train.fp8_recipe": "mxfp8", "model.preset": "tiny",
                  "parallel.tensor_model_parallel_size": 4})
    blackwell = Machine(**{**H100, "capability": (10, 0), "gpu_name": "NVIDIA B200"})
    with pytest.raises(ConfigError, match=r"widths per TP rank \{'qkv/tp': 48, 'hidden/tp': 16\}"):
        preflight(cfg, 4, blackwell)
    cfg.train.fp8_recipe = "tensorwise"  # 16-aligned is enough there
    assert preflight(cfg, 4, blackwell).tp == 4


def test_fp8_fields_reach_megatron_cores_config():
    """Recipe, FP8 weights, BF16 first/last encoder layers (megatron-core counts the
    decoder's layers among the last), and a decoder without FP8 by default."""
    cfg = _cfg(**{"train.fp8": "e4m3", "train.fp8_recipe": "tensorwise",
                  "train.fp8_param_gather": True, "parallel.use_distributed_optimizer": True,
                  "train.first_last_layers_bf16": True, "train.num_layers_at_start_in_bf16": 2,
                  "train.num_layers_at_end_in_bf16": 1})
    arch = cfg.model.resolved_arch()
    kw = dict(total_layers=arch.num_layers + arch.decoder_num_layers)
    enc = transformer_config(cfg, width=arch.hidden_size, ffn=arch.ffn_hidden_size,
                             heads=arch.num_attention_heads, **kw)
    dec = transformer_config(cfg, width=512, ffn=2048, heads=8, decoder=True, **kw)
    assert (enc.fp8, enc.fp8_recipe, enc.fp8_param) == ("e4m3", "tensorwise", True)
    bf16_layers = [i for i in range(arch.num_layers) if is_first_last_bf16_layer(enc, i)]
    assert bf16_layers == [0, 1, 11]  # the first two and the last encoder layer
    assert dec.fp8 is None and not dec.fp8_param
    cfg.model.decoder_fp8 = True
    dec = transformer_config(cfg, width=512, ffn=2048, heads=8, decoder=True, **kw)
    assert dec.fp8 == "e4m3" and not dec.first_last_layers_bf16


def test_help_lists_the_fp8_flags():
    text = build_parser().format_help()
    for flag in ("--fp8", "--fp8-recipe", "--fp8-param-gather", "--first-last-layers-bf16",
                 "--num-layers-at-start-in-bf16", "--num-layers-at-end-in-bf16", "--decoder-fp8"):
        assert flag in text
    cfg = parse_args(["--fp8", "hybrid", "--fp8-recipe", "blockwise", "--decoder-fp8"])
    assert (cfg.train.fp8, cfg.train.fp8_recipe, cfg.model.decoder_fp8) == \
        ("hybrid", "blockwise", True)


def test_fp8_on_this_cpu_machine_fails_before_any_process_group(launch):
    """Rank 0 of a 2-process job whose rank 1 never comes: a rendezvous would wait for it
    (minutes); the pre-flight refuses --fp8 first, with one line, before building anything."""
    started = time.monotonic()
    result = launch.run("-m", "megavid.pretrain", "--fp8", "hybrid", timeout=60,
                        env={"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"})
    elapsed = time.monotonic() - started
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("megavid:")]
    assert len(errors) == 1 and "--fp8 hybrid" in errors[0] and "Transformer Engine" in errors[0]
    assert "megavid preset" not in result.stdout + result.stderr  # no model was built
    assert elapsed < 30, elapsed  # ~8 s here, nearly all of it importing torch and megatron
