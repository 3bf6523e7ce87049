"""Code prepared on the machine an instance runs on, when that is not a server's (the `ray`
runtime's nodes): the archive unpacked and its environment made or reused under a directory of
that machine, with the same `Builder` a server prepares code with.

Several instances' processes of one machine share the directory, so one preparation runs at a
time per directory (a file lock); the second finds the first one's work done.
"""

from __future__ import annotations

import fcntl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from modelbay.core.builds import Builder
from modelbay.runtime.base import Code, InstanceStartFailed
from modelbay.runtime.sandbox import from_settings as sandbox_from_settings


@dataclass(frozen=True)
class NodePackages:
    """Where and how a machine prepares code: sent to each instance's process there (picklable)."""

    root: Path  # on the instance's machine
    sandbox: str  # the sandbox kind builds run in: "bwrap" or "none"
    memory_limit_bytes: int | None = None

    def ready(self, code: Code) -> bool:
        """Whether the archive is unpacked here already (its environment is then at most a reuse away)."""
        return (self.root / "builds" / "packages" / code.revision_id).is_dir()

    def prepare(self, code: Code, handler: str | None, deployment_file: str | None,
                archive: Callable[[], bytes]) -> tuple[Path, Path]:
        """The package dir and python of `code` on this machine (`handler` and `deployment_file` as
        in `InstanceSpec`). `archive` gives the archive's bytes when they are needed. Blocking;
        raises `InstanceStartFailed` when the code cannot be prepared."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "prepare.lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            # Made under the lock: a new Builder empties the scratch of builds under way.
            builder = Builder(self.root / "builds", sandbox_from_settings(self.sandbox, check=False),
                              uv_cache_dir=self.root / "uv-cache", memory_limit_bytes=self.memory_limit_bytes)
            path = self.root / "archives" / code.revision_id
            if not self.ready(code):
                path.parent.mkdir(exist_ok=True)
                path.write_bytes(archive())
            try:
                result = builder.prepare(path, code.revision_id, handler=handler, cache_key=code.cache_key,
                                         deployment_file=deployment_file)
            finally:
                path.unlink(missing_ok=True)  # unpacked, or failed: the archive is not needed again
        if not result.ok or result.package_dir is None or result.python is None:
            why = (result.log.strip().splitlines() or ["no log"])[-1]
            raise InstanceStartFailed(f"The code of revision {code.revision_id} could not be prepared on the "
                                      f"instance's node: {why}", result.log)
        return result.package_dir, result.python
