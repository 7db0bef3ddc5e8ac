"""Fuzz targets: one function per parser, bytes in, and only two allowed outcomes.

Each target feeds its input to one parser of the sans-IO core and returns when the input parses
or when the parser refuses it with its own error (`SipProtocolError` for SIP and Digest,
`SdpError` for SDP, `MediaError` for RTP, RTCP and RFC 4733 events). Anything else - another
exception, a failed round-trip assertion, a hang, unbounded memory - is a bug the fuzzer
reports (STYLE.md point 8: "a fuzz target whose only outcomes are 'parses' or 'raises
SipProtocolError'").

Where the grammar allows it the targets also check properties of what parsed:

- round trips (STYLE.md point 6): parse -> serialize -> parse gives the same object, for SIP
  messages, URIs, addresses, Via, CSeq, Session-Expires, SDP, RTP, RTCP, telephone-events and
  the three Digest headers;
- a TCP byte stream framed in pieces gives the messages it gives when framed whole;
- our own output parses: the SDP answer to a fuzzed offer, and every datagram the endpoint and
  the user agent send in reply to fuzzed datagrams;
- `SipEndpoint.receive` and the `UserAgent` on top of it never raise, and their timers settle.

The targets are plain functions so that `tests/test_fuzz_corpus.py` runs them over the seed
corpus without atheris, and `fuzz/run.py` under it.
"""

from __future__ import annotations

import contextlib
import itertools
import secrets
from collections.abc import Callable, Iterator

from sipbridge.media.dtmf import DtmfReceiver, parse_event
from sipbridge.media.errors import MediaError
from sipbridge.media.rtp import RtpPacket, is_rtcp, parse_rtcp, parse_rtp, serialize_rtcp
from sipbridge.sdp import (
    G722,
    OPUS,
    PCMA,
    PCMU,
    TELEPHONE_EVENT,
    CryptoAttribute,
    CryptoKey,
    SdpError,
    build_answer,
    negotiate_audio,
    parse_sdp,
    serialize_sdp,
)
from sipbridge.sip import dialog as sip_dialog
from sipbridge.sip import endpoint as sip_endpoint
from sipbridge.sip import headers as sip_headers
from sipbridge.sip import message as sip_message_module
from sipbridge.sip import transaction as sip_transaction
from sipbridge.sip.admission import Admission
from sipbridge.sip.digest import (
    DigestChallenge,
    DigestCredentials,
    DigestServer,
    format_auth_header,
    parse_auth_header,
)
from sipbridge.sip.endpoint import (
    EndpointEvent,
    EndpointSettings,
    Peer,
    RequestReceived,
    SipEndpoint,
)
from sipbridge.sip.errors import SipProtocolError
from sipbridge.sip.headers import (
    parse_address,
    parse_cseq,
    parse_params,
    parse_session_expires,
    parse_via,
    split_list,
)
from sipbridge.sip.message import (
    MAX_HEADERS,
    MAX_LINE,
    MAX_MESSAGE,
    Message,
    Request,
    Response,
    StreamFramer,
    make_response,
    parse_message,
    parse_message_python,
)
from sipbridge.sip.ua.agent import UserAgent
from sipbridge.sip.ua.invite import InviteReceived, OfferReceived
from sipbridge.sip.uri import parse_uri

Target = Callable[[bytes], None]

# Several datagrams in one input (`endpoint`, `user_agent`) are cut at this separator; the
# fuzzer learns it from fuzz/sip.dict. No SIP message we know of holds four NULs.
DATAGRAM_SEPARATOR = b"\x00\x00\x00\x00"
MAX_DATAGRAMS = 16
# Whether `parse_message` cuts the common shape of a head in C (`_csipmsg`): then `sip_message`
# also checks it against the Python parser alone.
_csipmsg_built = sip_message_module._cparse is not None
# Timers of one input must settle in far fewer rounds than this (each round fires every due
# timer): more means a timer that re-arms itself for ever.
MAX_TIMER_ROUNDS = 2_000

PHONE = Peer("udp", "192.0.2.10", 5060)
OUR_HOST = "192.0.2.1"
OUR_SDP = (
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
    b"m=audio 4000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-16\r\na=sendrecv\r\n"
)
SUPPORTED_CODECS = (OPUS, G722, PCMU, PCMA, TELEPHONE_EVENT)
OUR_CRYPTO = CryptoAttribute(
    tag=1,
    suite="AES_CM_128_HMAC_SHA1_80",
    keys=(CryptoKey(method="inline", info="WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz"),),
)

