"""`serve --log-format json`: every line of the server's output is a JSON object; the lines
about a call carry its call id, room and participant; the call's end is one `call_end` line
with its outcome. An outbound call to a sipp carrier that answers and hangs up."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from livekit.protocol import sip

from tests.harness import client, eventually, sip_server_process, stop_cleanly
from tests.helpers import ServerProcess
from tests.interop.test_outbound import carrier, make_trunk

pytestmark = [
    pytest.mark.skipif(not shutil.which("sipp"), reason="sipp comes with `make test`"),
    pytest.mark.timeout(30),
]
ROOM = "json-logs"


@pytest.fixture
def sip_server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = sip_server_process(
        tmp_path, "--rtp-ports", "17000-17999", "--log-format", "json", "--log-level", "debug"
    )
    proc.start()
    yield proc
    stop_cleanly(proc)


def log_lines(server: ServerProcess) -> list[dict[str, Any]]:
    """Every line of the server's output, each parsed as JSON (a line that is not fails)."""
    lines = server.log.read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


async def test_every_line_is_json_and_a_call_ends_in_one_line(sip_server: ServerProcess) -> None:
    async with client(sip_server) as lk, carrier("uas_answer_hangup.xml") as (port, sipp_task):
        trunk_id = await make_trunk(lk, port)
        created = await lk.sip.create_sip_participant(
            sip.CreateSIPParticipantRequest(
                sip_trunk_id=trunk_id, sip_call_to="+15551234", room_name=ROOM
            )
        )
        call_id = created.sip_call_id

        def call_end() -> list[dict[str, Any]]:
            return [
                line
                for line in log_lines(sip_server)
                if line.get("event") == "call_end" and line.get("call_id") == call_id
            ]

        ends = await eventually(call_end, "the call_end line")
        code, out = await sipp_task
        assert code == 0, out
    stop_cleanly(sip_server)
    lines = log_lines(sip_server)  # every line parses
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    assert len(ends) == 1
    end = ends[0]
    assert end["room"] == ROOM and end["participant"] == created.participant_identity
    assert end["outcome"] == "disconnected" and end["answered"] is True
    assert end["sip_end"] == "bye" and end["direction"] == "outbound"
    assert end["trunk_id"] == trunk_id and end["duration_s"] > 0
    assert isinstance(end.get("media"), dict)
    # Every other line about this call carries its ids too (the dial, its state changes).
    about = [line for line in lines if line.get("call_id") == call_id]
    assert len(about) >= 2, about
    assert all(line["room"] == ROOM for line in about)
    dial = [line for line in about if "dialling" in line["message"]]
    assert dial and dial[0]["participant"] == created.participant_identity
