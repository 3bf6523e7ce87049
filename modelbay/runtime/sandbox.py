"""Sandboxes for user code: every instance and every build step runs inside one.

`Bubblewrap` (the `bwrap` of Flatpak) gives each process tree its own mount, PID, IPC and UTS
namespaces: it sees the system's programs and libraries, the paths it is given (read-only unless
asked otherwise) and a private scratch directory at `/tmp`, nothing else of the host; everything
it starts dies with it; it runs as an unprivileged user with no capabilities, and with a memory
limit. `NoSandbox` runs the same commands on the host with only the memory limit: for machines
without bubblewrap, chosen explicitly and documented as unsafe.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

#: The unprivileged user (and group) sandboxed code runs as: `nobody` on Debian and most systems.
SANDBOX_UID = 65534

#: Host paths every sandbox sees read-only: programs, libraries and the little of /etc that name
#: resolution, TLS and locale need. Missing ones are skipped.
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC_ENTRIES = (
    "alternatives", "ca-certificates", "ssl", "pki", "ld.so.cache", "ld.so.conf", "ld.so.conf.d",
    "resolv.conf", "hosts", "host.conf", "nsswitch.conf", "gai.conf", "services", "protocols",
    "passwd", "group", "localtime", "timezone", "mime.types", "os-release",
)

#: Host environment variables passed to sandboxed code: locale, time zone, certificates, proxies.
_PASSED_ENV = (
    "LANG", "LC_ALL", "LC_CTYPE", "TZ", "SSL_CERT_FILE", "SSL_CERT_DIR",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
)


class SandboxUnavailable(Exception):
    """The configured sandbox cannot run on this machine; the message says why and what to do."""


@dataclass(frozen=True)
class Jail:
    """What one sandboxed process tree may see and use."""

    read_only: Sequence[Path] = ()
    writable: Sequence[Path] = ()
    scratch: Path | None = None  # private writable dir, seen as /tmp and $HOME inside
    network: bool = True
    memory_limit_bytes: int | None = None


class Sandbox(Protocol):
    #: whether a process killed by signal N is reported as exit code 128 + N (bwrap's init does so)
    signals_as_exit_codes: bool

    def command(self, argv: Sequence[str], jail: Jail) -> list[str]:
        """The command line that runs `argv` inside `jail`."""
        ...

    def environment(self, jail: Jail, extra: dict[str, str]) -> dict[str, str]:
        """The whole environment of the sandboxed process: nothing of the server's but `_PASSED_ENV`."""
        ...

    def prepare(self, path: Path) -> None:
        """Make a directory the sandbox will write to writable by the sandbox's user."""
        ...


def _limit_memory(argv: Sequence[str], jail: Jail) -> list[str]:
    if jail.memory_limit_bytes is None:
        return list(argv)
    # RLIMIT_DATA (heap and private writable mappings): a failed allocation, not a swapping host.
    limit = jail.memory_limit_bytes
    return ["prlimit", f"--data={limit}:{limit}", "--", *argv]


def _base_environment(home: str, extra: dict[str, str]) -> dict[str, str]:
    env = {name: os.environ[name] for name in _PASSED_ENV if name in os.environ}
    env.setdefault("LANG", "C.UTF-8")
    env.update(
        PATH="/usr/local/bin:/usr/bin:/bin",
        HOME=home,
        TMPDIR=home,
        PYTHONUNBUFFERED="1",
        PYTHONIOENCODING="utf-8",
    )
    env.update(extra)
    return env


class NoSandbox:
    """Runs on the host: no isolation but the memory limit. Unsafe with untrusted code."""

    signals_as_exit_codes = False

    def command(self, argv: Sequence[str], jail: Jail) -> list[str]:
        return _limit_memory(argv, jail)

    def environment(self, jail: Jail, extra: dict[str, str]) -> dict[str, str]:
        home = str(jail.scratch) if jail.scratch is not None else os.environ.get("HOME", "/tmp")
        return _base_environment(home, extra)

    def prepare(self, path: Path) -> None:
        pass


