"""Work spread over the loop's turns (server/calls/turns.py): what a datagram's handler queues
runs one item a turn, in order, never twice, and all of it when the server stops; what other
callbacks were due runs between the items (issue 18: a call's aftermath after its BYE)."""

from __future__ import annotations

import asyncio

import pytest

from sipbridge.server.calls.turns import OnePerTurn

pytestmark = pytest.mark.timeout(10)


class Item:
    def __init__(self, name: str) -> None:
        self.name = name


async def test_one_item_a_turn_in_order_with_other_callbacks_between() -> None:
    ran: list[str] = []
    queue: OnePerTurn[Item] = OnePerTurn(lambda item: ran.append(item.name), "test")
    loop = asyncio.get_running_loop()
    items = [Item(f"end{n}") for n in range(3)]
    for item in items:
        queue.add(item)
    queue.add(items[0])  # waiting already: not twice
    assert ran == [] and len(queue) == 3 and items[1] in queue
    # Callbacks scheduled now (another datagram, the media clock) run before the second item.
    loop.call_soon(ran.append, "other")
    done = loop.create_future()
    loop.call_soon(lambda: loop.call_soon(lambda: loop.call_soon(done.set_result, None)))
    await done
    assert ran == ["end0", "other", "end1", "end2"]
    assert len(queue) == 0 and items[1] not in queue


async def test_drain_runs_every_waiting_item_now_and_a_failure_is_counted() -> None:
    ran: list[str] = []

    def run(item: Item) -> None:
        if item.name == "bad":
            raise RuntimeError("its aftermath failed")
        ran.append(item.name)

    queue: OnePerTurn[Item] = OnePerTurn(run, "test")
    for name in ("a", "bad", "b"):
        queue.add(Item(name))
    queue.drain()
    assert ran == ["a", "b"] and queue.failed == 1 and len(queue) == 0
    loop = asyncio.get_running_loop()
    turn = loop.create_future()
    loop.call_soon(turn.set_result, None)
    await turn  # the turn scheduled by the first `add` has come and found nothing left
    assert ran == ["a", "b"]
