"""The HTTP surfaces of a real `sipbridge serve` attacked as a stranger on the network would:
every input is hostile until parsed (DESIGN.md). Each attack must get a clear protocol error (a
Twirp error, or the HTTP status of one), be counted in `/metrics`, and never crash the server,
hold up other requests, leak a descriptor, a task or a stream slot, or lose stored data.

Covered here, beside what test_twirp.py (the Twirp edge) and test_rtc_bad_input.py (signalling
frames) already prove: bad tokens on every surface (none, garbage, non-UTF-8 bytes, wrong
signature, alg=none, expired, not yet valid, no grants, a room-scoped token used on another
room); oversized request lines, headers and bodies; JSON and protobuf garbage; path traversal on
the console's files and on call ids; huge page sizes; request bodies that trickle; many
`/console/live` streams, abandoned streams and streams whose reader stops reading; a flood of
console sign-ins. After each attack the server answers a normal request at once and its open
descriptors come back to where they were; at the module's end it exits 0 on SIGTERM with no
Traceback in its log. Timeouts are short here (`--http-idle-timeout 2`) so the suite waits little.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from livekit import api
from livekit.protocol import room as room_proto
from livekit.protocol import sip

from tests.harness import eventually, metric, module_server
from tests.helpers import API_KEY, API_SECRET, ServerProcess, token

IDLE_S = 2  # --http-idle-timeout of the servers here
STATUS = {  # the HTTP status of each Twirp code (the spec's table, not imported from src)
    "malformed": 400,
    "invalid_argument": 400,
    "unauthenticated": 401,
    "permission_denied": 403,
    "not_found": 404,
    "deadline_exceeded": 408,
    "resource_exhausted": 429,
}
FD_SLACK = 4  # descriptors the server may open by itself meanwhile (a log rotation, a DNS lookup)


# -- the server and how to talk to it --------------------------------------------------------


def open_fds(server: ServerProcess) -> int:
    assert server.proc is not None
    return len(os.listdir(f"/proc/{server.proc.pid}/fd"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    servers = module_server(
        tmp_path_factory, "hostile-http", "--http-idle-timeout", str(IDLE_S), clean_log=True
    )
    proc = next(servers)
    proc.fds_at_start = open_fds(proc)  # type: ignore[attr-defined]
    yield proc
    with contextlib.suppress(StopIteration):
        next(servers)  # stops it: exit 0, no Traceback in its log


async def http_errors(server: ServerProcess, status: int) -> float:
    """`sipbridge_http_errors_total` of one status, over every surface."""
    samples = await asyncio.to_thread(server.metrics)
    return sum(
        value
        for name, value in samples.items()
        if name.startswith("sipbridge_http_errors_total{") and f'status="{status}"' in name
    )


async def unharmed(server: ServerProcess) -> None:
    """The server answers a normal API request at once and holds no descriptor more than it
    did at its start (each attack's connections closed, its tasks ended)."""
    started = time.perf_counter()
    status, _, body = await raw(
        server,
        "POST",
        "/twirp/livekit.RoomService/ListRooms",
        auth=admin(),
        ctype="application/protobuf",
    )
    assert status == 200, body
    assert time.perf_counter() - started < 1.5  # (other test files run beside this one)
    start = server.fds_at_start  # type: ignore[attr-defined]

    def settled() -> bool:
        return open_fds(server) <= start + FD_SLACK

    await eventually(settled, f"open descriptors back near {start}", timeout=IDLE_S + 5)


def admin() -> str:
    return "Bearer " + token(
        api.VideoGrants(room_create=True, room_list=True, room_admin=True, room_record=True),
        api.SIPGrants(admin=True, call=True),
    )


def console_token() -> str:
    """The grants the console's own token has (POST /console/token)."""
    return "Bearer " + token(
        api.VideoGrants(room_list=True, room_admin=True), api.SIPGrants(admin=True, call=True)
    )


async def raw(
    server: ServerProcess,
    method: str,
    path: str,
    body: bytes = b"",
    *,
    auth: str | bytes | None = None,
    ctype: str | None = None,
    headers: bytes = b"",
    source: str = "127.0.0.1",
    timeout: float = 10.0,
) -> tuple[int, str, bytes]:
    """One hand-written HTTP/1.1 request on its own connection: (status, Content-Type, body).
    `auth` may be bytes that are no text at all; `headers` is added as it is."""
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n".encode()
    if auth is not None:
        head += b"Authorization: " + (auth if isinstance(auth, bytes) else auth.encode()) + b"\r\n"
    if ctype is not None:
        head += f"Content-Type: {ctype}\r\n".encode()
    if method != "GET" or body:
        head += f"Content-Length: {len(body)}\r\n".encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port, local_addr=(source, 0))
    try:
        with contextlib.suppress(ConnectionError):  # it may answer before taking it all
            writer.write(head + headers + b"\r\n" + body)
            await writer.drain()
        async with asyncio.timeout(timeout):
            return await read_reply(reader)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def read_reply(reader: asyncio.StreamReader) -> tuple[int, str, bytes]:
    """One response: its head, then as many bytes as its Content-Length says (or to the end)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    if "content-length" in fields:
        body = await reader.readexactly(int(fields["content-length"]))
    else:
        body = await reader.read()
    return status, fields.get("content-type", "").split(";")[0].strip(), body


def assert_twirp_error(reply: tuple[int, str, bytes], code: str) -> dict[str, Any]:
    status, ctype, body = reply
    assert ctype == "application/json", reply
    doc: dict[str, Any] = json.loads(body)
    assert doc.get("code") == code and isinstance(doc.get("msg"), str), reply
    assert status == STATUS[code], reply
    return doc


# -- tokens on every surface ---------------------------------------------------------------


def signed(**claims: Any) -> str:
    return str(jwt.encode({"iss": API_KEY, **claims}, API_SECRET, algorithm="HS256"))


ADMIN_GRANTS = {
    "video": {"roomList": True, "roomAdmin": True, "roomJoin": True, "room": "r"},
    "sip": {"admin": True, "call": True},
    "sub": "mallory",
}


def bad_credentials(now: int) -> dict[str, tuple[str | bytes | None, str]]:
    """Each bad credential (built from the clock now, never at import) and the code it gets."""
    header, payload, _signature = signed(exp=now + 600, **ADMIN_GRANTS).split(".")
    return {
        "none": (None, "unauthenticated"),
        "empty-bearer": ("Bearer ", "unauthenticated"),
        "garbage": ("Bearer not-a-token", "unauthenticated"),
        "three-garbage-parts": ("Bearer a.b.c", "unauthenticated"),
        "not-utf8": (b"Bearer \xff\xfe." + payload.encode() + b".\xc3", "unauthenticated"),
        "latin1-token": ("Bearer " + header + ".\xe9\xe9." + payload, "unauthenticated"),
        "wrong-signature": (
            "Bearer " + jwt.encode({"iss": API_KEY, "exp": now + 600, **ADMIN_GRANTS}, "x" * 43),
            "unauthenticated",
        ),
        "no-signature": (f"Bearer {header}.{payload}.", "unauthenticated"),
        "unknown-key": (
            "Bearer " + jwt.encode({"iss": "nokey", "exp": now + 600, **ADMIN_GRANTS}, API_SECRET),
            "unauthenticated",
        ),
        "alg-none": (
            "Bearer "
            + jwt.encode(
                {"iss": API_KEY, "exp": now + 600, **ADMIN_GRANTS}, None, algorithm="none"
            ),
            "unauthenticated",
        ),
        "expired": (
            "Bearer " + signed(nbf=now - 900, exp=now - 600, **ADMIN_GRANTS),
            "unauthenticated",
        ),
        "not-yet-valid": (
            "Bearer " + signed(nbf=now + 600, exp=now + 900, **ADMIN_GRANTS),
            "unauthenticated",
        ),
        "no-exp": ("Bearer " + signed(**ADMIN_GRANTS), "unauthenticated"),
        "exp-not-a-number": ("Bearer " + signed(exp="soon", **ADMIN_GRANTS), "unauthenticated"),
        "grants-not-objects": (
            "Bearer " + signed(exp=now + 600, video=["roomList"], sip="admin", sub="m"),
            "unauthenticated",
        ),
        "no-grants": ("Bearer " + signed(exp=now + 600, sub="mallory"), "permission_denied"),
    }


# (method, path, Content-Type, body); every one needs a token
SURFACES: list[tuple[str, str, str | None, bytes]] = [
    ("POST", "/twirp/livekit.RoomService/ListRooms", "application/protobuf", b""),
    ("POST", "/twirp/livekit.SIP/ListSIPInboundTrunk", "application/json", b"{}"),
    ("POST", "/twirp/sipbridge.CallLog/ListCalls", "application/json", b"{}"),
    ("POST", "/twirp/livekit.Egress/ListEgress", "application/json", b"{}"),
    ("GET", "/sipbridge/v1/nodes", None, b""),
    ("GET", "/sipbridge/v1/calls/SCL_x/trace", None, b""),
    ("GET", "/sipbridge/v1/calls/SCL_x/pcap", None, b""),
    ("POST", "/sipbridge/v1/calls/SCL_x/rtp", None, b""),
    ("GET", "/console/live", None, b""),
    ("GET", "/console/calls/SCL_x", None, b""),
    ("POST", "/console/join", "application/json", b'{"room": "r"}'),
    ("GET", "/rtc/v1/validate", None, b""),
    ("GET", "/rtc/validate", None, b""),
]


@pytest.mark.parametrize("surface", SURFACES, ids=[s[1] for s in SURFACES])
async def test_bad_tokens_are_refused_on_every_surface(
    server: ServerProcess, surface: tuple[str, str, str | None, bytes]
) -> None:
    method, path, ctype, body = surface
    errors_before = await http_errors(server, 401)
    for case, (auth, code) in bad_credentials(int(time.time())).items():
        reply = await raw(server, method, path, body, auth=auth, ctype=ctype)
        if path.startswith("/rtc/"):  # the SDKs read the status and a plain-text reason
            assert reply[0] == STATUS[code], (case, reply)
        else:
            assert_twirp_error(reply, code)
        assert b"Traceback" not in reply[2], (case, reply)
    # every refusal counted, whatever the surface
    refused_401 = len([c for c in bad_credentials(0).values() if c[1] == "unauthenticated"])
    errors = await http_errors(server, 401)
    assert errors - errors_before >= refused_401
    await unharmed(server)


async def test_a_room_scoped_token_reaches_no_other_room(server: ServerProcess) -> None:
    async with api.LiveKitAPI(url=server.url, api_key=API_KEY, api_secret=API_SECRET) as lk:
        for name in ("mine", "theirs"):
            await lk.room.create_room(room_proto.CreateRoomRequest(name=name, metadata="kept"))
    mine = "Bearer " + token(api.VideoGrants(room_admin=True, room="mine"))
    asks = [
        ("ListParticipants", room_proto.ListParticipantsRequest(room="{room}")),
        ("UpdateRoomMetadata", room_proto.UpdateRoomMetadataRequest(room="{room}", metadata="x")),
        ("RemoveParticipant", room_proto.RoomParticipantIdentity(room="{room}", identity="a")),
        ("MutePublishedTrack", room_proto.MuteRoomTrackRequest(room="{room}", identity="a")),
        ("SendData", room_proto.SendDataRequest(room="{room}", data=b"x")),
    ]
    for method, template in asks:
        ask = type(template)()
        ask.CopyFrom(template)
        ask.room = "theirs"
        reply = await raw(
            server,
            "POST",
            f"/twirp/livekit.RoomService/{method}",
            ask.SerializeToString(),
            auth=mine,
            ctype="application/protobuf",
        )
        assert_twirp_error(reply, "permission_denied")
    # nor its own room's neighbours through the other surfaces: they need admin grants
    for method, path, body in [
        ("POST", "/console/join", b'{"room": "theirs"}'),
        ("GET", "/console/live", b""),
        ("GET", "/sipbridge/v1/nodes", b""),
        ("POST", "/twirp/livekit.RoomService/DeleteRoom", b'{"room": "theirs"}'),
    ]:
        reply = await raw(server, method, path, body, auth=mine, ctype="application/json")
        assert_twirp_error(reply, "permission_denied")
    async with api.LiveKitAPI(url=server.url, api_key=API_KEY, api_secret=API_SECRET) as lk:
        rooms = await lk.room.list_rooms(room_proto.ListRoomsRequest(names=["theirs"]))
        assert [r.metadata for r in rooms.rooms] == ["kept"]  # nothing changed there
        for name in ("mine", "theirs"):
            await lk.room.delete_room(room_proto.DeleteRoomRequest(room=name))
    await unharmed(server)


# -- oversized and malformed requests --------------------------------------------------------


async def test_oversized_request_lines_and_headers_are_refused(server: ServerProcess) -> None:
    attacks = {
        "long-url": (f"/twirp/livekit.RoomService/{'x' * 20000}", b""),
        "long-header": ("/healthz", b"X-Junk: " + b"j" * 70000 + b"\r\n"),
        "many-headers": ("/healthz", b"".join(b"X-H%d: v\r\n" % i for i in range(300))),
        "huge-authorization": (
            "/sipbridge/v1/nodes",
            b"Authorization: Bearer " + b"a" * 70000 + b"\r\n",
        ),
        "bad-header-bytes": ("/healthz", b"X-\x00Bad: \x01\r\n"),
    }
    before = await metric(server, 'sipbridge_http_errors_total{status="400",surface="parser"}')
    for name, (path, headers) in attacks.items():
        status, _, body = await raw(server, "GET", path, headers=headers)
        assert 400 <= status < 500, (name, status, body[:200])
    after = await metric(server, 'sipbridge_http_errors_total{status="400",surface="parser"}')
    assert after - before == len(attacks)  # counted; and no Traceback logged (module's end)
    await unharmed(server)


async def test_oversized_and_compressed_bodies_are_refused(server: ServerProcess) -> None:
    big_json = json.dumps({"key": "k" * 8000, "secret": "s"}).encode()
    reply = await raw(server, "POST", "/console/token", big_json, ctype="application/json")
    assert_twirp_error(reply, "malformed")
    reply = await raw(
        server, "POST", "/console/join", big_json, auth=console_token(), ctype="application/json"
    )
    assert_twirp_error(reply, "malformed")
    # a small gzip body that inflates to 30 MB: refused once the limit is passed, never inflated
    bomb = gzip.compress(b'{"key": "' + b"k" * 30_000_000 + b'"}')
    for path, ctype, auth in [
        ("/console/token", "application/json", None),
        ("/twirp/livekit.RoomService/ListRooms", "application/json", admin()),
    ]:
        reply = await raw(
            server,
            "POST",
            path,
            bomb,
            auth=auth,
            ctype=ctype,
            headers=b"Content-Encoding: gzip\r\n",
        )
        assert_twirp_error(reply, "malformed")
    await unharmed(server)


JSON_GARBAGE = [
    b"[" * 100_000 + b"]" * 100_000,  # nesting deeper than any parser's recursion
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    b'{"key": ' + b"9" * 5000 + b', "secret": "s"}',  # a 5000-digit number
    b'{"key": 1e999, "secret": "s"}',
    b'{"key": "k", "secret": "s", "key": "again"}',
    b'{"key": "\\ud800", "secret": "s"}',  # half a surrogate pair
    b"\xff\xfe{}",  # not UTF-8
    b'{"key": "k", "secret"',  # truncated
    b'"just a string"',
    b"null",
    b"",
]


GUESSER = "127.0.0.8"  # sign-in garbage comes from here: its failures block no other test


async def test_json_garbage_is_malformed_or_invalid_never_a_crash(server: ServerProcess) -> None:
    for body in JSON_GARBAGE:
        reply = await raw(
            server, "POST", "/console/token", body, ctype="application/json", source=GUESSER
        )
        assert json.loads(reply[2])["code"] in ("malformed", "invalid_argument", "unauthenticated")
        assert reply[0] in (400, 401), (body[:60], reply)
        reply = await raw(
            server, "POST", "/console/join", body, auth=console_token(), ctype="application/json"
        )
        assert json.loads(reply[2])["code"] in ("malformed", "invalid_argument"), (body[:60], reply)
        reply = await raw(
            server,
            "POST",
            "/twirp/livekit.RoomService/ListRooms",
            body,
            auth=admin(),
            ctype="application/json",
        )
        if reply[0] != 200:  # an empty body is an empty request; unknown fields are ignored
            assert json.loads(reply[2])["code"] == "malformed", (body[:60], reply)
    # wrong types where the console expects a string, a bool or a number of seconds
    for ask, code in [
        ({"key": 5, "secret": "s"}, "invalid_argument"),
        ({"key": API_KEY, "secret": ["s"]}, "invalid_argument"),
        ({"key": API_KEY, "secret": API_SECRET, "ttl_s": True}, "invalid_argument"),
        ({"key": API_KEY, "secret": API_SECRET, "ttl_s": "600"}, "invalid_argument"),
        ({"key": API_KEY, "secret": API_SECRET, "ttl_s": 600.5}, "invalid_argument"),
        ({"key": API_KEY, "secret": API_SECRET, "ttl_s": 10**30}, "invalid_argument"),
        ({"key": API_KEY, "secret": API_SECRET, "ttl_s": -1}, "invalid_argument"),
        ({"key": API_KEY, "secret": "\ud800"}, "unauthenticated"),  # no UTF-8 for it
        ({"key": "\ud800", "secret": "s"}, "unauthenticated"),
    ]:
        reply = await raw(
            server,
            "POST",
            "/console/token",
            json.dumps(ask).encode(),
            ctype="application/json",
            source=GUESSER,
        )
        assert_twirp_error(reply, code)
    for ask in [
        {"room": 5},
        {"room": "x" * 300},
        {"room": ""},
        {"room": "r", "talk": "yes"},
        {"room": None},
    ]:
        reply = await raw(
            server,
            "POST",
            "/console/join",
            json.dumps(ask).encode(),
            auth=console_token(),
            ctype="application/json",
        )
        assert_twirp_error(reply, "invalid_argument")
    await unharmed(server)


async def test_protobuf_garbage_and_huge_repeated_fields(server: ServerProcess) -> None:
    list_rooms = "/twirp/livekit.RoomService/ListRooms"
    for body in [
        b"\x0a\xff\xff\xff\x0f" + b"x" * 10,  # a field longer than the body
        b"\x0b" * 100_000,  # groups opened and never closed
        b"\x0a\x02\xff\xfe",  # a string that is not UTF-8
        b"\x80",  # a varint cut short
    ]:
        reply = await raw(
            server, "POST", list_rooms, body, auth=admin(), ctype="application/protobuf"
        )
        assert_twirp_error(reply, "malformed")
    # 400,000 room names in one request (within the 1 MiB limit): answered quickly
    started = time.perf_counter()
    many = b"\x0a\x01a" * 340_000
    reply = await raw(server, "POST", list_rooms, many, auth=admin(), ctype="application/protobuf")
    assert reply[0] == 200, reply
    assert time.perf_counter() - started < 3.0
    # 40,000 numbers on one trunk: refused by validation, nothing stored
    trunk = sip.CreateSIPInboundTrunkRequest(
        trunk=sip.SIPInboundTrunkInfo(name="big", numbers=[f"+1{n:011d}" for n in range(40_000)])
    ).SerializeToString()
    reply = await raw(
        server,
        "POST",
        "/twirp/livekit.SIP/CreateSIPInboundTrunk",
        trunk,
        auth=admin(),
        ctype="application/protobuf",
    )
    assert_twirp_error(reply, "invalid_argument")
    await unharmed(server)


async def test_huge_page_sizes_are_bounded_or_refused(server: ServerProcess) -> None:
    for path, body, code in [
        ("/twirp/livekit.SIP/ListSIPInboundTrunk", {"page": {"limit": 2**31 - 1}}, None),
        ("/twirp/livekit.SIP/ListSIPDispatchRule", {"page": {"limit": -5}}, None),
        ("/twirp/livekit.Egress/ListEgress", {"room_name": "r" * 10_000}, None),
        ("/twirp/sipbridge.CallLog/ListCalls", {"limit": 2**31 - 1}, "invalid_argument"),
        ("/twirp/sipbridge.CallLog/ListCalls", {"limit": -1}, "invalid_argument"),
        ("/twirp/sipbridge.CallLog/ListCalls", {"page_token": "A" * 100_000}, "invalid_argument"),
        ("/twirp/sipbridge.CallLog/ListCalls", {"since": "9" * 400}, "invalid_argument"),
        ("/twirp/sipbridge.CallLog/ListCalls", {"room": "r" * 100_000}, "invalid_argument"),
    ]:
        reply = await raw(
            server, "POST", path, json.dumps(body).encode(), auth=admin(), ctype="application/json"
        )
        if code is None:
            assert reply[0] == 200, (path, reply)
        else:
            assert_twirp_error(reply, code)
    await unharmed(server)


# -- paths -------------------------------------------------------------------------------------

TRAVERSALS = [
    "..%2f..%2fconsole_web.py",
    "..%2F..%2F..%2Fsipbridge%2F__init__.py",
    "%2e%2e%2f%2e%2e%2fconsole_web.py",
    "../../console_web.py",
    "..%5c..%5cconsole_web.py",
    "%2fetc%2fpasswd",
    "/etc/passwd",
    "..%00",
    "index.html%00.js",
    "%c0%ae%c0%ae%2fconsole_web.py",
    "..",
]


async def test_no_path_leaves_the_console_files(server: ServerProcess) -> None:
    for path in TRAVERSALS:
        for prefix in ("/console/assets/", "/console/"):
            status, _, body = await raw(server, "GET", prefix + path)
            assert status in (200, 400, 404), (prefix + path, status)
            # whatever answers 200 is the console's page, never a file from elsewhere
            assert b"ConsoleFiles" not in body and b"root:" not in body, (prefix + path, body[:200])
    await unharmed(server)


async def test_call_ids_are_names_not_paths(server: ServerProcess) -> None:
    auth = console_token()
    # ("../" and ".." are resolved by the HTTP layer before routing: the test above)
    ids = [t for t in TRAVERSALS if "../" not in t and t != ".."]
    for call_id in [*ids, "a%00b", "%ff%fe", "x" * 1000]:
        for path in (
            f"/sipbridge/v1/calls/{call_id}/trace",
            f"/sipbridge/v1/calls/{call_id}/pcap",
            f"/console/calls/{call_id}",
        ):
            status, _, body = await raw(server, "GET", path, auth=auth)
            assert status in (400, 404), (path, status, body[:200])
            assert b"root:" not in body
        reply = await raw(server, "POST", f"/sipbridge/v1/calls/{call_id}/rtp", auth=auth)
        assert reply[0] in (400, 404), reply
    reply = await raw(server, "GET", f"/sipbridge/v1/calls/{'x' * 5000}/trace", auth=auth)
    assert_twirp_error(reply, "invalid_argument")
    reply = await raw(server, "GET", f"/console/calls/{'x' * 500}", auth=auth)
    assert_twirp_error(reply, "invalid_argument")
    await unharmed(server)


# -- slow and split bodies -----------------------------------------------------------------------


async def test_a_body_in_two_pieces_is_read_whole(server: ServerProcess) -> None:
    body = json.dumps({"key": API_KEY, "secret": API_SECRET}).encode()
    head = (
        "POST /console/token HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(head + body[:10])
        await writer.drain()
        # The behaviour under test: the rest of the body comes in a later segment.
        await asyncio.sleep(0.2)
        writer.write(body[10:])
        await writer.drain()
        status, _, reply = await asyncio.wait_for(read_reply(reader), 5)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    assert status == 200, reply
    assert json.loads(reply)["token"]


async def trickle(server: ServerProcess, path: str, auth: str | None) -> tuple[int, str, bytes]:
    """A request whose 1,000-byte body comes a byte every 0.25 s (it would take four minutes)."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n"
        + (f"Authorization: {auth}\r\n" if auth else "")
        + "\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    reply = asyncio.ensure_future(read_reply(reader))
    try:
        writer.write(head + b"{")
        async with asyncio.timeout(IDLE_S + 5):
            while not reply.done():
                with contextlib.suppress(ConnectionError):
                    writer.write(b" ")
                    await writer.drain()
                await asyncio.wait([reply], timeout=0.25)
        return reply.result()
    finally:
        reply.cancel()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_a_trickling_body_is_cut_off_and_others_are_served(server: ServerProcess) -> None:
    started = time.monotonic()
    slow = [
        asyncio.create_task(trickle(server, path, auth))
        for path, auth in [
            ("/twirp/livekit.RoomService/ListRooms", admin()),
            ("/twirp/livekit.SIP/CreateSIPInboundTrunk", admin()),
            ("/console/token", None),
            ("/console/join", console_token()),
        ]
        for _ in range(5)
    ]
    # meanwhile the API answers others at once
    while not all(task.done() for task in slow) and time.monotonic() - started < IDLE_S + 6:
        before = time.perf_counter()
        reply = await raw(server, "GET", "/healthz")
        assert reply[0] == 200 and time.perf_counter() - before < 1.0  # < IDLE_S: not held up
        await asyncio.sleep(0.2)
    for task in slow:
        assert_twirp_error(await task, "deadline_exceeded")
    assert time.monotonic() - started < IDLE_S + 3
    await unharmed(server)


