"""`TransferSIPParticipant`: a call in a room handed over to another number (a cold transfer).

We send the phone's side a REFER (RFC 3515) naming `transfer_to`; it must accept (200/202) and
then report how its new call goes in NOTIFYs carrying `message/sipfrag` status lines: 1xx is
progress, 2xx success - we hang our call up one second later and the participant leaves - and
anything else the transfer's failure, with that status. `play_dialtone` plays ringback to the
caller meanwhile. One transfer at a time per call. The API call returns once the transfer
succeeded, or fails with `sip_status_code`/`sip_status` in its meta (livekit-api raises
`SipCallError`). Each transfer is in the call log (`SIPTransferInfo`, by its `STR_` id).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from livekit.protocol import sip as proto

from sipbridge import ids
from sipbridge.errors import ApiError, invalid_argument, not_found
from sipbridge.media.tones import RINGBACK_ETSI, ToneGenerator
from sipbridge.server.api.auth import Claims
from sipbridge.server.media.leg_driver import CallMedia, Pcm, Player
from sipbridge.server.sip.user_agent import SipCall
from sipbridge.server.state.call_log import CallLog
from sipbridge.server.state.rooms_runtime import RoomsRuntime
from sipbridge.sip.errors import SipProtocolError
from sipbridge.sip.message import Request
from sipbridge.sip.ua.refer import (
    ReferTransfer,
    TransferFailed,
    TransferSucceeded,
    sipfrag_status,
)
from sipbridge.sip.uri import parse_uri
from sipbridge.telephony.call import room_participant_key, seconds_of
from sipbridge.telephony.headers import validate_headers
from sipbridge.telephony.outbound import call_failed

log = logging.getLogger(__name__)

DEFAULT_TRANSFER_TIMEOUT_S = 30.0  # ringing_timeout when the request has none
HANGUP_AFTER_S = 1.0  # after the transfer succeeded (SIP-BEHAVIOUR.md s5)
__all__ = ["Transfers", "refer_target", "sipfrag_status"]


class TransferableCall(Protocol):
    """What a call runner's state (inbound or outbound) offers a transfer."""

    @property
    def call(self) -> SipCall: ...

    @property
    def info(self) -> proto.SIPCallInfo: ...

    @property
    def leg(self) -> CallMedia | None: ...


@dataclass(eq=False, kw_only=True)
class Transfer:
    state: TransferableCall
    info: proto.SIPTransferInfo
    refer: ReferTransfer
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    ringback: Player | None = None


class _Ringback(Player):
    """Ringback to the caller while it waits, until `stop`."""

    def __init__(self, rate: int) -> None:
        self.tone = ToneGenerator(RINGBACK_ETSI, rate)
        self.stopped = False

    def frame(self, samples: int) -> Pcm | None:
        return None if self.stopped else self.tone.frame(samples)


def refer_target(transfer_to: str) -> str:
    """The Refer-To value: a `sip:`/`sips:` URI in angle brackets, a `tel:` URI as is (s5)."""
    target = transfer_to.strip()
    if not target or not target.isprintable() or any(c in target for c in '<>"\r\n '):
        raise invalid_argument("transfer_to: expected a sip: or tel: URI")
    scheme = target.split(":", 1)[0].lower()
    if scheme == "tel" and len(target) > 4:
        return target
    if scheme in ("sip", "sips"):
        try:
            uri = parse_uri(target)
        except SipProtocolError:
            raise invalid_argument("transfer_to: not a valid SIP URI") from None
        if uri.host:
            return f"<{target}>"
    raise invalid_argument("transfer_to: expected a sip: or tel: URI")


