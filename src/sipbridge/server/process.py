"""The serving process: the open-file limit, the server run until SIGINT or SIGTERM and its
drain, on uvloop when installed (`sipbridge serve`)."""

from __future__ import annotations

import asyncio
import contextlib
import resource
from collections.abc import Callable

from sipbridge.config import Settings
from sipbridge.server.app import Server
from sipbridge.server.drain import DrainDriver


def raise_open_file_limit() -> int:
    """The soft limit on open files raised to the hard one (calls take two RTP sockets each,
    SIP connections and HTTP clients one); returns the limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


async def serve(settings: Settings) -> None:
    """Run until SIGINT, or SIGTERM and the drain (`server/drain.py`)."""
    raise_open_file_limit()
    server = Server(settings)
    driver = DrainDriver(
        server.drain, calls=server.calls_in_progress, on_drain=server.start_draining
    )
    driver.install()
    try:
        await server.start()
        await driver.wait_stopped()
    finally:
        # The handlers stay through the teardown: a second SIGTERM sent while the node closes
        # (a supervisor's "stop, then stop again" after a few seconds) finds the drain stopped
        # and does nothing, where the default action would kill the node mid-cleanup.
        try:
            await server.stop()
        finally:
            driver.uninstall()


def run(settings: Settings) -> None:
    try:
        import uvloop  # noqa: PLC0415 - optional, fastest loop when installed

        runner: Callable[..., None] = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        runner = asyncio.run
    runner(serve(settings))
