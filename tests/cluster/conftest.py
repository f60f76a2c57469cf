"""Fixtures for the cluster tests: a private redis-server and fake-backend worker processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.redis_server import RedisServer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


def worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


StartWorker = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def start_worker(redis_server: RedisServer, tmp_path: Path) -> Iterator[StartWorker]:
    """Start a fake-backend worker process (options as `--flag value` pairs); killed at the end."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(worker_id: str, *options: str) -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"{worker_id}.log", "wb")  # noqa: SIM115 - the process keeps it
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.cluster.fake_worker",
                "--url",
                redis_server.url,
                "--id",
                worker_id,
                *options,
            ],
            cwd=REPO,
            env=worker_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)


def wait_until(condition: Callable[[], object], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