# The Digest server every `digest` input meets: fixed secret and salt, so that the seed corpus
# (fuzz/make_corpus.py) holds credentials this server accepts, and the fuzzer starts from a
# valid answer.
DIGEST_SECRET = b"sipbridge-fuzz-secret-0123456789"
DIGEST_REALM = "sip.example.com"
DIGEST_NOW = 1_000.0
DIGEST_USERS = {"alice": "correct horse", "carrier": "right-pass"}


def digest_server() -> DigestServer:
    return DigestServer(DIGEST_SECRET, random_bytes=lambda n: bytes(range(1, n + 1)))


def _text(data: bytes) -> str:
    # How the SIP layer reads header text (message.py): UTF-8, undecodable octets kept.
    return data.decode("utf-8", "surrogateescape")


# -- SIP messages ------------------------------------------------------------------------------


def _read_every_field(message: Message) -> None:
    """What the endpoint, dialog and user agent layers read; each may refuse with 400."""
    for read in (
        lambda: message.call_id,
        lambda: message.cseq,
        lambda: message.from_,
        lambda: message.to,
        lambda: message.vias,
        lambda: message.top_via,
        lambda: message.contacts,
        lambda: message.record_routes,
        lambda: message.tokens("Require"),
    ):
        with contextlib.suppress(SipProtocolError):
            read()


def _shape(message: Request | Response) -> tuple[object, ...]:
    """What a message says, minus Content-Length (serialize writes its own, last)."""
    headers = [(k, v) for k, v in message.headers.items if k != "Content-Length"]
    if isinstance(message, Request):
        return ("request", message.method, message.uri, headers, message.body)
    return ("response", message.status, message.reason, headers, message.body)


def _round_trips(message: Request | Response, *, stream: bool) -> None:
    wire = message.serialize()
    lines = wire.partition(b"\r\n\r\n")[0].split(b"\r\n")
    if (
        len(wire) > MAX_MESSAGE
        or len(lines) > MAX_HEADERS + 1
        or any(len(line) > MAX_LINE for line in lines)
    ):
        # At a limit the serialised form may cross it where the original did not: compact
        # names are expanded, and a Content-Length is added when the datagram had none.
        return
    again = parse_message(wire, stream=stream)
    assert _shape(again) == _shape(message), (_shape(message), _shape(again))


def _parsed_or_refused(data: bytes, *, stream: bool, python: bool) -> tuple[object, ...]:
    parse = parse_message_python if python else parse_message
    try:
        message = parse(data, stream=stream)
    except SipProtocolError as err:
        return ("refused", err.status, err.reason, err.detail)
    return (*_shape(message), message.headers.items, message.headers._index)


def sip_message(data: bytes) -> None:
    """`parse_message` of a datagram and of a framed stream message, every structured field,
    the serialisation round trip, and a response built to a parsed request; where the C cut
    of the head is built (`_csipmsg`), the same outcome as the Python parser alone."""
    for stream in (False, True):
        outcome = _parsed_or_refused(data, stream=stream, python=False)
        if _csipmsg_built:
            python = _parsed_or_refused(data, stream=stream, python=True)
            assert outcome == python, (outcome, python)
        try:
            message = parse_message(data, stream=stream)
        except SipProtocolError:
            continue
        _read_every_field(message)
        _round_trips(message, stream=stream)
        if isinstance(message, Request):
            try:
                response = make_response(message, 486, to_tag="fuzz")
            except SipProtocolError:
                continue  # a To we cannot add a tag to: the endpoint answers 400 instead
            parse_message(response.serialize())


def _frame(pieces: list[bytes]) -> tuple[list[bytes], int] | None:
    framer = StreamFramer()
    messages: list[bytes] = []
    try:
        for piece in pieces:
            framer.feed(piece)
            while (message := framer.next_message()) is not None:
                messages.append(message)
    except SipProtocolError:
        return None
    return messages, framer.keepalives


def sip_stream(data: bytes) -> None:
    """`StreamFramer` fed the input whole and in pieces (the first octet sets their size): the
    same messages and keep-alives either way, and each message parses or refuses."""
    if not data:
        return
    size = data[0] % 64 + 1
    stream = data[1:]
    whole = _frame([stream])
    pieces = _frame([stream[i : i + size] for i in range(0, len(stream), size)])
    if whole is not None and pieces is not None:
        assert whole == pieces, (whole, pieces)
    for framed in (whole, pieces):
        for message in framed[0] if framed is not None else []:
            with contextlib.suppress(SipProtocolError):
                parse_message(message, stream=True)


