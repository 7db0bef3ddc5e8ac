"""A first-in, first-out queue of the events a layer hands its caller, taken one at a time
(`SipEndpoint.next_event`, `UserAgent.next_event`).

A list and an index rather than a `deque`: compiled by mypyc, a native class's methods and a
list's append and item are direct calls, where a deque's `append` and `popleft` are generic
calls looked up by name (two an event, several events a call; issue 18). The list is emptied
whenever everything was taken, which is after each message handled, so it never grows.
"""

from __future__ import annotations

from typing import Generic, TypeVar

E = TypeVar("E")


class EventQueue(Generic[E]):
    __slots__ = ("_items", "_taken")

    def __init__(self) -> None:
        self._items: list[E] = []
        self._taken = 0  # the items before it are handed out already

    def __len__(self) -> int:
        return len(self._items) - self._taken

    def append(self, event: E) -> None:
        self._items.append(event)

    def take(self) -> E | None:
        """The oldest event not yet taken, or None."""
        items = self._items
        taken = self._taken
        if taken >= len(items):
            return None
        event = items[taken]
        taken += 1
        if taken == len(items):  # all handed out: emptied, so the list never grows
            items.clear()
            taken = 0
        self._taken = taken
        return event
