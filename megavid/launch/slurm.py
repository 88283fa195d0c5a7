"""Render a SLURM batch file for megavid: check the layout first, quote every value.

The shell template (``launch/slurm/pretrain.sbatch``) makes no decisions; this
module does, so a bad layout or a hostile value is refused here, in a second,
instead of in a queue. Names that reach ``#SBATCH`` lines are checked against a
conservative character set (passed through, never rewritten); every value that
reaches the shell goes through ``shlex.quote``.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from megavid import cli
from megavid.config import ConfigError, RunConfig
from megavid.config.preflight import Layout, LayoutError, resolve_layout
from megavid.plan import estimate_memory_per_gpu

TEMPLATE = Path(__file__).resolve().parents[2] / "launch" / "slurm" / "pretrain.sbatch"
MODES = ("torchrun", "srun")

_NAME = re.compile(r"[A-Za-z0-9._:/@+-]+")
# pyxis: [USER@][REGISTRY#]IMAGE[:TAG] or a squashfs path; mounts: SRC:DST[:FLAGS][,SRC:DST...]
_IMAGE = re.compile(r"[A-Za-z0-9._:/@+#-]+")
_MOUNTS = re.compile(r"[A-Za-z0-9._:/@+,-]+")
_TIME = re.compile(r"(\d+-)?\d+(:\d\d){0,2}")  # MM, MM:SS, HH:MM:SS, D-HH[:MM[:SS]]
_FIELD = re.compile(r"@([A-Z_]+)@")
_MODE_MARK = re.compile(r"##(>>|<<) mode (\w+)")


class LaunchError(ConfigError):
    """A job that cannot be rendered; the message names the flag and the fix."""


@dataclass(frozen=True)
class SlurmJob:
    """What ``python -m megavid.launch slurm`` was asked for (flags, then pretrain args)."""

    config: str
    nodes: int
    gpus_per_node: int
    mode: str = "torchrun"
    tp: int | None = None
    pp: int | None = None
    partition: str | None = None
    account: str | None = None
    time: str | None = None
    container: str | None = None
    container_mounts: str | None = None
    job_name: str | None = None
    cpus_per_task: int | None = None
    overrides: tuple[str, ...] = ()  # megavid.pretrain flags given after --

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def name(self) -> str:
        """--job-name as given (checked, never rewritten), else one made from the config's name."""
        return self.job_name or re.sub(r"[^A-Za-z0-9._+-]", "_", Path(self.config).stem)


@dataclass(frozen=True)
class CheckedJob:
    job: SlurmJob
    cfg: RunConfig  # the config megavid.pretrain will resolve (file + flags + overrides)
    layout: Layout


def _check_name(value: str | None, flag: str, pattern: re.Pattern = _NAME) -> None:
    if value is not None and not pattern.fullmatch(value):
        raise LaunchError(
            f"{flag} {value!r}: only the characters {pattern.pattern[1:-2]} are accepted "
            f"(the name is passed to SLURM as it is, never rewritten); check the name")


def _check_flags(job: SlurmJob) -> None:
    """Checks of the launcher's own flags, before the config is read."""
    if job.mode not in MODES:
        raise LaunchError(f"--mode {job.mode!r}: choose one of {', '.join(MODES)}")
    for value, flag in ((job.nodes, "--nodes"), (job.gpus_per_node, "--gpus-per-node"),
                        (job.tp, "--tp"), (job.pp, "--pp"), (job.cpus_per_task, "--cpus-per-task")):
        if value is not None and value < 1:
            raise LaunchError(f"{flag} {value}: must be >= 1")
    _check_name(job.partition, "--partition")
    _check_name(job.account, "--account")
    _check_name(job.job_name, "--job-name")
    _check_name(job.container, "--container", _IMAGE)
    _check_name(job.container_mounts, "--container-mounts", _MOUNTS)
    if job.container_mounts and not job.container:
        raise LaunchError("--container-mounts needs --container IMAGE")
    if job.time is not None and not _TIME.fullmatch(job.time):
        raise LaunchError(f"--time {job.time!r}: use HH:MM:SS or D-HH:MM:SS, e.g. 04:00:00")
    for arg in (job.config, *job.overrides):
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in arg):
            raise LaunchError(f"{arg!r} holds a control character (newline, tab, ...); remove it")
    if any(a == "--config" or a.startswith("--config=") for a in job.overrides):
        raise LaunchError("--config after --: give the config as megavid.launch's --config")