# -- SIP headers and URIs ------------------------------------------------------------------


def _outcome(parse: Callable[[str], object], text: str) -> object:
    try:
        return parse(text)
    except SipProtocolError as err:
        return ("refused", err.status, err.reason, err.detail)


def sip_header(data: bytes) -> None:
    """Every header grammar of sip/headers.py and sip/uri.py on the same text, with round
    trips: parse(str(parse(x))) == parse(x); where the C cuts of a plain Via and name-addr
    are built (`_csipmsg`), the same outcome as the Python functions alone."""
    text = _text(data)
    if sip_headers._cvia is not None:
        via = _outcome(sip_headers._parse_plain_via, text)
        assert via == _outcome(sip_headers._parse_plain_via_python, text), (text, via)
    if sip_headers._cname_addr is not None:
        address = _outcome(sip_headers._parse_address, text)
        assert address == _outcome(sip_headers._parse_address_python, text), (text, address)
    try:
        uri = parse_uri(text)
    except SipProtocolError:
        pass
    else:
        assert parse_uri(str(uri)) == uri, (uri, str(uri))
        assert uri.matches(uri)
        uri.user_unescaped  # noqa: B018 - a property that decodes %-escapes
        uri.transport  # noqa: B018
    try:
        address = parse_address(text)
    except SipProtocolError:
        pass
    else:
        assert parse_address(str(address)) == address, (address, str(address))
    try:
        via = parse_via(text)
    except SipProtocolError:
        pass
    else:
        assert parse_via(str(via)) == via, (via, str(via))
    try:
        cseq = parse_cseq(text)
    except SipProtocolError:
        pass
    else:
        assert parse_cseq(str(cseq)) == cseq, (cseq, str(cseq))
    try:
        expires = parse_session_expires(text)
    except SipProtocolError:
        pass
    else:
        assert parse_session_expires(str(expires)) == expires, (expires, str(expires))
    try:
        parse_params(text)
        list(split_list(text))
    except SipProtocolError:
        pass


# -- SDP ---------------------------------------------------------------------------------------


def sdp(data: bytes) -> None:
    """`parse_sdp`, its round trip, and offer/answer: a fuzzed offer either has no audio we
    take (SdpError) or gets an answer that parses and that negotiates the same codec back."""
    try:
        offer = parse_sdp(data)
    except SdpError:
        return
    again = parse_sdp(serialize_sdp(offer))
    assert again == offer, (offer, again)
    mux = len(data) % 2 == 0
    try:
        audio = negotiate_audio(
            offer, SUPPORTED_CODECS, protos=("RTP/AVP", "RTP/SAVP"), rtcp_mux=mux
        )
    except SdpError:
        return
    secure = audio.proto.upper() == "RTP/SAVP"
    answer = build_answer(
        offer,
        audio,
        address=OUR_HOST,
        port=4000,
        session_id=1,
        session_version=1,
        crypto=OUR_CRYPTO if secure else None,
    )
    parsed = parse_sdp(serialize_sdp(answer))
    assert parsed == answer, (answer, parsed)
    back = negotiate_audio(parsed, SUPPORTED_CODECS, protos=(audio.proto,), rtcp_mux=mux)
    assert back.audio.codec.matches(audio.audio.codec), (audio, back)


# -- RTP, RTCP, RFC 4733 ----------------------------------------------------------------------


def rtp(data: bytes) -> None:
    """`parse_rtp` and `parse_rtcp` of the same datagram, each with its round trip."""
    is_rtcp(data)
    try:
        packet = parse_rtp(data)
    except MediaError:
        pass
    else:
        again = parse_rtp(packet.serialize())
        assert again == packet, (packet, again)
    try:
        packets = parse_rtcp(data)
    except MediaError:
        pass
    else:
        compound = parse_rtcp(serialize_rtcp(packets))
        assert compound == packets, (packets, compound)


def dtmf(data: bytes) -> None:
    """RFC 4733 telephone-events: the input is records of 10 octets (RTP timestamp, 4; arrival
    delay in ms, 2; event payload, 4) fed to one `DtmfReceiver`, which must stay bounded."""
    receiver = DtmfReceiver(payload_type=101, max_events=8)
    now = 0.0
    for sequence, offset in enumerate(range(0, len(data) - 9, 10)):
        timestamp = int.from_bytes(data[offset : offset + 4], "big")
        now += int.from_bytes(data[offset + 4 : offset + 6], "big") / 1000
        payload = data[offset + 6 : offset + 10]
        event = parse_event(payload)  # 4 octets: always one event
        assert parse_event(event.serialize()) == event
        packet = RtpPacket(
            payload_type=101,
            sequence_number=sequence,
            timestamp=timestamp,
            ssrc=0x1234,
            payload=payload,
        )
        receiver.receive(packet, now)
        assert receiver.remembered <= receiver.max_events
    with contextlib.suppress(MediaError):
        parse_event(data)  # the whole input as one payload: MediaError unless 4k octets


