"""Every SIP message of every recent call, as it crossed the socket: sans-IO, time passed in.

The transport hands each message in and out to `CallTraces.record` with the wall-clock time and
both addresses; the message joins the trace of its Call-ID (RFC 3261 s8.1.1.4: every request
and response of a dialog, and of the transactions before it, carries the same Call-ID). An
INVITE with an unknown Call-ID opens a trace; anything else with an unknown Call-ID (OPTIONS
pings, REGISTER, a BYE for a call long gone) is not kept, so traffic that is not a call costs
one header search and one dictionary miss.

Bounds, so that neither one call nor many can grow the memory without limit:
- per call, the first `head_messages` messages (at most `head_bytes`) and the last
  `tail_messages` (at most `tail_bytes`): the set-up and the end of the call, however many
  re-INVITEs came between; what falls between is counted (`dropped`, `dropped_bytes`) and shown
  as one gap in the trace;
- in total, at most `max_calls` traces and `max_bytes` of messages: the least recently active
  trace goes first, and a trace without a message for `max_age` seconds is expired.

RTP is not traced unless asked for, call by call (`capture_rtp`): then the header of each RTP
packet (RFC 3550 s5.1: no payload, so no audio is kept) joins the trace with its time and
addresses, the first `rtp_packets` of them (5 minutes of 20 ms packets both ways), counted in
the same total budget.
"""

from __future__ import annotations

import re
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from sipbridge.sip.message import C_MESSAGE, atomic_tuple
from sipbridge.sip.pcap import Packet, write_pcap

HEAD_MESSAGES = 150
TAIL_MESSAGES = 50
HEAD_BYTES = 192 * 1024
TAIL_BYTES = 64 * 1024
MAX_CALLS = 10_000
MAX_BYTES = 64 * 1024 * 1024
MAX_AGE_S = 24 * 3600.0
# What one kept message costs beyond its bytes (the entry and its tuple), for the total budget.
ENTRY_OVERHEAD: Final = 120
RTP_PACKETS = 30_000

