"""The builder: turns an uploaded code archive into a package directory and a Python environment.

Both are this node's: one node builds a revision (`Revisions`), every other node that runs it
prepares its own copy from the same archive (`prepare`), in its own `root`.

A build unpacks the archive into `root/packages/<build_id>/`, finds the directory holding
`deployment.py` (or the handler's module), gets a virtualenv for its requirements.txt from
`root/envs/<hash>/` (creating it with uv when missing) and imports the code once in that
environment to catch errors before any instance is started. Installing requirements and the
import check run the user's code (and that of the packages it names), so both run in the
sandbox instances run in: they see the package, the environment being made, the package cache
and a scratch directory, nothing else of the data directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

import uv

from modelbay.runtime.sandbox import Jail, Sandbox, interpreter_paths

MAX_UNPACKED_BYTES = 2 << 30  # 2 GiB: defuses zip bombs
MAX_MEMBERS = 100_000  # so does this, for archives of millions of empty files
IMPORT_CHECK_TIMEOUT_S = 120.0
LOG_STEP_MAX_CHARS = 100_000  # of one step's output kept in the build log
DEFAULT_MODULE = "deployment"
#: The UbiOps variable naming the file of `class Deployment` (`ubiops deployments deploy --deployment_file`).
DEPLOYMENT_FILE_VARIABLE = "SYS_DEPLOYMENT_FILE_NAME"
NOT_AN_ARCHIVE = "The uploaded file is not a valid zip or tar.gz archive"
_RESULT_MARKER = "__modelbay_build_check__"
_BUILD_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# Requirement lines that point at files in the package: their env cannot be shared by content.
_LOCAL_REQUIREMENT = re.compile(r"^(-r|-c|-e|--requirement|--constraint|--editable|\.|/)|file:")


@dataclass(frozen=True)
class BuildResult:
    ok: bool
    log: str  # the build log (what a user reads when the build fails: the tail says why)
    package_dir: Path | None  # the unpacked code: the directory holding deployment.py
    python: Path | None  # the interpreter of the environment to run it with
    has_request_method: bool = False
    has_requests_method: bool = False


class BuildFailed(Exception):
    """A build step failed because of the user's package; the message ends the log."""


# Runs inside the built environment: argv = package_dir, module, function ("" for a Deployment class).
_CHECK_SCRIPT = f"""
import json, os, sys
pkg, module, func = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path[:0] = [pkg, os.path.join(pkg, "libraries")]
__import__(module)  # not importlib.import_module: its frames would clutter the traceback
mod = sys.modules[module]
if func:
    if not callable(getattr(mod, func, None)):
        sys.exit(f"{{module}}.py has no function {{func!r}}")
    found = {{"request": False, "requests": False}}
else:
    cls = getattr(mod, "Deployment", None)
    if not isinstance(cls, type):
        sys.exit(f"{{module}}.py has no class 'Deployment'")
    found = {{m: callable(getattr(cls, m, None)) for m in ("request", "requests")}}
    if not (found["request"] or found["requests"]):
        print("Warning: class 'Deployment' has neither a request() nor a requests() method")
sys.stdout.flush()
print("\\n{_RESULT_MARKER}" + json.dumps(found), flush=True)
"""


def normalise_requirements(text: str) -> list[str]:
    """requirements.txt lines without comments, blanks and order: what decides the environment."""
    lines = (re.sub(r"(^|\s)#.*$", "", line).strip() for line in text.splitlines())
    return sorted(line for line in lines if line)


