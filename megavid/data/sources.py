"""Dataset sources behind ``data.path``: a folder, a manifest, or prepared tar shards.

Every source becomes the same thing, an ordered list of ``Clip``s, so the
sample stream (positions -> permutation -> clip) and its resume semantics do not
depend on where the bytes live. Detection is by what ``data.path`` is:

* ``*.jsonl`` / ``*.csv``: a manifest, one clip a line: ``path`` (relative to the
  manifest's folder unless absolute), optional ``start``/``end`` seconds and ``label``;
* a folder holding ``index.json`` or ``*.tar``: shards written by ``megavid.data.prepare``;
* any other folder: every video under it, recursively.

A path a manifest lists, or a shard ``index.json`` lists, that does not exist stops
the run at start-up with the path: a typo must not quietly become a skipped file.
"""

from __future__ import annotations

import csv
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from megavid.config import ConfigError
from megavid.data.media import Media, TarMember

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")
MANIFEST_SUFFIXES = (".jsonl", ".csv")


@dataclass(frozen=True)
class Clip:
    media: Media
    start: Optional[float] = None  # seconds; frames before it are never sampled
    end: Optional[float] = None  # seconds (exclusive)
    label: Optional[str] = None  # carried for fine-tuning; pretraining ignores it


def list_clips(path: str | Path) -> list[Clip]:
    """The clips ``data.path`` names, in a deterministic order."""
    root = Path(path).expanduser()
    if root.suffix.lower() in MANIFEST_SUFFIXES:
        return read_manifest(root)
    if root.is_dir() and ((root / "index.json").is_file() or any(root.glob("*.tar"))):
        return list_shards(root)
    return [Clip(p) for p in list_videos(root)]


def list_videos(folder: str | Path) -> list[Path]:
    """Every video under ``folder`` (recursive), sorted by relative path for determinism."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ConfigError(
            f"data.path (--data): {root} is not a directory, a .jsonl/.csv manifest or a "
            "folder of tar shards; point --data at one, or leave it unset for the demo clips"
        )
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS
                   and p.is_file())
    if not files:
        raise ConfigError(
            f"data.path (--data): no videos ({', '.join(VIDEO_EXTENSIONS)}) found under {root} "
            "(searched recursively); point --data at a folder of videos, or leave it unset "
            "to train on the demo clips"
        )
    return files


def read_manifest(manifest: Path) -> list[Clip]:
    """Clips listed in a JSONL or CSV manifest, in file order."""
    if not manifest.is_file():
        raise ConfigError(f"data.path (--data): manifest {manifest} does not exist")
    if manifest.suffix.lower() == ".csv":
        with open(manifest, newline="") as f:
            rows = list(csv.DictReader(f))
    else:
        lines = manifest.read_text().splitlines()
        rows = [json.loads(line) for line in lines if line.strip()]
    clips = [_manifest_clip(manifest, n, row) for n, row in enumerate(rows, 1)]
    if not clips:
        raise ConfigError(f"data.path (--data): manifest {manifest} lists no clips")
    _check_exist(manifest, [(n, c.media) for n, c in enumerate(clips, 1)])
    return clips


def _check_exist(listing: Path, entries: list[tuple[int, Path]]) -> None:
    """ConfigError naming the first missing files (entry numbers are 1-based)."""
    missing = [(n, path) for n, path in entries if not os.path.isfile(path)]
    if missing:
        shown = "; ".join(f"entry {n}: {path}" for n, path in missing[:5])
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise ConfigError(f"data.path (--data): {listing} lists {len(missing)} file(s) that do "
                          f"not exist: {shown}{more}")


def _manifest_clip(manifest: Path, line: int, row: dict) -> Clip:
    if not row.get("path"):
        raise ConfigError(f"data.path (--data): {manifest} entry {line} has no 'path'; each "
                          "entry needs path and may have start, end (seconds) and label")
    number = lambda v: None if v in (None, "") else float(v)  # noqa: E731 (CSV gives "")
    start, end = number(row.get("start")), number(row.get("end"))
    if start is not None and end is not None and end <= start:
        raise ConfigError(f"data.path (--data): {manifest} entry {line}: end {end} <= start "
                          f"{start}")
    media = Path(row["path"]).expanduser()
    label = row.get("label")
    return Clip(media if media.is_absolute() else manifest.parent / media, start, end,
                None if label in (None, "") else str(label))


def list_shards(folder: Path) -> list[Clip]:
    """The videos inside ``shard-*.tar`` files (webdataset layout), shard by shard: those
    ``index.json`` lists when there is one, else every ``*.tar`` in the folder."""
    index = folder / "index.json"
    if index.is_file():
        listed = [s["name"] for s in json.loads(index.read_text()).get("shards", [])]
        shards = [folder / name for name in listed]
        _check_exist(index, list(enumerate(shards, 1)))
    else:
        shards = sorted(folder.glob("*.tar"))
    if not shards:
        raise ConfigError(f"data.path (--data): {folder} has an index.json but no *.tar shards; "
                          "re-run `python -m megavid.data.prepare`")
    clips = []
    for shard in shards:
        with tarfile.open(shard, mode="r:") as tar:  # uncompressed only: members are seekable
            clips += [Clip(TarMember(shard, m.name, m.offset_data, m.size)) for m in tar
                      if m.isfile() and Path(m.name).suffix.lower() in VIDEO_EXTENSIONS]
    if not clips:
        raise ConfigError(f"data.path (--data): no videos inside the shards in {folder}")
    return clips


def label_ids(clips: list[Clip]) -> tuple[np.ndarray, list[str]]:
    """(N,) int64 class ids of the clips' labels, and the names of string labels.

    Labels that are all integers are used as they are; otherwise each distinct label
    is numbered in sorted order (``names[id]`` is its label). No label -> -1.
    """
    present = sorted({c.label for c in clips if c.label is not None})
    try:
        ids = {label: int(label) for label in present}
        names: list[str] = []
    except ValueError:
        ids = {label: k for k, label in enumerate(present)}
        names = present
    return np.array([-1 if c.label is None else ids[c.label] for c in clips],
                    dtype=np.int64), names
