"""The room's routing kept up to date incrementally (issue 17 s3): a join or leave costs the
decisions it changes, not a pass over the room; and after any sequence of joins, leaves and
changes the routing is the one a full recompute - the rule of `room_audio`'s module doc, written
out plainly below - gives.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from sipbridge.media import codecs
from sipbridge.media.room_audio import AudioLeg, RoomAudio, can_forward
from tests.media.test_leg import Clock

SPECS = (codecs.PCMU_SPEC, codecs.PCMA_SPEC, codecs.G722_SPEC, codecs.OPUS_SPEC)


class Leg(AudioLeg):
    """A member whose every routing input can be set by the test; counts its flushes."""

    def __init__(self, spec: codecs.CodecSpec = codecs.PCMU_SPEC, *, forwardable: bool = True):
        super().__init__(spec)
        self.forwardable = forwardable
        self.local = False
        self.flushed = 0

    @property
    def local_audio(self) -> bool:
        return self.local

    def flush(self) -> None:
        self.flushed += 1


@dataclass(frozen=True)
class Routes:
    forward_from: dict[AudioLeg, AudioLeg]
    mixing: frozenset[AudioLeg]
    buffered: frozenset[AudioLeg]


def full_recompute(legs: list[AudioLeg]) -> Routes:
    """Every listener decided from scratch, over every talker: the rule, at O(legs x talkers)."""
    talkers = [leg for leg in legs if leg.receiving]
    forward_from: dict[AudioLeg, AudioLeg] = {}
    mixing: set[AudioLeg] = set()
    buffered: set[AudioLeg] = set()
    for listener in legs:
        if not listener.sending:
            continue
        if listener.hears is not None:
            sources = [s for s in talkers if s is listener.hears]
        else:
            sources = [s for s in talkers if s is not listener]
        if (
            len(sources) == 1
            and listener.forwardable
            and sources[0].forwardable
            and not listener.local_audio
            and can_forward(sources[0].spec, listener.spec)
        ):
            forward_from[listener] = sources[0]
            continue
        mixing.add(listener)
        buffered.update(sources)
    return Routes(forward_from, frozenset(mixing), frozenset(buffered))


def routes_of(room: RoomAudio) -> Routes:
    """What the room holds now, in the same terms; checks that each side agrees with the other."""
    forward_from = {}
    for leg in room.legs:
        if leg.forward_from is not None:
            forward_from[leg] = leg.forward_from
            assert leg.forward_to.count(leg) == 0 and leg in leg.forward_from.forward_to
        for listener in leg.forward_to:
            assert listener.forward_from is leg
        assert leg.forward_to.count(leg) == 0 and len(set(leg.forward_to)) == len(leg.forward_to)
    mixing = frozenset(leg for leg in room.legs if leg.mixing)
    buffered = frozenset(leg for leg in room.legs if leg.buffered)
    assert set(room.mixers) == mixing and set(room.sources) == buffered
    return Routes(forward_from, mixing, buffered)


def caller(spec: codecs.CodecSpec = codecs.PCMU_SPEC) -> Leg:
    return Leg(spec)  # a phone: talks and listens, packets forwardable


def subscriber(source: AudioLeg, spec: codecs.CodecSpec = codecs.OPUS_SPEC) -> Leg:
    leg = Leg(spec, forwardable=spec is not codecs.OPUS_SPEC)  # a WebRTC subscription
    leg.hears = source
    leg.receiving = False
    return leg


# -- the cost of a join ----------------------------------------------------------------------------


def decisions_per_join(room: RoomAudio, leg: AudioLeg) -> int:
    before = room.decisions
    room.add(leg)
    return room.decisions - before


def decisions_per_leave(room: RoomAudio, leg: AudioLeg) -> int:
    before = room.decisions
    room.remove(leg)
    return room.decisions - before


def test_a_join_into_a_room_of_a_thousand_callers_decides_once() -> None:
    clock = Clock()
    room = RoomAudio("flooded", clock)
    costs = [decisions_per_join(room, caller(SPECS[n % 3])) for n in range(1000)]
    # The first three joins move everyone across 0, 1 and 2 talkers; from then on one decision,
    # the joining caller's own, whatever the size of the room.
    assert costs[3:] == [1] * 997
    assert sum(costs) < 1010
    legs = list(room.legs)
    assert decisions_per_leave(room, legs[500]) == 1
    assert decisions_per_join(room, caller()) == 1
    assert routes_of(room) == full_recompute(list(room.legs))


def test_a_join_does_not_look_at_listeners_of_other_sources() -> None:
    """A room of phones each heard by WebRTC subscribers: a new phone and its subscriber cost
    their own decisions, a phone that leaves costs its subscribers', not the room's."""
    room = RoomAudio("webinar", Clock())
    phones = [caller() for _ in range(300)]
    for phone in phones:
        room.add(phone)
        for spec in (codecs.OPUS_SPEC, codecs.PCMU_SPEC):
            room.add(subscriber(phone, spec))
    assert len(room.legs) == 900
    phone = caller()
    assert decisions_per_join(room, phone) == 1
    assert decisions_per_join(room, subscriber(phone, codecs.PCMA_SPEC)) == 1
    assert decisions_per_leave(room, phones[7]) == 3  # itself and its two subscribers
    assert routes_of(room) == full_recompute(list(room.legs))


def test_a_change_of_one_leg_costs_its_own_decision() -> None:
    room = RoomAudio("r", Clock())
    legs = [caller() for _ in range(1000)]
    for leg in legs:
        room.add(leg)
    leg = legs[10]
    before = room.decisions
    leg.local = True  # a prompt starts playing to it
    room.changed(leg)
    leg.sending = False  # on hold
    room.changed(leg)
    assert room.decisions - before == 2
    assert routes_of(room) == full_recompute(list(room.legs))


def test_two_phones_forward_and_a_third_makes_them_mix_with_buffers_flushed_on_the_way_back() -> (
    None
):
    clock = Clock()
    room = RoomAudio("r", clock)
    a, b, c = caller(), caller(codecs.PCMA_SPEC), caller()
    room.add(a)
    room.add(b)
    assert a.forward_to == [b] and b.forward_to == [a] and not clock.rooms
    room.add(c)
    assert set(room.mixers) == set(room.sources) == {a, b, c} and clock.rooms == {room}
    room.remove(c)
    assert a.forward_from is b and b.forward_from is a and not room.mixers and not room.sources
    assert a.flushed == b.flushed == 1 and c.flushed == 0 and not clock.rooms


# -- any sequence: the same routing as a full recompute --------------------------------------------

POOL = 7  # legs of the sequence, by index

operation = st.one_of(
    st.tuples(st.just("add"), st.integers(0, POOL - 1), st.integers(0, 1)),  # leg, room
    st.tuples(st.just("remove"), st.integers(0, POOL - 1), st.just(0)),
    st.tuples(
        st.sampled_from(["receiving", "sending", "forwardable", "local", "spec", "hears"]),
        st.integers(0, POOL - 1),
        st.integers(0, POOL),  # a value: the spec's index, whom to hear (POOL: everyone)
    ),
)


@settings(max_examples=400, deadline=None, database=None)
@given(
    specs=st.lists(st.integers(0, len(SPECS) - 1), min_size=POOL, max_size=POOL),
    operations=st.lists(operation, max_size=40),
)
def test_incremental_routing_equals_a_full_recompute(
    specs: list[int], operations: list[tuple[str, int, int]]
) -> None:
    clock = Clock()
    rooms = [RoomAudio("one", clock), RoomAudio("two", clock)]
    legs = [Leg(SPECS[index]) for index in specs]
    for kind, index, value in operations:
        leg = legs[index]
        buffered_before = {other: other.buffered for other in legs}
        flushed_before = {other: other.flushed for other in legs}
        moved = kind == "add" and leg.room is not None  # a leave, then a join: two steps
        if kind == "add":
            rooms[value].add(leg)
        elif kind == "remove":
            if leg.room is not None:
                leg.room.remove(leg)
        else:
            if kind == "spec":
                leg.spec = SPECS[value % len(SPECS)]
            elif kind == "hears":
                leg.hears = None if value in (POOL, index) else legs[value]
            else:
                setattr(leg, kind, not getattr(leg, kind))
            if leg.room is not None:
                leg.room.changed(leg)
        for room in rooms:
            assert routes_of(room) == full_recompute(list(room.legs))
            assert (room in clock.rooms) == bool(room.mixers)
            assert all(other.room is room for other in room.legs)
        for other in legs:
            if other.room is None:
                assert not (other.forward_to or other.forward_from or other.mixing)
                assert not other.buffered
            # a buffer is flushed when no one mixes its source any more, and only then
            stopped = buffered_before[other] and not other.buffered and other.room is not None
            stayed = other.room is not None or not buffered_before[other]
            if not moved:
                assert other.flushed - flushed_before[other] == (1 if stopped and stayed else 0)


@settings(max_examples=100, deadline=None, database=None)
@given(operations=st.lists(st.tuples(st.booleans(), st.integers(0, 30)), max_size=120))
def test_joins_and_leaves_of_many_callers_equal_a_full_recompute(
    operations: list[tuple[bool, int]],
) -> None:
    room = RoomAudio("r", Clock())
    legs = [caller(SPECS[index % 3]) for index in range(31)]
    for index in range(0, 31, 5):
        legs[index].receiving = False  # some listen only
    for join, index in operations:
        if join:
            room.add(legs[index])
        else:
            room.remove(legs[index])
        assert routes_of(room) == full_recompute(list(room.legs))


def test_route_catches_up_with_changes_the_room_was_not_told_of() -> None:
    room = RoomAudio("r", Clock())
    legs = [caller(SPECS[index % 4]) for index in range(6)]
    for leg in legs:
        room.add(leg)
    legs[0].receiving = legs[1].receiving = legs[2].receiving = False
    legs[3].sending = False
    legs[4].hears = legs[5]
    room.route()
    assert routes_of(room) == full_recompute(list(room.legs))
