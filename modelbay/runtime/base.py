"""The `Runtime` interface: start an instance of a version, send it requests, stop it.

The scheduler only ever talks to this interface. Implementations hide how an instance
exists (an OS process for `local`, an actor for `ray`): no pipes, PIDs or actor handles
leak through it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


class InstanceState(enum.StrEnum):
    """Lifecycle of one instance."""

    STARTING = "starting"  # process up, package not yet loaded
    IDLE = "idle"
    BUSY = "busy"
    STOPPED = "stopped"  # stopped on purpose, or died


@dataclass(frozen=True)
class Code:
    """Which built code an instance runs, wherever it is: a runtime whose instances live on other
    machines prepares it there from the archive."""

    revision_id: str
    archive_key: str  # the archive's key in the blob store
    cache_key: str | None = None  # whose package cache its environment is made with (the project's)


@dataclass(frozen=True)
class InstanceSpec:
    """Everything needed to start an instance of a version."""

    version_id: str
    # The unpacked code (holding deployment.py or the handler module) and the interpreter of its
    # environment, prepared on this server; None for a runtime that prepares `code` where it runs.
    package_dir: Path | None
    python: Path | None
    init_context: dict[str, Any]  # passed to Deployment(base_directory, context)
    environment: dict[str, str] = field(default_factory=dict)  # extra env vars for user code
    handler: str | None = None  # "module:function" for handler-style code, else the Deployment class
    deployment_file: str | None = None  # the Deployment class's file, when not deployment.py
    max_log_bytes: int = 1 << 20  # what user code may print during one request
    memory_limit_bytes: int | None = None  # what its heap may grow to (a failed allocation past it)
    code: Code | None = None
    instance_type: str | None = None  # the version's instance type, which a runtime may place by


@dataclass(frozen=True)
class Call:
    """One request sent to an instance."""

    request_id: str
    data: Any  # dict for structured input, str for plain, list for a `requests()` batch
    context: dict[str, Any] = field(default_factory=dict)  # request context (id, request_mode, ...)


@dataclass(frozen=True)
class CallOutcome:
    """What an instance answered. `ok` false means the user code failed the request."""

    ok: bool
    result: Any = None
    error: str | None = None
    logs: str = ""


class Instance(Protocol):
    """An opaque handle; only its id and state are visible."""

    @property
    def id(self) -> str: ...

    @property
    def state(self) -> InstanceState: ...


class RuntimeError_(Exception):
    """Base of the runtime's own errors."""


class InstanceStartFailed(RuntimeError_):
    """Raised by `start` when the package could not be loaded; `logs` says why."""

    def __init__(self, message: str, logs: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.logs = logs


class InstanceLost(RuntimeError_):
    """Raised by `call` when the instance died mid-request; the instance is then stopped."""

    def __init__(self, message: str, logs: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.logs = logs


class CallTimedOut(RuntimeError_):
    """Raised by `call` when the request ran past its timeout; the instance has been killed."""

    def __init__(self, timeout: float, logs: str = "") -> None:
        super().__init__(f"timed out after {timeout:g} s")
        self.timeout = timeout
        self.logs = logs


class CallNotStarted(RuntimeError_):
    """Raised by `call` for a call that waited in an instance behind another and never started:
    the instance ended (the call ahead of it timed out, crashed or was cancelled). It may be sent again."""


class Runtime(Protocol):
    """Starts, calls and stops instances. All methods are coroutines on the server's loop."""

    #: Whether `start` needs the code prepared on this server (`package_dir`, `python`), or
    #: prepares `spec.code` where the instance runs.
    prepares_code: bool

    #: How many calls an instance takes at once: it runs one, the others wait in it (sent ahead, so
    #: the next starts as soon as one ends).
    depth: int

    async def start(self, spec: InstanceSpec) -> Instance:
        """Start an instance and return once its package has loaded.

        Raises `InstanceStartFailed` if the code cannot be loaded or the instance exits.
        """
        ...

    async def call(
        self,
        instance: Instance,
        call: Call,
        timeout: float,
        on_update: Callable[[str], None] | None = None,
        on_start: Callable[[], None] | None = None,
    ) -> CallOutcome:
        """Run one request on an instance that has fewer than `depth` calls, and return its outcome.

        `on_update` receives each partial result the code streams; `on_start` is told when the call
        starts running (at once, unless it waits in the instance behind others). Raises `CallTimedOut` (the
        instance is killed if the call was running; one that waited behind others is withdrawn),
        `InstanceLost` (it died; then it is stopped) or `CallNotStarted`.
        """
        ...

    async def stop(self, instance: Instance) -> None:
        """Stop an instance (killing it if it does not exit quickly). Idempotent."""
        ...

    async def healthy(self, instance: Instance) -> bool:
        """Whether the instance is alive and can take requests."""
        ...

    async def close(self) -> None:
        """Stop every instance this runtime started."""
        ...
