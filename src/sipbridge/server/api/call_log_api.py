"""The call log over Twirp: `POST /twirp/sipbridge.CallLog/ListCalls` (sip.admin).

LiveKit's protocol has no method that lists calls, so the messages are ours, in package
`sipbridge`, built here from a descriptor (no generated code to keep in step):

    message ListCallsRequest {
      int32  limit = 1;        // 1..1000; 0: 100
      string page_token = 2;   // the previous page's next_page_token
      string room = 3;
      string trunk = 4;        // a trunk id
      string status = 5;       // active, disconnected, error, ... (SIPCallStatus, lowercase)
      string number = 6;       // the caller or the called user
      string since = 7;        // 15m / 2h / 7d, ISO 8601, or epoch seconds (store/call_query.py)
      string until = 8;
    }
    message ListCallsResponse {
      repeated livekit.SIPCallInfo items = 1;  // newest first
      string next_page_token = 2;              // "" at the end
    }

JSON (`application/json`) and protobuf both work, as for every Twirp method here. A bad time, an
absurd limit, an unknown status or a malformed page token is `invalid_argument`.

`ListCallRecordings` gives a call's recordings (issue 16), as the store last has them:

    message ListCallRecordingsRequest { string call_id = 1; }   // an SCL_ id
    // answered with livekit.ListEgressResponse: items = the EgressInfo of each recording
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message
from livekit.protocol import sip as proto
from livekit.protocol.egress import ListEgressResponse

from sipbridge.errors import invalid_argument
from sipbridge.server.api.auth import Claims
from sipbridge.server.api.sip_api import require_sip_admin
from sipbridge.server.api.twirp import Encoded, TwirpServer, _varint, repeated_field
from sipbridge.server.recording.records import EgressRecords
from sipbridge.server.state.call_log import CallLog
from sipbridge.store.call_query import DEFAULT_LIMIT, CallQuery, parse_time

SERVICE = "sipbridge.CallLog"
_FILE = "sipbridge/call_log.proto"


def _messages() -> tuple[type[Message], type[Message]]:
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(_FILE)
    except KeyError:
        F = descriptor_pb2.FieldDescriptorProto
        info_file = proto.SIPCallInfo.DESCRIPTOR.file.name
        file = descriptor_pb2.FileDescriptorProto(
            name=_FILE, package="sipbridge", syntax="proto3", dependency=[info_file]
        )
        request = file.message_type.add(name="ListCallsRequest")
        request.field.add(name="limit", number=1, type=F.TYPE_INT32, label=F.LABEL_OPTIONAL)
        for number, name in enumerate(
            ("page_token", "room", "trunk", "status", "number", "since", "until"), start=2
        ):
            request.field.add(name=name, number=number, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
        response = file.message_type.add(name="ListCallsResponse")
        response.field.add(
            name="items",
            number=1,
            type=F.TYPE_MESSAGE,
            type_name=".livekit.SIPCallInfo",
            label=F.LABEL_REPEATED,
        )
        response.field.add(
            name="next_page_token", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL
        )
        recordings = file.message_type.add(name="ListCallRecordingsRequest")
        recordings.field.add(name="call_id", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
        pool.Add(file)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName("sipbridge.ListCallsRequest")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName("sipbridge.ListCallsResponse")),
    )


ListCallsRequest, ListCallsResponse = _messages()
ListCallRecordingsRequest = message_factory.GetMessageClass(
    descriptor_pool.Default().FindMessageTypeByName("sipbridge.ListCallRecordingsRequest")
)


def query_from(request: Any, now: float) -> CallQuery:
    """The page a request asks for; `invalid_argument` for what is wrong with it."""
    try:
        query = CallQuery(
            limit=request.limit or DEFAULT_LIMIT,
            page_token=request.page_token,
            room=request.room,
            trunk=request.trunk,
            status=request.status.lower(),
            number=request.number,
            since_ms=parse_time(request.since, now, "since"),
            until_ms=parse_time(request.until, now, "until"),
        )
        query.check()
    except ValueError as exc:
        raise invalid_argument(str(exc)) from None
    return query


class CallLogApi:
    def __init__(
        self,
        call_log: CallLog,
        clock: Callable[[], float],
        recordings: EgressRecords | None = None,
    ) -> None:
        self.call_log = call_log
        self.clock = clock
        self.recordings = recordings

    def register(self, twirp: TwirpServer) -> None:
        twirp.register(SERVICE, "ListCalls", ListCallsRequest, self.list_calls, require_sip_admin)
        twirp.register(
            SERVICE,
            "ListCallRecordings",
            ListCallRecordingsRequest,
            self.list_call_recordings,
            require_sip_admin,
        )

    async def list_call_recordings(self, request: Any, _: Claims) -> ListEgressResponse:
        """The recordings a call is in (`server/recording/records.py`)."""
        if not request.call_id:
            raise invalid_argument("call_id: required")
        infos = await self.recordings.for_call(request.call_id) if self.recordings else []
        return ListEgressResponse(items=infos)

    async def list_calls(self, request: Any, _: Claims) -> Encoded:
        """A page of calls as stored (each call's bytes go out as they were written)."""
        query = query_from(request, self.clock())
        try:
            datas, token = await self.call_log.page_bytes(query)
        except ValueError as exc:
            raise invalid_argument(str(exc)) from None
        payload = repeated_field(1, datas)
        if token:
            encoded = token.encode()
            payload += b"\x12" + _varint(len(encoded)) + encoded
        return Encoded(ListCallsResponse, payload)
