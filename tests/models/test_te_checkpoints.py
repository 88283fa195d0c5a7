"""Checkpoints cross layer backends: a Transformer Engine model's loads into the local spec
and back, bit for bit, and TE's FP8 scaling state is restored or dropped with a line.

TE does not install here, so the TE model is built from ``te_double``'s stand-ins
(TE's parameter names and ``_extra_state``) through the TE spec's own structure
(``layer_specs.fused_norm_modules``). A GPU test (tests/test_gpu.py) does the same with
TE itself.
"""

from __future__ import annotations

import pytest
import torch
from megatron.core.dist_checkpointing.serialization import load_sharded_metadata

from megavid.config import CheckpointConfig, load_config
from megavid.models import layer_specs
from megavid.models.builder import build_model_chunks
from megavid.models.initialization import initialize_chunk
from megavid.models.layout_free import (
    chunk_state,
    layout_free_state,
    load_layout_free_state,
)
from megavid.models.masking import make_masks
from megavid.models.te_names import is_fp8_state, to_local, to_te
from megavid.parallel import runtime
from megavid.training.checkpoint import Checkpointer, load_weights, save_weights
from megavid.training.optim import build_optimizer, wrap_model
from tests.models.te_double import te_shaped_modules


@pytest.fixture(scope="module")
def build():
    runtime.ensure_model_parallel("tests")
    patch = pytest.MonkeyPatch()
    patch.setitem(layer_specs.BACKENDS, "transformer_engine", te_shaped_modules)

    def make(backend: str, seed: int = 3, **overrides):
        cfg = load_config(overrides={"model.preset": "tiny", "model.mask_ratio": 0.75,
                                     "model.qkv_bias": "qv", **overrides})
        (chunk,) = build_model_chunks(cfg, backend=backend)
        initialize_chunk(chunk, seed=seed, std=0.02)
        return chunk.eval()

    yield make
    patch.undo()
    runtime.shutdown()


def _config(**overrides) -> dict:
    return load_config(overrides={"model.preset": "tiny", **overrides}).to_dict()


def _features(chunk, grad: bool = False):
    arch = chunk.arch
    gen = torch.Generator().manual_seed(0)
    video = torch.rand(2, arch.num_frames, arch.image_size, arch.image_size, 3, generator=gen)
    ids_keep, _ = make_masks(torch.tensor([5, 9]), grid=arch.grid, mask_ratio=0.75,
                             masking="random", seed=1)
    with torch.set_grad_enabled(grad):
        return chunk(video, ids_keep)


def _markers(chunk) -> list[torch.Tensor]:
    return [m.fp8_marker for m in chunk.modules() if hasattr(m, "fp8_marker")]


def _set_markers(chunk, value: float) -> None:
    for module in chunk.modules():
        if hasattr(module, "fp8_marker"):
            module.fp8_marker = torch.full((4,), value)


def test_names_map_both_ways():
    assert to_local("encoder.layers.3.self_attention.linear_qkv.layer_norm_weight") == \
        "encoder.layers.3.input_layernorm.weight"
    assert to_local("decoder.layers.0.mlp.linear_fc1.layer_norm_bias") == \
        "decoder.layers.0.pre_mlp_layernorm.bias"
    for name in ("encoder.layers.3.input_layernorm.weight", "decoder.layers.1.pre_mlp_layernorm.bias",
                 "encoder.layers.2.mlp.linear_fc1.weight", "head.bias"):
        assert to_local(to_te(name)) == name
    assert to_te("encoder.layers.2.mlp.linear_fc1.weight") == "encoder.layers.2.mlp.linear_fc1.weight"


def test_te_shaped_model_speaks_local_names_and_initialises_alike(build):
    """Same seed, same values under the local names: init and layout-free state are
    backend-free, so a TE run and a local run start from the same model."""
    te, local = build("transformer_engine"), build("local")
    assert any(n.endswith("linear_qkv.layer_norm_weight") for n, _ in te.named_parameters())
    te_state, local_state = layout_free_state([te]), layout_free_state([local])
    assert te_state.keys() == local_state.keys()
    for name, value in local_state.items():
        assert torch.equal(te_state[name], value), name
    assert torch.equal(_features(te), _features(local))


def test_layout_free_round_trip_through_te_names(build):
    """A TE module state (TE names + FP8 state) made from a local model through the inverse
    mapping loads back into the local spec: features equal bit for bit."""
    source, target = build("local", seed=3), build("local", seed=4)
    te_named = {to_te(name): value.detach().clone() for name, value in chunk_state(source).items()}
    te_named["encoder.layers.0.self_attention.linear_qkv._extra_state"] = torch.zeros(4)
    assert any("linear_qkv.layer_norm_weight" in name for name in te_named)
    local_named = {to_local(n): v for n, v in te_named.items() if not is_fp8_state(n)}
    assert not torch.equal(_features(target), _features(source))
    load_layout_free_state(target, local_named)
    assert torch.equal(_features(target), _features(source))


