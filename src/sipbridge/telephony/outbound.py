"""Outbound calls: the trunk, the INVITE's parties, the participant, and what a SIP failure means
to the API and to the room (SIP-BEHAVIOUR.md s4, s6). Pure functions; the server does the I/O.

    trunk = outbound_trunk(req, stored)           # by id, or the request's inline `trunk`
    plan = dial_plan(req, trunk, number_choice)   # validated; who calls whom, where, as whom
    attributes = dial_attributes(plan, call_id, call_id_full, status="dialing")
    ... INVITE; on the 200: attributes.update(answer_attributes(plan, response_headers))
    ... on a failure: code, reason = failure_of(status)
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from livekit.protocol import models
from livekit.protocol.sip import (
    CreateSIPParticipantRequest,
    SIPHeaderOptions,
    SIPOutboundTrunkInfo,
    SIPTransport,
)

from sipbridge.errors import ApiError, invalid_argument, not_found
from sipbridge.telephony.headers import validate_headers
from sipbridge.telephony.inbound import (
    ATTR_CALL_ID,
    ATTR_CALL_ID_FULL,
    ATTR_CALL_STATUS,
    ATTR_HOSTNAME,
    ATTR_PHONE_NUMBER,
    ATTR_PREFIX,
    ATTR_TRUNK_ID,
    ATTR_TRUNK_PHONE_NUMBER,
    PROVIDER_HEADER_ATTRIBUTES,
    _header_attributes,
    sanitize_attribute,
)
from sipbridge.telephony.numbers import numbers_match

MAX_DISPLAY_NAME = 128
MAX_NUMBER = 128
DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061}
Reason = models.DisconnectReason


@dataclass(frozen=True, slots=True, kw_only=True)
class DialPlan:
    """Everything the INVITE and the participant need, validated."""

    trunk: SIPOutboundTrunkInfo
    room: str
    identity: str
    name: str
    to_number: str  # sip_call_to: the number dialled
    to_user: str  # the To / Request-URI user (to_user_override, else the number)
    from_number: str  # our caller id (sip_number, else one of the trunk's numbers)
    display_name: str | None  # None: no display name at all
    from_host: str  # "" = our own address
    host: str
    port: int
    transport: str  # udp, tcp, tls
    request_uri: str  # "" = sip:<to_user>@<host>:<port>
    headers: dict[str, str] = field(default_factory=dict)  # trunk's, then the request's
    hide_number: bool = False


def outbound_trunk(
    req: CreateSIPParticipantRequest, stored: Mapping[str, SIPOutboundTrunkInfo]
) -> SIPOutboundTrunkInfo:
    """The trunk a call goes through: the stored one named by `sip_trunk_id`, else the request's
    inline `trunk` (an `SIPOutboundConfig`) made into one, else the stored trunk whose numbers
    include `sip_number`."""
    if req.sip_trunk_id:
        trunk = stored.get(req.sip_trunk_id)
        if trunk is None:
            raise not_found(f"outbound trunk {req.sip_trunk_id!r} not found")
        return trunk
    if req.HasField("trunk") and req.trunk.hostname:
        inline = req.trunk
        return SIPOutboundTrunkInfo(
            address=inline.hostname,
            transport=inline.transport,
            destination_country=inline.destination_country,
            auth_username=inline.auth_username,
            auth_password=inline.auth_password,
            headers_to_attributes=inline.headers_to_attributes,
            attributes_to_headers=inline.attributes_to_headers,
            from_host=inline.from_host,
        )
    if req.sip_number:
        found = [t for t in stored.values() if numbers_match(req.sip_number, t.numbers)]
        if not found:
            raise not_found(f"no outbound trunk has the number {req.sip_number!r}")
        return min(found, key=lambda t: t.sip_trunk_id)  # several: the oldest id, stably
    raise invalid_argument("sip_trunk_id, trunk or sip_number: one must be set")


def dial_plan(
    req: CreateSIPParticipantRequest, trunk: SIPOutboundTrunkInfo, pick: int = 0
) -> DialPlan:
    """Validate the request against its trunk. `pick` chooses among the trunk's numbers when the
    request names none (the caller passes a random index)."""
    if not req.room_name:
        raise invalid_argument("room_name: must be set")
    number = req.sip_call_to.strip()
    if not number:
        raise invalid_argument("sip_call_to: must be set")
    if "@" in number or len(number) > MAX_NUMBER or not number.isprintable() or " " in number:
        raise invalid_argument("sip_call_to: expected a number or user, without @")
    to_user = req.to_user_override.strip() or number
    if "@" in to_user or not to_user.isprintable() or " " in to_user:
        raise invalid_argument("to_user_override: expected a user, without @")
    from_number = req.sip_number.strip()
    if not from_number and trunk.numbers:
        from_number = trunk.numbers[pick % len(trunk.numbers)]
    if "@" in from_number or not from_number.isprintable() or " " in from_number:
        raise invalid_argument("sip_number: expected a number, without @")
    if req.HasField("display_name"):
        if len(req.display_name) > MAX_DISPLAY_NAME:
            raise invalid_argument(f"display_name: too long (max {MAX_DISPLAY_NAME})")
        if not req.display_name.isprintable():
            raise invalid_argument("display_name: must be printable text")
        display: str | None = req.display_name or None
    else:
        display = from_number or None
    host, port, transport = trunk_address(trunk.address, trunk.transport)
    validate_headers(req.headers, "headers")
    headers = {**trunk.headers, **req.headers}
    request_uri = req.sip_request_uri.raw.strip() if req.HasField("sip_request_uri") else ""
    if request_uri and (
        not request_uri.lower().startswith(("sip:", "sips:")) or not request_uri.isprintable()
    ):
        raise invalid_argument("sip_request_uri.raw: expected a sip: URI")
    identity = req.participant_identity or f"sip_{number}"
    return DialPlan(
        trunk=trunk,
        room=req.room_name,
        identity=identity,
        name=req.participant_name or f"Phone {number}",
        to_number=number,
        to_user=to_user,
        from_number=from_number,
        display_name=display,
        from_host=trunk.from_host,
        host=host,
        port=port,
        transport=transport,
        request_uri=request_uri,
        headers=headers,
        hide_number=req.hide_phone_number,
    )


def trunk_address(address: str, transport: int) -> tuple[str, int, str]:
    """(host, port, transport) of a trunk `address` ("host", "host:port", "[v6]:port"; a
    `sip:` prefix and `;transport=` are accepted)."""
    text = address.strip()
    for prefix in ("sips:", "sip:"):
        if text.lower().startswith(prefix):
            text = text[len(prefix) :]
    text, _, params = text.partition(";")
    kind = {
        SIPTransport.SIP_TRANSPORT_TCP: "tcp",
        SIPTransport.SIP_TRANSPORT_TLS: "tls",
    }.get(transport, "udp")  # type: ignore[call-overload]
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "transport" and value.strip().lower() in DEFAULT_PORTS:
            kind = value.strip().lower()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if not sep or (rest and not rest.startswith(":")):
            raise invalid_argument(f"trunk address {address!r}: bad IPv6 literal")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if not host or any(c in host for c in " /@?#"):
        raise invalid_argument(f"trunk address {address!r}: expected host[:port]")
    try:
        port = int(port_text) if port_text else DEFAULT_PORTS[kind]
    except ValueError:
        raise invalid_argument(f"trunk address {address!r}: bad port") from None
    if not 0 < port < 65536:
        raise invalid_argument(f"trunk address {address!r}: bad port")
    return host, port, kind


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def dial_attributes(
    plan: DialPlan,
    *,
    call_id: str,
    call_id_full: str,
    extra: Mapping[str, str],
    status: str = "dialing",
) -> dict[str, str]:
    """The participant's attributes while dialling: the request's `participant_attributes`
    (no `sip.*` keys), then the server's (s4, outbound column)."""
    attrs: dict[str, str] = {}
    for name, value in sorted(extra.items()):
        key = sanitize_attribute(name)
        if key and not key.lower().startswith(ATTR_PREFIX):
            attrs[key] = sanitize_attribute(value)
    attrs[ATTR_CALL_ID] = call_id
    attrs[ATTR_CALL_ID_FULL] = call_id_full
    attrs[ATTR_CALL_STATUS] = status
    attrs[ATTR_TRUNK_ID] = plan.trunk.sip_trunk_id
    if not plan.hide_number:
        attrs[ATTR_PHONE_NUMBER] = plan.to_number
        attrs[ATTR_TRUNK_PHONE_NUMBER] = plan.from_number
        attrs[ATTR_HOSTNAME] = plan.host
    return attrs


