"""A node's life as the load balancer sees it, sans-IO: serving -> draining -> stopped.

SIGTERM is how an operator (systemd, Kubernetes, a deploy script) asks a node to go away. The
node stops taking new calls - INVITE and OPTIONS answered 503 so that Kamailio's dispatcher probe
marks it down, CreateSIPParticipant refused `unavailable` - and lets the calls it holds run until
they end or the drain timeout passes; then it hangs up what is left and exits. A second SIGTERM,
or SIGINT (Ctrl-C) at any time, means "now": hang up and exit at once.

```
                 TERM                          IDLE (no calls left)
    SERVING ----------------> DRAINING -----------------------------> STOPPED
       |   (deadline = now      |      TIMEOUT (deadline passed),       ^
       |    + drain timeout)    |      TERM or INT: hang up the rest    |
       |                        +---------------------------------------+
       +---------------------------------------------------------------+
                 INT: hang up and stop at once
```

A pair not in the table changes nothing: signals may arrive at any moment (twice, or after the
node stopped), and the driver reports the number of calls whenever it likes. Time is an
argument: `signal(sig, now)`, `calls(n, now)`, `get_timer()`, `handle_timer(now)`, as the SIP
layer's machines take it; what happened comes out of `next_event()`.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass


class NodeState(enum.Enum):
    SERVING = "serving"
    DRAINING = "draining"
    STOPPED = "stopped"


class DrainInput(enum.Enum):
    TERM = "term"  # SIGTERM: drain (the first), stop now (the second)
    INT = "int"  # SIGINT: stop now
    IDLE = "idle"  # the node holds no call
    TIMEOUT = "timeout"  # the drain deadline passed


class Action(enum.Enum):
    DRAIN = "drain"  # refuse new calls, keep the others, arm the deadline
    STOP = "stop"  # nothing left to wait for
    HANG_UP = "hang_up"  # stop, ending the calls still up


TRANSITIONS: dict[tuple[NodeState, DrainInput], tuple[Action, NodeState]] = {
    (NodeState.SERVING, DrainInput.TERM): (Action.DRAIN, NodeState.DRAINING),
    (NodeState.SERVING, DrainInput.INT): (Action.HANG_UP, NodeState.STOPPED),
    (NodeState.DRAINING, DrainInput.IDLE): (Action.STOP, NodeState.STOPPED),
    (NodeState.DRAINING, DrainInput.TIMEOUT): (Action.HANG_UP, NodeState.STOPPED),
    (NodeState.DRAINING, DrainInput.TERM): (Action.HANG_UP, NodeState.STOPPED),
    (NodeState.DRAINING, DrainInput.INT): (Action.HANG_UP, NodeState.STOPPED),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class DrainStarted:
    """New calls are refused from now on; the calls held may run until `deadline`."""

    deadline: float
    calls: int  # calls held when the drain began


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeStopped:
    """The node should exit now; `hang_up`: calls are still up and must be ended first."""

    cause: DrainInput
    hang_up: bool


DrainEvent = DrainStarted | NodeStopped


class Drain:
    """The drain decision of one node. `timeout`: how long draining calls may run (seconds)."""

    def __init__(self, timeout: float) -> None:
        if timeout < 0:
            raise ValueError("drain timeout must not be negative")
        self.timeout = timeout
        self.state = NodeState.SERVING
        self.deadline: float | None = None
        self._calls = 0
        self._events: deque[DrainEvent] = deque()

    @property
    def accepting(self) -> bool:
        """Whether new calls are taken (only while serving)."""
        return self.state is NodeState.SERVING

    def signal(self, sig: DrainInput, now: float) -> None:
        """SIGTERM (`TERM`) or SIGINT (`INT`) arrived."""
        if sig not in (DrainInput.TERM, DrainInput.INT):
            raise ValueError(f"not a signal: {sig}")
        self._input(sig, now)
        # Draining with nothing to wait for (no calls, or no time): done at once.
        if self.state is NodeState.DRAINING and self._calls == 0:
            self._input(DrainInput.IDLE, now)
        elif self.deadline is not None and now >= self.deadline:
            self._input(DrainInput.TIMEOUT, now)

    def calls(self, count: int, now: float) -> None:
        """The number of calls the node holds now (reported whenever it changes, or polled)."""
        self._calls = count
        if count == 0:
            self._input(DrainInput.IDLE, now)

    def get_timer(self) -> float | None:
        """The drain deadline while draining, else None."""
        return self.deadline if self.state is NodeState.DRAINING else None

    def handle_timer(self, now: float) -> None:
        if self.deadline is not None and now >= self.deadline:
            self._input(DrainInput.TIMEOUT, now)

    def next_event(self) -> DrainEvent | None:
        return self._events.popleft() if self._events else None

    def _input(self, what: DrainInput, now: float) -> None:
        step = TRANSITIONS.get((self.state, what))
        if step is None:
            return
        action, self.state = step
        if action is Action.DRAIN:
            self.deadline = now + self.timeout
            self._events.append(DrainStarted(deadline=self.deadline, calls=self._calls))
        else:
            hang_up = action is Action.HANG_UP and self._calls > 0
            self._events.append(NodeStopped(cause=what, hang_up=hang_up))
