"""The call log in Redis: paged and filtered in Redis, never loaded whole (docs/cluster.md).

Keys, under the store's prefix:

- `call:{id}`: a hash with the record (`data`, a serialised `SIPCallInfo`), its `score` and the
  values it is indexed by (`room`, `trunk`, `status`, `from`, `to`);
- `calls`: a sorted set of every call id, scored by creation time in milliseconds: the log in
  order, for pages;
- `calls:by:{field}:{value}`: the same for the calls of one room, trunk, status or number
  (caller or called), for filters.

A write replaces a call's hash and moves it between indexes (a call changes status as it goes)
in one Lua script, so that no reader sees a call half-indexed; the same script trims the oldest
calls beyond the retention cap (`--call-log-max`). A page walks `calls` or, when filtered, the
smallest index that applies, newest first, and checks the other filters on each record.
"""

from __future__ import annotations

from dataclasses import dataclass

from livekit.protocol import sip as proto

# Index fields, in the order the scripts take them; `from` and `to` both index `number`.
FIELDS = ("room", "trunk", "status", "from", "to")
FILTERS = ("room", "trunk", "status", "number")
DEFAULT_CAP = 1_000_000

_INDEX_LUA = """
local prefix = ARGV[1]
local FIELDS = {'room', 'trunk', 'status', 'from', 'to'}
local function index_key(field, value)
  if field == 'from' or field == 'to' then field = 'number' end
  return prefix .. 'calls:by:' .. field .. ':' .. value
end
-- take a call out of every index it is in, by the values its hash holds
local function unindex(id)
  local key = prefix .. 'call:' .. id
  local old = redis.call('HMGET', key, 'room', 'trunk', 'status', 'from', 'to')
  for i, field in ipairs(FIELDS) do
    if old[i] and old[i] ~= '' then redis.call('ZREM', index_key(field, old[i]), id) end
  end
  return key
end
"""

PUT_CALLS_LUA = (
    _INDEX_LUA
    + """
-- ARGV: prefix, cap, then per call: id, score, data, room, trunk, status, from, to
local cap = tonumber(ARGV[2])
for i = 3, #ARGV, 8 do
  local id, score = ARGV[i], ARGV[i + 1]
  local key = unindex(id)
  redis.call('HSET', key, 'data', ARGV[i + 2], 'score', score, 'room', ARGV[i + 3],
    'trunk', ARGV[i + 4], 'status', ARGV[i + 5], 'from', ARGV[i + 6], 'to', ARGV[i + 7])
  redis.call('ZADD', prefix .. 'calls', score, id)
  for j, field in ipairs(FIELDS) do
    local value = ARGV[i + 2 + j]
    if value ~= '' then redis.call('ZADD', index_key(field, value), score, id) end
  end
end
local trimmed = 0
if cap > 0 then
  local excess = redis.call('ZCARD', prefix .. 'calls') - cap
  if excess > 0 then
    local oldest = redis.call('ZPOPMIN', prefix .. 'calls', excess)
    for i = 1, #oldest, 2 do
      redis.call('DEL', unindex(oldest[i]))
      trimmed = trimmed + 1
    end
  end
end
return trimmed
"""
)

DELETE_CALL_LUA = (
    _INDEX_LUA
    + """
-- ARGV: prefix, id
local id = ARGV[2]
local key = unindex(id)
redis.call('ZREM', prefix .. 'calls', id)
return redis.call('DEL', key)
"""
)


@dataclass(frozen=True, slots=True, kw_only=True)
class CallFields:
    """What a call is ordered and indexed by."""

    score: int  # creation time, ms since the epoch
    room: str
    trunk: str
    status: str  # `active`, `disconnected`, ... (SIPCallStatus without `SCS_`, lowercase)
    from_user: str
    to_user: str

    def values(self) -> tuple[str, str, str, str, str]:
        return self.room, self.trunk, self.status, self.from_user, self.to_user


def status_name(status: int) -> str:
    return str(proto.SIPCallStatus.Name(status)).removeprefix("SCS_").lower()


STATUSES = tuple(status_name(v) for v in proto.SIPCallStatus.values())


def call_fields(data: bytes) -> CallFields:
    info = proto.SIPCallInfo.FromString(data)
    created_ns = info.created_at_ns or info.created_at * 1_000_000_000
    return CallFields(
        score=created_ns // 1_000_000,
        room=info.room_name,
        trunk=info.trunk_id,
        status=status_name(info.call_status),
        from_user=info.from_uri.user,
        to_user=info.to_uri.user,
    )


def matches(stored: dict[str, str], filters: dict[str, str]) -> bool:
    """Whether a call's indexed values (`FIELDS`) pass every filter (`FILTERS`)."""
    for name, wanted in filters.items():
        if name == "number":
            if wanted not in (stored.get("from"), stored.get("to")):
                return False
        elif stored.get(name) != wanted:
            return False
    return True


def index_key(prefix: str, name: str, value: str) -> str:
    return f"{prefix}calls:by:{name}:{value}"


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a page ended: the last call's score and id (newest first; ties by id, descending,
    as Redis orders equal scores in a reverse range)."""

    score: int
    call_id: str

    def token(self) -> str:
        return f"{self.score}:{self.call_id}"

    @classmethod
    def parse(cls, token: str) -> Cursor:
        score, sep, call_id = token.partition(":")
        if not sep or not score.isdigit() or not call_id:
            raise ValueError(f"bad page token {token!r}")
        return cls(int(score), call_id)

    def after(self, score: int, call_id: str) -> bool:
        """Whether a call comes after this cursor, newest first."""
        return score < self.score or (score == self.score and call_id < self.call_id)