def answer_attributes(
    trunk: SIPOutboundTrunkInfo,
    headers: Iterable[tuple[str, str]],
    include: int = SIPHeaderOptions.SIP_NO_HEADERS,
) -> dict[str, str]:
    """What a response of the called side adds: carrier ids (any 1xx/2xx), and from the 200 the
    `include_headers` copies and the trunk's `headers_to_attributes` (no `sip.*` targets)."""
    listed = list(headers)
    first: dict[str, str] = {}
    for name, value in listed:
        first.setdefault(name.lower(), value)
    attrs = _header_attributes(listed, include)
    for header, attribute in PROVIDER_HEADER_ATTRIBUTES.items():
        if header in first:
            attrs[attribute] = sanitize_attribute(first[header])
    for header, attribute in sorted(trunk.headers_to_attributes.items()):
        key = sanitize_attribute(attribute)
        if header.lower() in first and key and not key.lower().startswith(ATTR_PREFIX):
            attrs[key] = sanitize_attribute(first[header.lower()])
    return attrs


# -- failures -------------------------------------------------------------------------------------


def failure_code(status: int) -> str:
    """The Twirp code of a call that failed with SIP `status` (SIP-BEHAVIOUR.md s6)."""
    if status in (486, 600, 480):
        return "resource_exhausted"
    if status == 603:
        return "permission_denied"
    if status in (404, 604):
        return "not_found"
    if status in (408, 504):
        return "deadline_exceeded"
    if 500 <= status < 600:
        return "failed_precondition"
    return "invalid_argument"


def failure_reason(status: int) -> int:
    """The participant's `disconnect_reason` for a call that failed with SIP `status`."""
    if status in (486, 600, 603, 606):
        return int(Reason.USER_REJECTED)
    if status in (404, 408, 410, 480, 487, 604):
        return int(Reason.USER_UNAVAILABLE)
    return int(Reason.SIP_TRUNK_FAILURE)


def call_failed(status: int, reason: str, message: str = "") -> ApiError:
    """The API error `wait_until_answered` gets: its meta makes livekit-api raise SipCallError."""
    text = message or f"call failed: {status} {reason}".rstrip()
    return ApiError(
        failure_code(status),
        text,
        {"sip_status_code": str(status), "sip_status": reason},
    )
