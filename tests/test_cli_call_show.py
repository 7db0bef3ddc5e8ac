"""`sipbridge call show ID`: a call's record and its quality record, read from the database."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from livekit.protocol import sip

from sipbridge import cli
from sipbridge.media.leg import RtpLeg
from sipbridge.media.quality import leg_quality
from sipbridge.server.state.call_log import KIND, QUALITY_KIND
from sipbridge.store import Record, store_at
from tests.media.test_leg import Phone, leg
from tests.media.test_quality import feed


def put(db: Path, *records: Record) -> None:
    async def write() -> None:
        store = store_at(f"sqlite:{db}")
        await store.open()
        try:
            await store.put_many(list(records))
        finally:
            await store.close()

    asyncio.run(write())


def call_record(call_id: str) -> Record:
    info = sip.SIPCallInfo(call_id=call_id, room_name="room", audio_codec="PCMU")
    info.from_uri.user = "+15105550100"
    return Record(kind=KIND, id=call_id, data=info.SerializeToString())


def quality() -> dict[str, object]:
    rtp_leg: RtpLeg = leg()
    end = feed(rtp_leg, Phone(), 200, lose_every=20, wobble=0.015)
    rtp_leg.send_pcm(None, end)
    return leg_quality(rtp_leg, end).as_dict()


def test_show_prints_the_call_and_its_quality(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "sipbridge.db"
    q = quality()
    put(
        db, call_record("SCL_a"), Record(kind=QUALITY_KIND, id="SCL_a", data=json.dumps(q).encode())
    )
    assert cli.main(["call", "show", "SCL_a", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "SCL_a" in out and "+15105550100" in out
    assert "PCMU (none)" in out and f"mos                    {q['mos']}" in out
    assert "loss 5.03 % (10)" in out and "E-model R" in out and "G.113" in out
    assert "sent                   1 packets" in out and "loss - (None)" in out
    assert cli.main(["call", "show", "SCL_a", "--db", str(db), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["quality"] == q and shown["audio_codec"] == "PCMU"


def test_a_call_without_quality_and_an_unknown_call(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "sipbridge.db"
    put(db, call_record("SCL_b"))
    assert cli.main(["call", "show", "SCL_b", "--db", str(db)]) == 0
    assert "(none recorded)" in capsys.readouterr().out
    assert cli.main(["call", "show", "SCL_nope", "--db", str(db)]) == 1
    assert "no call SCL_nope" in capsys.readouterr().err
    assert cli.main(["call", "show", "SCL_b", "--db", str(tmp_path / "missing.db")]) == 1
    assert "no database" in capsys.readouterr().err
