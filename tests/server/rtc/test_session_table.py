"""The signalling sessions indexed by room: `in_room` on the table is what a scan of every
session finds, through joins, replacements, leaves and pops."""

from __future__ import annotations

import random
from typing import Any, cast

from aiohttp import web

from sipbridge.server.rtc.session import Session, SessionTable, in_room


def session(room: str, identity: str) -> Session:
    return Session(room=room, identity=identity, ws=cast(web.WebSocketResponse, None))


def test_in_room_matches_a_scan_of_every_session() -> None:
    table = SessionTable()
    plain: dict[tuple[str, str], Session] = {}
    rng = random.Random(18)
    for _ in range(2000):
        room, who = f"r{rng.randrange(5)}", f"p{rng.randrange(8)}"
        key = (room, who)
        action = rng.randrange(3)
        if action == 0:
            s = session(room, who)
            table[key] = plain[key] = s
        elif action == 1 and key in plain:
            del table[key]
            del plain[key]
        else:
            assert table.pop(key, None) is plain.pop(key, None)
        for name in ("r0", "r1", "r2", "r3", "r4", "nowhere"):
            assert in_room(table, name) == in_room(plain, name)
    assert dict(table) == plain
    assert set(table.rooms) == {room for room, _ in plain}


def test_a_room_left_empty_leaves_the_index() -> None:
    table = SessionTable()
    table[("r", "a")] = session("r", "a")
    table[("r", "b")] = session("r", "b")
    del table[("r", "a")]
    assert [s.identity for s in in_room(table, "r")] == ["b"]
    popped: Any = table.pop(("r", "b"))
    assert popped.identity == "b"
    assert table.rooms == {}
    assert in_room(table, "r") == []
