"""A megavid run prints no deprecation notice from megatron-core, on whichever version is
installed: a training run with synchronous and asynchronous saves, and its resume."""

from __future__ import annotations

import re

import pytest

TINY = ("--preset", "tiny", "--set", "data.mock=true", "--set", "log.tensorboard=false",
        "--set", "log.plot=false", "--lr-warmup-iters", "1", "--mask-ratio", "0.8",
        "--global-batch-size", "8", "--micro-batch-size", "2")
NOTICE = re.compile(r"deprecat|Rewrapping ModuleSpec", re.IGNORECASE)


def run_with_warnings(launch, log_dir, *args: str) -> str:
    proc = launch.run("-m", "megavid.pretrain", "--log-dir", str(log_dir), *TINY, *args,
                      env={"PYTHONWARNINGS": None}, timeout=300)  # show every warning
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout + proc.stderr


@pytest.mark.slow  # ~32 s: train, save, resume
def test_training_saving_and_resuming_print_no_deprecation_notice(tmp_path, launch):
    save = tmp_path / "save"
    out = run_with_warnings(launch, tmp_path / "a", "--train-iters", "4", "--save", str(save),
                            "--save-interval", "2", "--async-save")
    out += run_with_warnings(launch, tmp_path / "b", "--train-iters", "5", "--load", str(save),
                             "--save", str(tmp_path / "save_b"), "--save-interval", "5")
    notices = sorted({line.strip() for line in out.splitlines() if NOTICE.search(line)})
    assert not notices, "\n".join(notices)
