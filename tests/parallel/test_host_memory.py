"""Freed host memory stays in the process: re-allocating it does not page-fault."""

import os
import sys

import pytest

from megavid.parallel.host_memory import keep_freed_memory, user_malloc_settings

# The program first pins glibc to its start-up thresholds (128 KiB), which
# hands every 8 MiB block back to the kernel on free. Left to itself glibc
# raises its mmap threshold dynamically, and whether it then trims depends on
# the machine (a CI run once kept everything without our help), so the control
# would not be deterministic. keep_freed_memory() must override the pinning.
_PROGRAM = """
import ctypes, ctypes.util, resource, sys, torch
from megavid.parallel.host_memory import keep_freed_memory
mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD
mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
kept = keep_freed_memory()
def cycle():  # a step's worth of activation-sized blocks, allocated, written, freed
    blocks = [torch.ones(2048, 1024) for _ in range(50)]  # 50 x 8 MiB
    del blocks
cycle(); cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    cycle()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(launch, keep: bool) -> tuple[bool, int]:
    env = {k: None for k in os.environ
           if k in ("LD_PRELOAD", "GLIBC_TUNABLES") or k.startswith("MALLOC_")}
    env["MEGAVID_KEEP_FREED_MEMORY"] = "1" if keep else "0"
    out = launch.run("-c", _PROGRAM, env=env, check=True).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_reallocation_does_not_page_fault(launch):
    kept, faults = _faults(launch, keep=True)
    if not kept:
        pytest.skip("not glibc")
    pages = 5 * 50 * 8 * 2**20 // 4096  # pages written after the warm-up: 512,000
    assert faults < pages // 100, faults
    _, default_faults = _faults(launch, keep=False)
    assert default_faults > pages // 2, default_faults  # without it every block is mapped anew


@pytest.mark.parametrize("name,value", [
    ("MEGAVID_KEEP_FREED_MEMORY", "0"),
    ("MALLOC_TRIM_THRESHOLD_", "1048576"),
    ("MALLOC_MMAP_THRESHOLD_", "1048576"),
    ("LD_PRELOAD", "libjemalloc.so.2"),
    ("GLIBC_TUNABLES", "glibc.malloc.arena_max=2:glibc.malloc.trim_threshold=0"),
])
def test_the_users_own_malloc_settings_win(monkeypatch, name, value):
    for other in ("LD_PRELOAD", "GLIBC_TUNABLES", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_"):
        monkeypatch.delenv(other, raising=False)
    monkeypatch.setenv(name, value)
    keep_freed_memory.cache_clear()
    try:
        assert keep_freed_memory() is False
    finally:
        keep_freed_memory.cache_clear()


def test_unrelated_tunables_do_not_count(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    for other in ("LD_PRELOAD", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_"):
        monkeypatch.delenv(other, raising=False)
    assert user_malloc_settings() == []