# -- /console/live streams ---------------------------------------------------------------------


async def open_live(
    server: ServerProcess, *, receive_buffer: int | None = None
) -> tuple[int, socket.socket]:
    """A `GET /console/live` on a blocking socket: (status, the socket)."""
    sock = socket.socket()
    if receive_buffer is not None:  # a reader that takes almost nothing
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", server.port))
    ask = f"GET /console/live HTTP/1.1\r\nHost: x\r\nAuthorization: {console_token()}\r\n\r\n"
    await loop.sock_sendall(sock, ask.encode())
    head = b""
    while b"\r\n" not in head:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 1), 5)
        assert chunk, "closed before a status line"
        head += chunk
    return int(head.split(b" ")[1]), sock


def reset(sock: socket.socket) -> None:
    """Gone without a goodbye: the connection reset, as when a page's machine loses power."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def streams(server: ServerProcess) -> float:
    return await metric(server, "sipbridge_console_streams")


async def test_live_streams_are_capped_and_abandoned_ones_released(server: ServerProcess) -> None:
    opened: list[socket.socket] = []
    try:
        for _ in range(32):
            status, sock = await open_live(server)
            opened.append(sock)
            assert status == 200
        assert await streams(server) == 32
        status, extra = await open_live(server)
        extra.close()
        assert status == 429
        assert await http_errors(server, 429) >= 1
    finally:
        for sock in opened:
            reset(sock)

    async def released() -> bool:
        return await streams(server) == 0

    await eventually(released, "every abandoned live stream released", timeout=5)
    status, sock = await open_live(server)
    sock.close()
    assert status == 200
    await unharmed(server)


async def flood_room_events(server: ServerProcess, count: int) -> None:
    """`count` rooms with 64 KB of metadata each created and deleted: 2 events of 64 KB each
    for every live stream."""
    async with api.LiveKitAPI(url=server.url, api_key=API_KEY, api_secret=API_SECRET) as lk:
        for n in range(count):
            name = f"flood-{n}"
            await lk.room.create_room(room_proto.CreateRoomRequest(name=name, metadata="m" * 65000))
            await lk.room.delete_room(room_proto.DeleteRoomRequest(room=name))


async def test_a_stream_whose_reader_stops_reading_is_ended(server: ServerProcess) -> None:
    status, stalled = await open_live(server, receive_buffer=4096)
    assert status == 200
    try:
        await flood_room_events(server, 150)  # ~19 MB for a reader that takes none of it

        async def ended() -> bool:
            return await streams(server) == 0

        await eventually(ended, "the stalled stream ended", timeout=IDLE_S + 5)
    finally:
        stalled.close()
    await unharmed(server)


async def test_a_stalled_stream_does_not_hold_up_shutdown(tmp_path: Path) -> None:
    proc = ServerProcess(tmp_path)  # the default --http-idle-timeout (20 s)
    proc.start()
    stalled: socket.socket | None = None
    try:
        status, stalled = await open_live(proc, receive_buffer=4096)
        assert status == 200
        await flood_room_events(proc, 150)
        started = time.monotonic()
        assert proc.stop(timeout=10) == 0
        assert time.monotonic() - started < 8  # not the ~75 s it took
    finally:
        if stalled is not None:
            stalled.close()
        if proc.proc is not None:
            proc.proc.kill()
            proc.proc.wait()
    assert "Traceback" not in proc.log.read_text(), proc.log_tail()


# -- clients that stop reading ---------------------------------------------------------------


async def stalled_total(server: ServerProcess) -> float:
    return await metric(server, "sipbridge_http_stalled_total")


async def test_a_client_that_stops_reading_its_replies_is_cut_off(server: ServerProcess) -> None:
    """Thousands of pipelined requests, none of the replies read (no token needed), and a
    5 MB ListRooms reply not read: each connection is cut within two idle timeouts."""
    async with api.LiveKitAPI(url=server.url, api_key=API_KEY, api_secret=API_SECRET) as lk:
        for n in range(80):
            await lk.room.create_room(
                room_proto.CreateRoomRequest(name=f"big-{n}", metadata="m" * 65000)
            )
    before = await stalled_total(server)
    list_rooms = (
        "POST /twirp/livekit.RoomService/ListRooms HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: {admin()}\r\nContent-Type: application/protobuf\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    asks = [b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 20_000] * 3 + [list_rooms] * 3
    stalled: list[socket.socket] = []
    try:
        for ask in asks:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            stalled.append(sock)
            loop = asyncio.get_running_loop()
            await loop.sock_connect(sock, ("127.0.0.1", server.port))
            with contextlib.suppress(BlockingIOError):
                sock.send(ask)  # as much as goes; the server stops reading once it is stuck too

        async def all_cut() -> bool:
            return await stalled_total(server) - before >= len(asks)

        await eventually(all_cut, "every stalled connection cut", timeout=2 * IDLE_S + 3)
    finally:
        for sock in stalled:
            sock.close()
        async with api.LiveKitAPI(url=server.url, api_key=API_KEY, api_secret=API_SECRET) as lk:
            for n in range(80):
                await lk.room.delete_room(room_proto.DeleteRoomRequest(room=f"big-{n}"))
    await unharmed(server)


async def test_a_slow_reader_that_keeps_reading_is_served(server: ServerProcess) -> None:
    async with api.LiveKitAPI(url=server.url, api_key=API_KEY, api_secret=API_SECRET) as lk:
        for n in range(80):
            await lk.room.create_room(
                room_proto.CreateRoomRequest(name=f"slow-{n}", metadata="m" * 65000)
            )
    before = await stalled_total(server)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port, limit=2**24)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        writer.write(
            (
                "POST /twirp/livekit.RoomService/ListRooms HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: {admin()}\r\nContent-Type: application/protobuf\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        got = 0
        while got < length:  # ~1.5 MB/s, slower than the server sends: it must wait for us
            chunk = await reader.read(min(64 * 1024, length - got))
            assert chunk, "cut off while reading"
            got += len(chunk)
            # The behaviour under test: a client that reads, slowly.
            await asyncio.sleep(0.04)
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        assert got == length > 5_000_000
        assert await stalled_total(server) == before
    finally:
        async with api.LiveKitAPI(url=server.url, api_key=API_KEY, api_secret=API_SECRET) as lk:
            for n in range(80):
                await lk.room.delete_room(room_proto.DeleteRoomRequest(room=f"slow-{n}"))
    await unharmed(server)


# -- sign-in flood -----------------------------------------------------------------------------


async def test_a_flood_of_sign_ins_is_blocked_per_address(server: ServerProcess) -> None:
    refused_before = await metric(server, "sipbridge_console_signins_refused_total")
    wrong = json.dumps({"key": API_KEY, "secret": "guess"}).encode()
    right = json.dumps({"key": API_KEY, "secret": API_SECRET}).encode()
    source = "127.0.0.7"  # an address of its own: the block must not reach the other tests
    for _ in range(10):
        reply = await raw(
            server, "POST", "/console/token", wrong, ctype="application/json", source=source
        )
        assert_twirp_error(reply, "unauthenticated")
    started = time.perf_counter()
    for _ in range(200):  # the flood goes on: refused at once, the right secret too
        reply = await raw(
            server, "POST", "/console/token", wrong, ctype="application/json", source=source
        )
        assert_twirp_error(reply, "resource_exhausted")
    assert time.perf_counter() - started < 10
    doc = assert_twirp_error(
        await raw(server, "POST", "/console/token", right, ctype="application/json", source=source),
        "resource_exhausted",
    )
    wait = int(doc["msg"].split("try again in ")[1].split(" ")[0])
    assert 0 < wait <= 60, doc  # seconds from now, not a clock reading
    refused = await metric(server, "sipbridge_console_signins_refused_total")
    assert refused - refused_before >= 211
    # another address signs in as ever
    status, _, body = await raw(server, "POST", "/console/token", right, ctype="application/json")
    assert status == 200 and json.loads(body)["token"], body
    await unharmed(server)


# -- at the end ----------------------------------------------------------------------------------


async def test_after_all_that_the_server_is_whole(server: ServerProcess) -> None:
    await unharmed(server)
    async with aiohttp.ClientSession() as session, session.get(server.url + "/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    assert "sipbridge_console_streams 0.0" in text
    assert "Traceback" not in server.log.read_text(), server.log_tail()