# RFC 3261 s25.1 and s7.3.3: header names are case-insensitive, "i" is Call-ID's compact form.
#   Call-ID  =  ( "Call-ID" / "i" ) HCOLON callid
#   HCOLON   =  *( SP / HTAB ) ":" SWS
_CALL_ID = re.compile(rb"\r\n(?:call-id|i)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)
_CANONICAL = b"\r\nCall-ID: "  # what most peers, and we, send: found without the regex
# The canonical case in C (`_csipmsg.call_id`: one search for each of the three, instead of
# three generic method calls on bytes), where built; None: `call_id_of` alone.
_ccall_id: Final[Any] = None if C_MESSAGE is None else C_MESSAGE.call_id


# How a trace keeps a message: a plain tuple of (time, outgoing, transport, local host, local
# port, remote host, remote port, data). It costs 0.1 us to make where a frozen dataclass costs
# 1.1 us, and the cyclic garbage collector stops tracking a tuple of strings and numbers, so tens
# of thousands kept do not lengthen its collections. (Flat: a nested address tuple is one the
# collector may not have untracked yet when it looks at the outer one, which it then keeps
# tracking - and freezing - for good.) Made untracked (`atomic_tuple`), the collection after it
# does not walk it at all. `TracedMessage` is made from it when a trace is read.
# Typed as a tuple of any length: compiled, a tuple of fixed types is a C struct, boxed into a
# new tuple (one the collector walks) wherever it is stored (issue 18).
Kept = tuple[Any, ...]
# An RTP packet kept: (time, outgoing, local, remote, its header, the whole packet's length).
KeptRtp = tuple[float, bool, tuple[str, int], tuple[str, int], bytes, int]


@dataclass(frozen=True, slots=True)
class TracedMessage:
    """One SIP message as it crossed our socket."""

    time: float  # seconds since the epoch
    outgoing: bool
    transport: str  # udp, tcp, tls
    local: tuple[str, int]
    remote: tuple[str, int]
    data: bytes

    @property
    def first_line(self) -> str:
        """The request line or status line."""
        line = self.data.split(b"\r\n", 1)[0]
        return line.decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class Gap:
    """Where a trace's messages were not kept: how many, and their bytes."""

    messages: int
    bytes: int


@dataclass(eq=False, slots=True, init=False)
class CallTrace:
    """The kept messages of one Call-ID: the head, then the last ones."""

    call_id: str
    head_messages: int
    tail_messages: int
    head_bytes: int
    tail_bytes: int
    names: tuple[str, ...]  # our call ids (SCL_...) for this Call-ID
    head: list[Kept]
    # made when first needed: most calls never fill their head, and every container kept
    # alive is one more for the garbage collector to walk
    tail: deque[Kept] | None
    kept_head_bytes: int
    kept_tail_bytes: int
    dropped: int
    dropped_bytes: int
    last: float
    rtp: list[KeptRtp] | None  # None: RTP is not captured for this call
    rtp_bytes: int  # the RTP headers kept, with ENTRY_OVERHEAD each
    rtp_dropped: int
    alive: bool  # False once evicted: what is recorded after is not counted

    # Its own `__init__` (dataclass `init=False`): mypyc compiles it, where the generated one
    # stays interpreted (one for every call, issue 18). What is not an argument starts empty.
    def __init__(
        self,
        call_id: str,
        head_messages: int = HEAD_MESSAGES,
        tail_messages: int = TAIL_MESSAGES,
        head_bytes: int = HEAD_BYTES,
        tail_bytes: int = TAIL_BYTES,
        *,
        last: float = 0.0,
    ) -> None:
        self.call_id = call_id
        self.head_messages = head_messages
        self.tail_messages = tail_messages
        self.head_bytes = head_bytes
        self.tail_bytes = tail_bytes
        self.names = ()
        self.head = []
        self.tail = None
        self.kept_head_bytes = 0
        self.kept_tail_bytes = 0
        self.dropped = 0
        self.dropped_bytes = 0
        self.last = last
        self.rtp = None
        self.rtp_bytes = 0
        self.rtp_dropped = 0
        self.alive = True

    @property
    def kept_bytes(self) -> int:
        return self.kept_head_bytes + self.kept_tail_bytes

    @property
    def size(self) -> int:
        """What this trace counts against the total budget."""
        messages = (len(self.head) + len(self.tail or ())) * ENTRY_OVERHEAD
        return self.kept_bytes + messages + self.rtp_bytes

    def add(self, message: Kept) -> int:
        """Keep `message` if the bounds allow; returns how much `size` changed."""
        self.last = message[0]
        size = len(message[7])
        if (
            not self.dropped
            and not self.tail
            and len(self.head) < self.head_messages
            and self.kept_head_bytes + size <= self.head_bytes
        ):
            self.head.append(message)
            self.kept_head_bytes += size
            return size + ENTRY_OVERHEAD
        if size > self.tail_bytes:
            self.dropped += 1
            self.dropped_bytes += size
            return 0
        tail = self.tail
        if tail is None:
            tail = self.tail = deque()
        tail.append(message)
        self.kept_tail_bytes += size
        change = size + ENTRY_OVERHEAD
        while len(tail) > self.tail_messages or self.kept_tail_bytes > self.tail_bytes:
            old = len(tail.popleft()[7])
            self.kept_tail_bytes -= old
            self.dropped += 1
            self.dropped_bytes += old
            change -= old + ENTRY_OVERHEAD
        return change

    def entries(self) -> Iterator[TracedMessage | Gap]:
        """The kept messages in order, with a `Gap` where some were not kept."""
        for kept in self.head:
            yield _traced(kept)
        if self.dropped:
            yield Gap(self.dropped, self.dropped_bytes)
        for kept in self.tail or ():
            yield _traced(kept)

    def messages(self) -> list[TracedMessage]:
        return [_traced(kept) for kept in (*self.head, *(self.tail or ()))]


def _traced(kept: Kept) -> TracedMessage:
    time, outgoing, transport, local_host, local_port, remote_host, remote_port, data = kept
    local, remote = (local_host, local_port), (remote_host, remote_port)
    return TracedMessage(time, outgoing, transport, local, remote, data)


def call_id_of(data: bytes, *, canonical: bool = True) -> bytes | None:
    """The Call-ID of a message (its bytes, stripped), None when its head has none; what
    `_csipmsg.call_id` finds in C where built (the canonical spelling), in Python, and
    the rest (`canonical=False`: only what the C function leaves)."""
    if canonical:
        # The header is found before looking for the blank line that ends the headers, and
        # that only up to it: a message's headers are read once, not twice.
        start = data.find(_CANONICAL)
        # (+2: the CRLF that begins _CANONICAL may be the second half of the blank line)
        if start >= 0 and data.find(b"\r\n\r\n", 0, start + 2) < 0:
            start += len(_CANONICAL)
            stop = data.find(b"\r\n", start)
            if stop < 0:
                stop = len(data)
            call_id = data[start:stop]
            # (stripped only when it needs it: a method call on bytes is a generic one)
            if call_id and (_blank(call_id[0]) or _blank(call_id[-1])):
                call_id = call_id.strip()
            return call_id
    # another spelling, or the canonical one only in the body (a sipfrag)
    end = data.find(b"\r\n\r\n")
    match = _CALL_ID.search(data, 0, end if end >= 0 else len(data))
    if match is None:
        return None
    return match.group(1).strip()


def _blank(byte: int) -> bool:
    """Whether `bytes.strip` strips this byte (ASCII whitespace)."""
    return byte == 32 or 9 <= byte <= 13


class CallTraces:
    """The traces of recent calls by Call-ID, least recently active first."""

    def __init__(
        self,
        *,
        max_calls: int = MAX_CALLS,
        max_bytes: int = MAX_BYTES,
        max_age: float = MAX_AGE_S,
        head_messages: int = HEAD_MESSAGES,
        tail_messages: int = TAIL_MESSAGES,
        head_bytes: int = HEAD_BYTES,
        tail_bytes: int = TAIL_BYTES,
        rtp_packets: int = RTP_PACKETS,
    ) -> None:
        self.max_calls = max_calls
        self.rtp_packets = rtp_packets
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._limits = (head_messages, tail_messages, head_bytes, tail_bytes)
        self._calls: OrderedDict[bytes, CallTrace] = OrderedDict()
        # The trace written last and its Call-ID: the last in `_calls` (what `record` writes,
        # it moves there). A call's messages come in runs (the INVITE, then our 100, 180 and
        # 200): the rest of a run finds its trace here, without a lookup or a move.
        self._recent_id = b""
        self._recent: CallTrace | None = None
        self._names: dict[str, bytes] = {}  # our call id -> Call-ID
        self.bytes = 0  # the sum of the traces' sizes
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._calls)

    def record(
        self,
        data: bytes,
        now: float,
        *,
        outgoing: bool,
        transport: str,
        local: tuple[str, int],
        remote: tuple[str, int],
    ) -> None:
        """Keep one message that crossed the socket (the hot path: every SIP message)."""
        ccall_id = _ccall_id
        found = None if ccall_id is None else ccall_id(data)
        call_id = found if found is not None else call_id_of(data, canonical=ccall_id is None)
        if call_id is None:
            return
        trace = self._recent
        if trace is None or not trace.alive or call_id != self._recent_id:
            trace = self._calls.get(call_id)
            if trace is None:
                if not data.startswith(b"INVITE ") or not call_id:
                    return
                trace = self._open(call_id, now)
            else:
                self._calls.move_to_end(call_id)
            self._recent_id = call_id
            self._recent = trace
        kept: Kept = atomic_tuple(
            now, outgoing, transport, local[0], local[1], remote[0], remote[1], data
        )
        self.bytes += trace.add(kept)
        if self.bytes > self.max_bytes:
            self._evict(now, keep=trace)

    def _open(self, call_id: bytes, now: float) -> CallTrace:
        head_messages, tail_messages, head_bytes, tail_bytes = self._limits
        trace = CallTrace(
            call_id.decode("utf-8", "replace"),
            head_messages=head_messages,
            tail_messages=tail_messages,
            head_bytes=head_bytes,
            tail_bytes=tail_bytes,
            last=now,
        )
        self._calls[call_id] = trace
        self._recent = None  # (no longer the last in line)
        self._evict(now, keep=trace)
        return trace

    def _evict(self, now: float, keep: CallTrace) -> None:
        """Drop the least recently active traces while over a budget or too old; never `keep`,
        the trace being written (the most recent, so the last in line)."""
        while True:  # ends at `keep` at the latest
            call_id, oldest = next(iter(self._calls.items()))
            if oldest is keep or (
                len(self._calls) <= self.max_calls
                and self.bytes <= self.max_bytes
                and now - oldest.last <= self.max_age
            ):
                return
            self._drop(call_id)

    def _drop(self, call_id: bytes) -> None:
        trace = self._calls.pop(call_id)
        trace.alive = False
        self.bytes -= trace.size
        self.evicted += 1
        for name in trace.names:
            if self._names.get(name) == call_id:
                del self._names[name]

    def capture_rtp(self, call: str, now: float, *, opening: bool = False) -> CallTrace | None:
        """Keep the RTP headers of a call from now on (`record_rtp`); None if it has no trace.
        With `opening`, `call` is a Call-ID whose trace is opened if need be (an outbound
        call's media is set up before its INVITE leaves)."""
        trace = self.get(call, now)
        if trace is None and opening and call:
            trace = self._open(call.encode(), now)
        if trace is not None and trace.rtp is None:
            trace.rtp = []
        return trace

    def record_rtp(
        self,
        trace: CallTrace,
        packet: bytes,
        now: float,
        *,
        outgoing: bool,
        local: tuple[str, int],
        remote: tuple[str, int],
    ) -> None:
        """Keep the header of one RTP packet of a call whose RTP is captured."""
        rtp = trace.rtp
        if rtp is None or not trace.alive:
            return
        if len(rtp) >= self.rtp_packets:
            trace.rtp_dropped += 1
            return
        header = rtp_header(packet)
        rtp.append((now, outgoing, local, remote, header, len(packet)))
        change = len(header) + ENTRY_OVERHEAD
        trace.rtp_bytes += change
        self.bytes += change
        if self.bytes > self.max_bytes:
            self._evict(now, keep=trace)

    def name(self, name: str, call_id: str) -> None:
        """Let the trace of `call_id` (a SIP Call-ID) be found by our id for the call too."""
        key = call_id.encode()
        trace = self._calls.get(key)
        if trace is not None and name not in trace.names:
            trace.names += (name,)
            self._names[name] = key

    def get(self, call: str, now: float) -> CallTrace | None:
        """The trace of a call by our call id (SCL_...) or its SIP Call-ID; None when unknown
        or expired."""
        key = self._names.get(call) or call.encode()
        trace = self._calls.get(key)
        if trace is None:
            return None
        if now - trace.last > self.max_age:
            self._drop(key)
            return None
        return trace