# -- Digest ------------------------------------------------------------------------------------


def digest(data: bytes) -> None:
    """`parse_auth_header`, `DigestChallenge.parse`, `DigestCredentials.parse` (each with its
    round trip) and `DigestServer.verify` of the input as an Authorization value."""
    text = _text(data)
    try:
        header = parse_auth_header(text)
    except SipProtocolError:
        pass
    else:
        formatted = format_auth_header(header)  # what parses has a quoted-string form
        assert parse_auth_header(formatted) == header, (header, formatted)
    try:
        challenge = DigestChallenge.parse(text)
    except SipProtocolError:
        pass
    else:
        try:
            serialized = challenge.serialize()
        except ValueError:
            # The parser reads a quoted qop list or algorithm that is not made of tokens
            # (`qop="auth, a b"`), which serialize refuses to write: outside the s25.1 grammar
            # either way, and never answered (DigestClient skips such challenges).
            pass
        else:
            assert DigestChallenge.parse(serialized) == challenge, (challenge, serialized)
    try:
        credentials = DigestCredentials.parse(text)
    except SipProtocolError:
        pass
    else:
        try:
            serialized = credentials.serialize()
        except ValueError:
            # The same for credentials (`qop="a b"`): DigestServer.verify refuses them (400,
            # or a new challenge for an algorithm it did not offer).
            pass
        else:
            assert DigestCredentials.parse(serialized) == credentials, (credentials, serialized)
    server = digest_server()
    for _ in range(2):  # the second time, a spent nonce or a replayed nc
        with contextlib.suppress(SipProtocolError):
            server.verify(
                text,
                method="INVITE",
                realm=DIGEST_REALM,
                lookup_password=DIGEST_USERS.get,
                now=DIGEST_NOW,
            )


# -- the endpoint and the user agent ------------------------------------------------------------


