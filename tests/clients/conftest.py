"""The command-line clients users already have, each installed once in its own virtualenv (they pin
their own SDK versions), reused by later runs. No network to install one from is a failure, not a skip:
these tests are the proof that the clients work."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: Where the clients' virtualenvs are kept between runs.
CLIENTS_DIR = REPO / ".venv-clients"
INSTALL_TIMEOUT_S = 600


@dataclass(frozen=True)
class Client:
    """An installed client: its virtualenv."""

    venv: Path

    @property
    def interpreter(self) -> Path:
        return self.venv / "bin" / "python"

    def python(self, code: str) -> str:
        """What `code` prints, run by the client's own interpreter."""
        done = subprocess.run([self.interpreter, "-c", code], capture_output=True, text=True, check=True, timeout=60)
        return done.stdout.strip()


def installed(name: str, requirement: str) -> Client:
    """The virtualenv `CLIENTS_DIR/name` with `requirement` installed, made on first use."""
    venv = CLIENTS_DIR / name
    stamp = venv / f".installed {requirement}"
    CLIENTS_DIR.mkdir(exist_ok=True)
    with open(CLIENTS_DIR / f"{name}.lock", "w") as lock:  # one installer at a time, across processes
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not stamp.exists():
            steps = [[sys.executable, "-m", "venv", "--clear", str(venv)],
                     [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                      requirement]]
            for step in steps:
                done = subprocess.run(step, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
                if done.returncode != 0:
                    pytest.fail(f"could not install {requirement} ({' '.join(step)}):\n{done.stdout}{done.stderr}")
            stamp.touch()
    return Client(venv)


@pytest.fixture(scope="session")
def ubiops_cli() -> Client:
    return installed("ubiops-cli", "ubiops-cli==2.32.0")


Run = Callable[..., subprocess.CompletedProcess[str]]


def runner(command: list[str], cwd: Path, env: dict[str, str]) -> Run:
    """Runs `command` with arguments as a user at a shell would, in `cwd`; returns what it did."""

    def run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*command, *args], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    return run


def clean_env(home: Path) -> dict[str, str]:
    """The environment of a fresh user: a HOME of its own, no proxy between it and the server."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(HOME=str(home), NO_COLOR="1", PYTHONWARNINGS="ignore")
    return env
