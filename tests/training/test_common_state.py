"""The common state of both checkpoint formats reads on the installed megatron-core, and a
pickled object hidden in either is refused, not executed."""

from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from megavid.training.checkpoint_dirs import CheckpointError
from megavid.training.common_state import read_common, weights_only_loads

MARKER = Path("/tmp/megavid-common-state-pwned")


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


class _RawBytesPlanner(dcp.DefaultSavePlanner):
    """Writes byte items as they are, as megatron-core's save planner does."""

    def transform_object(self, write_item, object):
        if isinstance(object, io.BytesIO):
            return object
        return super().transform_object(write_item, object)


def write_new_format(directory: Path, payload: bytes) -> Path:
    """A checkpoint as megatron-core 0.17+ writes it: the common state is the
    ``common_state`` object (``torch.save([state])`` bytes) inside the torch_dist files."""
    directory.mkdir()
    dcp.save({"common_state/shard_0_1": io.BytesIO(payload)}, planner=_RawBytesPlanner(),
             storage_writer=dcp.FileSystemWriter(str(directory)), no_dist=True)
    (directory / "metadata.json").write_text(
        json.dumps({"sharded_backend": "torch_dist", "sharded_backend_version": 1}))
    return directory


def write_legacy_format(directory: Path, payload: bytes) -> Path:
    """A checkpoint as megatron-core 0.16 writes it: ``common.pt`` beside the torch_dist files."""
    directory.mkdir()
    dcp.save({"x": torch.zeros(1)}, storage_writer=dcp.FileSystemWriter(str(directory)),
             no_dist=True)
    (directory / "common.pt").write_bytes(payload)
    (directory / "metadata.json").write_text(json.dumps(
        {"sharded_backend": "torch_dist", "sharded_backend_version": 1, "common_backend": "torch",
         "common_backend_version": 1}))
    return directory


def serialised(obj, *, listed: bool) -> bytes:
    buffer = io.BytesIO()
    torch.save([obj] if listed else obj, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["new", "legacy"])
def test_both_formats_read(tmp_path, fmt):
    state = {"common": {"step": 7, "config": {"model": {"preset": "tiny"}}}}
    write = write_new_format if fmt == "new" else write_legacy_format
    ckpt = write(tmp_path / "ckpt", serialised(state, listed=fmt == "new"))
    assert read_common(ckpt) == state["common"]


@pytest.mark.parametrize("fmt", ["new", "legacy"])
def test_pickled_objects_are_refused_in_both_formats(tmp_path, fmt):
    MARKER.unlink(missing_ok=True)
    payload = serialised({"common": _Exploit()}, listed=fmt == "new")
    write = write_new_format if fmt == "new" else write_legacy_format
    ckpt = write(tmp_path / "ckpt", payload)
    with pytest.raises(CheckpointError, match="holds objects that are not plain data"):
        read_common(ckpt)
    assert not MARKER.exists()


def test_weights_only_loads_restores_the_environment(monkeypatch):
    monkeypatch.delenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", raising=False)
    with weights_only_loads():
        with pytest.raises(pickle.UnpicklingError):
            torch.load(io.BytesIO(pickle.dumps(_Exploit(), protocol=2)), weights_only=False)
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ
    assert not MARKER.exists()
