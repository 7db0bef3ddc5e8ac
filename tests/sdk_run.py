"""sdk_client.py (the official `livekit` SDK in a network namespace) as a running process whose
JSON events are collected as it prints them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from livekit import api

from tests import netns
from tests.helpers import token

SDK_CLIENT = Path(__file__).parent / "sdk_client.py"


def sdk_command(
    ns: netns.VethNamespace,
    port: int,
    identity: str,
    room: str,
    *args: str,
    python: str = sys.executable,
    grant: api.VideoGrants | None = None,
) -> list[str]:
    """sdk_client.py's command line inside `ns`, run by `python`: it joins `room` as `identity`
    through the server's API at the namespace's host address, `port`, with a token for `grant`
    (joining `room` by default), then `args`."""
    grant = grant or api.VideoGrants(room_join=True, room=room)
    return ns.exec_args(
        python,
        str(SDK_CLIENT),
        "--url",
        f"ws://{ns.host_ip}:{port}",
        "--token",
        token(grant, identity=identity),
        *args,
    )


class SdkRun:
    """sdk_client.py running in the namespace, its JSON events collected as they are printed."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            if line.startswith(b"{"):
                self.events.append(json.loads(line))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == kind]

    async def finish(self, log: Path, timeout: float = 15) -> int:
        """Its exit code once it ended (killed after `timeout` s); its stderr kept in `log`."""
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
        await self.reader
        assert self.proc.stderr is not None
        err = await self.proc.stderr.read()
        await asyncio.to_thread(log.write_bytes, err)
        lines = "".join(json.dumps(e) + "\n" for e in self.events)
        await asyncio.to_thread(log.with_suffix(".events").write_text, lines)
        return self.proc.returncode if self.proc.returncode is not None else -1
