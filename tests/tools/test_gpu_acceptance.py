"""benchmarks/gpu_acceptance.py on a machine without CUDA: --dry-run checks every part's
preconditions and prints the plan, running nothing; the step-time matrix is as documented."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_acceptance.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_acceptance", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_dry_run_prints_the_plan_and_runs_nothing(launch, tmp_path):
    out = tmp_path / "results.json"
    result = launch.run(str(SCRIPT), "--dry-run", "--out", str(out), check=True, timeout=120)
    text = result.stdout
    for part in ("pytest_gpu", "te_vs_local", "step_time", "decode", "kernels"):
        assert part in text
    assert text.count("no: needs cuda") == 5  # every part needs a GPU; this machine has none
    assert "540 s of budgets" in text  # under the 10 minutes the script promises
    assert "--dry-run: nothing ran" in text and not out.exists()
    assert "| 4ds-h  | tensorwise |     on |" in text


def test_step_time_matrix():
    cases = _module().step_cases(["delayed", "tensorwise", "mxfp8"])
    b = [c for c in cases if c[0] == "4ds-b"]
    # BF16 and the first recipe with graphs off and on; the other recipes eagerly
    assert b == [("4ds-b", None, False), ("4ds-b", None, True), ("4ds-b", "delayed", False),
                 ("4ds-b", "delayed", True), ("4ds-b", "tensorwise", False),
                 ("4ds-b", "mxfp8", False)]
    assert [c for c in cases if c[0] == "4ds-l"] == [
        ("4ds-l", None, False), ("4ds-l", None, True), ("4ds-l", "delayed", False),
        ("4ds-l", "delayed", True)]
    assert _module().step_cases([]) == [(p, None, g) for p in ("4ds-b", "4ds-l", "4ds-h")
                                        for g in (False, True)]
