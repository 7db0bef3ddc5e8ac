"""Partial updates as the LiveKit API expresses them: `ListUpdate`, optional scalars, map diffs."""

from __future__ import annotations

from collections.abc import Mapping, MutableSequence

from livekit.protocol.models import ListUpdate

from sipbridge.errors import invalid_argument


def validate_list_update(update: ListUpdate, field: str) -> None:
    """A `ListUpdate` does exactly one of: clear; set; add and/or remove. No empty elements."""
    changes = len(update.set) + len(update.add) + len(update.remove)
    if not update.clear and not changes:
        raise invalid_argument(f"{field}: list update has no operation")
    if update.clear and changes:
        raise invalid_argument(f"{field}: cannot clear and change the list at once")
    if update.set and (update.add or update.remove):
        raise invalid_argument(f"{field}: cannot set and add/remove at once")
    for part in (update.set, update.add, update.remove):
        if any(not v for v in part):
            raise invalid_argument(f"{field}: empty element in the list")


def apply_list_update(target: MutableSequence[str], update: ListUpdate) -> None:
    """Apply a validated `ListUpdate` in place: remove first, then add (keeping order, no dupes)."""
    if update.clear:
        del target[:]
        return
    if update.set:
        target[:] = list(update.set)
        return
    values = [v for v in target if v not in set(update.remove)]
    for v in update.add:
        if v not in values:
            values.append(v)
    target[:] = values


def apply_map_diff(target: dict[str, str], diff: Mapping[str, str]) -> None:
    """Set every key with a value; an empty value deletes the key."""
    for key, value in diff.items():
        if value:
            target[key] = value
        else:
            target.pop(key, None)
