"""Late offers (RFC 3261 s13.2.1): an INVITE without SDP gets our offer in the 200 and the
caller's answer in the ACK. sipp places the call into a bridge room where a baresip phone
waits; the phone must hear sipp's tone through the room. An answer we cannot use (a codec we
did not offer) cannot be refused in an ACK: the server hangs the call up with a BYE."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

from tests import baresip
from tests.audio import read_wav, tone_ratio
from tests.harness import client, leave_clean, module_server, run, sipp_args
from tests.helpers import ServerProcess
from tests.interop.test_call_audio import direct_rule, target, wait_participants

pytestmark = [
    pytest.mark.skipif(not shutil.which("sipp"), reason="sipp comes with `make test`"),
    pytest.mark.skipif(not shutil.which("baresip"), reason="baresip comes with `make test`"),
]


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the module's calls (conftest's `media_server` is one per test)."""
    yield from module_server(tmp_path_factory, "late-offer", "--rtp-ports", "14000-14999", sip=True)


@pytest.fixture
async def media_server(shared_server: ServerProcess) -> AsyncIterator[ServerProcess]:
    """The module's server; after each test its trunks, rules and rooms are deleted and no
    call is left."""
    yield shared_server
    await leave_clean(shared_server)


def write_ulaw_tone(path: Path, freq: float = 1000.0, seconds: float = 3.0) -> None:
    from sipbridge.media.codecs import ulaw_encode_array  # noqa: PLC0415

    t = np.arange(int(8000 * seconds)) / 8000
    pcm = (np.sin(2 * np.pi * freq * t) * 8000).astype(np.int16)
    path.write_bytes(ulaw_encode_array(pcm))


def sipp(server: ServerProcess, scenario: str, hold_ms: int = 2500) -> list[str]:
    return sipp_args(scenario, server.sip_port, hold_ms=hold_ms, limit=21)  # type: ignore[attr-defined]


async def test_late_offer_is_answered_in_the_ack_and_carries_audio(
    media_server: ServerProcess, tmp_path: Path
) -> None:
    write_ulaw_tone(tmp_path / "tone.ul")
    async with client(media_server) as lk:
        await direct_rule(lk)
        async with baresip.phone(tmp_path / "a", codecs="PCMU") as a:
            await a.dial(target(media_server))
            await a.wait_event("CALL_RINGING", fail_on=("CALL_CLOSED",))
            call = asyncio.create_task(
                run(*sipp(media_server, "late_offer.xml"), timeout=30, cwd=tmp_path)
            )
            await a.wait_event("CALL_ESTABLISHED", timeout=8, fail_on=("CALL_CLOSED",))
            assert len(await wait_participants(lk, "bridge", 2)) == 2
            code, out = await call
            assert code == 0, out
            await a.hangup()
            await a.wait_event("CALL_CLOSED")
            await a.stop()
            heard, rate = read_wav(a.recorded())
    # sipp's 1 kHz tone went through the room to the phone.
    assert tone_ratio(heard, rate, 1000.0) > 0.5


async def test_an_unusable_answer_in_the_ack_ends_the_call_with_bye(
    media_server: ServerProcess, tmp_path: Path
) -> None:
    async with client(media_server) as lk:
        await direct_rule(lk)
        async with baresip.phone(tmp_path / "a", codecs="PCMU") as a:
            await a.dial(target(media_server))
            await a.wait_event("CALL_RINGING", fail_on=("CALL_CLOSED",))
            code, out = await run(
                *sipp(media_server, "late_offer_refused.xml"), timeout=30, cwd=tmp_path
            )
            assert code == 0, out  # it got the server's BYE and answered it
            await a.hangup()
            await a.wait_event("CALL_CLOSED")
