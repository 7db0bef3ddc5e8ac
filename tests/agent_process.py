"""A real `livekit-agents` worker script (tests/agent_worker.py, tests/agent_session_worker.py)
run as the interop tests run it: inside a network namespace, registered on a server's `/agent`,
stopped after the block."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from tests import netns
from tests.harness import eventually, metric
from tests.helpers import API_KEY, API_SECRET, ServerProcess


@asynccontextmanager
async def agent_worker(
    script: Path,
    ns: netns.VethNamespace,
    server: ServerProcess,
    log: Path,
    *,
    registered: str = "the worker to register",
    interval: float = 0.2,
    stop_s: float = 20,
    **env: str,
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`script start` in `ns`, pointed at `server`'s API on the namespace's host address, with
    `env` added (and no proxy settings); its output in `log`. Inside the block once `server`
    counts it registered (30 s at most: AssertionError `registered`, or the worker's log when it
    exited first). After the block SIGTERM, killed if it has not ended `stop_s` later."""
    environ = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    environ.update(
        LIVEKIT_URL=f"http://{ns.host_ip}:{server.port}",
        LIVEKIT_API_KEY=API_KEY,
        LIVEKIT_API_SECRET=API_SECRET,
        **env,
    )
    out = open(log, "wb")  # noqa: SIM115, ASYNC230 - the worker's output
    worker = await asyncio.create_subprocess_exec(
        *ns.exec_args(sys.executable, str(script), "start"),
        stdout=out,
        stderr=asyncio.subprocess.STDOUT,
        env=environ,
    )
    try:

        async def is_registered() -> bool:
            assert worker.returncode is None, log.read_text()[-3000:]  # noqa: ASYNC240
            return await metric(server, "sipbridge_agent_workers") >= 1

        await eventually(is_registered, registered, timeout=30, interval=interval)
        yield worker
    finally:
        if worker.returncode is None:
            worker.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(worker.wait(), stop_s)
            except TimeoutError:
                worker.kill()
                await worker.wait()
        out.close()