class _CountingSecrets:
    """Stands in for the `secrets` module in the SIP layer while one input runs: tags and
    branches count up from 1, so that an input replays exactly and the seed corpus can hold
    the ACK and BYE of a dialog we answered (our first To tag is `0000000000000001`)."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)

    def token_hex(self, nbytes: int) -> str:
        return f"{next(self._counter):0{2 * nbytes}x}"


@contextlib.contextmanager
def deterministic_tags() -> Iterator[None]:
    modules = (sip_dialog, sip_endpoint, sip_transaction)
    stand_in = _CountingSecrets()
    for module in modules:
        module.secrets = stand_in  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for module in modules:
            module.secrets = secrets  # type: ignore[attr-defined]


def datagrams(data: bytes) -> list[bytes]:
    return data.split(DATAGRAM_SEPARATOR)[:MAX_DATAGRAMS]


def _sent(endpoint: SipEndpoint) -> None:
    """Everything we transmit must be a message we ourselves can parse."""
    for wire, _peer in endpoint.outgoing():
        try:
            parse_message(wire)
        except SipProtocolError:
            # s8.2.6.2 copies every Via into the response: a request whose Via lines alone
            # nearly fill MAX_HEADERS draws a response past it. Nothing else may fail.
            if wire.count(b"\r\nVia: ") < MAX_HEADERS - 8:
                raise


def _settle(endpoint: SipEndpoint, agent: UserAgent | None, now: float) -> None:
    """Fire every timer at its deadline until none is left."""
    for _ in range(MAX_TIMER_ROUNDS):
        timers = [endpoint.get_timer(), None if agent is None else agent.get_timer()]
        deadlines = [t for t in timers if t is not None]
        if not deadlines:
            return
        now = max(now, min(deadlines))
        endpoint.handle_timer(now)
        if agent is not None:
            agent.handle_timer(now)
        _drain(endpoint, agent, now, mode=0)
    raise AssertionError(f"timers still armed after {MAX_TIMER_ROUNDS} rounds")


def _drain(endpoint: SipEndpoint, agent: UserAgent | None, now: float, *, mode: int) -> None:
    while (event := endpoint.next_event()) is not None:
        if agent is not None:
            agent.handle_event(event, now)
        else:
            _answer_as_application(endpoint, event, now, mode)
    _sent(endpoint)
    if agent is None:
        return
    while (agent_event := agent.next_event()) is not None:
        if isinstance(agent_event, InviteReceived):
            session = agent_event.session
            if mode == 0:
                session.answer(now, body=OUR_SDP)
            elif mode == 1:
                session.ring(now, 180)
                session.reject(now, 486)
            elif mode == 2:
                session.ring(now, 183, body=OUR_SDP)
            # mode 3: the application has not decided yet
        elif isinstance(agent_event, OfferReceived):
            if mode % 2 == 0:
                agent_event.session.accept_offer(agent_event.request, now, body=OUR_SDP)
            else:
                error = SipProtocolError(488, "Not Acceptable Here")
                agent_event.session.refuse_offer(agent_event.request, error, now)
    _sent(endpoint)


def _answer_as_application(
    endpoint: SipEndpoint, event: EndpointEvent, now: float, mode: int
) -> None:
    if not isinstance(event, RequestReceived):
        return
    status = (200, 180, 486, 0)[mode]
    if not status:
        return
    try:
        response = make_response(event.request, status, to_tag="fuzz")
    except SipProtocolError:
        return  # the application's own reading of the request; not the endpoint's business
    endpoint.respond(event.transaction, response, now)


def endpoint(data: bytes) -> None:
    """`SipEndpoint.receive` of each datagram (cut at DATAGRAM_SEPARATOR) behind per-source
    admission limits, every request answered by a stand-in application, then every timer:
    nothing may raise, whatever came, everything sent parses, and the timers settle."""
    with deterministic_tags():
        # Tight admission limits, so that a few INVITEs or REGISTERs reach 503 and then silence.
        sip = SipEndpoint(admission=Admission(rate=1.0, burst=3.0, drop_after=2))
        mode = len(data) % 4  # what the application answers: 200, 180, 486 or nothing
        now = 0.0
        for datagram in datagrams(data):
            sip.receive(datagram, PHONE, now)
            _drain(sip, None, now, mode=mode)
            now += 0.25
        _settle(sip, None, now)


def user_agent(data: bytes) -> None:
    """The sans-IO `UserAgent` over the endpoint: each datagram received, the agent's events
    handled (INVITEs answered, rung and rejected, rung with early media, or left ringing, by
    the input's length), offers accepted or refused, every live call hung up, then every
    timer. Nothing may raise, everything sent parses, the timers settle."""
    with deterministic_tags():
        sip = SipEndpoint()
        agent = UserAgent(sip, OUR_HOST, 5060)
        mode = len(data) % 4
        now = 0.0
        for datagram in datagrams(data):
            sip.receive(datagram, PHONE, now)
            _drain(sip, agent, now, mode=mode)
            now += 0.25
        for session in list(agent.dialogs.values()):
            session.hangup(now)
        _drain(sip, agent, now, mode=mode)
        _settle(sip, agent, now)


try:  # the SIP UDP reader thread's 100 Trying builder (server/sip/udp_thread.py), where built
    from sipbridge import _csipthr  # type: ignore[attr-defined]
except ImportError:
    _csipthr = None


def sip_trying(data: bytes) -> None:
    """`_csipthr.trying`, the 100 Trying the C reader thread sends for a datagram before Python
    sees it: None (left to Python), or exactly the 100 the endpoint makes for that INVITE when
    the application does not answer at once (so never for one Python refuses)."""
    if _csipthr is None:
        return
    for host, port in (("127.0.0.1", 5070), ("::1", 5999)):
        ours = _csipthr.trying(data, host, port, "sipbridge")
        if ours is None:
            continue
        sip = SipEndpoint(EndpointSettings())
        sip.receive(data, Peer("udp", host, port), 0.0)
        event = sip.next_event()
        assert isinstance(event, RequestReceived), (event, sip.outgoing())
        assert event.request.method == "INVITE"
        sip.send_trying(event.transaction, 0.0)
        out = sip.outgoing()
        assert out and out[0][0] == ours, (out, ours)


TARGETS: dict[str, Target] = {
    "sip_message": sip_message,
    "sip_stream": sip_stream,
    "sip_header": sip_header,
    "sdp": sdp,
    "rtp": rtp,
    "dtmf": dtmf,
    "digest": digest,
    "endpoint": endpoint,
    "user_agent": user_agent,
    "sip_trying": sip_trying,
}
