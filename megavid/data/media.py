"""Where a clip's bytes live: a file on disk, or a member of an uncompressed tar shard.

Decoders take either a ``Path`` or a ``TarMember``. A member is addressed by its
byte offset inside the shard (found once when the shard is listed), so reading
it is one seek and one read, with no tar parsing in the decoding workers.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TarMember:
    shard: Path
    name: str  # member name, e.g. "00000012.webm"
    offset: int  # byte offset of the member's data inside the shard
    size: int  # bytes

    def __str__(self) -> str:  # how logs and caches name it
        return f"{self.shard}/{self.name}"

    @property
    def suffix(self) -> str:
        return Path(self.name).suffix


Media = Path | TarMember


def media_size(media: Media) -> int:
    return media.size if isinstance(media, TarMember) else Path(media).stat().st_size


def read_media(media: Media) -> bytes:
    """The encoded file's bytes (DALI decodes from memory)."""
    if isinstance(media, TarMember):
        with open(media.shard, "rb") as f:
            f.seek(media.offset)
            return f.read(media.size)
    return Path(media).read_bytes()


def open_media(media: Media) -> str | io.BytesIO:
    """What ``av.open`` takes: a path, or the member's bytes in memory."""
    return io.BytesIO(read_media(media)) if isinstance(media, TarMember) else str(media)