class Transfers:
    def __init__(
        self,
        rooms: RoomsRuntime,
        call_log: CallLog,
        lookup: Callable[[str], TransferableCall | None],
    ) -> None:
        self.rooms = rooms
        self.call_log = call_log
        self.lookup = lookup  # participant key -> its call, inbound or outbound
        self.active: dict[int, Transfer] = {}  # by id(call)
        self.stats: dict[str, int] = {}

    async def transfer(
        self, req: proto.TransferSIPParticipantRequest, _: Claims
    ) -> proto.TransferSIPParticipantResponse:
        """The transfer done: its id, SUCCESSFUL/COMPLETED and the phone's final NOTIFY status
        (TransferSIPParticipantResponse); a refused or failed transfer is a Twirp error with
        the SIP status in `meta`, which the official client raises as `SipCallError`."""
        if not req.room_name or not req.participant_identity:
            raise invalid_argument("room_name and participant_identity: must be set")
        target = refer_target(req.transfer_to)
        validate_headers(req.headers, "headers")
        state = self.lookup(room_participant_key(req.room_name, req.participant_identity))
        if state is None:
            raise not_found(
                f"no SIP call for {req.participant_identity!r} in room {req.room_name!r}"
            )
        call = state.call
        if not call.answered or call.ended or call.dialog is None:
            raise ApiError("failed_precondition", "the call is not answered")
        if id(call) in self.active:
            raise ApiError("failed_precondition", "a transfer of this call is in progress")
        now_ns = int(self.rooms.now() * 1e9)
        info = proto.SIPTransferInfo(
            transfer_id=ids.new_id(ids.TRANSFER),
            call_id=state.info.call_id,
            transfer_to=req.transfer_to,
            transfer_initiated_at_ns=now_ns,
            transfer_status=proto.SIPTransferStatus.STS_TRANSFER_ONGOING,
        )
        timeout = seconds_of(req.ringing_timeout) or DEFAULT_TRANSFER_TIMEOUT_S
        refer = ReferTransfer(deadline=self.rooms.now() + timeout)
        transfer = Transfer(state=state, info=info, refer=refer)
        self.active[id(call)] = transfer
        self.call_log.record_transfer(info)
        call.on_refer_response = lambda status, reason: self._refer_answered(
            transfer, status, reason
        )
        call.on_notify = lambda request: self._notified(transfer, request)
        leg = state.leg
        if req.play_dialtone and leg is not None:
            transfer.ringback = _Ringback(leg.spec.sample_rate)
            leg.players.append(transfer.ringback)
            if leg.room is not None:
                leg.room.changed(leg)
        self._count("started")
        log.info("call %s: transfer %s to %s", info.call_id, info.transfer_id, req.transfer_to)
        call.refer(target, dict(req.headers))
        try:
            # The wait is the transfer's deadline (`ReferTransfer.get_timer()`).
            await asyncio.wait_for(asyncio.shield(transfer.done), timeout)
        except TimeoutError:
            refer.handle_timer(refer.deadline)
            self._drain(transfer)
            raise call_failed(408, "Request Timeout", "transfer timed out") from None
        return proto.TransferSIPParticipantResponse(
            transfer_id=info.transfer_id,
            status=info.transfer_status,
            reason=proto.SIPTransferReason.STR_COMPLETED,
            sip_status=proto.SIPStatus(
                code=info.transfer_status_code.code, status=info.transfer_status_code.status
            ),
        )

    # -- the phone's side reports (sip/ua/refer.py reads them) -----------------------------

    def _refer_answered(self, transfer: Transfer, status: int, reason: str) -> None:
        transfer.refer.refer_answered(status, reason)
        self._drain(transfer)

    def _notified(self, transfer: Transfer, request: Request) -> None:
        transfer.refer.notify_received(request)
        self._drain(transfer)

    def _drain(self, transfer: Transfer) -> None:
        while (event := transfer.refer.next_event()) is not None:
            if isinstance(event, TransferSucceeded):
                self._finish(transfer, event.status, event.reason, "")
            elif isinstance(event, TransferFailed):
                self._finish(transfer, event.status, event.reason, event.error)

    def _finish(self, transfer: Transfer, status: int, reason: str, error: str) -> None:
        """The transfer's outcome, once: the API call returns or fails; on success the call
        ends a second later."""
        call = transfer.state.call
        if self.active.get(id(call)) is not transfer:
            return
        del self.active[id(call)]
        call.on_refer_response = None
        call.on_notify = None
        if transfer.ringback is not None and isinstance(transfer.ringback, _Ringback):
            transfer.ringback.stopped = True
        info = transfer.info
        info.transfer_completed_at_ns = int(self.rooms.now() * 1e9)
        info.transfer_status_code.code = status  # type: ignore[assignment]
        info.transfer_status_code.status = reason
        if 200 <= status < 300:
            info.transfer_status = proto.SIPTransferStatus.STS_TRANSFER_SUCCESSFUL
            self._count("succeeded")
            asyncio.get_running_loop().call_later(HANGUP_AFTER_S, self._hangup, transfer)
            if not transfer.done.done():
                transfer.done.set_result(None)
        else:
            info.transfer_status = proto.SIPTransferStatus.STS_TRANSFER_FAILED
            info.error = error
            self._count(f"failed_{status}")
            if not transfer.done.done():
                transfer.done.set_exception(call_failed(status, reason, f"transfer: {error}"))
                transfer.done.exception()  # retrieved: the caller may have given up
        self.call_log.record_transfer(info)

    def _hangup(self, transfer: Transfer) -> None:
        if not transfer.state.call.ended:
            transfer.state.call.hangup()

    def _count(self, name: str) -> None:
        self.stats[name] = self.stats.get(name, 0) + 1
