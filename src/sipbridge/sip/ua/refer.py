"""A transfer we ask for (RFC 3515 REFER, the transferor's side), sans-IO.

`ReferTransfer` follows one REFER sent in a dialog (by `InviteSession.refer`): its final
response (`refer_answered`: 2xx accepts, anything else fails the transfer) and the NOTIFYs of
the implicit subscription (`notify_received`, s2.4.4): each carries a `message/sipfrag` body
whose status line is how the transferee's new call goes - 1xx progress, 2xx success, 3xx-6xx
failure with that status (NOTIFYs of other events, and bodies that are no status line, are
ignored). The transfer has a deadline: no outcome by then is 408. The outcome comes out once,
as `TransferSucceeded` or `TransferFailed`; progress as `TransferProgress`.

    Referring --2xx--> Accepted --sipfrag 2xx--> Succeeded
    Referring/Accepted --3xx-6xx, sipfrag 3xx-6xx, deadline--> Failed
    Referring --sipfrag 2xx (NOTIFY before the 2xx, s2.4.5)--> Succeeded
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum

from sipbridge.sip.message import Request

MAX_SIPFRAG = 1024


class State(Enum):
    REFERRING = "Referring"  # the REFER is out, no final response yet
    ACCEPTED = "Accepted"  # 2xx to the REFER: the transferee is trying
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class Input(Enum):
    ACCEPTED = "REFER 2xx"
    SUCCEEDED = "sipfrag 2xx"
    FAILED = "REFER refused, sipfrag 3xx-6xx, subscription ended, or deadline"


TRANSITIONS: dict[tuple[State, Input], State] = {
    (State.REFERRING, Input.ACCEPTED): State.ACCEPTED,
    (State.REFERRING, Input.SUCCEEDED): State.SUCCEEDED,
    (State.ACCEPTED, Input.SUCCEEDED): State.SUCCEEDED,
    (State.REFERRING, Input.FAILED): State.FAILED,
    (State.ACCEPTED, Input.FAILED): State.FAILED,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferProgress:
    """A 1xx sipfrag: the transferee's new call is under way."""

    status: int
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferSucceeded:
    status: int
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferFailed:
    """`status`/`reason` as the peer said (408 for our deadline); `error` for the log/API."""

    status: int
    reason: str
    error: str


TransferEvent = TransferProgress | TransferSucceeded | TransferFailed


def sipfrag_status(body: bytes) -> tuple[int, str] | None:
    """The status line of a `message/sipfrag` NOTIFY body ("SIP/2.0 180 Ringing")."""
    line = body[:MAX_SIPFRAG].split(b"\n", 1)[0].decode("utf-8", "replace").strip()
    parts = line.split(" ", 2)
    if len(parts) < 2 or not parts[0].upper().startswith("SIP/") or not parts[1].isdigit():
        return None
    status = int(parts[1])
    if not 100 <= status <= 699:
        return None
    return status, parts[2] if len(parts) > 2 else ""


class ReferTransfer:
    """One REFER's outcome; `deadline` is when it times out (408)."""

    def __init__(self, *, deadline: float) -> None:
        self.state = State.REFERRING
        self.deadline = deadline
        self._events: deque[TransferEvent] = deque()

    @property
    def done(self) -> bool:
        return self.state in (State.SUCCEEDED, State.FAILED)

    def _step(self, given: Input) -> bool:
        next_state = TRANSITIONS.get((self.state, given))
        if next_state is None:
            return False
        self.state = next_state
        return True

    def _fail(self, status: int, reason: str, error: str) -> None:
        if self._step(Input.FAILED):
            self._events.append(TransferFailed(status=status, reason=reason, error=error))

    def refer_answered(self, status: int, reason: str) -> None:
        """The REFER's final response (408 when none came)."""
        if 200 <= status < 300:
            self._step(Input.ACCEPTED)
        else:
            self._fail(status, reason, f"REFER refused: {status} {reason}".strip())

    def notify_received(self, request: Request) -> None:
        """A NOTIFY in the dialog: ours when its Event is `refer` (s2.4.4); others are ignored."""
        if (request.headers.get("Event") or "").split(";")[0].strip().lower() != "refer":
            return
        found = sipfrag_status(request.body)
        if found is None:
            return
        status, reason = found
        if status >= 300:
            self._fail(status, reason, f"{status} {reason}")
        elif status >= 200:
            if self._step(Input.SUCCEEDED):
                self._events.append(TransferSucceeded(status=status, reason=reason))
        elif not self.done:
            self._events.append(TransferProgress(status=status, reason=reason))

    def get_timer(self) -> float | None:
        return None if self.done else self.deadline

    def handle_timer(self, now: float) -> None:
        if now >= self.deadline:
            self._fail(408, "Request Timeout", "the transfer target did not answer")

    def next_event(self) -> TransferEvent | None:
        return self._events.popleft() if self._events else None
