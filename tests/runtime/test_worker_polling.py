"""A worker with nothing to run polls its channel a moment before it sleeps, while the machine's
CPUs are not contended (`runtime/worker.py`)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from modelbay.runtime import wire, worker


@pytest.fixture
def pipe():
    read_fd, write_fd = os.pipe()
    yield read_fd, write_fd
    for fd in (read_fd, write_fd):
        os.close(fd)


def test_a_polling_worker_takes_a_call_as_soon_as_it_is_written(pipe) -> None:
    read_fd, write_fd = pipe
    channel = worker._Channel(read_fd, write_fd)
    writer = threading.Timer(0.02, os.write, (write_fd, wire.frame(wire.encode({"type": "call", "id": "a"}))))
    writer.start()
    began = time.monotonic()
    channel.poll(30.0)
    assert time.monotonic() - began < 10  # it ended with the call, not with its time
    assert channel.receive() == {"type": "call", "id": "a"}
    writer.join()


def test_a_worker_polls_no_longer_than_it_was_told(pipe) -> None:
    read_fd, write_fd = pipe
    channel = worker._Channel(read_fd, write_fd)
    began = time.monotonic()
    channel.poll(0.05)
    assert 0.05 <= time.monotonic() - began < 10
    assert channel.arrived() == []


def _pressure_file(path: Path, stalled_us: int) -> None:
    path.write_text(f"some avg10=0.00 avg60=0.00 avg300=0.00 total={stalled_us}\n"
                    "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")


def test_the_pressure_is_the_share_of_the_time_tasks_waited_for_a_cpu(tmp_path: Path) -> None:
    path = tmp_path / "cpu"
    _pressure_file(path, 1_000_000)
    pressure = worker._CpuPressure(period=0.05, path=str(path))
    pressure.update()
    assert pressure.share == 1.0  # nothing measured yet: as if contended
    time.sleep(0.05)
    _pressure_file(path, 1_025_000)  # tasks waited 25 ms of the 50 ms or more since
    pressure.update()
    assert 0.0025 < pressure.share <= 0.5


def test_without_pressure_figures_a_worker_never_polls(tmp_path: Path) -> None:
    pressure = worker._CpuPressure(period=0.0, path=str(tmp_path / "missing"))
    for _ in range(3):
        pressure.update()
    assert pressure.share >= worker._POLL_UNDER_PRESSURE
