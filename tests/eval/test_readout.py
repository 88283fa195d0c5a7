"""Readout heads, task losses, the feature cache and data-parallel readout training."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from megavid.eval import readout as R
from megavid.eval.feature_cache import cached_features
from megavid.eval.tasks import DepthTask, PoseTask, TrackingTask
from megavid.eval.train import ReadoutConfig, batch_indices, train_readout
from megavid.parallel import runtime

B, T, GRID, D, SIZE = 2, 8, (4, 4, 4), 32, 32  # clip 8x32x32, features (4, 4, 4, 32)


def _features(b=B, seed=0):
    return torch.randn(b, *GRID, D, generator=torch.Generator().manual_seed(seed))


def _heads():
    common = dict(feature_dim=D, num_frames=T, width=32, num_heads=4)
    queries = torch.rand(B, 5, 3)
    boxes = torch.tensor([[0.1, 0.2, 0.5, 0.6]]).expand(B, 3, 4)
    return {
        "depth": (R.DepthHead(image_size=SIZE, patch=(2, 8, 8), **common), (), (B, T, SIZE, SIZE)),
        "tracking": (R.TrackingHead(**common), (queries,), (B, 5, T, 2)),
        "pose": (R.PoseHead(**common), (), (B, T, 4, 4)),
        "boxes": (R.BoxHead(**common), (boxes,), (B, 3, T, 4)),
    }


@pytest.mark.parametrize("name", ["depth", "tracking", "pose", "boxes"])
def test_head_shapes_and_every_parameter_gets_gradient(name):
    torch.manual_seed(0)
    head, extra, shape = _heads()[name]
    out = head(_features(), *extra)
    main = out["xy"] if name == "tracking" else out
    assert main.shape == shape
    loss = main.square().mean() + (out["visible_logit"].mean() if name == "tracking" else 0)
    loss.backward()
    for pname, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_attention_readout_follows_its_definition():
    """LN + temporal posenc, cross-attention, dense + residual, LN, 4x MLP + residual, output."""
    torch.manual_seed(0)
    m = R.AttentionReadout(feature_dim=D, num_outputs=7, num_frames=T, width=16, num_heads=2,
                           num_queries=3)
    feats = torch.randn(B, T, 6, D)
    x = F.layer_norm(feats, (D,), m.feature_norm.weight, m.feature_norm.bias, 1e-5)
    x = (x + m.temporal_posenc[:, None]).reshape(B, T * 6, D)
    q, k, v = m.query.expand(B, 3, 16), m.key(x), m.value(x)
    heads = []
    for h in range(2):  # per head: softmax(q k^T / sqrt(d)) v
        sl = slice(8 * h, 8 * h + 8)
        att = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / 8 ** 0.5, dim=-1)
        heads.append(att @ v[..., sl])
    token = q + m.dense(torch.cat(heads, -1))
    token = token + m.mlp(m.mlp_norm(token))
    torch.testing.assert_close(m(feats), m.output(token), rtol=1e-5, atol=1e-6)


def test_features_to_readout_resamples_time_only():
    feats = _features()
    assert R.features_to_readout(feats).shape == (B, 4, 16, D)
    up = R.features_to_readout(feats, num_frames=T)
    assert up.shape == (B, T, 16, D)
    const = torch.ones(B, 4, 4, 4, D) * torch.arange(D)
    torch.testing.assert_close(R.features_to_readout(const, T), torch.ones(B, T, 16, D)
                               * torch.arange(D))


def test_rotation_from_6d_is_a_rotation_and_identity_code_gives_identity():
    rot = R.rotation_from_6d(torch.randn(10, 6, dtype=torch.float64))
    torch.testing.assert_close(rot.transpose(-1, -2) @ rot, torch.eye(3, dtype=torch.float64)
                               .expand(10, 3, 3))
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(10, dtype=torch.float64))
    pose = R.PoseHead(feature_dim=D, num_frames=T, width=32, num_heads=4)
    torch.nn.init.zeros_(pose.readout.output.weight)
    torch.nn.init.zeros_(pose.readout.output.bias)
    torch.testing.assert_close(pose(_features()), torch.eye(4).expand(B, T, 4, 4))


def test_batch_indices_visit_every_clip_once_per_epoch():
    seen = np.concatenate([batch_indices(10, 4, step, seed=3) for step in range(5)])
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
    assert (batch_indices(10, 4, 2, seed=3) == batch_indices(10, 4, 2, seed=3)).all()


def test_task_losses_are_small_at_the_truth():
    depth = torch.rand(B, T, SIZE, SIZE) + 0.5
    depth[:, :, :2] = 0  # invalid rows
    assert DepthTask().loss(depth.clamp(min=1e-6).log(), {"depth": depth}) == 0
    pose = torch.eye(4).expand(B, T, 4, 4)
    assert PoseTask().loss(pose, {"pose": pose}) == 0


def test_depth_task_scores_structure_scaled_and_metric_depth_unscaled():
    depth = torch.rand(B, T, SIZE, SIZE) + 0.5
    depth[:, :, :2] = 0  # invalid rows: not scored
    # a prediction right up to each frame's scale (x2 here): median scaling forgives it
    got = DepthTask().metrics({"depth": 2 * depth.numpy()}, {"depth": depth})
    assert got == pytest.approx({"abs_rel": 0.0, "delta1": 1.0, "abs_rel_unscaled": 1.0})


class _CountingEncoder:
    calls = 0

    def features(self, video, depth, grid):
        _CountingEncoder.calls += 1
        return video.mean(-1, keepdim=True)[:, ::2, ::8, ::8] * depth  # (B, T/2, H/8, W/8, 1)


class _Clip:
    def __init__(self, name, video):
        self.name, self.video = name, video


def test_feature_cache_skips_the_encoder_on_rerun(tmp_path):
    clips = [_Clip(f"c{i}", np.random.default_rng(i).random((4, 16, 16, 3), np.float32))
             for i in range(3)]
    load = lambda source: _CountingEncoder()  # noqa: E731
    first, rec = cached_features(load, "tiny", clips, depth=0.5, cache_dir=tmp_path, log=print)
    assert rec["cache"] == "miss" and _CountingEncoder.calls == 1 and first.shape == (3, 2, 2, 2, 1)
    again, rec = cached_features(load, "tiny", clips, depth=0.5, cache_dir=tmp_path, log=print)
    assert rec["cache"] == "hit" and _CountingEncoder.calls == 1
    torch.testing.assert_close(first, again)
    _, rec = cached_features(load, "tiny", clips, depth=1.0, cache_dir=tmp_path, log=print)
    assert rec["cache"] == "miss"  # another depth is another key
    _, rec = cached_features(load, "tiny", clips[:2], depth=0.5, cache_dir=tmp_path, log=print)
    assert rec["cache"] == "miss"  # so are other clips


# -- data parallel: 2 gloo ranks on halves of each global batch == 1 process -------------

_STEPS, _GLOBAL_BATCH, _CLIPS = 4, 4, 6


def _dp_problem():
    gen = torch.Generator().manual_seed(1)
    feats = torch.randn(_CLIPS, *GRID, D, generator=gen)
    q = 5
    targets = {"query_points": torch.rand(_CLIPS, q, 3, generator=gen),
               "query_valid": torch.rand(_CLIPS, q, generator=gen) > 0.2,
               "xy": torch.rand(_CLIPS, q, T, 2, generator=gen),
               "visible": torch.rand(_CLIPS, q, T, generator=gen) > 0.3}
    return TrackingTask(num_queries=q), feats, targets


def _train_dp(out_path: str) -> None:
    task, feats, targets = _dp_problem()
    torch.manual_seed(0)
    head = task.build_head(feature_dim=D, num_frames=T, image_size=SIZE, width=32, heads=4,
                           train_targets=targets)
    cfg = ReadoutConfig(steps=_STEPS, batch_size=_GLOBAL_BATCH, lr=1e-3, warmup=1, width=32,
                        heads=4, log_interval=100)
    history = train_readout(task, head, feats, targets, cfg, log=lambda _: None)
    torch.save({"state": head.state_dict(), "loss": [h["loss"] for h in history]}, out_path)


def _dp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)

    runtime.init_distributed(timeout_minutes=2)
    try:
        _train_dp(os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        runtime.shutdown()


def test_data_parallel_readout_matches_one_process(tmp_path, launch):
    _train_dp(str(tmp_path / "single.pt"))
    launch.spawn(_dp_worker, 2, launch.free_port(), str(tmp_path), nprocs=2)
    single = torch.load(tmp_path / "single.pt")
    for rank in (0, 1):
        dp = torch.load(tmp_path / f"rank{rank}.pt")
        np.testing.assert_allclose(dp["loss"], single["loss"], rtol=1e-6)
        for name, value in single["state"].items():
            torch.testing.assert_close(dp["state"][name], value, rtol=1e-6, atol=1e-6,
                                       msg=lambda m, n=name: f"{n}: {m}")