def rtp_header(packet: bytes) -> bytes:
    """The header of an RTP packet: the fixed 12 bytes, the CSRCs and the header extension
    (RFC 3550 s5.1, s5.3.1); what the packet has of it if it is cut short."""
    if len(packet) < 12:
        return packet
    length = 12 + 4 * (packet[0] & 0x0F)
    if packet[0] & 0x10 and len(packet) >= length + 4:
        length += 4 + 4 * int.from_bytes(packet[length + 2 : length + 4], "big")
    return packet[:length]


# -- the trace as data and as a ladder -----------------------------------------------------------


def trace_as_json(trace: CallTrace) -> dict[str, Any]:
    """The trace as JSON-ready data; each entry a message or the gap where some were dropped."""
    entries: list[dict[str, Any]] = []
    for entry in trace.entries():
        if isinstance(entry, Gap):
            entries.append({"kind": "gap", "messages": entry.messages, "bytes": entry.bytes})
            continue
        entries.append(
            {
                "kind": "message",
                "time": entry.time,
                "direction": "out" if entry.outgoing else "in",
                "transport": entry.transport,
                "local_host": entry.local[0],
                "local_port": entry.local[1],
                "remote_host": entry.remote[0],
                "remote_port": entry.remote[1],
                "text": entry.data.decode("utf-8", "replace"),
            }
        )
    return {
        "call_id": trace.call_id,
        "names": sorted(trace.names),
        "dropped": trace.dropped,
        "dropped_bytes": trace.dropped_bytes,
        "rtp_traced": trace.rtp is not None,
        "rtp_packets": len(trace.rtp) if trace.rtp is not None else 0,
        "rtp_dropped": trace.rtp_dropped,
        "entries": entries,
    }


