"""The pre-flight's machine rules, against described machines (no CUDA, TE or DALI needed)."""

from __future__ import annotations

import pytest

from megavid.config import ConfigError, Machine, load_config, preflight

BARE = Machine(cuda=False, transformer_engine=False, dali=False)
GPU_NODE = Machine(cuda=True, transformer_engine=True, dali=True)


def _cfg(**overrides):
    return load_config(overrides={"model.preset": "tiny", **overrides})


def test_a_good_run_gets_its_layout():
    layout = preflight(_cfg(**{"parallel.tensor_model_parallel_size": 2,
                               "train.global_batch_size": 8, "train.micro_batch_size": 2}),
                       4, BARE)
    assert (layout.tp, layout.pp, layout.dp, layout.num_microbatches) == (2, 1, 2, 2)


def test_fp8_needs_transformer_engine_and_cuda():
    cfg = _cfg(**{"train.fp8": "hybrid"})
    with pytest.raises(ConfigError, match="--fp8 hybrid needs Transformer Engine on a CUDA"):
        preflight(cfg, 1, BARE)
    with pytest.raises(ConfigError, match="--fp8 hybrid needs Transformer Engine on a CUDA"):
        preflight(cfg, 1, Machine(cuda=False, transformer_engine=True, dali=False))
    assert preflight(cfg, 1, GPU_NODE).tp == 1


def test_transformer_engine_backend_needs_transformer_engine():
    cfg = _cfg(**{"model.transformer_impl": "transformer_engine"})
    with pytest.raises(ConfigError, match="transformer_impl=transformer_engine needs Transformer"):
        preflight(cfg, 1, BARE)
    preflight(_cfg(**{"model.transformer_impl": "auto"}), 1, BARE)  # auto falls back to local


def test_dali_decoder_needs_dali():
    with pytest.raises(ConfigError, match=r"data\.decoder: 'dali' needs NVIDIA DALI"):
        preflight(_cfg(**{"data.decoder": "dali"}), 1, BARE)
    preflight(_cfg(**{"data.decoder": "dali", "data.mock": True}), 1, BARE)  # mock: no decoding
    preflight(_cfg(**{"data.decoder": "dali"}), 1, GPU_NODE)


def test_layout_rules_run_before_machine_rules():
    """A run wrong in both ways is told about the layout first (it does not depend on where)."""
    cfg = _cfg(**{"train.fp8": "hybrid", "parallel.tensor_model_parallel_size": 3})
    with pytest.raises(ConfigError, match="world size 4 is not divisible by --tp 3"):
        preflight(cfg, 4, BARE)


@pytest.mark.parametrize("section, field, value, needle", [
    ("data", "num_workers", -1, "data.num_workers (--num-workers): -1 must be >= 0"),
    ("data", "frame_stride", 0, "data.frame_stride: 0 must be >= 1"),
    ("checkpoint", "keep_last", 0, "keep_last >= 1"),
    ("log", "log_images_interval", -1, "--log-images-interval -1 must be >= 0"),
    ("parallel", "virtual_pipeline_model_parallel_size", 0, "--vpp must be >= 1"),
])
def test_each_section_checks_its_own_fields(section, field, value, needle):
    cfg = _cfg()
    setattr(getattr(cfg, section), field, value)
    with pytest.raises(ConfigError) as err:
        getattr(cfg, section).check()
    assert needle in str(err.value)
    with pytest.raises(ConfigError):  # and the pre-flight runs every section's check
        preflight(cfg, 1, BARE)
