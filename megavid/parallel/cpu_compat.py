"""Let megatron-core run on machines without CUDA (CI, laptops, gloo tests).

megatron-core's algorithms run fine on CPU tensors; what fails is its habit of
naming the CUDA device. ``install()`` -- called once at start-up by
``megavid.parallel.runtime`` and only when ``torch.cuda.is_available()`` is
False -- bridges exactly that:

1. device requests: a ``TorchFunctionMode`` rewrites ``device="cuda"``/``0``
   arguments and ``Tensor.cuda()`` to the CPU; ``torch.cuda.current_device()``
   answers 0 so that such arguments exist to rewrite;
2. RNG: ``torch.cuda``'s RNG getters/setters and megatron-core's tracker
   helpers use the CPU default generator, so the model-parallel RNG tracker
   forks the generator CPU ops actually draw from;
3. streams/events/synchronize/NVTX become no-ops;
4. ``Tensor.type()`` answers the CUDA spelling (``torch.cuda.FloatTensor``)
   that megatron-core's optimizer and grad-clipping checks compare against.

Nothing else in megavid knows whether it runs on CPU or GPU: code that must name
a device asks ``local_device()`` (and ``pin_memory()`` for host buffers). Checked against
both ends of the supported megatron-core range, 0.16.1 and 0.19.2 (CI runs its
tests, ``tests/parallel/test_cpu_compat.py``, and the parity suite on each).
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode

_installed = False


def _is_cuda_device(device) -> bool:
    if isinstance(device, bool):
        return False
    if isinstance(device, int):
        return True  # a bare index means a CUDA ordinal
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, torch.device) and device.type == "cuda"


class _CpuDeviceMode(TorchFunctionMode):
    """Sends CUDA device requests to the CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            return func(*args).replace("torch.", "torch.cuda.", 1)
        if "device" in kwargs and _is_cuda_device(kwargs["device"]):
            kwargs["device"] = "cpu"
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], "cpu", *args[2:])
        return func(*args, **kwargs)


class _NoStream:
    """Stand-in for ``torch.cuda.Stream``: CPU work is already ordered."""

    def __init__(self, *args, **kwargs):
        pass

    def wait_stream(self, *args, **kwargs):
        pass

    def wait_event(self, *args, **kwargs):
        pass

    def record_event(self, event=None):
        return event or _NoEvent()

    def synchronize(self):
        pass

    def query(self):
        return True


class _NoEvent(_NoStream):
    """Stand-in for ``torch.cuda.Event``."""

    def record(self, *args, **kwargs):
        pass

    def wait(self, *args, **kwargs):
        pass

    def elapsed_time(self, other):
        return 0.0


def _get_rng_state(*args, **kwargs):
    return torch.get_rng_state()


def _set_rng_state(new_state, *args, **kwargs):
    torch.set_rng_state(new_state)


def _manual_seed(seed, *args, **kwargs):
    # not torch.manual_seed: that one calls torch.cuda.manual_seed_all itself
    torch.default_generator.manual_seed(int(seed))


def _patch_torch_cuda() -> None:
    cuda = torch.cuda
    cuda.current_device = lambda: 0
    cuda.Stream = _NoStream
    cuda.Event = _NoEvent
    cuda.current_stream = lambda *a, **k: _NoStream()
    cuda.default_stream = lambda *a, **k: _NoStream()
    cuda.stream = lambda *a, **k: contextlib.nullcontext()
    cuda.synchronize = lambda *a, **k: None
    cuda.nvtx.range_push = lambda *a, **k: None
    cuda.nvtx.range_pop = lambda *a, **k: None
    for module in (cuda, cuda.random):
        module.get_rng_state = _get_rng_state
        module.set_rng_state = _set_rng_state
        module.manual_seed = _manual_seed
        module.manual_seed_all = _manual_seed


def _patch_megatron_rng() -> None:
    from megatron.core.tensor_parallel import random as mcore_random

    for name, replacement in (("_get_cuda_rng_state", _get_rng_state),
                              ("_set_cuda_rng_state", _set_rng_state)):
        if not hasattr(mcore_random, name):  # renamed upstream: fail here, not in a tracker fork
            raise RuntimeError(f"megatron.core.tensor_parallel.random.{name} is gone in this "
                               "megatron-core; megavid's CPU bridge needs updating for it")
        setattr(mcore_random, name, replacement)


def install() -> bool:
    """Install the bridge once per process; returns False when CUDA exists."""
    global _installed
    if torch.cuda.is_available():
        return False
    if not _installed:
        _patch_torch_cuda()
        _patch_megatron_rng()
        _CpuDeviceMode().__enter__()  # stays on the mode stack for the process
        _installed = True
    return True


def is_installed() -> bool:
    return _installed


def local_device() -> torch.device:
    """This process's compute device: its GPU (LOCAL_RANK) with CUDA, else the CPU."""
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def pin_memory() -> bool:
    """Whether host batches should be page-locked: only when they go to a GPU."""
    return torch.cuda.is_available()


def collective_device(group=None) -> torch.device:
    """Where a tensor for a collective over ``group`` must live: NCCL reduces on the GPU,
    gloo on the CPU (whether or not this machine has CUDA)."""
    return local_device() if dist.get_backend(group) == "nccl" else torch.device("cpu")
