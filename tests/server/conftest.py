"""Fixtures shared by the server's media tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.server.test_call_media import Harness


@pytest.fixture
async def media() -> AsyncIterator[Harness]:
    """A media service on loopback with its phones (`Harness`), closed after the test."""
    harness = Harness()
    try:
        yield harness
    finally:
        harness.close()