class Bubblewrap:
    """Runs every command in a fresh bubblewrap sandbox (see the module's docstring)."""

    signals_as_exit_codes = True

    def __init__(self, bwrap: str = "bwrap") -> None:
        found = shutil.which(bwrap)
        if found is None:
            raise SandboxUnavailable(
                "bubblewrap (bwrap) is not installed: install it (Debian: apt-get install bubblewrap), "
                "or set MODELBAY_SANDBOX=none to run user code unsandboxed (unsafe)."
            )
        self._bwrap = found
        # As root, bwrap sets up the namespaces with root's rights and the command then drops to
        # the sandbox user; otherwise an unprivileged user namespace maps the server's user to it.
        self._as_root = os.geteuid() == 0
        self._system = _system_binds()

    def command(self, argv: Sequence[str], jail: Jail) -> list[str]:
        args = [self._bwrap, "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-ipc",
                "--unshare-uts", "--unshare-cgroup-try"]
        if not jail.network:
            args.append("--unshare-net")
        if self._as_root:
            args += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        else:
            args += ["--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--cap-drop", "ALL"]
        args += ["--proc", "/proc", "--dev", "/dev", *self._system]
        # /tmp first: a path given below may lie under the host's /tmp, and must not be hidden.
        if jail.scratch is not None:
            args += ["--bind", str(jail.scratch), "/tmp"]
        else:
            args += ["--size", str(64 << 20), "--tmpfs", "/tmp"]
        made: set[str] = {"/", "/proc", "/dev", "/tmp"}
        for path in jail.read_only:
            args += _mkdirs(Path(path).parent, made) + ["--ro-bind", str(path), str(path)]
        for path in jail.writable:
            args += _mkdirs(Path(path).parent, made) + ["--bind", str(path), str(path)]
        args.append("--")  # the working directory is the caller's (bwrap keeps it when it is bound)
        if self._as_root:
            args += ["setpriv", f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}", "--clear-groups",
                     "--inh-caps=-all", "--bounding-set=-all", "--"]
        return args + _limit_memory(argv, jail)

    def environment(self, jail: Jail, extra: dict[str, str]) -> dict[str, str]:
        return _base_environment("/tmp", extra)

    def prepare(self, path: Path) -> None:
        if self._as_root:
            os.chown(path, SANDBOX_UID, SANDBOX_UID)

    def check(self) -> None:
        """Run one command in a sandbox: raise `SandboxUnavailable` saying why it cannot."""
        argv = self.command(["true"], Jail())
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=self.environment(Jail(), {}))
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SandboxUnavailable(f"bubblewrap could not be run: {exc}") from exc
        if done.returncode != 0:
            why = (done.stderr or done.stdout).strip() or f"exit code {done.returncode}"
            raise SandboxUnavailable(
                f"bubblewrap cannot create a sandbox here ({why}); allow user namespaces "
                "(kernel.unprivileged_userns_clone=1) or set MODELBAY_SANDBOX=none (unsafe)."
            )


def _system_binds() -> list[str]:
    args: list[str] = []
    for name in _SYSTEM_DIRS:
        if os.path.islink(name):  # merged /usr: /bin -> usr/bin
            args += ["--symlink", os.readlink(name), name]
        elif os.path.isdir(name):
            args += ["--ro-bind", name, name]
    args += ["--dir", "/etc"]
    for entry in _ETC_ENTRIES:
        path = f"/etc/{entry}"
        if os.path.lexists(path):
            args += ["--ro-bind-try", path, path]
    return args


def _mkdirs(directory: Path, made: set[str]) -> list[str]:
    """`--dir` for each missing ancestor, world-traversable (bwrap would make them 0700)."""
    args: list[str] = []
    for parent in [*reversed(directory.parents), directory]:
        name = str(parent)
        if name in made or any(name == d or name.startswith(d + "/") for d in _SYSTEM_DIRS):
            continue
        made.add(name)
        args += ["--perms", "0755", "--dir", name]
    return args


def interpreter_paths(python: Path) -> list[Path]:
    """The directories an interpreter needs: its environment and its base installation.

    Read from the files, never by running the interpreter (an environment's `.pth` files are
    user code).
    """
    python = Path(python).absolute()
    env = python.parent.parent
    paths = [env]
    config = env / "pyvenv.cfg"
    if config.is_file():
        for line in config.read_text(errors="replace").splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "home" and value.strip():
                paths.append(Path(value.strip()).resolve().parent)
    paths.append(python.resolve().parent.parent)
    return _outermost(paths)


def _outermost(paths: Iterable[Path]) -> list[Path]:
    """The paths without those inside another one or inside the system's directories."""
    unique = sorted({Path(p) for p in paths}, key=lambda p: len(p.parts))
    kept: list[Path] = []
    for path in unique:
        if any(path.is_relative_to(k) for k in kept) or any(path.is_relative_to(d) for d in _SYSTEM_DIRS):
            continue
        kept.append(path)
    return kept


def from_settings(kind: str, check: bool = True) -> Sandbox:
    """The sandbox a server runs with; raises `SandboxUnavailable` when it cannot work here."""
    if kind == "none":
        return NoSandbox()
    sandbox = Bubblewrap()
    if check:
        sandbox.check()
    return sandbox
