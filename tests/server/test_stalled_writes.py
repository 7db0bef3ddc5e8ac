"""StalledWrites.sweep on connections whose transports say nothing of TCP (no socket): a
connection is cut when what waits to leave has not shrunk between two looks, never when it is
empty or shrinking. (The TCP_INFO path, acknowledged bytes, is proven against real sockets in
tests/interop/test_hostile_http.py.)"""

from __future__ import annotations

from dataclasses import dataclass, field

from sipbridge.server.api.stalled_writes import StalledWrites


@dataclass
class FakeTransport:
    waiting: int = 0
    aborted: bool = False
    extra: dict[str, object] = field(default_factory=dict)

    def get_write_buffer_size(self) -> int:
        return self.waiting

    def is_closing(self) -> bool:
        return self.aborted

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self.extra.get(name, default)

    def abort(self) -> None:
        self.aborted = True


@dataclass
class FakeConnection:
    transport: FakeTransport | None


def test_a_connection_whose_waiting_bytes_do_not_shrink_is_cut() -> None:
    stuck, slow, idle = FakeTransport(waiting=1000), FakeTransport(waiting=1000), FakeTransport()
    connections = [FakeConnection(t) for t in (stuck, slow, idle)] + [FakeConnection(None)]
    sweeper = StalledWrites(idle_s=15)
    assert sweeper.sweep(connections) == 0  # a first look cuts nothing
    slow.waiting = 400
    assert sweeper.sweep(connections) == 1
    assert stuck.aborted and not slow.aborted and not idle.aborted
    assert sweeper.cut == 1
    # the slow one stops taking anything: cut at the next look; the cut one is not counted again
    assert sweeper.sweep(connections) == 1
    assert slow.aborted
    assert sweeper.sweep(connections) == 0 and sweeper.cut == 2


def test_a_connection_that_empties_between_looks_starts_over() -> None:
    transport = FakeTransport(waiting=500)
    connections = [FakeConnection(transport)]
    sweeper = StalledWrites(idle_s=15)
    sweeper.sweep(connections)
    transport.waiting = 0
    sweeper.sweep(connections)
    transport.waiting = 500
    assert sweeper.sweep(connections) == 0  # a new write: not yet stalled
    assert not transport.aborted
    assert sweeper.sweep(connections) == 1  # and now it is
