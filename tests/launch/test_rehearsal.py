"""Rehearse a 2-node x 2-GPU SLURM job on this machine, in both launch modes.

The rendered batch file runs as it would on a cluster, with stand-ins for
``srun`` (starts the tasks with SLURM's per-task variables) and ``scontrol``
on PATH: mode srun starts 4 megavid ranks, mode torchrun starts 2 torchrun
agents of 2 ranks meeting at a c10d rendezvous on 127.0.0.1. Each rank records
its placement (MEGAVID_RANK_LAYOUT_DIR); the 3 training steps at TP=2 must
match a single process.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megavid.launch.slurm import SlurmJob, check, render
from tests.launch.helpers import JOB_ID, NODES, PER_NODE, slurm_env

CONFIG = "examples/demo_cpu.yaml"
COMMON = ("--preset", "tiny", "--set", "data.mock=true", "--set", "log.tensorboard=false",
          "--set", "log.plot=false", "--train-iters", "3", "--lr-warmup-iters", "1",
          "--mask-ratio", "0.8", "--global-batch-size", "8", "--micro-batch-size", "2")


def run_job(launch, tmp_path: Path, mode: str) -> tuple[list[dict], list[dict]]:
    """Render the job, run its batch file; returns (metrics rows, rank layouts by rank)."""
    job = SlurmJob(config=CONFIG, nodes=NODES, gpus_per_node=PER_NODE, tp=2, mode=mode,
                   overrides=(*COMMON, "--log-dir", str(tmp_path / "run")))
    script = tmp_path / "job.sbatch"
    script.write_text(render(check(job)))
    env = slurm_env(tmp_path, MEGAVID_RANK_LAYOUT_DIR=str(tmp_path / "ranks"))
    proc = launch.run("bash", str(script), python=None, env=env, timeout=300)
    if proc.returncode != 0:
        raise AssertionError(f"{mode} job failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text()
               .splitlines()]
    layouts = sorted((json.loads(p.read_text()) for p in (tmp_path / "ranks").glob("*.json")),
                     key=lambda d: d["rank"])
    return metrics, layouts


@pytest.fixture(scope="module")
def reference(tmp_path_factory, shared_launch):
    return shared_launch.pretrain(tmp_path_factory.mktemp("single"), 1, "--config", CONFIG, *COMMON)


def check_groups(layouts: list[dict]) -> None:
    """4 ranks, TP innermost (inside a node), DP across nodes, one rendezvous."""
    assert [d["rank"] for d in layouts] == [0, 1, 2, 3]
    assert {d["world_size"] for d in layouts} == {4}
    assert len({d["master"] for d in layouts}) == 1
    for d in layouts:
        assert d["local_rank"] == d["rank"] % PER_NODE
        assert d["groups"]["tp"] == [d["rank"] - d["local_rank"], d["rank"] - d["local_rank"] + 1]
        assert d["groups"]["dp"] == [d["local_rank"], d["local_rank"] + PER_NODE]
        assert d["groups"]["pp"] == [d["rank"]]
        assert d["launcher_env"]["SLURM_JOB_ID"] == JOB_ID
    nodes = {}
    for d in layouts:  # each TP group on one "node", both nodes used
        nodes.setdefault(tuple(d["groups"]["tp"]), set()).add(d["launcher_env"]["SLURM_NODEID"])
    assert all(len(n) == 1 for n in nodes.values()) and len(set.union(*nodes.values())) == NODES


@pytest.mark.slow  # 31-32 s on 2 cores (the reference run aside): 4 ranks
def test_srun_mode_one_task_per_gpu(tmp_path, reference, launch):
    metrics, layouts = run_job(launch, tmp_path, "srun")
    check_groups(layouts)
    for d in layouts:  # ranks straight from SLURM, node-major like srun's block distribution
        assert d["source"] == "slurm"
        assert d["launcher_env"]["SLURM_PROCID"] == str(d["rank"])
        assert d["launcher_env"]["SLURM_NODEID"] == str(d["rank"] // PER_NODE)
    assert layouts[0]["master"].startswith("127.0.0.1:")
    assert_same_losses(metrics, reference)


@pytest.mark.slow  # ~26 s with its reference run
def test_torchrun_mode_one_agent_per_node(tmp_path, reference, launch):
    metrics, layouts = run_job(launch, tmp_path, "torchrun")
    check_groups(layouts)
    for d in layouts:  # torchrun numbers ranks agent by agent, with the job id as rendezvous id
        assert d["source"] == "torchrun"
        env = d["launcher_env"]
        assert env["TORCHELASTIC_RUN_ID"] == JOB_ID and env["GROUP_WORLD_SIZE"] == str(NODES)
        assert d["rank"] == int(env["GROUP_RANK"]) * PER_NODE + d["local_rank"]
    assert_same_losses(metrics, reference)


def assert_same_losses(metrics: list[dict], reference: list[dict]) -> None:
    assert [m["step"] for m in metrics] == [1, 2, 3]
    for ref, got in zip(reference, metrics):
        assert got["loss"] == pytest.approx(ref["loss"], rel=1e-5), ref["step"]
        assert got["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-5), ref["step"]
    assert reference[2]["loss"] != reference[0]["loss"]  # the run moved