def pcap_of(trace: CallTrace) -> bytes:
    """Every kept message of the trace, and the RTP headers if kept, in the order of their
    times, as a libpcap file (sip/pcap.py); RTP packets are written cut to their headers."""
    return write_pcap(packets_of(trace))


def packets_of(trace: CallTrace) -> list[Packet]:
    """What `pcap_of` writes: a snapshot, which `write_pcap` may then turn into bytes anywhere
    (off the event loop) while the call goes on."""
    packets = [
        Packet(
            m.time,
            m.transport,
            m.local if m.outgoing else m.remote,
            m.remote if m.outgoing else m.local,
            m.data,
        )
        for m in trace.messages()
    ]
    if trace.rtp:
        packets += [
            Packet(
                when,
                "udp",
                local if outgoing else remote,
                remote if outgoing else local,
                header,
                original_length=length,
            )
            for when, outgoing, local, remote, header, length in trace.rtp
        ]
        packets.sort(key=lambda packet: packet.time)  # stable: SIP keeps its order
    return packets


def entries_from_json(data: dict[str, Any]) -> list[TracedMessage | Gap]:
    """The entries of `trace_as_json`'s output, read back (e.g. by the CLI)."""
    entries: list[TracedMessage | Gap] = []
    for item in data.get("entries", []):
        if item.get("kind") == "gap":
            entries.append(Gap(int(item["messages"]), int(item["bytes"])))
            continue
        entries.append(
            TracedMessage(
                time=float(item["time"]),
                outgoing=item["direction"] == "out",
                transport=str(item["transport"]),
                local=(str(item["local_host"]), int(item["local_port"])),
                remote=(str(item["remote_host"]), int(item["remote_port"])),
                data=str(item["text"]).encode("utf-8"),
            )
        )
    return entries


