"""Dispatch rules: validation, conflict keys, priority order and updates (SIP-BEHAVIOUR.md s3)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from livekit.protocol import sip as proto

from sipbridge.errors import invalid_argument
from sipbridge.rooms.model import room_name_problem
from sipbridge.telephony.numbers import normalize_number
from sipbridge.telephony.trunks import (
    MAX_METADATA,
    MAX_NAME,
    apply_media_update,
    validate_items,
    validate_media,
    validate_numbers,
    validate_text,
)
from sipbridge.telephony.updates import apply_list_update, apply_map_diff, validate_list_update

MAX_PIN_DIGITS = 16
MAX_ATTRIBUTES = 256
# Room names end up in URLs, logs and SIP headers: printable, no separators that need escaping.


class RuleKey(NamedTuple):
    """Two rules with an equal key would both match the same call with the same PIN."""

    pin: str
    trunk_id: str
    inbound_number: str
    number: str


def rule_room_and_pin(rule: proto.SIPDispatchRule) -> tuple[str, str]:
    """The room name (direct) or room prefix (individual, callee), and the PIN."""
    kind = rule.WhichOneof("rule")
    if kind == "dispatch_rule_direct":
        return rule.dispatch_rule_direct.room_name, rule.dispatch_rule_direct.pin
    if kind == "dispatch_rule_individual":
        return rule.dispatch_rule_individual.room_prefix, rule.dispatch_rule_individual.pin
    if kind == "dispatch_rule_callee":
        return rule.dispatch_rule_callee.room_prefix, rule.dispatch_rule_callee.pin
    raise invalid_argument("rule: one of dispatch_rule_direct, _individual or _callee is required")


def rule_from_create(req: proto.CreateSIPDispatchRuleRequest) -> proto.SIPDispatchRuleInfo:
    """The rule a create request describes, from `dispatch_rule` or the legacy top-level fields."""
    if req.HasField("dispatch_rule"):
        if req.dispatch_rule.sip_dispatch_rule_id:
            raise invalid_argument("dispatch_rule.sip_dispatch_rule_id: must not be set on create")
        info = proto.SIPDispatchRuleInfo()
        info.CopyFrom(req.dispatch_rule)
        return info
    info = proto.SIPDispatchRuleInfo(
        trunk_ids=list(req.trunk_ids),
        hide_phone_number=req.hide_phone_number,
        inbound_numbers=list(req.inbound_numbers),
        name=req.name,
        metadata=req.metadata,
        attributes=dict(req.attributes),
        room_preset=req.room_preset,
    )
    if req.HasField("rule"):
        info.rule.CopyFrom(req.rule)
    if req.HasField("room_config"):
        info.room_config.CopyFrom(req.room_config)
    return info


def validate_rule(r: proto.SIPDispatchRuleInfo) -> None:
    room, pin = rule_room_and_pin(r.rule)
    kind = r.rule.WhichOneof("rule")
    field = f"rule.{kind}"
    if kind == "dispatch_rule_direct" and not room:
        raise invalid_argument(f"{field}.room_name: must be set")
    room_field = "room_name" if kind == "dispatch_rule_direct" else "room_prefix"
    problem = room_name_problem(room)
    if problem:
        raise invalid_argument(f"{field}.{room_field}: {problem}")
    if pin and (not pin.isdigit() or not pin.isascii() or len(pin) > MAX_PIN_DIGITS):
        raise invalid_argument(f"{field}.pin: must be 1-{MAX_PIN_DIGITS} digits")
    validate_text(r.name, "name", MAX_NAME)
    validate_text(r.metadata, "metadata", MAX_METADATA)
    validate_items(r.trunk_ids, "trunk_ids")
    validate_numbers(r.inbound_numbers, "inbound_numbers")
    validate_numbers(r.numbers, "numbers")
    if len(r.attributes) > MAX_ATTRIBUTES:
        raise invalid_argument(f"attributes: too many (max {MAX_ATTRIBUTES})")
    for key in r.attributes:
        if not key:
            raise invalid_argument("attributes: empty attribute name")
    validate_media(r.media, "media")


def rule_keys(r: proto.SIPDispatchRuleInfo) -> Iterable[RuleKey]:
    """Every (pin, trunk, caller, called) a rule claims; an empty filter claims the "any" slot.

    A rule without `trunk_ids` only collides with other rules without them: specific rules take
    priority over catch-all ones at match time, so they do not conflict.
    """
    _, pin = rule_room_and_pin(r.rule)
    for trunk in r.trunk_ids or [""]:
        for inbound in r.inbound_numbers or [""]:
            for number in r.numbers or [""]:
                yield RuleKey(pin, trunk, normalize_number(inbound), normalize_number(number))


def find_rule_conflict(
    rule: proto.SIPDispatchRuleInfo, others: Iterable[proto.SIPDispatchRuleInfo]
) -> str | None:
    mine = set(rule_keys(rule))
    for other in others:
        if other.sip_dispatch_rule_id == rule.sip_dispatch_rule_id:
            continue
        if mine.intersection(rule_keys(other)):
            return (
                "a dispatch rule for the same trunk, inbound number, number and PIN "
                f"combination already exists: {other.sip_dispatch_rule_id} {other.name!r}"
            )
    return None


def rule_priority(r: proto.SIPDispatchRuleInfo) -> int:
    """Lower is preferred: PIN rules (0-2) before open rules (100-102), direct before individual
    before callee; +1000 for each of `inbound_numbers` and `numbers` left empty."""
    room_and_pin = r.rule.WhichOneof("rule")
    base = {"dispatch_rule_direct": 0, "dispatch_rule_individual": 1, "dispatch_rule_callee": 2}
    if room_and_pin not in base:
        return 2**31 - 1
    _, pin = rule_room_and_pin(r.rule)
    priority = base[room_and_pin] + (0 if pin else 100)
    if not r.inbound_numbers:
        priority += 1000
    if not r.numbers:
        priority += 1000
    return priority


def apply_rule_update(
    info: proto.SIPDispatchRuleInfo, update: proto.SIPDispatchRuleUpdate
) -> proto.SIPDispatchRuleInfo:
    result = proto.SIPDispatchRuleInfo()
    result.CopyFrom(info)
    if update.HasField("trunk_ids"):
        validate_list_update(update.trunk_ids, "update.trunk_ids")
        apply_list_update(result.trunk_ids, update.trunk_ids)
    if update.HasField("rule"):
        result.rule.CopyFrom(update.rule)
    for name in ("name", "metadata"):
        if update.HasField(name):
            setattr(result, name, getattr(update, name))
    attributes = dict(result.attributes)
    apply_map_diff(attributes, update.attributes)
    result.attributes.clear()
    result.attributes.update(attributes)
    apply_media_update(result, update)
    return result
