"""Inbound calls: which trunk, which rule, which room, who joins it (SIP-BEHAVIOUR.md s2-4).

Pure functions over the stored `SIPInboundTrunkInfo` / `SIPDispatchRuleInfo` messages and what
the INVITE said (`InboundCall`). No I/O, no clock, no randomness: the caller passes the random
room-name suffix in.

The flow the server follows:

    trunk = match_trunk(trunks, call)            # TrunkConflict -> 503; None -> 404 / open server
    rule = select_rule(rules, trunk_id, call)    # pin=None: nothing entered yet
    if rule is None and rule_needs_pin(rules, trunk_id, call):
        ... answer, prompt, collect digits up to '#' ...
        rule = select_rule(rules, trunk_id, call, pin=digits)   # "" when only '#' was pressed
    room = room_for(rule, call, random_suffix)
    identity, name = participant_identity(rule, call), participant_name(rule, call)
    attributes = inbound_attributes(call=call, call_id=..., trunk=trunk, rule=rule,
                                    status="ringing")

Where we knowingly differ from the reference (livekit/protocol `sip/sip.go`, livekit/sip
`pkg/sip/participant.go`, `types.go`), the function says so in its docstring.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from livekit.protocol.sip import (
    SIPCallDirection,
    SIPCallInfo,
    SIPCallStatus,
    SIPDispatchRuleInfo,
    SIPHeaderOptions,
    SIPInboundTrunkInfo,
    SIPUri,
)

from sipbridge.errors import ApiError
from sipbridge.telephony.numbers import numbers_match
from sipbridge.telephony.rules import rule_priority, rule_room_and_pin

# Longest attribute value we hand to the room, in characters, after sanitising. SIP lines may be
# 8 KiB; provider ids, ARNs and custom X- values are far below this.
MAX_ATTRIBUTE_VALUE = 1024
# Budget (UTF-8 bytes of key + value) for the `sip.h.*` attributes `include_headers` copies from
# one INVITE. The room refuses a participant whose attributes exceed 64 KiB; a large INVITE must
# not make the join fail, so headers past the budget are left out.
MAX_HEADER_ATTRIBUTES_BYTES = 32 * 1024

# The `include_headers` choices, read once: an enum value read through protobuf's enum wrapper
# is a Python `__getattr__` (1-4 us), and `_header_attributes` compared one per header of every
# INVITE (issue 18).
_X_HEADERS = SIPHeaderOptions.SIP_X_HEADERS
_ALL_HEADERS = SIPHeaderOptions.SIP_ALL_HEADERS
SCD_INBOUND = SIPCallDirection.SCD_INBOUND
SCS_CALL_INCOMING = SIPCallStatus.SCS_CALL_INCOMING

# Attribute keys (livekit/protocol `livekit/attrs.go`, livekit/sip `pkg/sip/participant.go`).
ATTR_PREFIX = "sip."
ATTR_HEADER_PREFIX = "sip.h."
ATTR_CALL_ID = "sip.callID"
ATTR_CALL_ID_FULL = "sip.callIDFull"
ATTR_CALL_TAG = "sip.callTag"
ATTR_CALL_STATUS = "sip.callStatus"
ATTR_PHONE_NUMBER = "sip.phoneNumber"
ATTR_TRUNK_PHONE_NUMBER = "sip.trunkPhoneNumber"
ATTR_HOSTNAME = "sip.hostname"
ATTR_RULE_ID = "sip.ruleID"
ATTR_TRUNK_ID = "sip.trunkID"

# Carrier headers every call maps, whatever the trunk says (livekit/sip `headerToAttr`).
# Keys are lower case: SIP header names compare case-insensitively (RFC 3261 s7.3.5).
PROVIDER_HEADER_ATTRIBUTES: Mapping[str, str] = {
    "x-twilio-accountsid": "sip.twilio.accountSid",
    "x-twilio-callsid": "sip.twilio.callSid",
    "x-call_leg_id": "sip.telnyx.callLegID",
    "x-call_session_id": "sip.telnyx.callSessionID",
    "x-amzn-connectcontactid": "sip.amazon.contactId",
    "x-amzn-connectinitialcontactid": "sip.amazon.initialContactId",
    "x-amzn-sourceaccount": "sip.amazon.sourceAccount",
    "x-amzn-sourcearn": "sip.amazon.sourceArn",
    "x-amzn-targetarn": "sip.amazon.targetArn",
}

# `allowed_addresses` entries the reference drops before matching (`isValidMask`): lists typed
# into one entry ("1.2.3.4, 5.6.7.8"), URLs, wildcards. Create/update already refuses them.
_JUNK_MASK_CHARS = frozenset("()+*;, \t\n\r")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_INDIVIDUAL = "dispatch_rule_individual"
_CALLEE = "dispatch_rule_callee"

# Characters an attribute value never carries: tabs and line breaks become a space (they
# separate words), other C0/C1 controls and DEL are dropped, lone surrogates (the parser's
# surrogateescape for bytes that are not UTF-8) become U+FFFD so the value encodes as UTF-8.
_AS_SPACE = {ord("\t"), ord("\n"), ord("\r"), 0x2028, 0x2029}
_DROP = {*range(0x20), 0x7F, *range(0x80, 0xA0)} - _AS_SPACE
_SANITIZE = {
    **{c: " " for c in _AS_SPACE},
    **dict.fromkeys(_DROP),
    **{c: "\ufffd" for c in range(0xD800, 0xE000)},
}


# Dataclasses made for every call write their own `__init__` (`init=False`): mypyc compiles
# it, where the one the dataclasses module generates stays interpreted (issue 18).
@dataclass(init=False, frozen=True, slots=True, kw_only=True)
class InboundCall:
    """What the INVITE says, as the domain needs it."""

    caller: str  # From URI user, as received (e.g. "+15550001", "alice")
    called: str  # To URI user (fallback: Request-URI user), as received
    from_host: str  # From URI host
    source_ip: str  # where the INVITE came from
    call_id: str  # the SIP Call-ID header
    from_tag: str  # remote From tag
    # every SIP header (name, value), in order, names as received
    headers: tuple[tuple[str, str], ...] = ()

    def __init__(
        self,
        *,
        caller: str,
        called: str,
        from_host: str,
        source_ip: str,
        call_id: str,
        from_tag: str,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        object.__setattr__(self, "caller", caller)
        object.__setattr__(self, "called", called)
        object.__setattr__(self, "from_host", from_host)
        object.__setattr__(self, "source_ip", source_ip)
        object.__setattr__(self, "call_id", call_id)
        object.__setattr__(self, "from_tag", from_tag)
        object.__setattr__(self, "headers", headers)


class TrunkConflict(Exception):
    """Several inbound trunks match a call equally well: the server answers 503.

    Create/update refuses such trunks (`find_inbound_conflict`), so this only happens with data
    written by something else.
    """

    def __init__(self, called: str, trunk_ids: Iterable[str]) -> None:
        self.status = 503
        self.called = called
        self.trunk_ids = tuple(sorted(trunk_ids))
        super().__init__(
            f"several inbound SIP trunks match {called!r}: {', '.join(self.trunk_ids)}"
        )


# --- trunks (s2) ---------------------------------------------------------------------------------


def match_trunk(
    trunks: Iterable[SIPInboundTrunkInfo], call: InboundCall
) -> SIPInboundTrunkInfo | None:
    """The inbound trunk for `call`, None when no trunk matches; `TrunkConflict` on a tie.

    A trunk matches when `allowed_numbers` is empty or has the caller, `allowed_addresses` is
    empty or admits the source (see `source_allowed`), and `numbers` is empty (a wildcard trunk)
    or has the called number. Numbers compare exactly or normalised (`numbers_match`).

    Most specific wins, in this order: a trunk listing the called number beats a wildcard one
    (as the reference); then, among those, a trunk listing the caller in `allowed_numbers` beats
    one that admits any caller. The reference does not rank by `allowed_numbers` and answers
    "multiple trunks matched" for such a pair, although its create-time check (like ours) lets
    both exist: they sit in different caller buckets. Ranking them makes every pair that
    create/update accepts resolvable, so a conflict here means data the API would have refused.
    """
    best_tier: int | None = None
    best: dict[str, SIPInboundTrunkInfo] = {}
    for trunk in trunks:
        tier = _trunk_tier(trunk, call)
        if tier is None or (best_tier is not None and tier > best_tier):
            continue
        if tier != best_tier:
            best_tier, best = tier, {}
        best.setdefault(trunk.sip_trunk_id, trunk)
    if len(best) > 1:
        raise TrunkConflict(call.called, best)
    return next(iter(best.values()), None)


def _trunk_tier(trunk: SIPInboundTrunkInfo, call: InboundCall) -> int | None:
    """0 (number and caller listed) .. 3 (wildcard for any caller), None when it does not match."""
    if trunk.allowed_numbers and not numbers_match(call.caller, trunk.allowed_numbers):
        return None
    if not source_allowed(call.source_ip, call.from_host, trunk.allowed_addresses):
        return None
    if trunk.numbers and not numbers_match(call.called, trunk.numbers):
        return None
    return (0 if trunk.numbers else 2) + (0 if trunk.allowed_numbers else 1)


def source_allowed(source_ip: str, from_host: str, masks: Iterable[str]) -> bool:
    """`allowed_addresses`: True when empty, or an IP/CIDR entry holds `source_ip`, or a host
    name entry equals `from_host` (case-insensitive).

    IPv4 and IPv6 both work, bracketed or not ("[2001:db8::1]", "[2001:db8::]/32"); an
    IPv4-mapped source ("::ffff:192.0.2.1", a dual-stack socket) also matches IPv4 entries.
    Entries the reference drops as junk (spaces, commas, "*", "://" ...) are ignored, and when
    every entry is junk the list counts as empty, as the reference's `filterInvalidAddrMasks`.
    Other entries that are not an IP or CIDR (a malformed "10.0.0.0/33") are host names and only
    ever compare with the From host, so they fail closed.

    Two deliberate differences from the reference (`matchAddrMasks`), both because the From
    header is whatever the caller wrote: an IP/CIDR entry is checked against the source IP only,
    never against the From host (the reference also accepts `From: <sip:x@192.0.2.10>` from
    anywhere when 192.0.2.10 is listed); and a source IP that does not parse matches no IP entry
    (the reference lets such a call through).
    """
    usable = [m for m in masks if not (_JUNK_MASK_CHARS.intersection(m) or "://" in m)]
    if not usable:
        return True
    sources = _source_addresses(source_ip)
    host = from_host.lower()
    for mask in usable:
        network = _parse_mask(mask)
        if network is None:
            if host and mask.lower() == host:
                return True
        elif any(ip in network for ip in sources):
            return True
    return False


def _strip_brackets(value: str) -> str:
    return value[1:-1] if value.startswith("[") and value.endswith("]") else value


def _parse_mask(mask: str) -> IPNetwork | None:
    address, slash, prefix = mask.partition("/")
    try:
        return ipaddress.ip_network(_strip_brackets(address) + slash + prefix, strict=False)
    except ValueError:
        return None


def _source_addresses(source_ip: str) -> list[IPAddress]:
    try:
        ip = ipaddress.ip_address(_strip_brackets(source_ip).partition("%")[0])
    except ValueError:
        return []
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return [ip, ip.ipv4_mapped]
    return [ip]


# --- dispatch rules (s3) -------------------------------------------------------------------------


def select_rule(
    rules: Iterable[SIPDispatchRuleInfo],
    trunk_id: str,
    call: InboundCall,
    *,
    pin: str | None = None,
) -> SIPDispatchRuleInfo | None:
    """The dispatch rule for `call` arriving on trunk `trunk_id` ("" when no trunk matched).

    `pin` is what the caller entered: None = nothing yet, "" = only '#' (open rules only),
    digits = rules with exactly that PIN. With `pin=None` the best rule is returned only when it
    is open; when the best rule wants a PIN the answer is None and `rule_needs_pin` is True.

    Candidates: `trunk_ids` empty or naming the trunk (with no trunk, only rules without
    `trunk_ids`); `inbound_numbers` empty or holding the caller; `numbers` empty or holding the
    called number. Rules naming the trunk beat rules without `trunk_ids`; then the lowest
    `rule_priority` (PIN before open, direct < individual < callee, +1000 per empty number
    filter); then room name or prefix in string order; then rule id, so the choice never depends
    on the order the store lists rules in.

    As the reference (`MatchDispatchRuleIter` + `EvaluateDispatchRule`), "needs a PIN" means the
    best rule wants one, not that some candidate does: an open rule for a specific number
    outranks a catch-all PIN rule (the "personal room" case) and its callers are not prompted.
    Unlike the reference, `inbound_numbers` and `numbers` compare normalised ("+1 510 555 0100"
    equals "15105550100"), as trunks and the rule conflict keys do; the reference compares
    these raw.
    """
    best = _best_rule(rules, trunk_id, call, pin)
    if best is None or (pin is None and _pin_of(best)):
        return None
    return best


def rule_needs_pin(rules: Iterable[SIPDispatchRuleInfo], trunk_id: str, call: InboundCall) -> bool:
    """True when the rule that would take this call wants a PIN (see `select_rule`)."""
    best = _best_rule(rules, trunk_id, call, None)
    return best is not None and bool(_pin_of(best))


def _pin_of(rule: SIPDispatchRuleInfo) -> str:
    return rule_room_and_pin(rule.rule)[1]


def _best_rule(
    rules: Iterable[SIPDispatchRuleInfo], trunk_id: str, call: InboundCall, pin: str | None
) -> SIPDispatchRuleInfo | None:
    specific: list[tuple[int, str, str, SIPDispatchRuleInfo]] = []
    catch_all: list[tuple[int, str, str, SIPDispatchRuleInfo]] = []
    for rule in rules:
        try:
            room, rule_pin = rule_room_and_pin(rule.rule)
        except ApiError:
            continue  # no rule kind set: never stored by our API, skipped as the reference does
        if rule.inbound_numbers and not numbers_match(call.caller, rule.inbound_numbers):
            continue
        if rule.numbers and not numbers_match(call.called, rule.numbers):
            continue
        if pin is not None and rule_pin != pin:
            continue  # '#' alone ("") keeps open rules; digits keep rules with that PIN
        if not rule.trunk_ids:
            group = catch_all
        elif trunk_id and trunk_id in rule.trunk_ids:
            group = specific
        else:
            continue
        group.append((rule_priority(rule), room, rule.sip_dispatch_rule_id, rule))
    group = specific or catch_all
    if not group:
        return None
    return min(group, key=lambda entry: entry[:3])[3]


# --- room and participant (s3, s4) ---------------------------------------------------------------


def room_for(rule: SIPDispatchRuleInfo, call: InboundCall, random_suffix: str) -> str:
    """The room `rule` sends `call` to.

    Direct: `room_name`. Individual: `<prefix>_<caller>`, then `_<random_suffix>` unless
    `no_randomness`. Callee: `<prefix>_<called>`, then `_<random_suffix>` only with `randomize`.
    An empty prefix leaves out its "_" (`<caller>`, `<called>`), as the reference.

    With `hide_phone_number` the individual room uses the same hash as the identity
    (`sip_<hash>` without "sip_") instead of the number. The reference uses the last four
    digits there, which puts two callers ending in the same four digits in one room when
    `no_randomness` is set.

    `random_suffix` must not be empty when the rule asks for randomness (ValueError): an empty
    suffix would silently send different callers to one room.
    """
    room, _ = rule_room_and_pin(rule.rule)
    kind = rule.rule.WhichOneof("rule")
    if kind == _INDIVIDUAL:
        who = _hashed(call.caller) if rule.hide_phone_number else call.caller
        randomize = not rule.rule.dispatch_rule_individual.no_randomness
    elif kind == _CALLEE:
        who = call.called
        randomize = rule.rule.dispatch_rule_callee.randomize
    else:
        return room
    name = f"{room}_{who}" if room else who
    if not randomize:
        return _clean(name)
    if not random_suffix:
        raise ValueError("random_suffix is required for this dispatch rule")
    return _clean(f"{name}_{random_suffix}")


def participant_identity(rule: SIPDispatchRuleInfo | None, call: InboundCall) -> str:
    """`sip_<caller>`, or with `hide_phone_number` `sip_<hex of the first 8 bytes of
    sha256(caller)>` (the caller's bytes as received, as the reference)."""
    if rule is not None and rule.hide_phone_number:
        return "sip_" + _hashed(call.caller)
    return _clean("sip_" + call.caller)


def participant_name(rule: SIPDispatchRuleInfo | None, call: InboundCall) -> str:
    """`Phone <caller>`, or with `hide_phone_number` `Phone <last 4 characters>` - the last one
    only when the caller has 4 characters or fewer, so short extensions are not shown whole (as
    the reference)."""
    caller = call.caller
    if rule is not None and rule.hide_phone_number:
        caller = caller[-4:] if len(caller) > 4 else caller[-1:]
    return _clean("Phone " + caller)


def _hashed(caller: str) -> str:
    try:
        raw = caller.encode("utf-8", "surrogateescape")  # the bytes the INVITE carried
    except UnicodeEncodeError:
        raw = caller.encode("utf-8", "surrogatepass")  # a surrogate no parser would produce
    return hashlib.sha256(raw).digest()[:8].hex()


# Whether a text holds any of them: most hold none, and a search is several times cheaper than
# `translate`, which builds a new string either way (30-odd attributes a call; issue 18).
_NEEDS_SANITIZING = re.compile("[" + "".join(re.escape(chr(c)) for c in sorted(_SANITIZE)) + "]")


def _clean(text: str) -> str:
    # Printable ASCII - nearly all a call carries - has none of them: two scans in C, cheaper
    # than the search (a call's 22 attributes and their keys: 20-22 -> 16-18 us, issue 18).
    if text.isascii() and text.isprintable():
        return text
    if _NEEDS_SANITIZING.search(text) is None:
        return text
    return text.translate(_SANITIZE)


# --- attributes (s4) -----------------------------------------------------------------------------


def sanitize_attribute(value: str) -> str:
    """`value` made safe to publish as a participant attribute.

    Tab, CR, LF, U+2028 and U+2029 become a space; other control characters (C0, DEL, C1) are
    removed; lone surrogates (bytes that were not UTF-8 in the INVITE) become U+FFFD; the result
    is cut to `MAX_ATTRIBUTE_VALUE` characters.
    """
    return _clean(value)[:MAX_ATTRIBUTE_VALUE]


def inbound_call_info(
    *,
    call: InboundCall,
    call_id: str,
    trunk: SIPInboundTrunkInfo | None,
    rule: SIPDispatchRuleInfo,
    room: str,
    identity: str,
    to_host: str,
    created: float,
) -> SIPCallInfo:
    """The call log's record of an inbound call as it joins its room (`incoming`): who called
    whom on which trunk and rule, into which room as whom; `created` in seconds (Unix)."""
    return SIPCallInfo(
        call_id=call_id,
        sip_call_id=call.call_id,
        trunk_id=trunk.sip_trunk_id if trunk is not None else "",
        dispatch_rule_id=rule.sip_dispatch_rule_id,
        room_name=room,
        participant_identity=identity,
        call_direction=SCD_INBOUND,
        call_status=SCS_CALL_INCOMING,
        from_uri=SIPUri(user=call.caller, host=call.from_host),
        to_uri=SIPUri(user=call.called, host=to_host),
        created_at=int(created),
        created_at_ns=int(created * 1e9),
    )


def inbound_attributes(
    *,
    call: InboundCall,
    call_id: str,
    trunk: SIPInboundTrunkInfo | None,
    rule: SIPDispatchRuleInfo | None,
    status: str,
) -> dict[str, str]:
    """The SIP participant's attributes for an inbound call (SIP-BEHAVIOUR.md s4).

    Built in this order, later sources winning:
    1. the rule's `attributes`;
    2. with a trunk, `include_headers`: SIP_X_HEADERS copies every `X-*` header and
       SIP_ALL_HEADERS every header as `sip.h.<lower-case name>` (up to
       `MAX_HEADER_ATTRIBUTES_BYTES`);
    3. the carrier headers (`PROVIDER_HEADER_ATTRIBUTES`: Twilio, Telnyx, Amazon Connect);
    4. with a trunk, `headers_to_attributes` (header name, any case -> attribute name): a header
       value overrides a rule attribute of the same name, as the reference;
    5. what the server owns: sip.callID (`call_id`), sip.callIDFull, sip.callTag (left out
       when the INVITE's Call-ID / From tag is empty, as the reference), sip.callStatus,
       sip.trunkID ("" without a trunk, as the reference), sip.ruleID (left out without a rule),
       and unless the rule hides the number sip.phoneNumber, sip.trunkPhoneNumber, sip.hostname.

    Every key starting with "sip." (any case) belongs to the server: rule attributes and
    `headers_to_attributes` entries naming one are dropped, so an INVITE can never set
    sip.callStatus or sip.trunkID through a mapping (the reference lets mappings overwrite them).
    A header repeated in the INVITE contributes its first value (the reference takes the first
    for mappings and the last for `sip.h.*`; one rule for both is simpler to explain). Every key
    and value goes through `sanitize_attribute`; entries whose key ends up empty are dropped.
    `hide_phone_number` does not filter `sip.h.*`: a trunk copying every header (From, To,
    P-Asserted-Identity) publishes the numbers in them, as the reference.
    """
    attrs: dict[str, str] = {}

    def put_user(key: str, value: str) -> None:
        key = sanitize_attribute(key)
        if key and not key.lower().startswith(ATTR_PREFIX):
            attrs[key] = sanitize_attribute(value)

    if rule is not None:
        for key, value in sorted(rule.attributes.items()):
            put_user(key, value)

    first: dict[str, str] = {}
    for name, value in call.headers:
        first.setdefault(name.lower(), value)

    if trunk is not None:
        attrs.update(_header_attributes(call.headers, trunk.include_headers))

    for header, attribute in PROVIDER_HEADER_ATTRIBUTES.items():
        if header in first:
            attrs[attribute] = sanitize_attribute(first[header])

    if trunk is not None:
        for header, attribute in sorted(trunk.headers_to_attributes.items()):
            if header.lower() in first:
                put_user(attribute, first[header.lower()])

    server = {ATTR_CALL_ID: call_id, ATTR_CALL_STATUS: status}
    server[ATTR_TRUNK_ID] = trunk.sip_trunk_id if trunk is not None else ""
    if rule is not None:
        server[ATTR_RULE_ID] = rule.sip_dispatch_rule_id
    if call.call_id:
        server[ATTR_CALL_ID_FULL] = call.call_id
    if call.from_tag:
        server[ATTR_CALL_TAG] = call.from_tag
    if rule is None or not rule.hide_phone_number:
        server[ATTR_PHONE_NUMBER] = call.caller
        server[ATTR_TRUNK_PHONE_NUMBER] = call.called
        server[ATTR_HOSTNAME] = call.from_host
    attrs.update((key, sanitize_attribute(value)) for key, value in server.items())
    return attrs


def _header_attributes(headers: Iterable[tuple[str, str]], include: int) -> dict[str, str]:
    """`sip.h.<name>` for the headers `include` (a `SIPHeaderOptions`) selects, first value each."""
    if include not in (_X_HEADERS, _ALL_HEADERS):
        return {}
    only_x = include == _X_HEADERS
    out: dict[str, str] = {}
    budget = MAX_HEADER_ATTRIBUTES_BYTES
    for name, value in headers:
        key = sanitize_attribute(ATTR_HEADER_PREFIX + name.lower().strip())
        if key == ATTR_HEADER_PREFIX or key in out:
            continue
        if only_x and not key.startswith("sip.h.x-"):
            continue
        clean = sanitize_attribute(value)
        size = len(key.encode()) + len(clean.encode())
        if size > budget:
            continue  # a smaller header later on may still fit
        budget -= size
        out[key] = clean
    return out
