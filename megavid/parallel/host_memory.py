"""Keep freed host memory inside the process on CPU runs.

A training step frees and reallocates the same activation-sized blocks every
step. glibc's malloc hands blocks above its (dynamic) mmap threshold straight
back to the kernel and trims the heap top once more than its trim threshold is
free, so the next step touches fresh pages and page-faults on each of them:
on a 4DS-S CPU step we measured 50k-140k minor faults and 0.2-1.0 s of system
time per step, billed to whichever GEMM or GELU first writes the memory. GPU
runs do not have this (PyTorch's CUDA allocator caches), and PyTorch's CPU
tuning guide recommends a caching malloc (jemalloc/tcmalloc) for the same
reason. Setting glibc to keep what it has (no trimming, a fixed mmap threshold
at its 32 MiB maximum) does the same without preloading a library: after the
first steps a step page-faults almost never. Blocks above 32 MiB are still
mapped per allocation.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

_M_TRIM_THRESHOLD = -1  # from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc's ceiling on 64-bit (HEAP_MAX_SIZE / 2)
_TRIM_NEVER = 2**31 - 1


_USER_SETTINGS = ("LD_PRELOAD", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")
_TUNABLES = ("glibc.malloc.trim_threshold", "glibc.malloc.mmap_threshold")


def user_malloc_settings() -> list[str]:
    """The environment's own malloc choices, which megavid must not override."""
    found = [name for name in _USER_SETTINGS if os.environ.get(name)]
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    found += [t for t in _TUNABLES if t + "=" in tunables]
    return found


@functools.cache
def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory; False where there is no glibc.

    ``MEGAVID_KEEP_FREED_MEMORY=0`` leaves malloc alone, and so does a user's
    own choice: a ``MALLOC_TRIM_THRESHOLD_``/``MALLOC_MMAP_THRESHOLD_``, a
    ``GLIBC_TUNABLES`` naming either threshold, or an LD_PRELOADed allocator.
    """
    if os.environ.get("MEGAVID_KEEP_FREED_MEMORY", "1") == "0":
        return False
    if user_malloc_settings():
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_NEVER)
                and mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX))
