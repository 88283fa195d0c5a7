"""A checkpoint's common (non-sharded) state, on every megatron-core of the supported range.

megatron-core 0.16 saves the common state to ``common.pt`` and reads only that file;
0.17+ saves it as the ``common_state`` object inside the torch_dist files and still
reads an older ``common.pt`` itself. So 0.19 resumes 0.16's checkpoints as they are,
and 0.16 is taught the newer place here: ``load_kwargs()`` hands its
``dist_checkpointing.load`` a common-state reader that looks there when a checkpoint
has no ``common.pt``. Every megavid checkpoint thus loads under every supported
version, whichever wrote it (a container upgrade or downgrade mid-project).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import os
import pickle
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.mapping import ShardedObject
from torch.distributed.checkpoint.api import CheckpointException as DCPException

from megavid.config import ARCH_FIELDS
from megavid.training.checkpoint_dirs import CheckpointError, resolve_load_dir

COMMON_PT = "common.pt"
COMMON_STATE_KEY = "common_state"  # the object 0.17+ stores the common state in
_FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"

# 0.16's load() takes the common-state reader as an argument; 0.17+ has none to take
_TAKES_COMMON_STRATEGY = "common_strategy" in inspect.signature(dist_checkpointing.load).parameters


@contextlib.contextmanager
def weights_only_loads():
    """Every ``torch.load`` inside refuses pickled objects (plain data and tensors only).

    torch.distributed.checkpoint deserialises byte items, which is how megatron-core
    stores sharded objects (RNG states; 0.17+'s common state), with
    ``torch.load(weights_only=False)``; torch's ``TORCH_FORCE_WEIGHTS_ONLY_LOAD``,
    read at every call, overrides that.
    """
    saved = os.environ.get(_FORCE_WEIGHTS_ONLY)
    os.environ[_FORCE_WEIGHTS_ONLY] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(_FORCE_WEIGHTS_ONLY, None)
        else:
            os.environ[_FORCE_WEIGHTS_ONLY] = saved


def _read_common_state_object(directory: Path) -> dict:
    """The ``common_state`` object of a 0.17+ checkpoint, read in this process.

    Sharded objects are stored as ``torch.save([data])`` bytes under their unique key;
    torch's loader hands them back deserialised (or as bytes, as 0.19's reader allows).
    """
    key = ShardedObject(COMMON_STATE_KEY, None, (1,), (0,)).unique_key
    target = {key: io.BytesIO()}
    dcp.load(target, storage_reader=dcp.FileSystemReader(str(directory)), no_dist=True)
    loaded = target[key]
    if isinstance(loaded, io.BytesIO):
        loaded.seek(0)
        loaded = torch.load(loaded, weights_only=True)
    return loaded[0]


if _TAKES_COMMON_STRATEGY:
    from megatron.core.dist_checkpointing.strategies.common import (
        TorchCommonLoadStrategy,
    )

    class _CommonStateReader(TorchCommonLoadStrategy):
        """0.16's reader of ``common.pt``, falling back to 0.17+'s ``common_state`` object."""

        def load_common(self, checkpoint_dir):
            if (Path(checkpoint_dir) / COMMON_PT).exists():
                return super().load_common(checkpoint_dir)
            return _read_common_state_object(Path(checkpoint_dir))


def load_kwargs() -> dict:
    """Extra ``dist_checkpointing.load`` arguments that let it read either version's files."""
    return {"common_strategy": _CommonStateReader()} if _TAKES_COMMON_STRATEGY else {}


def read_common(directory: Path) -> dict:
    """The megavid part (``common``) of a checkpoint's common state, refusing anything but
    plain data; in one process, without a process group."""
    try:
        with weights_only_loads():
            state = _load_common_state(str(directory))
    except (pickle.UnpicklingError, DCPException) as err:
        reason = _unpickling_error(err)
        if reason is None:
            raise
        where = COMMON_PT if (Path(directory) / COMMON_PT).exists() else "common state"
        raise CheckpointError(
            f"{directory}/{where} holds objects that are not plain data; refusing to "
            f"unpickle them ({reason})") from None
    return state["common"]


def _load_common_state(directory: str) -> dict:
    if _TAKES_COMMON_STRATEGY:
        return _CommonStateReader().load_common(directory)
    return dist_checkpointing.load_common_state_dict(directory)


def rank_failures(err: Exception) -> list[BaseException]:
    """The exceptions inside torch.distributed.checkpoint's ``CheckpointException``, which
    keeps an (exception, traceback) pair per failed rank; ``[err]`` for any other error."""
    failures = getattr(err, "failures", None)
    if not failures:
        return [err]
    return [f[0] if isinstance(f, tuple) else getattr(f, "exc", f) for f in failures.values()]


def _unpickling_error(err: Exception) -> str | None:
    """The first line of the weights-only refusal inside ``err``, or None when it is not one."""
    for cause in [err, *rank_failures(err)]:
        if isinstance(cause, pickle.UnpicklingError):
            return str(cause).splitlines()[0]
    return None


def saved_arch(load: str | Path) -> dict:
    """The architecture fields (ARCH_FIELDS) a checkpoint was saved with; {} if unreadable.

    ``load`` is what --load takes (a save root with ``latest``, or an ``iter_*``
    directory); ``load_config(saved_model=saved_arch)`` restores them. Errors are
    left to the trainer's load, which names them properly.
    """
    try:
        directory, _ = resolve_load_dir(load, fallback=True)
        model = read_common(directory)["config"]["model"]
    except Exception:  # missing, damaged or foreign: the trainer's load names the problem
        return {}
    return {key: model[key] for key in ARCH_FIELDS if key in model}
