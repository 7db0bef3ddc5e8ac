"""Admission of new requests by source address, before any transaction or call is made for them
(issue 17 s3): the SIP core's first line against floods and scanners, as Kamailio's `pike`.

Each address has a token bucket for the requests that start something (INVITE and REGISTER
outside a dialog): `rate` per second, up to `burst` at once. Beyond it the address is refused
with 503 and Retry-After, each refusal deepening its debt; an address `drop_after` refusals in
debt gets no answer at all (answering a flood is work, and an amplifier), until its bucket
refills. With `allow_from` set, requests from any other address are dropped unanswered
(responses to our own requests are not requests, and always pass). Memory is bounded: at most
`capacity` addresses are remembered, the least recently seen go first. Pure: time is passed in.

An address here is `source_key`'s: an IPv6 source is judged by its /64, the one network a
subscriber's hosts take addresses from at will (RFC 6177, RFC 8981's temporary addresses), so
that a flood or a scanner cannot take a fresh bucket with every request. `allow_from` alone
looks at the exact address.
"""

from __future__ import annotations

import enum
import ipaddress
import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT_RATE = 50.0  # new INVITEs/REGISTERs per second and address (config.py says why)
DEFAULT_BURST = 100.0
DEFAULT_DROP_AFTER = 100  # refusals in debt before an address is no longer answered
DEFAULT_CAPACITY = 10_000
IPV6_PREFIX = 64  # an IPv6 source's addresses judged as one (see the module's docstring)
_KEYS_KEPT = 4096  # IPv6 sources whose key is remembered (parsing one costs microseconds)
LIMITED_METHODS = frozenset({"INVITE", "REGISTER"})

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


_v6_keys: dict[str, str] = {}


def source_key(source: str) -> str:
    """Whose requests these are, for admission (and the auth guard's blocks): an IPv4 address
    itself; an IPv6 one its /64 (`2001:db8:1:2::/64`); an IPv4-mapped IPv6 address (a dual-stack
    socket's `::ffff:192.0.2.1`) the IPv4 address it maps. Brackets and a zone are ignored; text
    that is no address is its own key."""
    if ":" not in source:
        return source
    key = _v6_keys.get(source)
    if key is None:
        try:
            address = ipaddress.IPv6Address(source.strip("[]").split("%", 1)[0])
        except ValueError:
            return source
        mapped = address.ipv4_mapped
        if mapped is not None:
            key = str(mapped)
        else:
            key = str(ipaddress.IPv6Network((address, IPV6_PREFIX), strict=False))
        if len(_v6_keys) >= _KEYS_KEPT:
            _v6_keys.clear()
        _v6_keys[source] = key
    return key


class Verdict(enum.Enum):
    ADMIT = "admit"
    REFUSE = "refuse"  # 503 with Retry-After
    DROP = "drop"  # no answer


@dataclass(slots=True)
class TokenBucket:
    """`rate` tokens a second up to `burst`; `take` spends one when there is one. Below zero
    (`spend`) is debt, repaid by the refill."""

    rate: float
    burst: float
    tokens: float
    at: float

    @classmethod
    def full(cls, rate: float, burst: float, now: float) -> TokenBucket:
        return cls(rate=rate, burst=burst, tokens=burst, at=now)

    def refill(self, now: float) -> None:
        elapsed = max(0.0, now - self.at)
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        self.at = max(self.at, now)

    def take(self, now: float) -> bool:
        self.refill(now)
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class Admission:
    def __init__(
        self,
        *,
        rate: float = DEFAULT_RATE,
        burst: float = DEFAULT_BURST,
        drop_after: int = DEFAULT_DROP_AFTER,
        capacity: int = DEFAULT_CAPACITY,
        allow_from: Iterable[Network] = (),
    ) -> None:
        if rate <= 0 or burst < 1 or drop_after < 0 or capacity < 1:
            raise ValueError("admission limits must be positive")
        self.rate = rate
        self.burst = burst
        self.drop_after = drop_after
        self.capacity = capacity
        self.allow_from = tuple(allow_from)
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def allowed(self, source: str) -> bool:
        """Whether `source` may send requests at all (`allow_from`)."""
        if not self.allow_from:
            return True
        try:
            address = ipaddress.ip_address(source.strip("[]"))
        except ValueError:
            return False
        return any(address in network for network in self.allow_from)

    def dropping(self, source: str, now: float) -> bool:
        """Whether `source` is so deep in debt that its new requests get no answer now (the
        `DROP` verdict). Asked before a datagram is even parsed: a flood's requests past that
        point cost a dictionary look-up, not a parse (issue 17 s3)."""
        bucket = self._buckets.get(source_key(source))
        if bucket is None:
            return False
        bucket.refill(now)
        return bucket.tokens <= -self.drop_after

    def allowance(self, source: str, now: float) -> int:
        """How many more INVITEs and REGISTERs from `source` it judges, at the least, before it
        could drop one unanswered (a refill only adds to it): the bucket's whole tokens, then
        the refusals in debt. 0 for an address not allowed. (For the SIP UDP reader thread,
        which answers 100 Trying before this judges a request: server/sip/udp_thread.py.)"""
        if not self.allowed(source):
            return 0
        bucket = self._buckets.get(source_key(source))
        if bucket is None:
            tokens = self.burst
        else:
            bucket.refill(now)
            tokens = bucket.tokens
        return int(max(0.0, min(float(1 << 30), math.floor(tokens) + self.drop_after - 1.0)))

    def admit(self, source: str, method: str, now: float) -> Verdict:
        """The verdict on a request outside any dialog from `source`."""
        if not self.allowed(source):
            return Verdict.DROP
        if method not in LIMITED_METHODS:
            return Verdict.ADMIT
        key = source_key(source)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket.full(self.rate, self.burst, now)
            while len(self._buckets) > self.capacity:
                self._buckets.popitem(last=False)  # the least recently seen
        else:
            self._buckets.move_to_end(key)
        if bucket.take(now):
            return Verdict.ADMIT
        if bucket.tokens > -self.drop_after:
            bucket.tokens -= 1
            return Verdict.REFUSE
        return Verdict.DROP