def pretrain_args(job: SlurmJob) -> list[str]:
    """The ``python -m megavid.pretrain`` arguments the job runs (unquoted)."""
    args = ["--config", job.config]
    if job.tp is not None:
        args += ["--tp", str(job.tp)]
    if job.pp is not None:
        args += ["--pp", str(job.pp)]
    # SIGUSR1 before the time limit: save, then requeue (the batch file resumes from the save)
    return args + ["--requeue-on-preempt", *job.overrides]


def _load_run_config(args: list[str]) -> RunConfig:
    """megavid.pretrain's own parser, its error turned into a LaunchError."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return cli.parse_args(args)
    except SystemExit:
        lines = err.getvalue().strip().splitlines() or ["error: stopped (was -h given?)"]
        reason = lines[-1].partition("error: ")[2]
        raise LaunchError(f"megavid.pretrain arguments (config and after --): {reason}") from None


def check(job: SlurmJob) -> CheckedJob:
    """Everything that can be known before the queue: flags, config, layout."""
    _check_flags(job)
    cfg = _load_run_config(pretrain_args(job))
    try:
        layout = resolve_layout(cfg, job.world_size)
    except LayoutError as err:
        raise LayoutError(f"{err} (world = --nodes {job.nodes} x --gpus-per-node "
                          f"{job.gpus_per_node})") from None
    return CheckedJob(job, cfg, layout)


def notes(checked: CheckedJob) -> list[str]:
    """Warnings about jobs that run, but probably not as meant."""
    job, cfg, out = checked.job, checked.cfg, []
    if job.gpus_per_node % checked.layout.tp:
        out.append(f"--tp {checked.layout.tp} does not divide --gpus-per-node {job.gpus_per_node}: "
                   "TP groups span nodes, so tensor-parallel traffic crosses the network")
    if not cfg.checkpoint.save:
        out.append("checkpoint.save is not set: a preempted or requeued job restarts from step 0 "
                   "(add -- --save DIR --save-interval N)")
    if job.mode == "srun" and job.cpus_per_task is None:
        out.append(f"--mode srun without --cpus-per-task: each rank gets SLURM's default CPUs for "
                   f"its {cfg.data.num_workers} decoding worker(s)")
    return out


def _group(args: list[str]) -> list[str]:
    """Quoted arguments, a flag and its value per line."""
    lines, i = [], 0
    while i < len(args):
        if args[i].startswith("-") and i + 1 < len(args) and not args[i + 1].startswith("--"):
            lines.append(f"{shlex.quote(args[i])} {shlex.quote(args[i + 1])}")
            i += 2
        else:
            lines.append(shlex.quote(args[i]))
            i += 1
    return lines


def launcher_command(job: SlurmJob) -> str:
    """The megavid.launch command that renders this job (for the file's header)."""
    cmd = ["python", "-m", "megavid.launch", "slurm", "--config", job.config,
           "--nodes", str(job.nodes), "--gpus-per-node", str(job.gpus_per_node)]
    for flag, value in (("--tp", job.tp), ("--pp", job.pp), ("--mode", job.mode),
                        ("--partition", job.partition), ("--account", job.account),
                        ("--time", job.time), ("--container", job.container),
                        ("--container-mounts", job.container_mounts),
                        ("--job-name", job.job_name), ("--cpus-per-task", job.cpus_per_task)):
        if value is not None and not (flag == "--mode" and value == "torchrun"):
            cmd += [flag, str(value)]
    if job.overrides:
        cmd += ["--", *job.overrides]
    return shlex.join(cmd)


def _srun_args(job: SlurmJob) -> list[str]:
    tasks = 1 if job.mode == "torchrun" else job.gpus_per_node
    args = [f"--nodes={job.nodes}", f"--ntasks-per-node={tasks}"]
    if job.cpus_per_task is not None:  # srun does not inherit sbatch's value (Slurm >= 22.05)
        args.append(f"--cpus-per-task={job.cpus_per_task}")
    args.append("--kill-on-bad-exit=1")  # one dead rank ends the step instead of a hang
    if job.container:
        args.append(shlex.quote(f"--container-image={job.container}"))
        if job.container_mounts:
            args.append(shlex.quote(f"--container-mounts={job.container_mounts}"))
        args.append('--container-workdir="$PWD"')  # the submit directory, mounted at its path
    return args


def _resume_args(cfg: RunConfig) -> list[str]:
    """``--load`` = ``--save`` when the job saves and names no --load: the first job starts
    from scratch (megavid warns), each requeue resumes from the newest checkpoint."""
    save = cfg.checkpoint.save
    return ["--load", save] if save and not cfg.checkpoint.load else []


def fields(checked: CheckedJob) -> dict:
    """Values of the template's @FIELD@s: str, list (one line each) or None (line dropped)."""
    job, lay, cfg = checked.job, checked.layout, checked.cfg
    header = [
        "Rendered by megavid.launch; change the command and render again rather than editing:",
        f"  {launcher_command(job)}",
        f"Layout: {job.world_size} ranks = tp {lay.tp} x pp {lay.pp} (vpp {lay.vpp}) x "
        f"dp {lay.dp}; {lay.num_microbatches} micro-batches of {lay.micro_batch_size} per DP "
        f"rank per step (global batch {cfg.train.global_batch_size})",
        f"Mode {job.mode}: " + ("one task per node runs torchrun, one process per GPU"
                                if job.mode == "torchrun" else
                                "one task per GPU; megavid reads its rank from SLURM_*"),
    ]
    return {
        "RENDERED_BY": header,
        "JOB_NAME": job.name,
        "NODES": str(job.nodes),
        "TASKS_PER_NODE": "1" if job.mode == "torchrun" else str(job.gpus_per_node),
        "GPUS_PER_NODE": str(job.gpus_per_node),
        "CPUS_PER_TASK": None if job.cpus_per_task is None else str(job.cpus_per_task),
        "PARTITION": job.partition,
        "ACCOUNT": job.account,
        "TIME": job.time,
        "CUDA_DEVICE_MAX_CONNECTIONS": "1" if lay.tp > 1 else None,
        "MEGAVID_ARGS": _group(pretrain_args(job) + _resume_args(cfg)),
        "SRUN_ARGS": _srun_args(job),
    }


def fill(template: str, values: dict, mode: str) -> str:
    """Substitute @FIELD@s, keep the lines of ``mode``, drop '##' template comments."""
    out, keep = [], True
    for line in template.splitlines():
        mark = _MODE_MARK.fullmatch(line)
        if mark:
            keep = mark[1] == "<<" or mark[2] == mode
            continue
        if not keep or line.startswith("##"):
            continue
        names = _FIELD.findall(line)
        if not names:
            out.append(line)
            continue
        if len(names) > 1:
            raise LaunchError(f"template line {line!r}: one @FIELD@ per line")
        value = values[names[0]]
        items = [] if value is None else value if isinstance(value, list) else [value]
        out.extend(line.replace(f"@{names[0]}@", item) for item in items)
    return "\n".join(out) + "\n"


def render(checked: CheckedJob, template: Path = TEMPLATE) -> str:
    """The batch file for a checked job."""
    if not template.is_file():
        raise LaunchError(f"template {template} not found: run megavid.launch from a megavid "
                          "checkout (pip install -e .), where launch/slurm/ exists")
    return fill(template.read_text(), fields(checked), checked.job.mode)


def memory_estimate(checked: CheckedJob) -> str:
    """Peak memory per GPU from megavid.plan."""
    try:
        gb = estimate_memory_per_gpu(checked.cfg, checked.job.world_size)
    except Exception as err:  # advisory only: an estimate must never block a launch
        return f"planner failed ({type(err).__name__}: {err})"
    return f"{gb:.1f} GB on the fullest GPU (megavid.plan estimate)"
