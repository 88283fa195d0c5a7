"""Shared test helpers: the one launcher for megavid's processes, GPU tests skipped without CUDA."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from megavid import quiet

REPO = Path(__file__).resolve().parents[1]

if not torch.cuda.is_available():
    # Triton reads this when first imported (megatron.core imports it): set it before any
    # test module imports megatron, so the kernel tests can run in the CPU interpreter.
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config):
    # pytest restores the warning filters after each test and collected module, so the ones
    # megavid installs on import would not outlive the first; give pytest the same list
    cpu = () if torch.cuda.is_available() else quiet.CPU_ONLY_NOISE
    for message, category, _ in quiet.KNOWN_NOISE + cpu:
        config.addinivalue_line("filterwarnings", f"ignore:{message}:{category.__name__}")


def pytest_collection_modifyitems(config, items):
    _check_one_launcher({item.path for item in items})
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA: run `pytest -m gpu` on a GPU node")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# processes started other than through the launch fixture: no port, timeout or clean-up rules
_DIRECT_LAUNCH = re.compile(r"subprocess\.(run|Popen|call|check_call|check_output)\(|"
                            r"\bmp\.spawn\(|\.Process\(target=|\"torch\.distributed\.run\"")


def _check_one_launcher(paths) -> None:
    found = [f"{path.relative_to(REPO)}:{number}: {line.strip()}"
             for path in sorted(paths) if path.suffix == ".py"
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if _DIRECT_LAUNCH.search(line)]
    if found:
        raise pytest.UsageError("start processes with the launch fixture (tests/conftest.py), "
                                "not directly:\n" + "\n".join(found))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group ``proc`` leads, and, while it runs, its descendants that left
    the group (the fake srun starts each task in a session of its own)."""
    strays = []
    if proc.poll() is None:  # not reaped: the pid is still this process's
        try:
            strays = psutil.Process(proc.pid).children(recursive=True)
        except psutil.Error:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group outlives its leader
    except (ProcessLookupError, PermissionError):
        pass
    for stray in strays:
        try:
            stray.kill()
        except psutil.Error:
            pass


