"""The 100 Trying only when it is needed (RFC 3261 s17.2.1), seen by sipp: an INVITE the
application answers within its handling gets 180 and 200 and no 100 (sipp fails a call on the
unexpected message); one answered on a later turn of the event loop gets the 100 first. Over
every UDP path (server/sip/udp.py, and the reader thread of udp_thread.py, the default where
built, which then sends no 100 of its own) and TCP."""

from __future__ import annotations

import pytest

from sipbridge.server.sip import udp, udp_thread
from sipbridge.server.sip.udp_thread import ThreadedUdp
from tests.harness import eventually, sipp
from tests.sip_app import AnsweringApp, running_app

PATHS = [
    pytest.param(
        "batched",
        "u1",
        id="udp-batched",
        marks=pytest.mark.skipif(not udp.built(), reason="batched UDP is not built"),
    ),
    pytest.param("endpoint", "u1", id="udp-datagram-endpoint"),
    pytest.param(
        "thread",
        "u1",
        id="udp-thread",
        marks=pytest.mark.skipif(not udp_thread.built(), reason="the reader thread is not built"),
    ),
    pytest.param("default", "t1", id="tcp"),
]


def socket_kind(path: str) -> dict[str, bool]:
    """running_app's arguments for one UDP path."""
    if path == "default":
        return {}
    if path == "thread":
        return {"threaded_udp": True}
    return {"batched_udp": path == "batched"}


@pytest.mark.parametrize(("path", "transport"), PATHS)
async def test_an_invite_answered_at_once_gets_no_100(path: str, transport: str) -> None:
    app = AnsweringApp()
    async with running_app(app, **socket_kind(path)) as (service, port):
        if path == "thread" and transport == "u1":
            assert isinstance(next(iter(service._udp.values())), ThreadedUdp)
        done = await sipp("uac_no_trying.xml", port, transport=transport, calls=5, rate=20)
        await eventually(lambda: len(app.ended) >= 5, "the app to end the 5 calls", timeout=3)
    assert done.code == 0, done.out
    assert sorted(app.ended) == ["bye"] * 5
    assert service.endpoint.stats["trying_superseded"] == 5


@pytest.mark.parametrize(("path", "transport"), PATHS)
async def test_an_invite_answered_later_gets_the_100_first(path: str, transport: str) -> None:
    app = AnsweringApp(deferred=True)
    async with running_app(app, **socket_kind(path)) as (service, port):
        done = await sipp("uac_trying.xml", port, transport=transport, calls=5, rate=20)
        await eventually(lambda: len(app.ended) >= 5, "the app to end the 5 calls", timeout=3)
    assert done.code == 0, done.out
    assert sorted(app.ended) == ["bye"] * 5
    assert service.endpoint.stats["trying_superseded"] == 0


async def test_sipp_sees_a_failure_when_an_expected_100_never_comes() -> None:
    """The scenarios tell the two apart: the one expecting a 100 fails against an app that
    answers at once (so the test above cannot pass without its 100)."""
    app = AnsweringApp()
    async with running_app(app, ("udp",)) as (_, port):
        done = await sipp("uac_trying.xml", port, calls=1, limit=8, timeout_error=False)
    assert done.code != 0, done.out