class Builder:
    def __init__(
        self,
        root: Path,
        sandbox: Sandbox,
        *,
        uv_cache_dir: Path | None = None,
        build_timeout_s: float = 1800.0,
        memory_limit_bytes: int | None = None,
    ) -> None:
        self.root = Path(root).absolute()
        self.packages = self.root / "packages"
        self.envs = self.root / "envs"
        self.scratch = self.root / "scratch"
        # The builds' own cache by default: the sandbox's user must be able to write to it.
        self.uv_cache_dir = Path(uv_cache_dir or self.root / "uv-cache").absolute()
        self.build_timeout_s = build_timeout_s
        self._sandbox = sandbox
        self._memory_limit_bytes = memory_limit_bytes
        shutil.rmtree(self.scratch, ignore_errors=True)  # what builds of a killed server left
        self._uv = uv.find_uv_bin()
        self._base_python = Path(getattr(sys, "_base_executable", sys.executable))
        if not self.uv_cache_dir.exists():
            self.uv_cache_dir.mkdir(parents=True)
            sandbox.prepare(self.uv_cache_dir)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def build(
        self, archive: Path, build_id: str, *, handler: str | None = None, deployment_file: str | None = None,
        cache_key: str | None = None,
    ) -> BuildResult:
        """Blocking; the server runs it in a worker thread. Never raises for bad user input: returns ok=False with a log.

        `deployment_file` names the file of a `class Deployment` (no handler) when it is not
        deployment.py. Builds with the same `cache_key` share a package cache (builds can write to it).
        """
        if not _BUILD_ID.match(build_id):
            raise ValueError(f"invalid build id {build_id!r}")  # a server bug, not a user error
        log: list[str] = []
        target = self.packages / build_id
        scratch = self.scratch / build_id
        try:
            module, func = _parse_handler(handler, deployment_file)
            log.append("Unpacking the deployment package...")
            self._unpack(Path(archive), target)
            package_dir = _find_code_root(target, module)
            log.append(f"Found {_module_file(module)} in {package_dir.relative_to(target).as_posix() or '.'}")
            self._make_scratch(scratch)
            cache = self._cache(cache_key)
            python = self._environment(package_dir, build_id, scratch, cache, log)
            log.append(f"Checking {_module_file(module)}...")
            found = self._check_import(python, package_dir, module, func, scratch, log)
        except BuildFailed as e:
            shutil.rmtree(target, ignore_errors=True)
            log.append(f"Build failed: {e}")
            return BuildResult(ok=False, log="\n".join(log) + "\n", package_dir=None, python=None)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        log.append("Build succeeded")
        return BuildResult(
            ok=True,
            log="\n".join(log) + "\n",
            package_dir=package_dir,
            python=python,
            has_request_method=found["request"],
            has_requests_method=found["requests"],
        )

    def prepare(
        self, archive: Path, build_id: str, *, handler: str | None = None, deployment_file: str | None = None,
        cache_key: str | None = None,
    ) -> BuildResult:
        """This node's copy of code a build (here or on another node) succeeded with: the package
        unpacked and the environment of its requirements made, each unless it is here already; no
        import check (the build ran it). Blocking; returns ok=False with a log when it fails here.
        A module not found (the deployment file changed since the build, or is not known here)
        leaves the package's own root: the instance's start says what is missing."""
        if not _BUILD_ID.match(build_id):
            raise ValueError(f"invalid build id {build_id!r}")
        log: list[str] = []
        target = self.packages / build_id
        scratch = self.scratch / build_id
        with self._lock(f"prepare:{build_id}"):  # one at a time: the second finds the first's work
            try:
                module, _func = _parse_handler(handler, deployment_file)
                if not target.is_dir():  # unpacking ends with a rename: a folder there is whole
                    self._unpack(Path(archive), target)
                try:
                    package_dir = _find_code_root(target, module)
                except BuildFailed:
                    package_dir = _unwrapped(target)
                self._make_scratch(scratch)
                python = self._environment(package_dir, build_id, scratch, self._cache(cache_key), log)
            except BuildFailed as e:
                log.append(f"Preparing the code failed: {e}")
                return BuildResult(ok=False, log="\n".join(log) + "\n", package_dir=None, python=None)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        return BuildResult(ok=True, log="\n".join(log) + "\n", package_dir=package_dir, python=python)

    def discard_packages(self, keep: set[str], before: float) -> list[str]:
        """Remove the unpacked code of every build not in `keep` unpacked before `before` (a time);
        returns their ids. Environments stay: builds with the same requirements share them."""
        removed = []
        for path in self.packages.iterdir() if self.packages.is_dir() else []:
            build_id = path.name
            if build_id.startswith(".tmp-") or build_id in keep:
                continue
            with self._lock(f"prepare:{build_id}"), contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime < before:
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(build_id)
        return removed

    # -- unpacking -------------------------------------------------------------------------

    def _unpack(self, archive: Path, target: Path) -> None:
        """Extracts into a fresh temporary dir, then renames it to `target`."""
        self.packages.mkdir(parents=True, exist_ok=True)
        tmp = self.packages / f".tmp-{target.name}-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            if zipfile.is_zipfile(archive):
                _unpack_zip(archive, tmp)
            elif _is_tar(archive):
                _unpack_tar(archive, tmp)
            else:
                raise BuildFailed(NOT_AN_ARCHIVE)
            _make_readable(tmp)
            shutil.rmtree(target, ignore_errors=True)  # a rebuild under the same id replaces it
            tmp.rename(target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    # -- environments ----------------------------------------------------------------------

    def _cache(self, key: str | None) -> Path:
        if key is None:
            return self.uv_cache_dir
        if not _BUILD_ID.match(key):
            raise ValueError(f"invalid cache key {key!r}")  # a server bug, not a user error
        cache = self.uv_cache_dir / key
        if not cache.exists():
            cache.mkdir(parents=True, exist_ok=True)
            self._sandbox.prepare(cache)
        return cache

    def _make_scratch(self, scratch: Path) -> None:
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        self._sandbox.prepare(scratch)

    def _environment(self, package_dir: Path, build_id: str, scratch: Path, cache: Path, log: list[str]) -> Path:
        """The python of the env for this package's requirements.txt, created unless it exists."""
        req_file = package_dir / "requirements.txt"
        req_text = req_file.read_text(errors="replace") if req_file.is_file() else ""
        reqs = normalise_requirements(req_text)
        key = [sys.version, *reqs]
        if any(_LOCAL_REQUIREMENT.search(r) for r in reqs):
            key.append(f"build:{build_id}")  # refers to files in this package: do not share
        env_hash = hashlib.sha256("\n".join(key).encode()).hexdigest()[:32]
        final = self.envs / env_hash
        with self._lock(env_hash):
            if (final / "bin" / "python").exists():
                log.append(f"Reusing environment {env_hash}")
                return final / "bin" / "python"
            log.append(f"Creating environment {env_hash}...")
            self.envs.mkdir(parents=True, exist_ok=True)
            tmp = self.envs / f".tmp-{env_hash}-{uuid.uuid4().hex}"
            deadline = time.monotonic() + self.build_timeout_s
            try:
                tmp.mkdir()
                self._sandbox.prepare(tmp)
                jail = Jail(
                    read_only=[Path(self._uv), *interpreter_paths(self._base_python), package_dir],
                    writable=[tmp, cache],
                    scratch=scratch,
                    memory_limit_bytes=self._memory_limit_bytes,
                )
                # --relocatable: scripts keep working after the rename below.
                venv = ["venv", "--quiet", "--relocatable", "--allow-existing", "--python", str(self._base_python), str(tmp)]
                self._run_uv(venv, jail, cache, package_dir, deadline, log)
                if reqs:
                    log.append("Installing requirements.txt...")
                    install = ["pip", "install", "--python", str(tmp / "bin" / "python"), "-r", str(req_file)]
                    self._run_uv(install, jail, cache, package_dir, deadline, log)
                tmp.rename(final)  # atomic: a half-built env never appears under its hash
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return final / "bin" / "python"

    def _lock(self, env_hash: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(env_hash, threading.Lock())

    def _run_uv(self, args: list[str], jail: Jail, cache: Path, cwd: Path, deadline: float, log: list[str]) -> None:
        # The operator's index settings (UV_INDEX_URL, PIP_INDEX_URL, ...) reach uv; nothing else of ours.
        env = {k: v for k, v in os.environ.items() if k.startswith(("UV_", "PIP_"))}
        env.update(NO_COLOR="1", UV_PYTHON_DOWNLOADS="never", UV_NO_PROGRESS="1", UV_CACHE_DIR=str(cache))
        code, output = _run(
            self._sandbox.command([self._uv, *args], jail),
            cwd=cwd,
            env=self._sandbox.environment(jail, env),
            timeout=max(0.0, deadline - time.monotonic()),
        )
        log.extend(_tail(output))
        if code is None:
            raise BuildFailed(f"building the environment took longer than {self.build_timeout_s:g} s")
        if code != 0:
            what = "install requirements.txt" if args[0] == "pip" else "create the environment"
            raise BuildFailed(f"could not {what} (uv exited with code {code}); see the output above")

    def _check_import(
        self, python: Path, package_dir: Path, module: str, func: str, scratch: Path, log: list[str]
    ) -> dict[str, bool]:
        """Imports the user's module in its environment, in the sandbox; returns which request methods it has."""
        jail = Jail(
            read_only=[*interpreter_paths(python), package_dir],
            scratch=scratch,
            memory_limit_bytes=self._memory_limit_bytes,
        )
        code, output = _run(
            self._sandbox.command([str(python), "-c", _CHECK_SCRIPT, str(package_dir), module, func], jail),
            cwd=package_dir,
            env=self._sandbox.environment(jail, {}),
            timeout=IMPORT_CHECK_TIMEOUT_S,
        )
        out, _, result = output.partition(f"\n{_RESULT_MARKER}")
        log.extend(_tail(out))
        if code is None:
            raise BuildFailed(f"importing {_module_file(module)} took longer than {IMPORT_CHECK_TIMEOUT_S:g} s")
        if code != 0 or not result:
            raise BuildFailed(f"{_module_file(module)} could not be loaded (exit code {code}); see the output above")
        found: dict[str, bool] = json.loads(result)
        return found


# -- helpers -------------------------------------------------------------------------------


_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_MODULE = re.compile(rf"{_IDENT}(\.{_IDENT})*")


def deployment_module(deployment_file: str | None) -> str:
    """The module of a `class Deployment` file: "main.py" (or "main", as ubiops-cli's default
    "deployment" is written) -> "main"; None or "" -> "deployment". Raises `BuildFailed`."""
    if not deployment_file:
        return DEFAULT_MODULE
    module = deployment_file.removesuffix(".py").replace("/", ".")
    if not _MODULE.fullmatch(module):
        raise BuildFailed(f"{DEPLOYMENT_FILE_VARIABLE} {deployment_file!r} does not name a Python file of the "
                          "package, e.g. 'main.py'")
    return module


def _parse_handler(handler: str | None, deployment_file: str | None = None) -> tuple[str, str]:
    """ "main:handler" -> ("main", "handler"); None -> (the deployment file's module, "") meaning a
    Deployment class."""
    if handler is None:
        return deployment_module(deployment_file), ""
    module, _, func = handler.partition(":")
    func = func or "handler"
    if not _MODULE.fullmatch(module) or not re.fullmatch(_IDENT, func):
        raise BuildFailed(f"invalid handler {handler!r}: expected 'module:function', e.g. 'main:handler'")
    return module, func


def _module_file(module: str) -> str:
    return module.replace(".", "/") + ".py"


def _has_module(directory: Path, module: str) -> bool:
    base = directory / module.replace(".", "/")
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _find_code_root(target: Path, module: str) -> Path:
    if _has_module(target, module):
        return target
    # Zips made from a folder (ubiops.utils.zip_dir, Finder's "Compress") put everything in one.
    holding = [d for d in target.iterdir() if d.is_dir() and _has_module(d, module)]
    if len(holding) == 1:
        return holding[0]
    where = "in more than one top-level folder" if holding else "at the root of the archive or in one top-level folder"
    raise BuildFailed(f"{_module_file(module)} was not found {where}")


def _unwrapped(target: Path) -> Path:
    """The root of code whose module is not known: the one top-level folder the archive holds
    (zipped from a folder), else the archive's root."""
    entries = list(target.iterdir())
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else target


def _inside(target: Path, name: str) -> bool:
    return (target / name).resolve().is_relative_to(target.resolve())


def _unpack_zip(archive: Path, target: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            if len(members) > MAX_MEMBERS:
                raise BuildFailed(f"the archive has more than {MAX_MEMBERS} files")
            for m in members:
                if not _inside(target, m.filename) or Path(m.filename).is_absolute():
                    raise BuildFailed(f"the archive member {m.filename!r} would be written outside the package")
            total = 0
            for m in members:
                dest = target / m.filename
                if m.is_dir():
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                # Count what is really written: header sizes may lie.
                with zf.open(m) as src, open(dest, "wb") as out:
                    while chunk := src.read(1 << 20):
                        total += len(chunk)
                        if total > MAX_UNPACKED_BYTES:
                            raise BuildFailed(f"the archive unpacks to more than {MAX_UNPACKED_BYTES >> 20} MiB")
                        out.write(chunk)
                if mode := (m.external_attr >> 16) & 0o755:  # keep the executable bit of scripts
                    dest.chmod(mode | 0o600)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError, ValueError) as e:
        raise BuildFailed(f"{NOT_AN_ARCHIVE} ({e})") from e
    except OSError as e:  # e.g. a member that is both a file and a folder
        raise BuildFailed(f"could not unpack the archive: {e}") from e


def _make_readable(root: Path) -> None:
    """Every file readable (and every folder enterable) by the sandbox's user, whatever modes the
    archive carried; nothing writable by it: instances see the package read-only."""
    for directory, folders, files in os.walk(root):
        os.chmod(directory, 0o755)
        for name in files:
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                os.chmod(path, 0o755 if os.stat(path).st_mode & 0o111 else 0o644)


def _is_tar(archive: Path) -> bool:
    try:
        return tarfile.is_tarfile(archive)
    except (OSError, EOFError, tarfile.TarError):  # a truncated gzip stream
        return False


def _unpack_tar(archive: Path, target: Path) -> None:
    try:
        with tarfile.open(archive, mode="r:*") as tf:
            members = []
            total = 0
            for m in tf:  # iterate rather than getmembers(): stop a bomb of entries early
                members.append(m)
                if len(members) > MAX_MEMBERS:
                    raise BuildFailed(f"the archive has more than {MAX_MEMBERS} files")
                bad = Path(m.name).is_absolute() or not _inside(target, m.name)
                if m.issym():
                    bad = bad or not _inside(target, str(Path(m.name).parent / m.linkname))
                elif m.islnk():
                    bad = bad or not _inside(target, m.linkname)
                if bad:
                    raise BuildFailed(f"the archive member {m.name!r} would be written outside the package")
                if not (m.isfile() or m.isdir() or m.issym() or m.islnk()):
                    raise BuildFailed(f"the archive member {m.name!r} is not a regular file or folder")
                total += m.size
                if total > MAX_UNPACKED_BYTES:
                    raise BuildFailed(f"the archive unpacks to more than {MAX_UNPACKED_BYTES >> 20} MiB")
            tf.extractall(target, members=members, filter="data")  # the "data" filter re-checks all of the above
    except tarfile.FilterError as e:
        raise BuildFailed(f"the archive member {e.tarinfo.name!r} was rejected: {e}") from e
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        raise BuildFailed(f"{NOT_AN_ARCHIVE} ({e})") from e


def _tail(output: str) -> list[str]:
    """The end of a step's output, which is what says why it failed; capped so prints cannot flood the log."""
    output = output.strip("\n")
    if len(output) <= LOG_STEP_MAX_CHARS:
        return output.splitlines()
    return [f"... ({len(output) - LOG_STEP_MAX_CHARS} characters omitted)", *output[-LOG_STEP_MAX_CHARS:].splitlines()]


def _run(cmd: list[str], *, cwd: Path, env: dict[str, str], timeout: float) -> tuple[int | None, str]:
    """Runs cmd with stdout+stderr merged; kills its whole process group on timeout (code None)."""
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # so that a timeout kills uv's build subprocesses too
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        code = None
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return code, out.decode(errors="replace")
