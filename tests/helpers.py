"""Running a real `sipbridge serve` process for tests, and talking to it like users do."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

API_KEY = "testkey"
API_SECRET = "testsecret-long-enough-for-hs256-0123456789"


# Ports for the servers and peers tests start: 20000-32767, above the RTP ranges servers use in
# tests (10000-20000) and below Linux's ephemeral range (32768-60999), from which the kernel gives
# every client socket its port: a port found free there can be taken by any connect() before the
# server binds it. Picked at random, so that concurrent test processes (pytest-xdist workers,
# other runs) rarely try the same one, and checked free by binding it.
TEST_PORTS = range(20000, 32768)
_rng = random.Random()


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    for _ in range(200):
        port = _rng.choice(TEST_PORTS)
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {TEST_PORTS}")


def free_sip_port() -> int:
    """A port free for both UDP and TCP: `serve` binds SIP on both."""
    for _ in range(20):
        port = free_port(socket.SOCK_DGRAM)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    return free_port(socket.SOCK_DGRAM)


def metric_samples(text: str) -> dict[str, float]:
    """Prometheus text as {'name{labels}': value}, the labels as the server wrote them."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


class ServerProcess:
    """`python -m sipbridge serve` on loopback with its own database file."""

    def __init__(
        self,
        tmp: Path,
        *extra: str,
        http_host: str = "127.0.0.1",
        open_files: int | None = None,
        http_port: int = 0,
    ) -> None:
        self.http_host = http_host  # where the API listens (a veth address for netns clients)
        self.http_port = http_port  # the API's port: 0 for a free one at each start
        self.open_files = open_files  # RLIMIT_NOFILE (soft and hard) of the server, if given
        self.db = tmp / "sipbridge.db"
        self.extra = list(extra)
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tmp / "server.log"

    @property
    def url(self) -> str:
        return f"http://{self.http_host}:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        # A port found free may be taken by someone else before the server binds it (other
        # processes on this machine pick ports too): then try again with new ones.
        for _ in range(3):
            offset = self.log.stat().st_size if self.log.exists() else 0
            try:
                self._start(timeout)
                return
            except RuntimeError:
                with open(self.log, "rb") as log:
                    log.seek(offset)
                    text = log.read()
                    if b"address already in use" not in text and b"could not bind" not in text:
                        raise
        self._start(timeout)

    def _start(self, timeout: float) -> None:
        self.port = self.http_port or free_port()
        args = [
            sys.executable,
            "-m",
            "sipbridge",
            "serve",
            "--http",
            f"{self.http_host}:{self.port}",
            "--sip",
            f"127.0.0.1:{free_sip_port()}",
            "--db",
            str(self.db),
            "--keys",
            f"{API_KEY}:{API_SECRET}",
            # SIGTERM (`stop`) hangs up at once, as tests expect of a stop; the drain tests
            # give their own --drain-timeout (the last flag wins).
            "--drain-timeout",
            "0",
            # No admission by load: a server passes 90 % of a core in a burst of calls, and its
            # event loop lags past 100 ms when the machine runs three test files at once (a
            # cluster node refused a test's calls so, and Kamailio had nowhere to send them);
            # the load tests give their own --max-cpu / --max-lag (the last flag wins).
            "--max-cpu",
            "10000",
            "--max-lag",
            "60000",
            *self.extra,
        ]
        if self.open_files is not None:  # util-linux's prlimit: soft and hard, before exec
            args = ["prlimit", f"--nofile={self.open_files}:{self.open_files}", "--", *args]
        env = dict(os.environ)
        env.pop("LIVEKIT_API_KEY", None)
        env.pop("LIVEKIT_API_SECRET", None)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"server did not become ready:\n{self.log.read_text()}")

    def metrics(self) -> dict[str, float]:
        """`GET /metrics` as {'name{labels}': value} (blocking: from async code, in a thread)."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as resp:
            return metric_samples(resp.read().decode())

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; the exit code proves a clean shutdown (0). Before it, the server's
        invariant is checked, whatever the test did: no call held without a deadline that ends
        it, none held after its SIP side ended (`sipbridge_calls_stuck`)."""
        assert self.proc is not None
        stuck = 0.0
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):  # (its HTTP side is down: the exit code tells)
                stuck = self.metrics().get("sipbridge_calls_stuck", 0.0)
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        self.proc = None
        assert stuck == 0, f"{stuck:g} calls held with nothing left to end them:\n{self.log_tail()}"
        return code

    def log_tail(self, size: int = 5000) -> str:
        return self.log.read_text(errors="replace")[-size:]

    def restart(self) -> None:
        assert self.stop() == 0
        self.start()


def token(
    video: object = None,
    sip: object = None,
    *,
    key: str = API_KEY,
    secret: str = API_SECRET,
    identity: str = "",
) -> str:
    """A token made by the official client's AccessToken, with the given grants."""
    from livekit import api  # noqa: PLC0415

    tok = api.AccessToken(key, secret)
    if identity:
        tok.with_identity(identity)
    if video is not None:
        tok.with_grants(video)  # type: ignore[arg-type]
    if sip is not None:
        tok.with_sip_grants(sip)  # type: ignore[arg-type]
    return tok.to_jwt()


async def twirp(
    url: str,
    service: str,
    method: str,
    body: bytes | str,
    *,
    auth: str | None,
    content_type: str = "application/protobuf",
    headers: dict[str, str] | None = None,
) -> tuple[int, str, bytes]:
    """A raw Twirp call: (HTTP status, Content-Type, body)."""
    import aiohttp  # noqa: PLC0415

    all_headers = {"Content-Type": content_type, **(headers or {})}
    if auth is not None:
        all_headers["Authorization"] = auth
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/twirp/{service}/{method}", data=body, headers=all_headers) as resp,
    ):
        return resp.status, resp.content_type, await resp.read()
