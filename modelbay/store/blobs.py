"""Large objects (uploaded packages, datasets) kept outside the database."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import BinaryIO, Protocol

_KEY = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


class BlobStore(Protocol):
    def put(self, key: str, source: BinaryIO) -> int: ...
    def path(self, key: str) -> Path: ...
    def delete(self, key: str) -> None: ...


class LocalBlobStore:
    """Blobs as files under one directory. Keys are relative paths we choose, never user text."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        if not _KEY.match(key) or ".." in key.split("/"):
            raise ValueError(f"bad blob key {key!r}")
        return self.root / key

    def put(self, key: str, source: BinaryIO) -> int:
        """Store a stream under `key` (atomically: a reader never sees half a file); returns its size."""
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".part")
        with open(tmp, "wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
            size = out.tell()
        os.replace(tmp, target)
        return size

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)
