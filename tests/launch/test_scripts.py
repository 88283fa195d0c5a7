"""Every shell script under launch/ (templates and rendered examples) parses and lints clean.

shellcheck is optional locally (skip) but required in CI (CI=true: fail), so a
lint regression cannot pass CI by the tool going missing.
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.conftest import REPO

SCRIPTS = sorted(p for p in (REPO / "launch").rglob("*")
                 if p.is_file() and p.suffix in (".sh", ".sbatch"))
IDS = [str(p.relative_to(REPO)) for p in SCRIPTS]


def test_scripts_found():
    names = {p.name for p in SCRIPTS}
    assert {"torchrun.sh", "pretrain.sbatch", "4ds_j_32x8_tp8_pp4.sbatch"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=IDS)
def test_bash_syntax(script, launch):
    proc = launch.run("bash", "-n", str(script), python=None, timeout=60)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=IDS)
def test_shellcheck(script, launch):
    if shutil.which("shellcheck") is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true but shellcheck is not on PATH: apt-get install -y shellcheck")
        pytest.skip("shellcheck is not on PATH (apt-get install -y shellcheck)")
    proc = launch.run("shellcheck", str(script), python=None, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
