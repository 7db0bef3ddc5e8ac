"""Password guessing held off (telephony/auth_guard.py, issue 17 s4): failures per source, a
block after too many, each block twice the last up to a ceiling, forgiveness on success, bounded
memory. Time is an argument: no clock, no sleep."""

from __future__ import annotations

import pytest

from sipbridge.telephony.auth_guard import AuthGuard


def guard(**limits: float) -> AuthGuard:
    return AuthGuard(**{"max_failures": 3, "window": 60.0, "block": 10.0, **limits})  # type: ignore[arg-type]


def fail(g: AuthGuard, times: int, now: float, source: str = "192.0.2.1") -> float | None:
    until = None
    for _ in range(times):
        until = g.failed(source, "ST_trunk", now)
    return until


def test_too_many_failures_block_the_source_and_only_it() -> None:
    g = guard()
    assert fail(g, 2, 100.0) is None and g.blocked("192.0.2.1", 100.0) is None
    assert fail(g, 1, 101.0) == 111.0  # the third: blocked for `block` seconds
    assert g.blocked("192.0.2.1", 105.0) == 111.0
    assert g.blocked("192.0.2.2", 105.0) is None  # another address is not
    assert g.blocked("192.0.2.1", 111.0) is None  # and it ends
    assert (g.blocks, g.refused) == (1, 1)
    assert g.trunk_failures == {"ST_trunk": 3}
    assert g.blocked_count(105.0) == 1 and g.blocked_count(111.0) == 0


def test_an_ipv6_guesser_cannot_take_a_fresh_address_for_every_guess() -> None:
    """The failures of one /64 count together, whichever of its addresses they come from; the
    block covers the whole /64 and no other network."""
    g = guard()
    assert fail(g, 1, 100.0, "2001:db8:7:8::1") is None
    assert fail(g, 1, 100.0, "2001:db8:7:8::2") is None
    assert fail(g, 1, 100.0, "[2001:db8:7:8:abcd::3]") == 110.0
    assert g.blocked("2001:db8:7:8::ffff", 101.0) == 110.0
    assert g.blocked("2001:db8:7:9::1", 101.0) is None
    g.succeeded("2001:db8:7:8::1")  # the right password from the network: forgiven
    assert g.blocked("2001:db8:7:8::ffff", 101.0) is None


def test_each_block_doubles_up_to_the_ceiling() -> None:
    g = guard(max_block=35.0)
    lengths = []
    now = 0.0
    for _ in range(4):
        until = fail(g, 3, now)
        assert until is not None
        lengths.append(until - now)
        now = until + 1.0
    assert lengths == [10.0, 20.0, 35.0, 35.0]


def test_failures_outside_the_window_start_a_new_count() -> None:
    g = guard()
    fail(g, 2, 0.0)
    assert fail(g, 2, 61.0) is None  # the first two are too old
    assert fail(g, 1, 62.0) is not None


def test_a_quiet_source_starts_the_back_off_again() -> None:
    g = guard(max_block=100.0)
    assert fail(g, 3, 0.0) == 10.0
    assert fail(g, 3, 11.0) == 31.0  # 20 s
    assert fail(g, 3, 31.0 + 101.0) == 31.0 + 101.0 + 10.0  # after max_block of quiet: 10 s


def test_success_forgives() -> None:
    g = guard()
    fail(g, 2, 0.0)
    g.succeeded("192.0.2.1")
    assert len(g) == 0
    assert fail(g, 2, 1.0) is None


def test_memory_is_bounded_least_recently_seen_first() -> None:
    g = guard(capacity=2)
    g.failed("a", "", 0.0)
    g.failed("b", "", 1.0)
    g.failed("a", "", 2.0)  # a seen again: b is now the oldest
    g.failed("c", "", 3.0)
    assert len(g) == 2
    assert fail(g, 1, 4.0, source="a") is not None  # a kept its count (3 in all)
    assert fail(g, 2, 4.0, source="b") is None  # b was forgotten: 2 of 3


@pytest.mark.parametrize(
    "limits",
    [{"max_failures": 0}, {"window": 0}, {"block": 0}, {"max_block": 5.0}, {"capacity": 0}],
)
def test_limits_must_make_sense(limits: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="positive"):
        guard(**limits)