class Launch:
    """Starts megavid as users do, in processes the test owns: the one way tests launch.

    ``run("-m", "megavid.pretrain", ...)`` is ``python -m megavid.pretrain ...``; with ``nproc=N``
    it is ``torchrun --nproc-per-node N --master-port FREE ...``; with ``python=None`` the
    arguments are the whole command (``run("bash", script)``). Every launch gets the test
    environment (one OpenMP thread, warnings off, a free MASTER_PORT for one-process gloo
    groups), runs in a session of its own with output through files (a SIGKILLed trainer's
    dist-checkpointing writers can hold inherited pipes open), fails with its output on timeout,
    and has its whole process group killed when it ends, so no orphan outlives the test.
    """

    def __init__(self, out_dir: Path):
        self._out_dir = out_dir
        self._count = 0
        self._groups: list[subprocess.Popen] = []
        self._spawned: list = []

    free_port = staticmethod(free_port)

    def env(self, extra: dict | None = None) -> dict:
        """The test environment with ``extra`` on top; a value of None removes the variable."""
        env = {**os.environ, "OMP_NUM_THREADS": "1",  # several ranks share 2 cores
               "PYTHONWARNINGS": "ignore", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(free_port())}
        for key, value in (extra or {}).items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env

    def command(self, *args: str, nproc: int | None = None,
                python: str | None = sys.executable) -> list[str]:
        if python is None:
            return [str(a) for a in args]
        torchrun = [] if nproc is None else [
            "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
            "--master-port", str(free_port())]
        return [python, *torchrun, *(str(a) for a in args)]

    def start(self, *args: str, nproc: int | None = None, env: dict | None = None,
              cwd: Path = REPO, python: str | None = sys.executable,
              **popen: object) -> subprocess.Popen:
        """Popen in a new session; its process group (what it left behind, if it was
        SIGKILLed) is killed when the test ends."""
        popen.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(self.command(*args, nproc=nproc, python=python), cwd=cwd,
                                env=self.env(env), start_new_session=True, **popen)
        self._groups.append(proc)
        return proc

    def run(self, *args: str, nproc: int | None = None, env: dict | None = None,
            timeout: float = 300, cwd: Path = REPO, python: str | None = sys.executable,
            check: bool = False) -> subprocess.CompletedProcess:
        """Run to completion; ``check`` fails on a non-zero exit with the output's tail."""
        self._count += 1
        out_path = self._out_dir / f"{self._count}.out"
        err_path = self._out_dir / f"{self._count}.err"
        with out_path.open("w") as out, err_path.open("w") as err:
            proc = self.start(*args, nproc=nproc, env=env, cwd=cwd, python=python,
                              stdout=out, stderr=err)
            try:
                returncode = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                returncode = None
            finally:
                _kill_group(proc)  # the leader has exited or timed out: the rest are orphans
                proc.wait()
                self._groups.remove(proc)
        result = subprocess.CompletedProcess(
            proc.args, returncode, out_path.read_text(errors="replace"),
            err_path.read_text(errors="replace"))
        if returncode is None:
            pytest.fail(f"timed out after {timeout} s: {' '.join(proc.args)}\n"
                        f"{_tail(result)}", pytrace=False)
        if check and returncode != 0:
            raise AssertionError(f"{' '.join(proc.args)} exited with {returncode}:\n"
                                 f"{_tail(result)}")
        return result

    def pretrain(self, tmp_path: Path, nproc: int, *args: str, timeout: float = 300,
                 env: dict | None = None) -> list[dict]:
        """``torchrun --nproc-per-node N -m megavid.pretrain ARGS``, or for one process
        ``python -m megavid.pretrain ARGS`` (an interpreter less to start); returns
        metrics.jsonl rows."""
        log_dir = tmp_path / "run"
        self.run("-m", "megavid.pretrain", "--log-dir", str(log_dir), *args,
                 nproc=None if nproc == 1 else nproc, env=env, timeout=timeout, check=True)
        return [json.loads(line) for line in (log_dir / "metrics.jsonl").read_text().splitlines()]

    def spawn(self, fn, *args, nprocs: int, start_method: str = "spawn", join: bool = True,
              timeout: float = 300):
        """``fn(rank, *args)`` in ``nprocs`` processes, as ``torch.multiprocessing.spawn``;
        with ``join=False`` returns the processes for the test to join."""
        import torch.multiprocessing as mp

        context = mp.start_processes(fn, args=args, nprocs=nprocs, join=False,
                                     start_method=start_method)
        self._spawned.extend(context.processes)
        if not join:
            return context.processes
        deadline = time.monotonic() + timeout
        while not context.join(timeout=1):  # raises with the failed worker's traceback
            if time.monotonic() > deadline:
                self.close()
                pytest.fail(f"spawned {fn.__name__} x {nprocs} timed out after {timeout} s",
                            pytrace=False)
        return context.processes

    def close(self) -> None:
        for proc in self._groups:
            _kill_group(proc)
            proc.wait()
        for proc in self._spawned:
            if proc.is_alive():
                proc.kill()
                proc.join()
        self._groups.clear()
        self._spawned.clear()


def _tail(proc: subprocess.CompletedProcess) -> str:
    return f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-6000:]}"


@pytest.fixture
def launch(tmp_path_factory) -> Launch:
    """The launcher for one test (see Launch); what it started is killed afterwards."""
    launcher = Launch(tmp_path_factory.mktemp("launch"))
    yield launcher
    launcher.close()


@pytest.fixture(scope="session")
def shared_launch(tmp_path_factory) -> Launch:
    """The launcher for module- and session-scoped fixtures (a reference run, say)."""
    launcher = Launch(tmp_path_factory.mktemp("launch"))
    yield launcher
    launcher.close()
