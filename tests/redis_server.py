"""A real `redis-server` (Debian's, installed by `make test`) for the tests: on a free loopback
port, in its own directory, stopped by whoever started it.

Without persistence by default (`--save '' --appendonly no`: nothing is written); with
`persistent=True` an append-only file in its directory, so that a restart keeps the data as an
operator's Redis would (docs/cluster.md: persistence is the operator's, AOF on).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.exceptions import RedisError

from tests.helpers import free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def require_redis_server() -> None:
    """Skip, saying why, where Debian's redis-server is not installed (`make test` installs
    it, so there it never skips)."""
    if not Path(REDIS_SERVER).exists():
        pytest.skip("redis-server is not installed: `make system-deps` installs it")


class RedisServer:
    def __init__(self, directory: Path, *, persistent: bool = False) -> None:
        self.directory = directory
        self.persistent = persistent
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = directory / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start (on the same port as before, when restarting) and wait until it answers."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        persistence = ["--appendonly", "yes", "--appendfsync", "always"]
        if not self.persistent:
            persistence = ["--appendonly", "no"]
        args = [
            REDIS_SERVER,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            *persistence,
            "--dir",
            str(self.directory),
            "--daemonize",
            "no",
            "--logfile",
            str(self.log),
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited early:\n{self._log_text()}")
            if self._answers():
                return
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"redis-server did not answer within {timeout:g} s:\n{self._log_text()}")

    def _answers(self) -> bool:
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s,
        ):
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
        return False

    def _log_text(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (Redis then flushes its append-only file) and wait for the exit."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@contextlib.contextmanager
def redis_server(directory: Path, *, persistent: bool = False) -> Iterator[RedisServer]:
    require_redis_server()
    server = RedisServer(directory, persistent=persistent)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def comes_to(awaitable: object, expected: object) -> bool:
    """Whether it comes to `expected`; False on a pooled connection Redis closed (restarted):
    for `eventually` across a Redis restart."""
    try:
        return await awaitable == expected  # type: ignore[misc]
    except RedisError:
        return False
