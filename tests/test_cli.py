"""The command line of ``python -m megavid.pretrain``: Megatron-LM's aliases reach the same
fields as the short flags, and a bad setting stops the entry point with one line."""

from __future__ import annotations

from megavid.cli import parse_args


def test_cli_aliases_reach_the_same_fields():
    short = parse_args(["--tp", "2", "--pp", "2", "--vpp", "2", "--sp", "--preset", "tiny",
                        "--global-batch-size", "16"])
    long = parse_args(["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2",
                       "--virtual-pipeline-model-parallel-size", "2", "--sequence-parallel",
                       "--preset", "tiny", "--global-batch-size", "16"])
    assert short == long and short.parallel.sequence_parallel


def test_entry_point_fails_fast_with_one_line(launch):
    proc = launch.run("-m", "megavid.pretrain", "--preset", "tiny", "--tp", "3", timeout=120)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert errors == ["megavid: error: world size 1 is not divisible by --tp 3 x --pp 1 = 3; "
                      "change --tp/--pp or the number of processes"]
