from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from livekit import api

from tests.helpers import API_KEY, API_SECRET, ServerProcess


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path)
    proc.start()
    yield proc
    if proc.proc is not None:
        assert proc.stop() == 0, proc.log.read_text()


@pytest.fixture
async def lk(server: ServerProcess) -> AsyncIterator[api.LiveKitAPI]:
    async with api.LiveKitAPI(url=server.url, api_key=API_KEY, api_secret=API_SECRET) as client:
        yield client
