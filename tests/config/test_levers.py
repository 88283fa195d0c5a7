"""The throughput levers' flags: CUDA graphs, TP communication overlap, parameter all-gather
overlap reach megatron-core's configs, and impossible combinations stop at the pre-flight."""

from __future__ import annotations

import pytest

from megavid.cli import build_parser, parse_args
from megavid.config import ConfigError, Machine, load_config, preflight
from megavid.models.builder import transformer_config
from megavid.parallel.tp_overlap import userbuffer_shape

BARE = Machine(cuda=False, transformer_engine=False, dali=False)
GPU_TE = Machine(cuda=True, transformer_engine=True, dali=False, gpu_name="NVIDIA H100",
                 capability=(9, 0), cuda_version="12.9", te_version="2.8.0")
TP2_SP = {"parallel.tensor_model_parallel_size": 2, "parallel.sequence_parallel": True}


def _cfg(**overrides):
    return load_config(overrides={"model.preset": "4ds-b", **overrides})


def test_flags_parse_and_reach_megatron_cores_transformer_config():
    cfg = parse_args(["--preset", "4ds-b", "--tp", "2", "--sp", "--tp-comm-overlap",
                      "--cuda-graph-impl", "local", "--use-distributed-optimizer",
                      "--overlap-param-gather"])
    assert (cfg.parallel.cuda_graph_impl, cfg.parallel.tp_comm_overlap,
            cfg.parallel.overlap_param_gather) == ("local", True, True)
    kw = dict(total_layers=16, backend="transformer_engine")
    enc = transformer_config(cfg, width=768, ffn=3072, heads=12, **kw)
    dec = transformer_config(cfg, width=512, ffn=2048, heads=8, decoder=True, **kw)
    assert (enc.cuda_graph_impl, enc.tp_comm_overlap, enc.use_te_rng_tracker) == \
        ("local", True, True)
    # the decoder: graphs too, but no userbuffers (TE has one buffer shape: the encoder's)
    assert (dec.cuda_graph_impl, dec.tp_comm_overlap) == ("local", False)
    local = transformer_config(cfg, width=768, ffn=3072, heads=12, total_layers=16)
    assert not local.use_te_rng_tracker  # graph-safe TE RNG only for TE modules
    for flag in ("--cuda-graph-impl", "--tp-comm-overlap", "--overlap-param-gather"):
        assert flag in build_parser().format_help()


def test_userbuffers_are_the_encoders_padded_tokens_times_micro_batch():
    cfg = _cfg(**TP2_SP, **{"train.micro_batch_size": 8, "parallel.tp_comm_overlap": True})
    assert userbuffer_shape(cfg) == [80 * 8, 768]  # 79 visible -> 80 for TP=2 SP


@pytest.mark.parametrize("overrides, machine, needle", [
    ({"parallel.cuda_graph_impl": "local"}, BARE, "--cuda-graph-impl local needs CUDA"),
    ({"parallel.cuda_graph_impl": "transformer_engine"}, GPU_TE,
     "--cuda-graph-impl transformer_engine is not supported"),
    ({"parallel.tp_comm_overlap": True}, GPU_TE, "--tp-comm-overlap needs --tp > 1 with --sp"),
    ({**TP2_SP, "parallel.tp_comm_overlap": True}, BARE,
     "--tp-comm-overlap needs the Transformer Engine layer spec"),
    ({**TP2_SP, "parallel.tp_comm_overlap": True, "model.transformer_impl": "local"}, GPU_TE,
     "--tp-comm-overlap needs the Transformer Engine layer spec"),
    ({"parallel.overlap_param_gather": True}, GPU_TE,
     "--overlap-param-gather needs --use-distributed-optimizer"),
])
def test_impossible_combinations_stop_at_the_preflight(overrides, machine, needle):
    with pytest.raises(ConfigError) as err:
        preflight(_cfg(**overrides), 2, machine)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_possible_combinations_pass():
    cfg = _cfg(**TP2_SP, **{"parallel.tp_comm_overlap": True, "parallel.cuda_graph_impl": "local",
                            "parallel.use_distributed_optimizer": True,
                            "parallel.overlap_param_gather": True,
                            "train.global_batch_size": 8, "train.micro_batch_size": 2})
    assert preflight(cfg, 4, GPU_TE).backend == "transformer_engine"
