"""``python -m megavid.launch slurm``: committed examples, refusals, quoting, submission."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest

from megavid.launch import slurm
from megavid.launch.__main__ import main
from megavid.launch.slurm import SlurmJob, check, memory_estimate, notes, render
from tests.conftest import REPO
from tests.launch.helpers import slurm_env

EXAMPLES = sorted((REPO / "launch" / "slurm" / "examples").glob("*.sbatch"))
J_CLUSTER = ["--config", "examples/4ds_j_cluster.yaml", "--nodes", "32", "--gpus-per-node", "8",
             "--tp", "8", "--pp", "4"]


def launch(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def rendering_command(example: Path) -> list[str]:
    """The megavid.launch arguments an example records in its header, plus --dry-run."""
    line = example.read_text().splitlines()[2]
    assert line.startswith("#   python -m megavid.launch "), line
    argv = shlex.split(line[1:])[3:]
    cut = argv.index("--") if "--" in argv else len(argv)
    return argv[:cut] + ["--dry-run"] + argv[cut:]


def test_4ds_j_example_is_committed():
    example = REPO / "launch/slurm/examples/4ds_j_32x8_tp8_pp4.sbatch"
    assert rendering_command(example) == ["slurm", *J_CLUSTER, "--dry-run"]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_render_byte_for_byte(example, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    code, out, _ = launch(capsys, *rendering_command(example))
    assert code == 0
    assert out == example.read_text(), f"re-render {example.name} with the command in its header"


def test_summary_names_dp_and_microbatches(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    code, _, err = launch(capsys, "slurm", *J_CLUSTER, "--dry-run")
    assert code == 0
    assert "data-parallel size: 8; micro-batches per step: 32 of 8" in err
    assert "memory per GPU:" in err


def test_a_failing_planner_never_blocks_the_launch(monkeypatch):
    """The planner is part of megavid (no longer an optional import); its estimate is advisory."""
    monkeypatch.chdir(REPO)
    checked = check(SlurmJob(config="examples/4ds_j_cluster.yaml", nodes=32, gpus_per_node=8))
    assert memory_estimate(checked).endswith("GB on the fullest GPU (megavid.plan estimate)")

    def broken(cfg, world_size):
        raise ZeroDivisionError("no GPUs")

    monkeypatch.setattr(slurm, "estimate_memory_per_gpu", broken)
    assert memory_estimate(checked) == "planner failed (ZeroDivisionError: no GPUs)"


def test_bad_layout_refused_before_writing(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    out_file = tmp_path / "job.sbatch"
    code, _, err = launch(capsys, "slurm", *J_CLUSTER[:2], "--nodes", "3", "--gpus-per-node", "8",
                          "--tp", "8", "--pp", "4", "--output", str(out_file))
    assert code == 2 and not out_file.exists()
    assert "world size 24 is not divisible by --tp 8 x --pp 4 = 32" in err
    assert "(world = --nodes 3 x --gpus-per-node 8)" in err


@pytest.mark.parametrize("flag, value", [
    ("--partition", "gpu;reboot"), ("--partition", "gpu a100"), ("--partition", "$(id)"),
    ("--partition", "gpu`id`"), ("--account", "acct'x"), ("--job-name", "a\nb"),
    ("--container", "image;ls"), ("--container-mounts", "/a:/b&"), ("--time", "4h"),
])
def test_bad_names_refused(flag, value, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    out_file = tmp_path / "job.sbatch"
    extra = ["--container", "img"] if flag == "--container-mounts" else []
    code, _, err = launch(capsys, "slurm", *J_CLUSTER, flag, value, *extra,
                          "--output", str(out_file))
    assert code == 2 and not out_file.exists()
    assert f"error: {flag}" in err


def test_names_pass_through_unchanged(monkeypatch):
    monkeypatch.chdir(REPO)
    job = SlurmJob(config="examples/4ds_j_cluster.yaml", nodes=32, gpus_per_node=8,
                   partition="gpu_h100-x8.q", account="proj:video+mae@site",
                   container="nvcr.io#nvidia/pytorch:25.01-py3", time="1-12:00:00")
    text = render(check(job))
    assert "#SBATCH --partition=gpu_h100-x8.q\n" in text
    assert "#SBATCH --account=proj:video+mae@site\n" in text
    assert "'--container-image=nvcr.io#nvidia/pytorch:25.01-py3'" in text


def test_values_reach_the_job_quoted(tmp_path, monkeypatch, request):
    """A config path with a space and a `$(...)` value arrive as single, literal arguments."""
    config = tmp_path / "my configs" / "demo cpu.yaml"
    config.parent.mkdir()
    shutil.copy(REPO / "examples/demo_cpu.yaml", config)
    canary = tmp_path / "pwned"
    overrides = ("--data", f"$(touch {canary})", "--set", "log.log_dir=it's `id` $HOME")
    job = SlurmJob(config=str(config), nodes=2, gpus_per_node=2, mode="srun",
                   overrides=overrides)
    script = tmp_path / "job.sbatch"
    script.write_text(render(check(job)))
    assert shlex.quote(str(config)) in script.read_text()
    argv_file = tmp_path / "srun_argv.json"
    env = slurm_env(tmp_path, FAKE_SRUN_ARGV=str(argv_file))
    run = request.getfixturevalue("launch").run  # the fixture (this module's launch() is the CLI)
    run("bash", str(script), python=None, env=env, check=True, timeout=60)
    argv = json.loads(argv_file.read_text())
    tail = argv[argv.index("megavid.pretrain") + 1:]
    assert tail == ["--config", str(config), "--requeue-on-preempt", *overrides]
    assert not canary.exists()


def test_unknown_flags_are_errors(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as exc:
        main(["slurm", *J_CLUSTER, "--gpus", "8"])
    assert exc.value.code == 2 and "unrecognized arguments: --gpus" in capsys.readouterr().err
    code, _, err = launch(capsys, "slurm", *J_CLUSTER, "--dry-run", "--", "--bogus", "1")
    assert code == 2 and "unrecognized arguments: --bogus 1" in err
    code, _, err = launch(capsys, "slurm", *J_CLUSTER, "--dry-run", "--", "--config", "x.yaml")
    assert code == 2 and "give the config as megavid.launch's --config" in err


def test_submit_without_sbatch_is_an_error(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SystemExit):
        main(["slurm", *J_CLUSTER, "--submit", "--output", str(tmp_path / "job.sbatch")])
    assert "--submit: sbatch is not on PATH" in capsys.readouterr().err
    assert not (tmp_path / "job.sbatch").exists()


def test_submit_calls_sbatch(capsys, monkeypatch, tmp_path):
    record = tmp_path / "sbatch_args"
    sbatch = tmp_path / "bin" / "sbatch"
    sbatch.parent.mkdir()
    sbatch.write_text(f'#!/bin/sh\necho "$@" > {shlex.quote(str(record))}\n'
                      'echo "Submitted batch job 7"\n')
    sbatch.chmod(0o755)
    monkeypatch.setenv("PATH", f"{sbatch.parent}:/usr/bin:/bin")
    monkeypatch.chdir(tmp_path)
    code, _, _ = launch(capsys, "slurm", *J_CLUSTER[:1], str(REPO / J_CLUSTER[1]), *J_CLUSTER[2:],
                        "--submit", "--output", "job.sbatch")
    assert code == 0 and record.read_text().strip() == "job.sbatch"
    assert (tmp_path / "logs").is_dir() and (tmp_path / "job.sbatch").is_file()


def test_notes_flag_risky_jobs(monkeypatch):
    monkeypatch.chdir(REPO)
    job = SlurmJob(config="examples/4ds_j_cluster.yaml", nodes=64, gpus_per_node=4, tp=8, pp=4,
                   mode="srun")
    text = " ".join(notes(check(job)))
    assert "TP groups span nodes" in text and "checkpoint.save is not set" in text
    assert "--cpus-per-task" in text
