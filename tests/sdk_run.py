"""sdk_client.py (the official `livekit` SDK in a network namespace) as a running process whose
JSON events are collected as it prints them."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any


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
