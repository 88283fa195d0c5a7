"""The planner's lever terms on hand-computed cases: kernel floors (CUDA graphs), TP
communication overlap, parameter all-gather overlap."""

from __future__ import annotations

import dataclasses

import pytest

from megavid.config import load_config
from megavid.config.presets import get_preset
from megavid.parallel.devices import gpu_spec
from megavid.plan import plan, with_levers
from megavid.plan.model import Candidate, LayerShape, rank_parameters
from megavid.plan.timing import dp_time, kernel_floor_seconds, layer_seconds

H100 = gpu_spec("h100-80gb")
BASE = Candidate(tp=1, pp=1, vpp=1, dp=1, micro_batch_size=1, num_microbatches=1)
SMALL = LayerShape(tokens=10, width=64, ffn=256, heads=1)  # microseconds of GEMMs: launch-bound


def test_kernel_floor_is_kernels_times_the_per_kernel_cost():
    assert kernel_floor_seconds(SMALL, BASE) == pytest.approx(14 * 10e-6)
    fp8 = dataclasses.replace(SMALL, fp8=True)
    assert kernel_floor_seconds(fp8, BASE) == pytest.approx((14 + 8) * 10e-6)
    graphs = dataclasses.replace(BASE, cuda_graphs=True)
    assert kernel_floor_seconds(SMALL, graphs) == pytest.approx(14 * 2e-6)


def test_a_launch_bound_layer_costs_its_floor_and_graphs_remove_most_of_it():
    # forward + backward (twice the kernels) at the floor: 3 x 140 us eagerly, 3 x 28 us graphed
    assert layer_seconds(SMALL, 1, H100, BASE)["compute"] == pytest.approx(3 * 140e-6)
    graphed = layer_seconds(SMALL, 1, H100, dataclasses.replace(BASE, cuda_graphs=True))
    assert graphed["compute"] == pytest.approx(3 * 28e-6)
    full = dataclasses.replace(BASE, recompute="full")
    assert layer_seconds(SMALL, 1, H100, full)["compute"] == pytest.approx(4 * 140e-6)


def test_a_compute_bound_layer_is_unchanged_by_graphs():
    big = LayerShape(tokens=1568, width=4096, ffn=16384, heads=32)
    eager = layer_seconds(big, 8, H100, BASE)["compute"]
    assert layer_seconds(big, 8, H100, dataclasses.replace(BASE, cuda_graphs=True))["compute"] \
        == pytest.approx(eager)
    # 2 m k n per GEMM over 4 GEMMs, x 3 passes, at 55% of 989 TF; attention 4 b s^2 h
    m, h, f = 1568 * 8, 4096, 16384
    gemms = 2 * m * h * (3 * h + h + 2 * f) / (989e12 * 0.55)
    attention = 8 * 4 * 1568 ** 2 * h / (989e12 * 0.55)
    assert eager == pytest.approx(3 * (gemms + attention))


def test_tp_overlap_hides_communication_behind_the_encoders_gemms_only():
    tp8 = Candidate(tp=8, pp=1, vpp=1, dp=1, micro_batch_size=32, num_microbatches=1)
    enc = LayerShape(tokens=80, width=6144, ffn=24576, heads=48)
    plain = layer_seconds(enc, 32, H100, tp8)
    # 4 passes of an all-reduce-sized ring: 2 (t-1)/t x 80 x 32 x 6144 x 2 B over 450 GB/s x 0.7
    volume = 80 * 32 * 6144 * 2
    expected = 4 * (2 * 7 / 8 * volume / (450e9 * 0.7) + 2 * 10e-6)
    assert plain["tp_comm"] == pytest.approx(expected)
    overlapped = layer_seconds(enc, 32, H100, dataclasses.replace(tp8, tp_comm_overlap=True))
    linears = 2 * 80 * 32 * 6144 * (3 * 6144 + 6144 + 2 * 24576) / 8 / (989e12 * 0.55)
    assert overlapped["tp_comm"] == pytest.approx(max(0.0, expected - 0.8 * 3 * linears))
    assert overlapped["tp_comm"] < plain["tp_comm"]
    dec = dataclasses.replace(enc, decoder=True)
    assert layer_seconds(dec, 32, H100, dataclasses.replace(tp8, tp_comm_overlap=True)) == \
        layer_seconds(dec, 32, H100, tp8)


def test_param_gather_overlap_exposes_a_tenth_of_the_all_gather():
    arch = get_preset("4ds-b")
    c = Candidate(tp=1, pp=1, vpp=1, dp=8, micro_batch_size=8, num_microbatches=1)
    params = rank_parameters(arch, c, 0)
    bandwidth = 450e9 * 0.7  # tp x dp = 8 GPUs: one node, NVLink
    base = (0.5 * 4 + 0.5 * 2) * 7 / 8 * params / bandwidth  # fp32 grads, bf16 params
    assert dp_time(arch, c, H100) == pytest.approx(base)
    over = dataclasses.replace(c, overlap_param_gather=True)
    assert dp_time(arch, over, H100) == pytest.approx((0.5 * 4 + 0.1 * 2) * 7 / 8 * params
                                                      / bandwidth)


def test_levers_apply_where_the_layout_allows_them():
    assert not with_levers(BASE, ["tp-overlap", "param-gather"]).tp_comm_overlap
    assert not with_levers(BASE, ["param-gather"]).overlap_param_gather  # dp 1
    tp2 = dataclasses.replace(BASE, tp=2, dp=2)
    on = with_levers(tp2, ["graphs", "tp-overlap", "param-gather"])
    assert on.cuda_graphs and on.tp_comm_overlap and on.overlap_param_gather


def test_planner_forecast_with_all_levers_beats_none_for_4ds_j():
    cfg = load_config(overrides={"model.preset": "4ds-j", "train.global_batch_size": 2048,
                                 "train.precision": "bf16",
                                 "parallel.use_distributed_optimizer": True})
    none = plan(cfg, 256, "h100-80gb")[0].time["mfu"]
    every = plan(cfg, 256, "h100-80gb", levers=["graphs", "tp-overlap", "param-gather"])[0]
    assert every.time["mfu"] > none + 0.05
    assert every.candidate.cuda_graphs and every.candidate.tp_comm_overlap
