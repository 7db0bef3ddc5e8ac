"""SIP trunks: validation, conflicts between inbound trunks, updates and list filtering.

Trunks are the `livekit.protocol.sip` messages themselves (`SIPInboundTrunkInfo`,
`SIPOutboundTrunkInfo`); these functions never do I/O and take the current time as an argument.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from typing import TypeVar

from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from livekit.protocol import sip as proto
from livekit.protocol.models import Pagination

from sipbridge.errors import invalid_argument
from sipbridge.telephony.headers import (
    validate_attributes_to_headers,
    validate_headers,
    validate_headers_to_attributes,
)
from sipbridge.telephony.numbers import normalize_number, numbers_match
from sipbridge.telephony.updates import apply_list_update, validate_list_update

MAX_NAME = 256
MAX_METADATA = 64 * 1024
MAX_LIST_ITEMS = 1000
MAX_MEDIA_TIMEOUT_S = 600  # as LiveKit: at most 10 minutes
MAX_CALL_DURATION_S = 24 * 3600
MAX_RINGING_TIMEOUT_S = 3600

# A host or IP, never a SIP URI: "sip.example.com", "192.0.2.10", "[2001:db8::1]", optional ":port".
# Host names as seen in the field, underscores included ("my_pbx.local").
_HOSTPORT = re.compile(
    r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_](?:[A-Za-z0-9_\-.]*[A-Za-z0-9_])?)(:\d{1,5})?\Z"
)
_HOSTNAME = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_\-.]*[A-Za-z0-9_])?\Z")
DEFAULT_PAGE = 1000  # LiveKit: a limit of 0 (or less) means a page of 1000
_CODEC_NAME = re.compile(r"^[A-Za-z0-9\-_.]+\Z")

Trunk = proto.SIPInboundTrunkInfo | proto.SIPOutboundTrunkInfo
T = TypeVar("T", bound=Message)


def validate_text(value: str, field: str, limit: int) -> None:
    if len(value) > limit:
        raise invalid_argument(f"{field}: too long (max {limit} characters)")


def validate_items(values: Sequence[str], field: str) -> None:
    if len(values) > MAX_LIST_ITEMS:
        raise invalid_argument(f"{field}: too many items (max {MAX_LIST_ITEMS})")
    for i, v in enumerate(values):
        if not v.strip():
            raise invalid_argument(f"{field}[{i}]: must not be empty")
        if len(v) > MAX_NAME:
            raise invalid_argument(f"{field}[{i}]: too long")


def validate_numbers(values: Sequence[str], field: str) -> None:
    """Phone numbers or SIP users: no spaces once normalised, no URI syntax."""
    validate_items(values, field)
    for i, v in enumerate(values):
        if any(c in v for c in '@;:<>"\r\n\t') or " " in normalize_number(v):
            raise invalid_argument(f"{field}[{i}]: {v!r} is not a phone number or SIP user")


def validate_address_mask(mask: str, field: str) -> None:
    """`allowed_addresses` entries: an IP, a CIDR, or a host name matched against the From host."""
    if "/" in mask:
        address, _, prefix = mask.partition("/")
        if ("[" in address or "]" in address) and not _is_ip_literal(address, bracketed=True):
            raise invalid_argument(f"{field}: {mask!r} is not a valid CIDR")
        try:
            ipaddress.ip_network(f"{address.strip('[]')}/{prefix}", strict=False)
        except ValueError:
            raise invalid_argument(f"{field}: {mask!r} is not a valid CIDR") from None
        return
    try:
        ipaddress.ip_address(mask.strip("[]"))
    except ValueError:
        if not _HOSTNAME.match(mask):
            raise invalid_argument(f"{field}: {mask!r} is not an IP, CIDR or host name") from None


def _is_ip_literal(value: str, *, bracketed: bool = False) -> bool:
    """An IPv4 address, a bare IPv6 address, or "[IPv6]" - brackets balanced and only around
    IPv6, no zone ids (they mean nothing to a remote carrier)."""
    if value.startswith("[") or value.endswith("]"):
        if not (value.startswith("[") and value.endswith("]")):
            return False
        inner = value[1:-1]
        try:
            return isinstance(ipaddress.ip_address(inner), ipaddress.IPv6Address)
        except ValueError:
            return False
    if bracketed or "%" in value:
        return False
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def validate_hostport(value: str, field: str, *, required: bool) -> None:
    if not value:
        if required:
            raise invalid_argument(f"{field}: must be set")
        return
    if value.startswith(("sip:", "sips:")) or "@" in value or ";" in value:
        raise invalid_argument(f"{field}: must be a host name or IP, not a SIP URI")
    if _is_ip_literal(value):
        return  # a bare IPv4/IPv6 address, or a bracketed IPv6 one
    if not _HOSTPORT.match(value):
        raise invalid_argument(f"{field}: {value!r} is not a valid host[:port]")
    if ":" in value and not value.endswith("]"):
        port = int(value.rsplit(":", 1)[1])
        if not 0 < port < 65536:
            raise invalid_argument(f"{field}: port out of range")


def validate_duration(d: Duration, field: str, max_seconds: int) -> None:
    if d.seconds < 0 or d.nanos < 0:
        raise invalid_argument(f"{field}: must not be negative")
    if d.nanos > 999_999_999:
        raise invalid_argument(f"{field}: nanos must be below one second")
    if d.seconds > max_seconds:
        raise invalid_argument(f"{field}: must not exceed {max_seconds} s")


def validate_media(media: proto.SIPMediaConfig, field: str) -> None:
    for i, codec in enumerate(media.codecs):
        if not codec.name or not _CODEC_NAME.match(codec.name):
            raise invalid_argument(f"{field}.codecs[{i}].name: {codec.name!r} is not a codec name")
    if media.HasField("media_timeout"):
        validate_duration(media.media_timeout, f"{field}.media_timeout", MAX_MEDIA_TIMEOUT_S)


def upgrade_media(
    info: proto.SIPInboundTrunkInfo | proto.SIPOutboundTrunkInfo | proto.SIPDispatchRuleInfo,
) -> None:
    """Keep the legacy `media_encryption` and `media.encryption` in step, as LiveKit does."""
    info.media.SetInParent()
    if not info.media.HasField("encryption") and info.media_encryption:
        info.media.encryption = info.media_encryption
    info.media_encryption = info.media.encryption


def validate_inbound_trunk(t: proto.SIPInboundTrunkInfo) -> None:
    """Full validation of an inbound trunk as it would be stored."""
    validate_text(t.name, "trunk.name", MAX_NAME)
    validate_text(t.metadata, "trunk.metadata", MAX_METADATA)
    validate_numbers(t.numbers, "trunk.numbers")
    validate_numbers(t.allowed_numbers, "trunk.allowed_numbers")
    validate_items(t.allowed_addresses, "trunk.allowed_addresses")
    for i, mask in enumerate(t.allowed_addresses):
        validate_address_mask(mask, f"trunk.allowed_addresses[{i}]")
    if bool(t.auth_username) != bool(t.auth_password):
        raise invalid_argument("trunk.auth_username and trunk.auth_password must be set together")
    if not (t.auth_username or t.allowed_addresses or t.numbers):
        raise invalid_argument(
            "for security, one of the fields must be set: auth_username+auth_password, "
            "allowed_addresses or numbers"
        )
    validate_text(t.auth_realm, "trunk.auth_realm", MAX_NAME)
    if any(c in t.auth_realm for c in '"\\\r\n'):
        raise invalid_argument("trunk.auth_realm: must not contain quotes, backslashes or newlines")
    validate_headers(t.headers, "trunk.headers")
    validate_headers_to_attributes(t.headers_to_attributes, "trunk.headers_to_attributes")
    validate_attributes_to_headers(t.attributes_to_headers, "trunk.attributes_to_headers")
    if t.ringing_timeout_status and not 400 <= t.ringing_timeout_status <= 699:
        raise invalid_argument("trunk.ringing_timeout_status: must be a 4xx-6xx SIP status")
    validate_duration(t.ringing_timeout, "trunk.ringing_timeout", MAX_RINGING_TIMEOUT_S)
    validate_duration(t.max_call_duration, "trunk.max_call_duration", MAX_CALL_DURATION_S)
    validate_media(t.media, "trunk.media")


def validate_outbound_trunk(t: proto.SIPOutboundTrunkInfo) -> None:
    validate_text(t.name, "trunk.name", MAX_NAME)
    validate_text(t.metadata, "trunk.metadata", MAX_METADATA)
    if not t.numbers:
        raise invalid_argument("trunk.numbers: at least one number is required")
    validate_numbers(t.numbers, "trunk.numbers")
    validate_hostport(t.address, "trunk.address", required=True)
    validate_hostport(t.from_host, "trunk.from_host", required=False)
    if bool(t.auth_username) != bool(t.auth_password):
        raise invalid_argument("trunk.auth_username and trunk.auth_password must be set together")
    validate_headers(t.headers, "trunk.headers")
    validate_headers_to_attributes(t.headers_to_attributes, "trunk.headers_to_attributes")
    validate_attributes_to_headers(t.attributes_to_headers, "trunk.attributes_to_headers")
    validate_media(t.media, "trunk.media")


def find_inbound_conflict(
    trunk: proto.SIPInboundTrunkInfo, others: Iterable[proto.SIPInboundTrunkInfo]
) -> str | None:
    """Why `trunk` cannot coexist with one of `others`, or None.

    Two inbound trunks conflict when an INVITE could match both equally: they accept a common
    called number (or are both wildcards, `numbers` empty) and their caller filters overlap
    (a common `allowed_numbers` entry, or both empty). Numbers compare normalised. Trunks that
    differ in `allowed_addresses` still conflict: a carrier's address range is not a reliable
    separator, and LiveKit refuses these too.
    """
    called = {normalize_number(n) for n in trunk.numbers} or {""}
    callers = {normalize_number(n) for n in trunk.allowed_numbers} or {""}
    for other in others:
        if other.sip_trunk_id == trunk.sip_trunk_id:
            continue
        other_called = {normalize_number(n) for n in other.numbers} or {""}
        common = called & other_called
        if not common:
            continue
        other_callers = {normalize_number(n) for n in other.allowed_numbers} or {""}
        overlap = callers & other_callers
        if overlap:
            numbers = ", ".join(sorted(n or "<any>" for n in common))
            if overlap == {""}:
                why = "without allowed_numbers set"
            else:
                why = "and allowed number " + ", ".join(sorted(overlap))
            return (
                f"conflicting inbound SIP trunks: {trunk.sip_trunk_id or 'this trunk'} and "
                f"{other.sip_trunk_id} use the same number(s) {numbers} {why}"
            )
    return None


def apply_inbound_update(
    info: proto.SIPInboundTrunkInfo, update: proto.SIPInboundTrunkUpdate
) -> proto.SIPInboundTrunkInfo:
    """A new trunk with `update` applied; `info` is not modified. Validates the update itself."""
    result = proto.SIPInboundTrunkInfo()
    result.CopyFrom(info)
    for name in ("numbers", "allowed_addresses", "allowed_numbers"):
        if update.HasField(name):
            validate_list_update(getattr(update, name), f"update.{name}")
            apply_list_update(getattr(result, name), getattr(update, name))
    for name in ("auth_username", "auth_password", "auth_realm", "name", "metadata"):
        if update.HasField(name):
            setattr(result, name, getattr(update, name))
    apply_media_update(result, update)
    return result


def apply_outbound_update(
    info: proto.SIPOutboundTrunkInfo, update: proto.SIPOutboundTrunkUpdate
) -> proto.SIPOutboundTrunkInfo:
    result = proto.SIPOutboundTrunkInfo()
    result.CopyFrom(info)
    if update.HasField("numbers"):
        validate_list_update(update.numbers, "update.numbers")
        apply_list_update(result.numbers, update.numbers)
    for name in (
        "address",
        "transport",
        "destination_country",
        "auth_username",
        "auth_password",
        "name",
        "metadata",
        "from_host",
    ):
        if update.HasField(name):
            setattr(result, name, getattr(update, name))
    apply_media_update(result, update)
    return result


MediaHolder = proto.SIPInboundTrunkInfo | proto.SIPOutboundTrunkInfo | proto.SIPDispatchRuleInfo
MediaUpdate = (
    proto.SIPInboundTrunkUpdate | proto.SIPOutboundTrunkUpdate | proto.SIPDispatchRuleUpdate
)


def apply_media_update(result: MediaHolder, update: MediaUpdate) -> None:
    if update.HasField("media"):
        result.media.CopyFrom(update.media)
    if update.HasField("media_encryption"):
        result.media_encryption = update.media_encryption
        result.media.encryption = update.media_encryption
    upgrade_media(result)


def inbound_matches_filter(t: proto.SIPInboundTrunkInfo, numbers: Sequence[str]) -> bool:
    """`ListSIPInboundTrunk.numbers`: wildcard trunks (no numbers) are always included."""
    return not numbers or not t.numbers or any(numbers_match(n, numbers) for n in t.numbers)


def outbound_matches_filter(t: proto.SIPOutboundTrunkInfo, numbers: Sequence[str]) -> bool:
    return not numbers or any(numbers_match(n, numbers) for n in t.numbers)


def paginate(items: Iterable[T], page: Pagination, id_of: str) -> list[T]:
    """Items in ascending id order, those after `page.after_id`, at most `page.limit` of them."""
    by_id = {str(getattr(item, id_of)): item for item in items}
    return [by_id[i] for i in paginate_ids(by_id, page)]


def paginate_ids(ids: Iterable[str], page: Pagination) -> list[str]:
    """`Pagination{after_id, limit}` over ids: ascending, greater than `after_id`, at most
    `limit` of them (1000 when the limit is not positive, as LiveKit)."""
    ordered = sorted(i for i in ids if i > page.after_id) if page.after_id else sorted(ids)
    return ordered[: page.limit if page.limit > 0 else DEFAULT_PAGE]


def inbound_as_legacy(t: proto.SIPInboundTrunkInfo) -> proto.SIPTrunkInfo:
    """The deprecated combined `SIPTrunkInfo` view (for `ListSIPTrunk` and `DeleteSIPTrunk`)."""
    return proto.SIPTrunkInfo(
        sip_trunk_id=t.sip_trunk_id,
        kind=proto.SIPTrunkInfo.TrunkKind.TRUNK_INBOUND,
        name=t.name,
        metadata=t.metadata,
        outbound_number=t.numbers[0] if t.numbers else "",
        inbound_addresses=list(t.allowed_addresses),
        inbound_numbers=list(t.allowed_numbers),
        inbound_username=t.auth_username,
        inbound_password=t.auth_password,
    )


def outbound_as_legacy(t: proto.SIPOutboundTrunkInfo) -> proto.SIPTrunkInfo:
    return proto.SIPTrunkInfo(
        sip_trunk_id=t.sip_trunk_id,
        kind=proto.SIPTrunkInfo.TrunkKind.TRUNK_OUTBOUND,
        name=t.name,
        metadata=t.metadata,
        outbound_address=t.address,
        transport=t.transport,
        outbound_number=t.numbers[0] if t.numbers else "",
        outbound_username=t.auth_username,
        outbound_password=t.auth_password,
    )
