"""The layout planner: validity rules, memory arithmetic, 4DS-j on 256 H100s, the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from megavid.config import load_config
from megavid.config.presets import count_parameters, get_preset
from megavid.parallel.devices import gpu_spec
from megavid.plan import GB, enumerate_layouts, estimate_memory_per_gpu, plan
from megavid.plan.__main__ import main
from megavid.plan.model import (
    Candidate,
    LayerShape,
    in_flight,
    layer_activation_bytes,
    peak_memory,
    stack_layers,
    stack_tokens,
)
from megavid.plan.timing import step_time

REPO = Path(__file__).resolve().parents[2]
_SPEC = gpu_spec("h100-80gb")


def _cfg(preset: str, gbs: int, **overrides):
    return load_config(overrides={"model.preset": preset, "train.global_batch_size": gbs,
                                  "train.precision": "bf16", **overrides})


def test_enumerated_layouts_obey_the_layout_rules():
    cfg = _cfg("4ds-j", 2048)
    arch = cfg.model.resolved_arch()
    layers = arch.num_layers + arch.decoder_num_layers
    seen = list(enumerate_layouts(cfg, 256))
    assert seen
    for c in seen:
        assert arch.num_attention_heads % c.tp == 0 and arch.decoder_num_attention_heads % c.tp == 0
        assert arch.ffn_hidden_size % c.tp == 0 and arch.decoder_ffn_hidden_size % c.tp == 0
        assert layers % (c.pp * c.vpp) == 0
        assert c.tp * c.pp * c.dp == 256
        assert 2048 == c.micro_batch_size * c.dp * c.num_microbatches
        assert c.vpp == 1 or c.num_microbatches % c.pp == 0
    assert {c.pp for c in seen} <= {1, 2, 4}  # 52 layers, 256 GPUs: 13/26/52 do not divide 256


def test_interleaving_needs_microbatches_divisible_by_pp():
    # 2 GPUs x pp 2 -> dp 1; gbs 6 at mbs 1 = 6 micro-batches: vpp needs 6 % pp == 0 (ok for
    # pp 2); gbs 3 gives 3 micro-batches, so only non-interleaved pp 2 layouts remain.
    cfg = _cfg("tiny", 3, **{"train.micro_batch_size": 1})
    layouts = {(c.pp, c.vpp) for c in enumerate_layouts(cfg, 2)}
    assert (2, 1) in layouts and not any(pp == 2 and vpp > 1 for pp, vpp in layouts)
    cfg = _cfg("tiny", 6, **{"train.micro_batch_size": 1})
    assert (2, 2) in {(c.pp, c.vpp) for c in enumerate_layouts(cfg, 2)}


def test_memory_arithmetic_by_hand_on_tiny():
    """tiny, bf16, tp=pp=dp=1, mbs 2, mask 0.75: K=16 of N=64 tokens."""
    arch = get_preset("tiny")
    c = Candidate(tp=1, pp=1, vpp=1, dp=1, micro_batch_size=2, num_microbatches=1,
                  distributed_optimizer=False)
    mem = peak_memory(arch, c, mask_ratio=0.75, masking="random")
    params = count_parameters(arch)["total"]
    assert mem["parameters"] == params
    assert mem["weights"] + mem["grads"] + mem["optimizer"] == pytest.approx(18 * params)
    # per layer 8sbh + 2sbf elements x 2 bytes; encoder s=16 h=64 f=128, decoder s=64 h=32 f=64
    encoder = 6 * 2 * (8 * 16 * 2 * 64 + 2 * 16 * 2 * 128)
    decoder = 2 * 2 * (8 * 64 * 2 * 32 + 2 * 64 * 2 * 64)
    norm_stats = 16 * 2 * (6 * 16 + 2 * 64)  # 2 LayerNorms x (mean, rstd) fp32 per token
    pixels = 2 * 2 * 16 * 1536  # visible tubelets for the embedding's weight gradient
    head = 2 * 2 * 2 * 64 * 32 + 4 * 2 * 64 * 1536  # decoder norm in/out, fp32 predictions
    assert encoder + decoder == 491_520
    assert mem["activations"] == encoder + decoder + norm_stats + pixels + head == 1_399_808


def test_tensor_and_sequence_parallel_shard_layer_activations():
    enc = LayerShape(tokens=16, width=64, ffn=128, heads=4)
    base = dict(tp=2, pp=1, vpp=1, dp=1, micro_batch_size=2, num_microbatches=1)
    plain = Candidate(**base, sequence_parallel=False)
    # tp 2 without sp: the 4sbh LayerNorm regions (and LN stats) stay whole
    assert layer_activation_bytes(enc, plain) == \
        2 * (4 * 16 * 2 * 64 + (4 * 16 * 2 * 64 + 2 * 16 * 2 * 128) / 2) + 16 * 16 * 2
    one = Candidate(**{**base, "tp": 1})
    sp = Candidate(**base, sequence_parallel=True)
    assert layer_activation_bytes(enc, sp) == layer_activation_bytes(enc, one) / 2
    # full recompute keeps the layer input only
    full = Candidate(**{**base, "tp": 1, "recompute": "full"})
    assert layer_activation_bytes(enc, full) == 2 * 16 * 2 * 64


def test_in_flight_microbatches():
    one_f1b = Candidate(tp=1, pp=4, vpp=1, dp=1, micro_batch_size=1, num_microbatches=8)
    assert [in_flight(one_f1b, r) for r in range(4)] == [4, 3, 2, 1]
    inter = Candidate(tp=1, pp=4, vpp=2, dp=1, micro_batch_size=1, num_microbatches=8)
    assert in_flight(inter, 0) == 4 + 3 / 2  # p + (p-1)/v (Korthikanti et al.)
    few = Candidate(tp=1, pp=4, vpp=1, dp=1, micro_batch_size=1, num_microbatches=2)
    assert in_flight(few, 0) == 2


def test_4ds_j_on_256_h100s_has_fitting_layouts_and_the_example_fits():
    rows = plan(_cfg("4ds-j", 2048, **{"parallel.use_distributed_optimizer": True}), 256,
                "h100-80gb")
    assert rows and all(r.memory["total"] <= 0.85 * 80 * GB for r in rows)
    assert 0 < rows[0].time["mfu"] < 1
    example = load_config(REPO / "examples" / "4ds_j_cluster.yaml")
    assert estimate_memory_per_gpu(example, 256) < 0.85 * 80


def test_distributed_optimizer_shards_adam_state():
    cfg = _cfg("4ds-b", 64, **{"parallel.tensor_model_parallel_size": 1})
    plain = estimate_memory_per_gpu(cfg, 8)
    sharded = estimate_memory_per_gpu(
        _cfg("4ds-b", 64, **{"parallel.use_distributed_optimizer": True}), 8)
    params = count_parameters(get_preset("4ds-b"))["total"]
    assert plain - sharded == pytest.approx(12 * params * (1 - 1 / 8) / GB)


def test_cli_runs(capsys):
    assert main(["--preset", "4ds-j", "--gpus", "256", "--gpu", "h100-80gb", "--top", "3",
                 "--explain"]) == 0
    out = capsys.readouterr().out
    assert "MFU" in out and "bubble" in out and "fitting layouts" in out
    assert "encoder 79 -> 80, decoder 1568 (no padding)" in out  # tp8 sp, fp8 at mbs 32
    assert "padding costs" in out
    assert main(["--config", str(REPO / "examples" / "4ds_j_cluster.yaml"), "--gpus", "256",
                 "--check-config"]) == 0


def test_padding_costs_time_and_memory_but_not_model_flops():
    """4DS-j at mask 0.95 (79 visible tubelets), FP8 at micro-batch 1: the encoder runs on
    80 tokens (16-aligned rows), the decoder on 1568 (already aligned); the time and memory
    model count 80, the MFU's FLOPs 79. (With CUDA graphs: eagerly, this layer's GEMMs are
    shorter than its kernel floor, and 80 tokens cost what 79 do.)"""
    arch, kw = get_preset("4ds-j"), dict(mask_ratio=0.95, masking="random")
    c = Candidate(tp=1, pp=1, vpp=1, dp=1, micro_batch_size=1, num_microbatches=8, fp8=True,
                  cuda_graphs=True)
    assert stack_tokens(arch, c, decoder=False, **kw) == (79, 80)
    assert stack_tokens(arch, c, decoder=True, **kw) == (1568, 1568)
    assert stack_tokens(arch, c.__class__(**{**c.__dict__, "micro_batch_size": 16}),
                        decoder=False, **kw) == (79, 79)
    layers = stack_layers(arch, c=c, **kw)
    assert [(l.tokens, l.useful, l.fp8) for l in (layers[0], layers[-1])] == \
        [(80, 79, True), (1568, 1568, False)]  # the decoder stays bf16 by default
    unpadded = Candidate(**{**c.__dict__, "token_padding": False})
    padded_t = step_time(arch, c, _SPEC, global_batch_size=8, **kw)
    plain_t = step_time(arch, unpadded, _SPEC, global_batch_size=8, **kw)
    assert padded_t["step"] > plain_t["step"]
    assert padded_t["model_flops"] == plain_t["model_flops"]
    assert padded_t["mfu"] < plain_t["mfu"]
    assert peak_memory(arch, c, **kw)["activations"] > \
        peak_memory(arch, unpadded, **kw)["activations"]
    # an explicit multiple pads both stacks
    both = Candidate(**{**c.__dict__, "pad_to_multiple_of": 48})
    assert stack_tokens(arch, both, decoder=True, **kw) == (1568, 1584)


def test_decoder_masking_shortens_the_decoder_stack_in_time_memory_and_flops():
    """4DS-B at mask 0.95, decoder_mask_ratio 0.5: the decoder runs on 79 + 745 = 824
    tokens (a multiple of TP2+SP's 2, so unpadded); the planner's
    time, memory and MFU FLOPs all count 824, the encoder is unchanged."""
    arch = get_preset("4ds-b")
    full, dual = (dict(mask_ratio=0.95, masking="random", decoder_mask_ratio=r) for r in (0, 0.5))
    c = Candidate(tp=2, pp=1, vpp=1, dp=1, micro_batch_size=1, num_microbatches=8,
                  sequence_parallel=True)
    assert stack_tokens(arch, c, decoder=True, **full) == (1568, 1568)
    assert stack_tokens(arch, c, decoder=True, **dual) == (824, 824)
    assert stack_tokens(arch, c, decoder=False, **dual) == stack_tokens(arch, c, decoder=False,
                                                                        **full) == (79, 80)
    assert [l.tokens for l in stack_layers(arch, c=c, **dual)][-1] == 824
    t_full = step_time(arch, c, _SPEC, global_batch_size=8, **full)
    t_dual = step_time(arch, c, _SPEC, global_batch_size=8, **dual)
    assert t_dual["step"] < t_full["step"] and t_dual["model_flops"] < t_full["model_flops"]
    assert peak_memory(arch, c, **dual)["activations"] < peak_memory(arch, c, **full)["activations"]
