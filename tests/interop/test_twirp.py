"""The Twirp edge of a real `sipbridge serve` process, spoken as raw HTTP.

What is checked is what WIRE.md s1-s2 and the Twirp v7 spec promise a client
(https://twitchtv.github.io/twirp/docs/spec_v7.html): routing, codecs, body limits, auth and the
JSON error shape, and that no input ever produces a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import jwt
import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from livekit import api
from livekit.protocol import models, sip
from livekit.protocol import room as room_proto

from tests.harness import module_server
from tests.helpers import API_KEY, API_SECRET, ServerProcess, token, twirp

# WIRE.md s1: the HTTP status of each Twirp error code (written out here, not imported from src,
# so a wrong table in the server fails these tests).
TWIRP_STATUS = {
    "canceled": 408,
    "deadline_exceeded": 408,
    "invalid_argument": 400,
    "malformed": 400,
    "out_of_range": 400,
    "not_found": 404,
    "bad_route": 404,
    "already_exists": 409,
    "aborted": 409,
    "permission_denied": 403,
    "unauthenticated": 401,
    "resource_exhausted": 429,
    "failed_precondition": 412,
    "unimplemented": 501,
    "internal": 500,
    "unknown": 500,
    "dataloss": 500,
    "data_loss": 500,
    "unavailable": 503,
}
MIB = 1024 * 1024
ROOM = "livekit.RoomService"
SIP = "livekit.SIP"


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the read-mostly edge tests of this module (starting one costs ~0.4 s)."""
    yield from module_server(tmp_path_factory, "twirp-edge")


def bearer(video: api.VideoGrants | None = None, sip_grants: api.SIPGrants | None = None) -> str:
    return "Bearer " + token(video, sip_grants)


def admin() -> str:
    """Every grant a server-side caller normally has."""
    return bearer(
        api.VideoGrants(room_create=True, room_list=True, room_admin=True, room_record=True),
        api.SIPGrants(admin=True, call=True),
    )


def pyjwt_token(**claims: Any) -> str:
    """A token built claim by claim, for what AccessToken cannot make (expired, future nbf)."""
    return str(jwt.encode({"iss": API_KEY, **claims}, API_SECRET, algorithm="HS256"))


def assert_twirp_error(status: int, ctype: str, body: bytes, code: str) -> dict[str, Any]:
    """A Twirp error: JSON content type, {"code", "msg"} body, HTTP status of the code."""
    assert ctype == "application/json", (status, ctype, body[:300])
    doc = json.loads(body)
    assert isinstance(doc, dict), body[:300]
    assert doc.get("code") == code, (status, doc)
    assert isinstance(doc.get("msg"), str), doc
    assert status == TWIRP_STATUS[code], (status, doc)
    if "meta" in doc:
        assert isinstance(doc["meta"], dict), doc
    return doc


async def request(
    url: str,
    path: str,
    body: bytes = b"",
    *,
    method: str = "POST",
    headers: dict[str, str] | None = None,
) -> tuple[int, str, bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url + path, data=body, headers=headers or {}) as resp,
    ):
        return resp.status, resp.content_type, await resp.read()


