"""One server per data directory: an exclusive lock on `<data_dir>/server.lock`, held for the
server process's whole life.

A `flock` lock belongs to the open file, so the kernel drops it when the process ends, even on
kill -9, and a restart never finds a stale lock. The descriptor is not inheritable (Python's
default), so a worker left behind by a killed server does not keep the lock either. The file
also says who holds it (pid and address), for the message a second server prints.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

LOCK_FILE = "server.lock"

#: Most of the holder's record read back; the record is one short JSON object.
HOLDER_MAX_BYTES = 4096


class DataDirInUse(Exception):
    """Another process holds the data directory."""

    def __init__(self, data_dir: Path, pid: int | None, address: str | None) -> None:
        self.data_dir = data_dir
        self.pid = pid
        self.address = address
        holder = "another modelbay server"
        if pid is not None:
            holder += f" (pid {pid}" + (f", serving on {address})" if address else ")")
        super().__init__(
            f"the data directory {data_dir} is in use by {holder}; "
            "stop it first or choose another --data-dir"
        )


class DataDirLock:
    """The held lock. It lasts as long as the process (or until `release`)."""

    def __init__(self, data_dir: Path, fd: int) -> None:
        self.data_dir = data_dir
        self._fd = fd

    def record(self, address: str) -> None:
        """Say who holds the data directory, for a second server's message."""
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps({"pid": os.getpid(), "address": address}).encode() + b"\n", 0)

    def release(self) -> None:
        os.close(self._fd)  # closing the only descriptor of the open file drops the lock


def lock_data_dir(data_dir: Path) -> DataDirLock:
    """Take the data directory for this process, creating it if needed; raises `DataDirInUse`
    at once (no waiting) when another process has it."""
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid, address = _holder(fd)
        os.close(fd)
        raise DataDirInUse(data_dir, pid, address) from None
    return DataDirLock(data_dir, fd)


def _holder(fd: int) -> tuple[int | None, str | None]:
    """What the holder recorded; (None, None) if it has not written it yet."""
    try:
        record = json.loads(os.pread(fd, HOLDER_MAX_BYTES, 0))
        return int(record["pid"]), str(record["address"])
    except (ValueError, KeyError, TypeError):
        return None, None
