from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from livekit import api

from tests.helpers import API_KEY, API_SECRET, ServerProcess

# Property tests judge what the code does, never how fast: Hypothesis' defaults fail an example
# that takes over 200 ms and a generation it finds slow, which a busy machine (CI beside other
# work, `-n 2` on 2 cores) makes happen at random (`test_any_formatting_of_digits...` did so).
# Loaded here, before the test modules make their own `settings(...)`, which inherit it.
settings.register_profile("sipbridge", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("sipbridge")


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