async def raw_http(port: int, head: bytes, body_parts: list[bytes]) -> tuple[int, str, bytes]:
    """Send a hand-written request (possibly an incomplete body) and read one response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        try:
            writer.write(head)
            for part in body_parts:
                writer.write(part)
                await writer.drain()
        except ConnectionError:
            pass  # the server may answer and close before taking it all; read what it said
        head_bytes = await reader.readuntil(b"\r\n\r\n")
        lines = head_bytes.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(fields.get("content-length", "0")))
        ctype = fields.get("content-type", "").split(";")[0].strip()
        return status, ctype, body
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def request_head(path: str, port: int, auth: str, extra: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Content-Type: application/protobuf\r\n"
        + (f"Authorization: {auth}\r\n" if auth else "")
        + f"{extra}\r\n"
    ).encode()


async def healthz(url: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url + "/healthz", timeout=aiohttp.ClientTimeout(total=5)) as resp,
    ):
        return resp.status, await resp.text()


async def room_names(url: str) -> list[str]:
    status, _, body = await twirp(url, ROOM, "ListRooms", b"", auth=admin())
    assert status == 200, body
    return sorted(r.name for r in room_proto.ListRoomsResponse.FromString(body).rooms)


# -- health and routing ------------------------------------------------------------------------


async def test_healthz(edge: ServerProcess) -> None:
    status, text = await healthz(edge.url)
    assert status == 200
    assert text.strip() == "ok"


@pytest.mark.parametrize(
    "path",
    [
        "/twirp/livekit.Nope/CreateRoom",
        "/twirp/livekit.RoomService/Nope",
        "/twirp/livekit.RoomService/createRoom",
        "/twirp/livekit.RoomService/CreateRoom/",
        "/twirp/livekit.RoomService",
        "/twirp/RoomService/CreateRoom",
        "/twirp/",
        "/twirp/livekit.SIP/CreateSIPInboundTrunk/extra",
    ],
)
async def test_unknown_service_or_method_is_bad_route(edge: ServerProcess, path: str) -> None:
    status, ctype, body = await request(
        edge.url,
        path,
        b"",
        headers={"Content-Type": "application/protobuf", "Authorization": admin()},
    )
    assert_twirp_error(status, ctype, body, "bad_route")


async def test_unknown_route_without_token_is_bad_route(edge: ServerProcess) -> None:
    status, ctype, body = await twirp(edge.url, ROOM, "Nope", b"", auth=None)
    assert_twirp_error(status, ctype, body, "bad_route")


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
async def test_only_post_is_routed(edge: ServerProcess, method: str) -> None:
    status, ctype, body = await request(
        edge.url,
        "/twirp/livekit.RoomService/ListRooms",
        method=method,
        headers={"Content-Type": "application/protobuf", "Authorization": admin()},
    )
    assert_twirp_error(status, ctype, body, "bad_route")


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/octet-stream",
        "application/x-www-form-urlencoded",
        "application/grpc",
        "application/xml",
        "multipart/form-data; boundary=x",
    ],
)
async def test_unexpected_content_type_is_bad_route(edge: ServerProcess, content_type: str) -> None:
    status, ctype, body = await twirp(
        edge.url, ROOM, "ListRooms", b"", auth=admin(), content_type=content_type
    )
    assert_twirp_error(status, ctype, body, "bad_route")


# -- codecs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xff\xff",
        b"\x0a\x05abc",  # field 1, length 5, only 3 bytes
        b"\x0a\x02\xff\xfe",  # field 1 (string name) that is not UTF-8
        b"\x0b",  # start-group without its end
        b"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # varint longer than 10 bytes
    ],
)
async def test_malformed_protobuf_is_malformed(edge: ServerProcess, body: bytes) -> None:
    status, ctype, reply = await twirp(edge.url, ROOM, "CreateRoom", body, auth=admin())
    assert_twirp_error(status, ctype, reply, "malformed")
    assert "twirp-bad-pb" not in await room_names(edge.url)


@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b"not json",
        b'{"name": "x",}',
        b"\xff\xfe{}",
        b'{"name": 5}',
        b'{"empty_timeout": "soon"}',
        b'{"empty_timeout": -1}',
        b"null",
        b"1",
        b"[" * 5000,
    ],
)
async def test_malformed_json_is_malformed(edge: ServerProcess, body: bytes) -> None:
    status, ctype, reply = await twirp(
        edge.url, ROOM, "CreateRoom", body, auth=admin(), content_type="application/json"
    )
    assert_twirp_error(status, ctype, reply, "malformed")


@pytest.mark.parametrize("body", [b"[]", b'"x"'])
async def test_json_body_must_be_an_object(edge: ServerProcess, body: bytes) -> None:
    status, ctype, reply = await twirp(
        edge.url, ROOM, "ListRooms", body, auth=admin(), content_type="application/json"
    )
    assert_twirp_error(status, ctype, reply, "malformed")


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ('{"name": "json-snake", "empty_timeout": 7, "max_participants": 3}', "application/json"),
        ('{"name": "json-camel", "emptyTimeout": 7, "maxParticipants": 3}', "application/json"),
        (
            '{"name": "json-charset", "emptyTimeout": 7, "maxParticipants": 3}',
            "application/json; charset=utf-8",
        ),
    ],
)
async def test_json_request_gets_json_reply(
    edge: ServerProcess, body: str, content_type: str
) -> None:
    name = json.loads(body)["name"]
    status, ctype, reply = await twirp(
        edge.url, ROOM, "CreateRoom", body, auth=admin(), content_type=content_type
    )
    assert status == 200, reply
    assert ctype == "application/json"
    room = json_format.Parse(reply.decode(), models.Room(), ignore_unknown_fields=True)
    assert room.name == name
    assert room.sid.startswith("RM_")
    assert (room.empty_timeout, room.max_participants) == (7, 3)
    # The same room seen through the protobuf codec.
    status, _, listed = await twirp(
        edge.url,
        ROOM,
        "ListRooms",
        room_proto.ListRoomsRequest(names=[name]).SerializeToString(),
        auth=admin(),
    )
    assert status == 200
    rooms = room_proto.ListRoomsResponse.FromString(listed).rooms
    assert [(r.sid, r.empty_timeout) for r in rooms] == [(room.sid, 7)]


async def test_json_error_for_json_request_is_still_twirp_json(edge: ServerProcess) -> None:
    status, ctype, reply = await twirp(
        edge.url, ROOM, "CreateRoom", "{}", auth=admin(), content_type="application/json"
    )
    doc = assert_twirp_error(status, ctype, reply, "invalid_argument")
    assert "name" in doc["msg"]


async def test_protobuf_request_gets_protobuf_reply(edge: ServerProcess) -> None:
    req = room_proto.CreateRoomRequest(name="pb-room", metadata="m")
    status, ctype, reply = await twirp(
        edge.url, ROOM, "CreateRoom", req.SerializeToString(), auth=admin()
    )
    assert (status, ctype) == (200, "application/protobuf")
    room = models.Room.FromString(reply)
    assert (room.name, room.metadata) == ("pb-room", "m")


# -- auth --------------------------------------------------------------------------------------

LIST_ROOMS = {"video": {"roomList": True}}


def _tampered_payload() -> str:
    header, payload, signature = token(api.VideoGrants(room_list=True)).split(".")
    return f"Bearer {header}.{payload[:-2]}AA.{signature}"


def _no_signature() -> str:
    header, payload, _ = token(api.VideoGrants(room_list=True)).split(".")
    return f"Bearer {header}.{payload}."


# Each bad credential is built inside the test from the clock at that moment (`now`), never at
# collection: a token built at import expires or becomes valid while a long suite runs (the
# "nbf-far-future" one did, on a loaded machine, after ten minutes).
BAD_TOKENS: dict[str, Callable[[int], str | None]] = {
    "missing": lambda now: None,
    "empty": lambda now: "",
    "bearer-only": lambda now: "Bearer ",
    "garbage": lambda now: "Bearer garbage",
    "three-garbage-parts": lambda now: "Bearer a.b.c",
    "wrong-scheme": lambda now: "Basic " + token(api.VideoGrants(room_list=True)),
    "wrong-secret": lambda now: "Bearer " + token(api.VideoGrants(room_list=True), secret="x" * 43),
    "unknown-key": lambda now: "Bearer " + token(api.VideoGrants(room_list=True), key="otherkey"),
    "tampered-payload": lambda now: _tampered_payload(),
    "no-signature": lambda now: _no_signature(),
    "expired": lambda now: "Bearer " + pyjwt_token(nbf=now - 600, exp=now - 90, **LIST_ROOMS),
    "nbf-far-future": lambda now: (
        "Bearer " + pyjwt_token(nbf=now + 600, exp=now + 900, **LIST_ROOMS)
    ),
    "no-exp": lambda now: "Bearer " + pyjwt_token(nbf=now, **LIST_ROOMS),
    "alg-none": lambda now: (
        "Bearer " + jwt.encode({"iss": API_KEY, "exp": now + 600}, None, algorithm="none")
    ),
    "grants-not-object": lambda now: "Bearer " + pyjwt_token(exp=now + 600, video=["roomList"]),
}


@pytest.mark.parametrize("case", list(BAD_TOKENS))
async def test_bad_credentials_are_unauthenticated(edge: ServerProcess, case: str) -> None:
    auth = BAD_TOKENS[case](int(time.time()))
    status, ctype, body = await twirp(edge.url, ROOM, "ListRooms", b"", auth=auth)
    assert_twirp_error(status, ctype, body, "unauthenticated")


async def test_unauthenticated_create_changes_nothing(edge: ServerProcess) -> None:
    req = room_proto.CreateRoomRequest(name="never-created").SerializeToString()
    forged = token(api.VideoGrants(room_create=True), secret="y" * 43)
    status, ctype, body = await twirp(edge.url, ROOM, "CreateRoom", req, auth="Bearer " + forged)
    assert_twirp_error(status, ctype, body, "unauthenticated")
    assert "never-created" not in await room_names(edge.url)


@pytest.mark.parametrize(
    ("nbf_offset", "exp_offset"),
    [(30, 600), (-600, -30), (0, 1)],
    ids=["nbf-30s-ahead", "expired-30s-ago", "nbf-now"],
)
async def test_clock_leeway_of_60s(edge: ServerProcess, nbf_offset: int, exp_offset: int) -> None:
    now = int(time.time())
    tok = pyjwt_token(nbf=now + nbf_offset, exp=now + exp_offset, **LIST_ROOMS)
    status, ctype, body = await twirp(edge.url, ROOM, "ListRooms", b"", auth="Bearer " + tok)
    assert (status, ctype) == (200, "application/protobuf"), body
    room_proto.ListRoomsResponse.FromString(body)


async def test_official_client_token_is_accepted(edge: ServerProcess) -> None:
    async with api.LiveKitAPI(url=edge.url, api_key=API_KEY, api_secret=API_SECRET) as lk:
        room = await lk.room.create_room(room_proto.CreateRoomRequest(name="official"))
        listed = await lk.room.list_rooms(room_proto.ListRoomsRequest(names=["official"]))
        assert [r.sid for r in listed.rooms] == [room.sid]


async def test_huge_token_is_a_twirp_error(edge: ServerProcess) -> None:
    status, ctype, body = await twirp(
        edge.url, ROOM, "ListRooms", b"", auth="Bearer " + "a" * 20000
    )
    assert_twirp_error(status, ctype, body, "unauthenticated")


# -- grants ------------------------------------------------------------------------------------

NO_SIP = api.VideoGrants(room_create=True, room_list=True, room_admin=True, room_record=True)

SIP_ADMIN_METHODS: list[tuple[str, Message]] = [
    (
        "CreateSIPInboundTrunk",
        sip.CreateSIPInboundTrunkRequest(trunk=sip.SIPInboundTrunkInfo(numbers=["+15550100"])),
    ),
    (
        "CreateSIPOutboundTrunk",
        sip.CreateSIPOutboundTrunkRequest(
            trunk=sip.SIPOutboundTrunkInfo(address="sip.example.com", numbers=["+15550100"])
        ),
    ),
    ("ListSIPInboundTrunk", sip.ListSIPInboundTrunkRequest()),
    ("ListSIPOutboundTrunk", sip.ListSIPOutboundTrunkRequest()),
    ("ListSIPTrunk", sip.ListSIPTrunkRequest()),
    ("GetSIPInboundTrunk", sip.GetSIPInboundTrunkRequest(sip_trunk_id="ST_x")),
    ("GetSIPOutboundTrunk", sip.GetSIPOutboundTrunkRequest(sip_trunk_id="ST_x")),
    ("DeleteSIPTrunk", sip.DeleteSIPTrunkRequest(sip_trunk_id="ST_x")),
    (
        "UpdateSIPInboundTrunk",
        sip.UpdateSIPInboundTrunkRequest(
            sip_trunk_id="ST_x", replace=sip.SIPInboundTrunkInfo(numbers=["+1"])
        ),
    ),
    (
        "CreateSIPDispatchRule",
        sip.CreateSIPDispatchRuleRequest(
            dispatch_rule=sip.SIPDispatchRuleInfo(
                rule=sip.SIPDispatchRule(
                    dispatch_rule_direct=sip.SIPDispatchRuleDirect(room_name="r")
                )
            )
        ),
    ),
    ("ListSIPDispatchRule", sip.ListSIPDispatchRuleRequest()),
    ("DeleteSIPDispatchRule", sip.DeleteSIPDispatchRuleRequest(sip_dispatch_rule_id="SDR_x")),
]


@pytest.mark.parametrize(
    ("method", "message"), SIP_ADMIN_METHODS, ids=[m for m, _ in SIP_ADMIN_METHODS]
)
@pytest.mark.parametrize(
    "grants",
    [
        (NO_SIP, None),
        (NO_SIP, api.SIPGrants(call=True)),
        (None, api.SIPGrants(admin=False, call=True)),
    ],
    ids=["video-only", "sip-call-only", "sip-admin-false"],
)
async def test_sip_methods_need_sip_admin(
    edge: ServerProcess,
    method: str,
    message: Message,
    grants: tuple[api.VideoGrants | None, api.SIPGrants | None],
) -> None:
    auth = bearer(*grants)
    status, ctype, body = await twirp(edge.url, SIP, method, message.SerializeToString(), auth=auth)
    assert_twirp_error(status, ctype, body, "permission_denied")


async def test_denied_sip_create_changes_nothing(edge: ServerProcess) -> None:
    method, message = SIP_ADMIN_METHODS[0]
    status, ctype, body = await twirp(
        edge.url, SIP, method, message.SerializeToString(), auth=bearer(NO_SIP)
    )
    assert_twirp_error(status, ctype, body, "permission_denied")
    status, _, listed = await twirp(edge.url, SIP, "ListSIPInboundTrunk", b"", auth=admin())
    assert status == 200
    assert not sip.ListSIPInboundTrunkResponse.FromString(listed).items


async def test_create_sip_participant_needs_sip_call(edge: ServerProcess) -> None:
    req = sip.CreateSIPParticipantRequest(
        sip_trunk_id="ST_x", sip_call_to="+15550100", room_name="r"
    ).SerializeToString()
    auth = bearer(NO_SIP, api.SIPGrants(admin=True))
    status, ctype, body = await twirp(edge.url, SIP, "CreateSIPParticipant", req, auth=auth)
    assert_twirp_error(status, ctype, body, "permission_denied")


@pytest.mark.parametrize(
    "video",
    [
        api.VideoGrants(room_create=True, room_list=True),
        api.VideoGrants(room_admin=True, room="other-room"),
        api.VideoGrants(room_admin=True),
    ],
    ids=["no-room-admin", "admin-of-another-room", "admin-of-no-room"],
)
async def test_transfer_needs_sip_call_and_room_admin_for_the_room(
    edge: ServerProcess, video: api.VideoGrants
) -> None:
    req = sip.TransferSIPParticipantRequest(
        room_name="call-room", participant_identity="caller", transfer_to="tel:+15550100"
    ).SerializeToString()
    auth = bearer(video, api.SIPGrants(call=True, admin=True))
    status, ctype, body = await twirp(edge.url, SIP, "TransferSIPParticipant", req, auth=auth)
    assert_twirp_error(status, ctype, body, "permission_denied")


async def test_create_room_needs_room_create(edge: ServerProcess) -> None:
    req = room_proto.CreateRoomRequest(name="denied-room").SerializeToString()
    auth = "Bearer " + token(
        api.VideoGrants(room_list=True, room_admin=True, room="denied-room", room_join=True),
        api.SIPGrants(admin=True, call=True),
        identity="alice",
    )
    status, ctype, body = await twirp(edge.url, ROOM, "CreateRoom", req, auth=auth)
    assert_twirp_error(status, ctype, body, "permission_denied")
    assert "denied-room" not in await room_names(edge.url)


async def test_delete_room_needs_room_create(edge: ServerProcess) -> None:
    req = room_proto.CreateRoomRequest(name="kept-room").SerializeToString()
    status, _, _ = await twirp(edge.url, ROOM, "CreateRoom", req, auth=admin())
    assert status == 200
    delete = room_proto.DeleteRoomRequest(room="kept-room").SerializeToString()
    auth = bearer(api.VideoGrants(room_list=True, room_admin=True, room="kept-room"))
    status, ctype, body = await twirp(edge.url, ROOM, "DeleteRoom", delete, auth=auth)
    assert_twirp_error(status, ctype, body, "permission_denied")
    assert "kept-room" in await room_names(edge.url)


async def test_list_rooms_needs_room_list(edge: ServerProcess) -> None:
    auth = bearer(
        api.VideoGrants(room_create=True, room_admin=True, room_record=True),
        api.SIPGrants(admin=True, call=True),
    )
    status, ctype, body = await twirp(edge.url, ROOM, "ListRooms", b"", auth=auth)
    assert_twirp_error(status, ctype, body, "permission_denied")


async def test_list_participants_needs_room_admin_for_that_room(edge: ServerProcess) -> None:
    for name in ("room-a", "room-b"):
        req = room_proto.CreateRoomRequest(name=name).SerializeToString()
        assert (await twirp(edge.url, ROOM, "CreateRoom", req, auth=admin()))[0] == 200
    ask_b = room_proto.ListParticipantsRequest(room="room-b").SerializeToString()

    admin_of_a = bearer(api.VideoGrants(room_admin=True, room="room-a"))
    status, ctype, body = await twirp(edge.url, ROOM, "ListParticipants", ask_b, auth=admin_of_a)
    assert_twirp_error(status, ctype, body, "permission_denied")

    member_of_b = "Bearer " + token(
        api.VideoGrants(room_join=True, room="room-b", room_list=True), identity="bob"
    )
    status, ctype, body = await twirp(edge.url, ROOM, "ListParticipants", ask_b, auth=member_of_b)
    assert_twirp_error(status, ctype, body, "permission_denied")

    # The same call with roomAdmin for room-b is allowed: the grant, not the call, was refused.
    admin_of_b = bearer(api.VideoGrants(room_admin=True, room="room-b"))
    status, ctype, body = await twirp(edge.url, ROOM, "ListParticipants", ask_b, auth=admin_of_b)
    assert (status, ctype) == (200, "application/protobuf"), body
    assert not room_proto.ListParticipantsResponse.FromString(body).participants


# -- body limits -------------------------------------------------------------------------------


def list_rooms_body(size: int) -> bytes:
    """A valid ListRoomsRequest of exactly `size` bytes: one unknown bytes field (number 15)."""
    for header_len in range(3, 8):
        payload = size - header_len
        header = b"\x7a" + _varint(payload)
        if len(header) == header_len:
            body = header + b"\x00" * payload
            assert len(body) == size
            room_proto.ListRoomsRequest.FromString(body)
            return body
    raise AssertionError(size)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


async def post_large(url: str, body: bytes) -> tuple[int, str, bytes]:
    """ListRooms with a large body sent with its Content-Length (aiohttp wants a file object)."""
    headers = {"Content-Type": "application/protobuf", "Authorization": admin()}
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            url + "/twirp/livekit.RoomService/ListRooms", data=io.BytesIO(body), headers=headers
        ) as resp,
    ):
        assert resp.request_info.headers.get("Content-Length") == str(len(body))
        return resp.status, resp.content_type, await resp.read()


async def test_body_of_exactly_1_mib_is_accepted(edge: ServerProcess) -> None:
    status, ctype, body = await post_large(edge.url, list_rooms_body(MIB))
    assert (status, ctype) == (200, "application/protobuf"), body[:300]


async def test_body_over_1_mib_is_malformed(edge: ServerProcess) -> None:
    status, ctype, body = await post_large(edge.url, list_rooms_body(MIB + 1))
    assert_twirp_error(status, ctype, body, "malformed")


@pytest.mark.parametrize(("with_token", "code"), [(True, "malformed"), (False, "unauthenticated")])
async def test_declared_huge_body_is_refused_without_reading_it(
    edge: ServerProcess, with_token: bool, code: str
) -> None:
    # Content-Length says 64 MiB; only 1 KiB is sent. An answer proves the server did not wait.
    head = request_head(
        "/twirp/livekit.RoomService/ListRooms",
        edge.port,
        admin() if with_token else "",
        f"Content-Length: {64 * MIB}\r\n",
    )
    status, ctype, body = await asyncio.wait_for(
        raw_http(edge.port, head, [b"\x00" * 1024]), timeout=5
    )
    assert_twirp_error(status, ctype, body, code)
    assert (await healthz(edge.url))[0] == 200


async def test_chunked_body_over_1_mib_is_refused_before_it_ends(edge: ServerProcess) -> None:
    # 1.25 MiB of chunks, and no final 0-length chunk: the request never ends.
    head = request_head(
        "/twirp/livekit.RoomService/ListRooms",
        edge.port,
        admin(),
        "Transfer-Encoding: chunked\r\n",
    )
    chunk = b"\x00" * (64 * 1024)
    parts = [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * 20
    status, ctype, body = await asyncio.wait_for(raw_http(edge.port, head, parts), timeout=5)
    assert_twirp_error(status, ctype, body, "malformed")
    assert (await healthz(edge.url))[0] == 200


async def test_client_gone_mid_body_logs_no_traceback(server: ServerProcess) -> None:
    # Content-Length says 1000; 10 bytes come, then the client goes away.
    head = request_head(
        "/twirp/livekit.RoomService/ListRooms", server.port, admin(), "Content-Length: 1000\r\n"
    )
    for _ in range(3):
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(head + b"\x00" * 10)
        await writer.drain()
        # The behaviour under test: the client goes away while the server waits for the rest
        # of the body (0.1 s later), not before it started reading.
        await asyncio.sleep(0.1)
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    # The behaviour under test is an absence (no traceback for the cut bodies): give the server
    # 0.2 s in which it would have logged one.
    await asyncio.sleep(0.2)
    status, text = await healthz(server.url)
    assert (status, text.strip()) == (200, "ok")
    assert await room_names(server.url) == []
    log = server.log.read_text()
    assert "Traceback" not in log, log


async def test_small_chunked_body_is_accepted(edge: ServerProcess) -> None:
    head = request_head(
        "/twirp/livekit.RoomService/ListRooms",
        edge.port,
        admin(),
        "Transfer-Encoding: chunked\r\n",
    )
    req = room_proto.ListRoomsRequest(names=["none-such"]).SerializeToString()
    parts = [b"%x\r\n%s\r\n" % (len(req), req), b"0\r\n\r\n"]
    status, ctype, body = await asyncio.wait_for(raw_http(edge.port, head, parts), timeout=5)
    assert (status, ctype) == (200, "application/protobuf"), body
    assert not room_proto.ListRoomsResponse.FromString(body).rooms


# -- deadlines ---------------------------------------------------------------------------------


@pytest.mark.parametrize("timeout_ms", ["10000", "600000", "1", "0", "-5", "soon"])
async def test_twirp_timeout_header_is_accepted(edge: ServerProcess, timeout_ms: str) -> None:
    name = f"timeout-{timeout_ms}"
    req = room_proto.CreateRoomRequest(name=name).SerializeToString()
    headers = {"X-Twirp-Timeout-Ms": timeout_ms, "Twirp-Version": "v8.1.3"}
    status, ctype, body = await twirp(
        edge.url, ROOM, "CreateRoom", req, auth=admin(), headers=headers
    )
    if timeout_ms == "1" and status != 200:
        # A 1 ms deadline may really expire; then it must be reported as such.
        assert_twirp_error(status, ctype, body, "deadline_exceeded")
        return
    assert (status, ctype) == (200, "application/protobuf"), body
    assert models.Room.FromString(body).name == name
    assert name in await room_names(edge.url)


async def test_deadline_never_reports_a_write_that_was_made(server: ServerProcess) -> None:
    # A 1 ms deadline expires before, during or after the store write. Whatever the timing, the
    # answer must tell the truth: 200 means stored, deadline_exceeded means nothing changed.
    headers = {"X-Twirp-Timeout-Ms": "1"}

    async def create(i: int) -> tuple[str, int, str, bytes]:
        number = f"+1555020{i:02d}"
        req = sip.CreateSIPInboundTrunkRequest(trunk=sip.SIPInboundTrunkInfo(numbers=[number]))
        status, ctype, body = await twirp(
            server.url,
            SIP,
            "CreateSIPInboundTrunk",
            req.SerializeToString(),
            auth=admin(),
            headers=headers,
        )
        return number, status, ctype, body

    # Some one after the other, some at once (then most wait for the write lock).
    replies = [await create(i) for i in range(10)]
    replies += await asyncio.gather(*(create(i) for i in range(10, 30)))

    status, _, body = await twirp(server.url, SIP, "ListSIPInboundTrunk", b"", auth=admin())
    assert status == 200, body
    listed = {
        t.sip_trunk_id: list(t.numbers)
        for t in sip.ListSIPInboundTrunkResponse.FromString(body).items
    }
    listed_numbers = {n for numbers in listed.values() for n in numbers}
    for number, status, ctype, body in replies:
        if status == 200:
            trunk = sip.SIPInboundTrunkInfo.FromString(body)
            assert listed.get(trunk.sip_trunk_id) == [number], (number, listed)
        else:
            assert_twirp_error(status, ctype, body, "deadline_exceeded")
            assert number not in listed_numbers, (number, listed)
    assert len(listed) == sum(1 for _, status, _, _ in replies if status == 200)
    # And it stays that way across a restart (what was answered 200 was really stored).
    await asyncio.to_thread(server.restart)
    status, _, body = await twirp(server.url, SIP, "ListSIPInboundTrunk", b"", auth=admin())
    after = {t.sip_trunk_id for t in sip.ListSIPInboundTrunkResponse.FromString(body).items}
    assert after == set(listed)


# -- values that cannot be written back as JSON -----------------------------------------------

# google.protobuf.Duration allows nanos in [-999999999, 999999999] only; protojson cannot print
# anything else, so the server must refuse such a value instead of storing it.
BAD_NANOS = Duration(seconds=1, nanos=2_000_000_000)


def _inbound_with(field_name: str) -> Message:
    trunk = sip.SIPInboundTrunkInfo(numbers=["+15550100"])
    getattr(trunk, field_name).CopyFrom(BAD_NANOS)
    return sip.CreateSIPInboundTrunkRequest(trunk=trunk)


def _outbound_with_media_timeout() -> Message:
    trunk = sip.SIPOutboundTrunkInfo(address="sip.example.com", numbers=["+15550100"])
    trunk.media.media_timeout.CopyFrom(BAD_NANOS)
    return sip.CreateSIPOutboundTrunkRequest(trunk=trunk)


def _rule_with_media_timeout() -> Message:
    info = sip.SIPDispatchRuleInfo(
        rule=sip.SIPDispatchRule(dispatch_rule_direct=sip.SIPDispatchRuleDirect(room_name="r"))
    )
    info.media.media_timeout.CopyFrom(BAD_NANOS)
    return sip.CreateSIPDispatchRuleRequest(dispatch_rule=info)


BAD_DURATIONS: list[tuple[str, str, Message]] = [
    ("CreateSIPInboundTrunk", "max_call_duration", _inbound_with("max_call_duration")),
    ("CreateSIPInboundTrunk", "ringing_timeout", _inbound_with("ringing_timeout")),
    ("CreateSIPOutboundTrunk", "media_timeout", _outbound_with_media_timeout()),
    ("CreateSIPDispatchRule", "media_timeout", _rule_with_media_timeout()),
]


@pytest.mark.parametrize(
    ("method", "field_name", "message"),
    BAD_DURATIONS,
    ids=[f"{m}-{f}" for m, f, _ in BAD_DURATIONS],
)
async def test_invalid_duration_is_invalid_argument(
    server: ServerProcess, method: str, field_name: str, message: Message
) -> None:
    status, ctype, body = await twirp(
        server.url, SIP, method, message.SerializeToString(), auth=admin()
    )
    doc = assert_twirp_error(status, ctype, body, "invalid_argument")
    assert field_name in doc["msg"], doc


async def test_json_listing_never_fails_on_stored_values(server: ServerProcess) -> None:
    create = _inbound_with("max_call_duration").SerializeToString()
    await twirp(server.url, SIP, "CreateSIPInboundTrunk", create, auth=admin())
    status, ctype, body = await twirp(
        server.url, SIP, "ListSIPInboundTrunk", "{}", auth=admin(), content_type="application/json"
    )
    assert (status, ctype) == (200, "application/json"), (status, ctype, body[:200])
    status, ctype, body = await twirp(server.url, SIP, "ListSIPInboundTrunk", b"", auth=admin())
    assert (status, ctype) == (200, "application/protobuf"), (status, ctype, body[:200])


# -- fuzz --------------------------------------------------------------------------------------

FUZZ_METHODS: list[tuple[str, str, type[Message]]] = [
    (ROOM, "CreateRoom", room_proto.CreateRoomRequest),
    (ROOM, "ListRooms", room_proto.ListRoomsRequest),
    (ROOM, "DeleteRoom", room_proto.DeleteRoomRequest),
    (ROOM, "ListParticipants", room_proto.ListParticipantsRequest),
    (ROOM, "UpdateParticipant", room_proto.UpdateParticipantRequest),
    (ROOM, "UpdateRoomMetadata", room_proto.UpdateRoomMetadataRequest),
    (ROOM, "SendData", room_proto.SendDataRequest),
    (SIP, "CreateSIPInboundTrunk", sip.CreateSIPInboundTrunkRequest),
    (SIP, "CreateSIPOutboundTrunk", sip.CreateSIPOutboundTrunkRequest),
    (SIP, "UpdateSIPInboundTrunk", sip.UpdateSIPInboundTrunkRequest),
    (SIP, "UpdateSIPOutboundTrunk", sip.UpdateSIPOutboundTrunkRequest),
    (SIP, "CreateSIPDispatchRule", sip.CreateSIPDispatchRuleRequest),
    (SIP, "UpdateSIPDispatchRule", sip.UpdateSIPDispatchRuleRequest),
    (SIP, "ListSIPInboundTrunk", sip.ListSIPInboundTrunkRequest),
    (SIP, "ListSIPDispatchRule", sip.ListSIPDispatchRuleRequest),
    (SIP, "DeleteSIPTrunk", sip.DeleteSIPTrunkRequest),
    (SIP, "CreateSIPParticipant", sip.CreateSIPParticipantRequest),
]
LIST_METHODS = [
    (ROOM, "ListRooms"),
    (SIP, "ListSIPInboundTrunk"),
    (SIP, "ListSIPOutboundTrunk"),
    (SIP, "ListSIPTrunk"),
    (SIP, "ListSIPDispatchRule"),
]
FUZZ_STRINGS = ["", "+15550100", "r", "ST_x", "10.0.0.0/8", "sip.example.com", "X-A", "é\x00\n"]


def random_message(rng: random.Random, message: Message, depth: int = 0) -> Message:
    """Fill a message with random but well-typed values, so bodies reach the handlers."""
    for field in message.DESCRIPTOR.fields:
        if rng.random() < 0.5:
            continue
        repeated = field.is_repeated
        count = rng.randint(0, 3) if repeated else 1
        for _ in range(count):
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                if depth >= 3:
                    break
                if field.message_type.GetOptions().map_entry:
                    key = rng.choice(FUZZ_STRINGS)
                    value_field = field.message_type.fields_by_name["value"]
                    target = getattr(message, field.name)
                    if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                        random_message(rng, target[key], depth + 1)
                    else:
                        target[key] = random_scalar(rng, value_field)
                    continue
                child = getattr(message, field.name).add() if repeated else None
                if child is None:
                    child = getattr(message, field.name)
                    child.SetInParent()
                random_message(rng, child, depth + 1)
            else:
                value = random_scalar(rng, field)
                if repeated:
                    getattr(message, field.name).append(value)
                else:
                    setattr(message, field.name, value)
    return message


INT32_TYPES = (
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_SFIXED32,
    FieldDescriptor.TYPE_SINT32,
)


def random_scalar(rng: random.Random, field: FieldDescriptor) -> Any:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        if rng.random() < 0.7:
            return rng.choice(FUZZ_STRINGS)
        return "".join(chr(rng.randint(1, 0x2FF)) for _ in range(rng.randint(0, 40)))
    if kind == FieldDescriptor.TYPE_BYTES:
        return rng.randbytes(rng.randint(0, 20))
    if kind == FieldDescriptor.TYPE_BOOL:
        return rng.random() < 0.5
    if kind == FieldDescriptor.TYPE_ENUM:
        return rng.choice(field.enum_type.values).number
    if kind in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return rng.choice([0.0, -1.0, 1e30, 0.5])
    unsigned = kind in (
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_FIXED64,
    )
    bits = 32 if kind in INT32_TYPES else 64
    low = 0 if unsigned else -(2 ** (bits - 1))
    high = 2**bits - 1 if unsigned else 2 ** (bits - 1) - 1
    return rng.choice([0, 1, 5, 600, high, low if low else 2, rng.randint(low, high)])


def fuzz_body(rng: random.Random, request_type: type[Message]) -> tuple[bytes, str]:
    roll = rng.random()
    if roll < 0.25:
        return rng.randbytes(rng.randint(0, 64)), "application/protobuf"
    message = random_message(rng, request_type())
    if roll < 0.55:
        return message.SerializeToString(), "application/protobuf"
    if roll < 0.75:
        data = bytearray(message.SerializeToString() or b"\x0a\x01r")
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data), "application/protobuf"
    try:
        text = json_format.MessageToJson(message)
    except json_format.SerializeToJsonError:  # e.g. a Duration out of the JSON range
        return message.SerializeToString(), "application/protobuf"
    if roll < 0.9:
        return text.encode(), "application/json"
    data = bytearray(text.encode())
    for _ in range(rng.randint(1, 3)):
        data[rng.randrange(len(data))] = rng.choice(b'{}[]":,0123456789-eEtrufalsn\\ ')
    return bytes(data), "application/json"


async def test_fuzzed_bodies_never_cause_a_500(server: ServerProcess) -> None:
    rng = random.Random(20261124)
    auth = bearer(
        api.VideoGrants(room_create=True, room_list=True, room_admin=True, room="r"),
        api.SIPGrants(admin=True, call=True),
    )
    seen: dict[int, int] = {}
    async with aiohttp.ClientSession() as session:
        for _ in range(200):
            service, method, request_type = rng.choice(FUZZ_METHODS)
            body, content_type = fuzz_body(rng, request_type)
            async with session.post(
                f"{server.url}/twirp/{service}/{method}",
                data=body,
                headers={"Content-Type": content_type, "Authorization": auth},
                timeout=aiohttp.ClientTimeout(total=10),
            ) as resp:
                reply = await resp.read()
                status, ctype = resp.status, resp.content_type
            seen[status] = seen.get(status, 0) + 1
            assert status < 500 or status == 501, (method, body[:200], status, reply[:300])
            if status != 200:
                doc = json.loads(reply)
                assert_twirp_error(status, ctype, reply, doc.get("code"))
                assert "Traceback" not in doc["msg"], doc
    assert seen.get(200, 0) > 0 and len(seen) > 1, seen
    assert await healthz(server.url) == (200, "ok\n")
    # Whatever the fuzz stored can still be read back in both codecs.
    for service, method in LIST_METHODS:
        for content_type, body in (("application/protobuf", b""), ("application/json", b"{}")):
            status, ctype, reply = await twirp(
                server.url, service, method, body, auth=auth, content_type=content_type
            )
            assert (status, ctype) == (200, content_type), (method, reply[:300])
    assert "Traceback" not in server.log.read_text()