def address(where: tuple[str, int]) -> str:
    host, port = where
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def ladder(entries: list[TracedMessage | Gap], *, width: int = 56) -> str:
    """A compact ladder diagram: one line per message, time from the first message, an arrow
    between our address (left) and the peer's (right) labelled with the request line or status
    line. A message to or from another peer than the first names it after the arrow."""
    messages = [e for e in entries if isinstance(e, TracedMessage)]
    if not messages:
        return "(no messages)"
    first = messages[0]
    us, peer = address(first.local), address(first.remote)
    # the addresses over the two bars: ours from the left one, the peer's up to the right one
    lines = [f"{'':11}{us}".ljust(11 + width + 2 - len(peer)) + f"{peer} ({first.transport})"]
    for entry in entries:
        if isinstance(entry, Gap):
            lines.append(
                f"{'':10} ... {entry.messages} messages ({entry.bytes} bytes) not kept ..."
            )
            continue
        label = _label(entry.first_line)[: width - 6]
        fill = width - len(label) - 4
        if entry.outgoing:
            arrow = f"|-- {label} {'-' * (fill - 1)}>|" if fill > 0 else f"|{label}>|"
        else:
            arrow = f"|<{'-' * (fill - 1)} {label} --|" if fill > 0 else f"|<{label}|"
        note = ""
        if entry.remote != first.remote or entry.transport != first.transport:
            note = f"  ({address(entry.remote)} {entry.transport})"
        lines.append(f"{entry.time - first.time:+9.3f}s {arrow}{note}")
    return "\n".join(lines)


def _label(first_line: str) -> str:
    """`INVITE sip:x@y SIP/2.0` -> `INVITE sip:x@y`; `SIP/2.0 200 OK` -> `200 OK`."""
    if first_line.startswith("SIP/2.0 "):
        return first_line[len("SIP/2.0 ") :]
    return first_line.removesuffix(" SIP/2.0")
