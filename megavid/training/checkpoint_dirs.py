"""Which checkpoints on disk are complete, and how a save becomes one atomically.

Layout of a save directory::

    DIR/iter_0000100/          a complete checkpoint: dist_checkpointing files + manifest
    DIR/iter_0000200.partial/  a save in progress (or one a crash interrupted)
    DIR/latest                 "iter_0000100": only ever names a complete checkpoint

A save writes into ``*.partial``; once every rank has written, rank 0 records a
manifest (every file with its size), renames the directory (atomic on POSIX)
and then replaces ``latest`` (write + ``os.replace``, also atomic). A crash at
any point therefore leaves the previous checkpoint and ``latest`` untouched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

MANIFEST = "megavid_manifest.json"
LATEST = "latest"
_ITER = re.compile(r"^iter_(\d{7})$")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; the message says which and why."""


def iter_name(step: int) -> str:
    return f"iter_{step:07d}"


def partial_dir(root: Path, step: int) -> Path:
    return Path(root) / f"{iter_name(step)}.partial"


def write_manifest(directory: Path, step: int) -> None:
    files = {
        str(path.relative_to(directory)): path.stat().st_size
        for path in sorted(Path(directory).rglob("*")) if path.is_file() and path.name != MANIFEST
    }
    tmp = Path(directory) / f"{MANIFEST}.tmp"
    tmp.write_text(json.dumps({"step": step, "files": files}, indent=1))
    os.replace(tmp, Path(directory) / MANIFEST)


def commit(root: Path, step: int) -> Path:
    """Turn ``iter_N.partial`` into ``iter_N`` and point ``latest`` at it (rank 0 only)."""
    root = Path(root)
    src, dst = partial_dir(root, step), root / iter_name(step)
    write_manifest(src, step)
    if dst.exists():  # a re-save of the same step (e.g. after a resume): replace it
        shutil.rmtree(dst)
    os.replace(src, dst)
    tmp = root / f"{LATEST}.tmp"
    tmp.write_text(iter_name(step) + "\n")
    os.replace(tmp, root / LATEST)
    return dst


def verify(directory: Path) -> int:
    """Return the checkpoint's step, or raise naming what is missing or damaged."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such checkpoint directory")
    if not manifest_path.is_file():
        raise CheckpointError(
            f"{directory}: {MANIFEST} is missing, so the save never completed"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{manifest_path}: unreadable ({err})") from None
    problems = []
    for name, size in manifest["files"].items():
        path = directory / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != size:
            problems.append(f"{name} has {path.stat().st_size} bytes, expected {size}")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise CheckpointError(f"{directory}: damaged checkpoint: {shown}")
    return int(manifest["step"])


def complete_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, newest first (unverified beyond the name)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _ITER.match(p.name)]
    return sorted(found, key=lambda p: p.name, reverse=True)


def holds_checkpoint(root: Path) -> bool:
    """Whether a save root has anything to resume from (``latest`` or a complete iter_*)."""
    return (Path(root) / LATEST).is_file() or bool(complete_checkpoints(root))


def resolve_load_dir(path: str | Path, *, fallback: bool) -> tuple[Path, list[str]]:
    """The checkpoint to load from a save root (via ``latest``) or an ``iter_*`` directory.

    Returns the directory and the notes on what was skipped. With ``fallback``,
    a damaged newest checkpoint gives way to the newest complete older one.
    """
    path = Path(path)
    if _ITER.match(path.name):
        verify(path)
        return path, []
    latest = path / LATEST
    if not latest.is_file():
        raise CheckpointError(f"--load {path}: no '{LATEST}' file: nothing was ever saved there "
                              "(a series that resumes itself gives the same DIR to --save and "
                              "--load: its first job starts from scratch)")
    candidates = [path / latest.read_text().strip()]
    if fallback:
        candidates += [p for p in complete_checkpoints(path) if p != candidates[0]]
    notes = []
    for candidate in candidates:
        try:
            verify(candidate)
            return candidate, notes
        except CheckpointError as err:
            if not fallback:
                raise
            notes.append(str(err))
    raise CheckpointError(f"--load {path}: no complete checkpoint: " + " | ".join(notes))


def prune(root: Path, keep_last: int) -> list[Path]:
    """Delete complete checkpoints beyond the newest ``keep_last``."""
    root = Path(root)
    removed = []
    for old in complete_checkpoints(root)[keep_last:]:
        shutil.rmtree(old, ignore_errors=True)
        removed.append(old)
    return removed


def clean_partials(root: Path) -> None:
    """Remove ``*.partial`` leftovers of interrupted saves (call before a new save starts)."""
    for stale in Path(root).glob("iter_*.partial"):
        shutil.rmtree(stale, ignore_errors=True)