def test_te_checkpoint_loads_into_local_spec_and_back(build, tmp_path):
    fp8 = {"train.fp8": "hybrid", "train.fp8_recipe": "tensorwise"}
    te = build("transformer_engine", seed=3, **fp8)  # FP8 in the encoder
    _set_markers(te, 7.0)
    save_weights([te], tmp_path / "te", step=1, common={"config": _config(**fp8)})
    saved = load_sharded_metadata(str(tmp_path / "te" / "iter_0000001"))
    assert "encoder.layers.input_layernorm.weight" in saved  # local names on disk
    assert not any("layer_norm_weight" in key for key in saved)
    assert any(is_fp8_state(item.key) for item in saved.values())

    lines = []
    local = build("local", seed=4)
    load_weights([local], tmp_path / "te" / "iter_0000001", info=lines.append)
    assert torch.equal(_features(local), _features(te))
    assert len(lines) == 1 and "dropped for 5 kinds of module in the encoder: this run has no" in lines[0]

    save_weights([local], tmp_path / "local", step=1, common={"config": _config()})
    lines.clear()
    back = build("transformer_engine", seed=5, **fp8)
    load_weights([back], tmp_path / "local" / "iter_0000001", info=lines.append)
    assert torch.equal(_features(back), _features(te))
    assert all(torch.equal(m, torch.zeros(4)) for m in _markers(back))  # fresh: none saved
    assert len(lines) == 1 and "has none for 5 kinds of module in the encoder" in lines[0]


def test_fp8_state_is_restored_only_where_fp8_runs(build, tmp_path):
    fp8 = {"train.fp8": "hybrid", "train.fp8_recipe": "tensorwise", "model.decoder_fp8": True}
    source = build("transformer_engine", **fp8)
    _set_markers(source, 3.0)
    save_weights([source], tmp_path, step=2, common={"config": _config(**fp8)})
    lines = []
    same = build("transformer_engine", seed=9, **fp8)
    load_weights([same], tmp_path / "iter_0000002", info=lines.append)
    markers = _markers(same)
    assert markers and all(torch.equal(m, torch.full((4,), 3.0)) for m in markers)
    assert lines == []

    bf16 = build("transformer_engine", seed=9)
    load_weights([bf16], tmp_path / "iter_0000002", info=lines.append)
    assert all(torch.equal(m, torch.zeros(4)) for m in _markers(bf16))
    assert len(lines) == 1 and "dropped for 10 kinds of module in the decoder and encoder" in lines[0]
    assert torch.equal(layout_free_state([bf16])["head.weight"],
                       layout_free_state([source])["head.weight"])


def _trained(chunks, cfg, steps: int = 2):
    """DDP + Adam over ``chunks`` after ``steps`` updates on one fixed batch."""
    model = wrap_model(cfg, chunks)
    optimizer, scheduler = build_optimizer(cfg, model)
    for _ in range(steps):
        for chunk in model:
            chunk.zero_grad_buffer()
        optimizer.zero_grad()
        _features(model[0].module, grad=True).square().mean().backward()
        optimizer.step()
        scheduler.step(1)
    return model, optimizer, scheduler


def test_a_te_run_resumes_with_the_local_spec(build, tmp_path):
    """Weights, Adam moments and schedule of a TE-shaped FP8 run resume under the local spec
    (a GPU run continued, or checked, on CPU): the next update is the same."""
    fp8 = {"train.fp8": "hybrid", "train.fp8_recipe": "tensorwise", "train.lr_warmup_iters": 0}
    te_cfg = load_config(overrides={"model.preset": "tiny", "model.qkv_bias": "qv", **fp8})
    local_cfg = load_config(overrides={"model.preset": "tiny", "model.qkv_bias": "qv",
                                       "train.lr_warmup_iters": 0})
    model, optimizer, scheduler = _trained([build("transformer_engine", **fp8)], te_cfg)
    saver = Checkpointer(CheckpointConfig(save=str(tmp_path)), info=lambda line: None)
    saver.save(2, model, optimizer, scheduler, {"config": te_cfg.to_dict(), "counters": {},
                                                "loader": {}})
    lines = []
    resumed, opt2, sched2 = _trained([build("local", seed=8)], local_cfg, steps=0)
    common = Checkpointer(CheckpointConfig(load=str(tmp_path)), info=lines.append).load(
        resumed, opt2, sched2)
    assert common["step"] == 2
    assert any("dropped for 5 kinds of module in the encoder" in line for line in lines)
    before, after = layout_free_state([model[0].module]), layout_free_state([resumed[0].module])
    assert all(torch.equal(before[name], after[name]) for name in before)
    # the next update agrees too: Adam's moments came along under the same names
    for m, opt in ((model, optimizer), (resumed, opt2)):
        m[0].zero_grad_buffer()
        opt.zero_grad()
        _features(m[0].module, grad=True).square().mean().backward()
        opt.step()
    before, after = layout_free_state([model[0].module]), layout_free_state([resumed[0].module])
    assert all(torch.allclose(before[n], after[n], rtol=0, atol=1e-7) for n in before)
