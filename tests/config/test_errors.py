"""Bad settings fail fast, in one line that names the flag and the fix."""

from __future__ import annotations

import pytest

from megavid.config import ConfigError, load_config
from megavid.config.preflight import LayoutError, resolve_backend, resolve_layout


def cfg(**overrides):
    return load_config(overrides={"model.preset": "tiny", **overrides})


@pytest.mark.parametrize("overrides, world, needle", [
    ({"parallel.tensor_model_parallel_size": 2, "parallel.pipeline_model_parallel_size": 2},
     6, "world size 6 is not divisible by --tp 2 x --pp 2"),
    ({"parallel.tensor_model_parallel_size": 8}, 8, "--tp 8 does not divide model.arch.num_attention_heads=4"),
    ({"parallel.pipeline_model_parallel_size": 3}, 3, "--pp 3 x --vpp 1 = 3 does not divide the 8 layers"),
    ({"parallel.pipeline_model_parallel_size": 2, "parallel.virtual_pipeline_model_parallel_size": 3},
     2, "--pp 2 x --vpp 3 = 6 does not divide the 8 layers"),
    ({"train.global_batch_size": 6, "train.micro_batch_size": 2}, 2,
     "--global-batch-size 6 is not a multiple of --micro-batch-size 2 x data-parallel size 2"),
])
def test_layout_errors_name_the_flag(overrides, world, needle):
    with pytest.raises(LayoutError) as err:
        resolve_layout(cfg(**overrides), world)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_good_layout_derives_dp_and_microbatches():
    layout = resolve_layout(cfg(**{"parallel.tensor_model_parallel_size": 2,
                                   "parallel.pipeline_model_parallel_size": 2,
                                   "train.global_batch_size": 16,
                                   "train.micro_batch_size": 2}), 8)
    assert (layout.dp, layout.num_microbatches) == (2, 4)


@pytest.mark.parametrize("overrides, needle", [
    ({"model.preset": "4ds-x"}, "model.preset: unknown preset '4ds-x'"),
    ({"model.mask_ratio": 1.0}, "model.mask_ratio"),
    ({"model.decoder_mask_ratio": 1.0}, "model.decoder_mask_ratio: 1.0 must be in [0, 1)"),
    ({"parallel.sequence_parallel": True}, "--sp needs --tp > 1"),
    ({"train.fp8": "hybrid", "model.transformer_impl": "local"}, "--fp8 needs the Transformer Engine"),
    ({"train.lr_warmup_iters": -1}, "--lr-warmup-iters -1 must be >= 0"),
    ({"data.valid_fraction": 1.0}, "data.valid_fraction: 1.0 must be in [0, 1)"),
    ({"data.valid_fraction": 0.1, "data.valid_path": "v"}, "drop one"),
    ({"train.eval_iters": -2}, "--eval-iters -2"),
    ({"log.wandb_exp_name": "x"}, "need --wandb-project"),
    ({"train.lr": 0.0}, "for a run at --lr 0 also pass --set train.min_lr=0"),
    ({"model.masking": "blocks"}, "model.masking"),
])
def test_config_errors_name_the_field(overrides, needle):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=overrides)
    assert needle in str(err.value)


def test_fp8_or_te_without_transformer_engine():
    pytest.importorskip("torch")
    try:
        import transformer_engine.pytorch  # noqa: F401
        pytest.skip("Transformer Engine is installed here")
    except Exception:
        pass
    with pytest.raises(ConfigError, match="--fp8 hybrid needs Transformer Engine"):
        resolve_backend("auto", fp8="hybrid")
    with pytest.raises(ConfigError, match="transformer_impl=transformer_engine needs Transformer Engine"):
        resolve_backend("transformer_engine")
