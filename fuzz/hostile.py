"""What an attacker would send to the hand-written C, at its boundaries, for the sanitizer build.

    fuzz/asan.sh python -m fuzz.hostile     # under AddressSanitizer and UBSan (`make asan`)
    PYTHONPATH=src python -m fuzz.hostile   # the normal build: the same inputs, no sanitizer

The fuzz targets reach the C through the Python that calls it; these inputs are written for the
C's own limits, where an off-by-one would read or write a byte too far: header counts and line
lengths at every boundary of `_csipmsg.parse_head` (MAX_HEADERS, MAX_LINE, MAX_MESSAGE) and of
`_csipthr.trying` (MAX_VIAS, MAX_URI_LENGTH, a 100 Trying at its OUT_SIZE), every prefix of a
message (a line cut after its CR, a name at the very end), NULs and bytes above 0x7f at every
position, truncated UTF-8, Content-Length values too large for any integer; datagrams of 0, 1
and 65,507 octets (65,527 on IPv6) through the SIP reader thread (`_csipthr`) and the batched
socket (`_csipudp`); RTP whose CSRC count, extension length or padding overruns the packet,
RTCP compounds whose lengths do, and datagrams at the relay's READ_SIZE, through an armed slot
of the relay engine (`_crelay`) and its sender. Each part checks what it gets back against the
Python parsers where they overlap; under the sanitizers any bad access aborts the process with
its report. Prints what it ran; exits 1 on a failed check.
"""

from __future__ import annotations

import contextlib
import itertools
import random
import select
import socket
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from sipbridge import _crelay, _csipthr, _csipudp  # type: ignore[attr-defined]
from sipbridge.media.errors import MediaError
from sipbridge.media.levels import _ALAW_POWER, _ULAW_POWER
from sipbridge.media.rtp import parse_rtcp, parse_rtp
from sipbridge.sip import message as sip_message
from sipbridge.sip.errors import SipProtocolError

RUNS: dict[str, int] = {}


def count(part: str, n: int = 1) -> None:
    RUNS[part] = RUNS.get(part, 0) + n


# -- SIP heads --------------------------------------------------------------------------------

INVITE_HEAD = (
    "INVITE sip:bob@127.0.0.1:5060 SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-hostile-1;rport\r\n"
    "Max-Forwards: 70\r\n"
    'From: "Alice" <sip:alice@127.0.0.1:5062>;tag=1928301774\r\n'
    "To: <sip:bob@127.0.0.1:5060>\r\n"
    "Call-ID: hostile-1@127.0.0.1\r\n"
    "CSeq: 1 INVITE\r\n"
    "Contact: <sip:alice@127.0.0.1:5062>\r\n"
)


def invite(extra: str = "", body: bytes = b"", length: str | None = None) -> bytes:
    length = str(len(body)) if length is None else length
    head = INVITE_HEAD + extra + f"Content-Length: {length}\r\n\r\n"
    return head.encode("utf-8", "surrogateescape") + body


def heads() -> Iterator[bytes]:
    """Messages at the limits of the C cut of a head, and just past them."""
    response = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nContent-Length: 0\r\n\r\n"
    for headers in (0, 1, 120, 126, 127, 128, 129, 130, 131, 200):
        yield invite("".join(f"X-H{i}: {i}\r\n" for i in range(headers)))
        yield invite("Subject: s\r\n" * headers)
    limit = sip_message.MAX_LINE
    for length in (limit - 1, limit, limit + 1, limit + 2, 2 * limit):
        yield invite("X-Long: " + "a" * (length - len("X-Long: ")) + "\r\n")
        yield b"INVITE sip:" + b"b" * length + b"@h SIP/2.0\r\n\r\n"
        yield b"SIP/2.0 200 " + b"O" * length + b"\r\n\r\n"
    for size in (sip_message.MAX_MESSAGE - 1, sip_message.MAX_MESSAGE, sip_message.MAX_MESSAGE + 1):
        base = invite(length="0")
        filler = "X-Fill: " + "f" * 8000 + "\r\n"
        extra = filler * ((size - len(base)) // len(filler))
        message = invite(extra, length="0")
        pad = size - len(message)
        yield invite(extra + "X-Pad: " + "p" * max(0, pad - 9) + "\r\n", length="0")
        yield invite(body=b"v" * (size - len(invite(length="00000"))), length=None)
    for text in (
        "",
        "-1",
        "+1",
        "0x10",
        "1 1",
        "999999999",
        "1000000000",
        "99999999999999999999",
        "9" * 400,
        "１",
        " 0",
        "0 ",
        "00000000000000000000000000000001",
    ):
        yield invite(body=b"x", length=text)
        yield invite(length=text)
    yield invite("Content-Length: 1\r\n", body=b"x")  # two, different
    yield invite("l: 0\r\n")
    for start in (
        b"",
        b"\r\n",
        b"\r\n\r\n",
        b" INVITE sip:a SIP/2.0\r\n\r\n",
        b"SIP/2.0\r\n\r\n",
        b"SIP/2.0 99 x\r\n\r\n",
        b"SIP/2.0 700 x\r\n\r\n",
        b"SIP/2.0 200\r\n\r\n",
        b"SIP/ 200 OK\r\n\r\n",
        b"INVITE  sip:a SIP/2.0\r\n\r\n",
        b"A sip:a SIP/2.0\r\n\r\n",
        b"INVITE sip:a SIP/2.0 \r\n\r\n",
        b"INVITE sip:a sip/2.0\r\n\r\n",
        b"\r\r\n\n",
        b"INVITE sip:a SIP/2.0\r\nVia\r\n\r\n",
        b"INVITE sip:a SIP/2.0\r\n:\r\n\r\n",
        b"INVITE sip:a SIP/2.0\r\n \r\n\r\n",
        b"INVITE sip:a SIP/2.0\r\nA: \r\n b\r\n\r\n",
    ):
        yield start
        yield start + response
    yield response
    methods = ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER")
    yield from (
        f"{m}{i} sip:a@h SIP/2.0\r\nContent-Length: 0\r\n\r\n".encode()
        for m in methods
        for i in range(80)
    )


def mutations(message: bytes) -> Iterator[bytes]:
    """Every prefix of a message, and a NUL, a CR, a LF, 0x80, 0xff and a cut UTF-8 sequence at
    every position of its head."""
    head_end = message.find(b"\r\n\r\n") + 4
    for cut in range(len(message) + 1):
        yield message[:cut]
    for at in range(head_end):
        for byte in (b"\x00", b"\r", b"\n", b"\x80", b"\xff", b"\xc3", b"\xe2\x82", b" ", b":"):
            yield message[:at] + byte + message[at + 1 :]
            yield message[:at] + byte + message[at:]


def check_parse(data: bytes) -> None:
    """parse_message (the C cut where built) parses or refuses; the C cut, where it answers,
    gives what the Python parser gives."""
    for stream in (False, True):
        try:
            parsed = sip_message.parse_message(data, stream=stream)
        except SipProtocolError:
            parsed = None
        if parsed is not None:
            try:
                python = sip_message.parse_message_python(data, stream=stream)
            except SipProtocolError as error:
                message = f"C parsed what Python refuses ({error}): {data[:200]!r}"
                raise AssertionError(message) from error
            assert python.serialize() == parsed.serialize(), data[:200]
    count("parse_message")


def check_c_message(data: bytes) -> None:
    """The other C helpers of _csipmsg on the same bytes, and on its lines."""
    c = sip_message.C_MESSAGE
    c.call_id(data)
    text = data.decode("latin-1")
    for line in text.split("\r\n")[:40]:
        value = line.partition(":")[2].strip() or line
        c.name_addr(value)
        c.plain_via(value)
        c.name_addr(line)
        c.plain_via(line)
    count("csipmsg helpers")


def check_serialize() -> None:
    c = sip_message.C_MESSAGE
    odd = ["", "a", "Content-Length", "Content-length", "é", "\udcff", "x" * 70000]
    for name, value in itertools.product(odd, repeat=2):
        items = [(name, value), ("Content-Length", "5"), (name, name)]
        for first in (-1, 0, 1, 2, 3, 4):
            c.serialize("INVITE sip:a SIP/2.0\r\n", "", items, first, b"body")
            c.serialize("", "", items, first, b"")
            c.serialize("SIP/2.0 200 OK\r\n", "Via: x\r\n", items, first, b"\x00" * 40000)
        c.header_block(tuple(items))
        c.header_block(((name, value),))
        count("serialize/header_block", 7 * 3 + 2)
    for bad in ([("a",)], [("a", "b", "c")], [(1, "b")], [("a", b"b")], ["ab"], [None]):
        c.serialize("INVITE sip:a SIP/2.0\r\n", "", bad, 0, b"")
        c.header_block(tuple(bad))
    c.header_block(())
    c.serialize("x", "", [], 0, b"")
    count("serialize/header_block", 14)


# -- the SIP reader thread's 100 Trying ------------------------------------------------------


def trying_inputs() -> Iterator[bytes]:
    for n_vias in (1, 15, 16, 17, 40):
        extra = "".join(
            f"Via: SIP/2.0/UDP 10.0.0.{i}:5060;branch=z9hG4bK{i}\r\n" for i in range(n_vias - 1)
        )
        yield invite(extra)
    for size in (2040, 2047, 2048, 2049, 2050):
        user = "u" * (size - len("sip:@127.0.0.1"))
        yield invite().replace(b"sip:bob@127.0.0.1:5060 ", f"sip:{user}@127.0.0.1 ".encode())
        yield invite().replace(b"<sip:alice@127.0.0.1:5062>", f"<sip:{user}@127.0.0.1>".encode())
        yield invite().replace(b"<sip:bob@127.0.0.1:5060>", f"sip:{user}@127.0.0.1".encode())
        yield invite().replace(b"<sip:bob@127.0.0.1:5060>", f"<tel:+{'1' * size}>".encode())
    # a 100 Trying as long as OUT_SIZE (16,384), give or take: Vias of many parameters
    for target in range(16330, 16500):
        per = 1000
        vias = "".join(
            f"Via: SIP/2.0/UDP 10.0.0.{i};branch=z9hG4bK{i};x={'y' * per}\r\n" for i in range(14)
        )
        base = len(vias) + 400
        pad = max(1, target - base)
        yield invite(vias + f"Via: SIP/2.0/UDP 10.0.0.99;branch=z9hG4bKlast;p={'q' * pad}\r\n")
    for value in ("", "0", "00", "999", "1000", "99999999999999999999", "-1", " 7 0"):
        yield invite().replace(b"Max-Forwards: 70", f"Max-Forwards: {value}".encode())
    for value in (
        "1 INVITE",
        "123456789 INVITE",
        "1234567890 INVITE",
        "99999999999 INVITE",
        "1",
        "1 ",
        "1 INVITEX",
        " INVITE",
        "4294967296 INVITE",
    ):
        yield invite().replace(b"CSeq: 1 INVITE", f"CSeq: {value}".encode())
    for value in ("0", "99999", "100000", "999999999999", "-0", ""):
        yield invite(body=b"v=0\r\n", length=value)
    yield invite(body=b"b" * 32768)
    yield invite(body=b"b" * 32769)
    for via in (
        "SIP/2.0/UDP [",
        "SIP/2.0/UDP []",
        "SIP/2.0/UDP [::1",
        "SIP/2.0/UDP [::1]:",
        "SIP/2.0/UDP h:0",
        "SIP/2.0/UDP h:65536",
        "SIP/2.0/UDP h:000001",
        "SIP/2.0/UDP h;branch",
        "SIP/2.0/UDP h;branch=",
        "SIP/2.0/UDP h;branch=z9hG4bK",
        "SIP/2.0/UDP h;=x;branch=z9hG4bKa",
        "SIP/2.0/UDP h;branch=z9hG4bKa;",
        "SIP/2.0/UDP h;rport=;branch=z9hG4bKa",
        "SIP/2.0/UDP ",
        "SIP/2.0/UDP",
    ):
        yield invite().replace(
            b"SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-hostile-1;rport", via.encode()
        )
    for address in (
        '"',
        '"a',
        '"a" <',
        "<",
        "<>",
        "<sip:>",
        "<sip:@>",
        "<sip:a@>",
        "sip:a@[",
        "sip:a@[]",
        "sip:a@h:",
        "sip:a@h;",
        "sip:a@h;=",
        "sip:a@h;a=",
        '"\\" <sip:a@h>',
        "<tel:>",
        "<tel:+>",
        "tel:+1;tag",
        "<sip:a@-h>",
        "<sip:a@h->",
        "a <sip:a:b:c@h>",
    ):
        yield invite().replace(
            b'"Alice" <sip:alice@127.0.0.1:5062>;tag=1928301774', address.encode()
        )
        yield invite().replace(b"<sip:bob@127.0.0.1:5060>", address.encode())


def check_trying(data: bytes, thr: Any) -> None:
    for host, port in (
        ("127.0.0.1", 5062),
        ("10.1.2.3", 1),
        ("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255", 65535),
    ):
        for server in ("", "sipbridge", "s" * 255):
            thr.trying(data, host, port, server)
            count("trying")


# -- the RTP relay engine ---------------------------------------------------------------------


def rtp_inputs() -> Iterator[bytes]:
    header = bytes([0x80, 0, 0, 1, 0, 0, 0, 160, 1, 2, 3, 4])
    for size in (0, 1, 11, 12, 13, 172, 2046, 2047, 2048, 2049, 4096, 65507):
        yield (header + bytes(range(256)) * 300)[:size]
    for cc in range(16):
        for extra in (0, 1, 4 * cc - 1, 4 * cc, 4 * cc + 3):
            yield bytes([0x80 | cc]) + header[1:] + b"\x11" * max(0, extra)
    for length in (0, 1, 2, 0x7FFF, 0xFFFF):
        for have in (0, 3, 4, 4 * length, 4 * length + 4):
            ext = b"\xbe\xde" + length.to_bytes(2, "big") + b"\x22" * min(have, 300)
            yield bytes([0x90]) + header[1:] + ext
    for pad in (0, 1, 4, 160, 161, 255):
        yield bytes([0xA0]) + header[1:] + b"\x33" * 160 + bytes([pad])
        yield bytes([0xA0]) + header[1:] + bytes([pad])
    yield bytes([0xBF]) + header[1:]  # padding, extension and 15 CSRCs in a bare header
    # RTCP: SR, RR, SDES, BYE, APP with lengths past the datagram, zero, and compounds
    for pt in (200, 201, 202, 203, 204, 205, 206, 207):
        for words in (0, 1, 6, 0xFFFF):
            for rc in (0, 1, 31):
                body = b"\x44" * 24
                yield bytes([0x80 | rc, pt]) + words.to_bytes(2, "big") + body
        sr = bytes([0x80, 200, 0, 6]) + b"\x00" * 24
        yield sr + bytes([0x81, pt, 0xFF, 0xFF]) + b"\x00" * 8
        yield sr + bytes([0x81, pt, 0, 1])
        yield sr + sr[:-1]
        yield sr * 100


def relay_check(data: bytes) -> None:
    """What the Python parsers make of a datagram the engine handed back (parses or refuses)."""
    for parse in (parse_rtp, parse_rtcp):
        with contextlib.suppress(MediaError):
            parse(data)


def wait_readable(fd: int, seconds: float) -> bool:
    return bool(select.select([fd], [], [], seconds)[0])


def run_relay(family: int, host: str, inputs: list[bytes]) -> None:
    engine = _crelay.Engine(_ULAW_POWER.tobytes(), _ALAW_POWER.tobytes(), 200, 200)
    a = socket.socket(family, socket.SOCK_DGRAM)  # the armed leg's socket
    b = socket.socket(family, socket.SOCK_DGRAM)  # the listener's socket
    peer = socket.socket(family, socket.SOCK_DGRAM)  # the hostile caller
    sink = socket.socket(family, socket.SOCK_DGRAM)  # where the listener's packets go
    for s in (a, b, peer, sink):
        s.bind((host, 0))
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    try:
        slot_a = engine.add(a.fileno(), family)
        slot_b = engine.add(b.fileno(), family)
        latched = peer.getsockname()[:2]
        dest = sink.getsockname()[:2]
        for level in (0, 1, 2):
            for data in inputs:
                # armed for the caller's SSRC with the sequence number just behind this one's:
                # a packet of version 2 without extras is forwarded, anything else handed back
                deadline = time.monotonic() + 2.0
                while not engine.arm(
                    slot_a,
                    slot_b,
                    0,
                    latched,
                    0x01020304,
                    0,
                    0,
                    0.0,
                    None,
                    0,
                    8000.0,
                    level,
                    dest,
                    8,
                    100,
                    0x0A0B0C0D,
                    1234,
                    True,
                    160,
                ):
                    assert time.monotonic() < deadline, "the slot would not arm"
                    engine.disarm(slot_a)
                    engine.take()
                peer.sendto(data, a.getsockname()[:2])
                got = None
                while got is None:
                    assert time.monotonic() < deadline, f"{len(data)} octets: nothing came"
                    if wait_readable(engine.notify_fd(), 0.005):
                        for _, back, _, _ in engine.take():
                            relay_check(back)
                            got = back
                    with contextlib.suppress(BlockingIOError):
                        got = sink.recv(70000)
                        count("relay engine: forwarded")
                    if got is None and len(data) >= 2048:
                        # too long for the engine: dropped and counted, nothing comes
                        state = engine.collect(slot_a)
                        if state is not None and state[11]:
                            got = b""
                engine.disarm(slot_a)
                engine.take()
                count("relay engine")
        engine.remove(slot_a)
        engine.remove(slot_b)
        # the tick's sender: Python's datagrams and silent frames, at its sizes
        sender = _crelay.Sender()
        stream = _crelay.SilentStream(
            fd=b.fileno(),
            family=family,
            address=dest,
            payload=b"\xff" * (2048 - 12),
            ssrc=5,
            seq=65535,
            last=2**32 - 1,
            last_at=0.0,
            clock_rate=8000.0,
            frame_ticks=160,
            pt=0,
            marker=True,
        )
        for data in inputs:
            if 1 <= len(data) <= 2048:
                sender.submit(
                    [(b.fileno(), family, data, dest)] * 3, [stream, stream], time.monotonic()
                )
                count("relay sender")
        sender.wait()
        sender.close()
    finally:
        engine.close()
        for s in (a, b, peer, sink):
            s.close()


# -- the SIP sockets: the reader thread and the batched I/O -------------------------------------


def datagram_sizes(family: int) -> list[int]:
    largest = 65507 if family == socket.AF_INET else 65527
    return [0, 1, 7, 8, 9, 16, 1500, 9000, 65535 - 8 - 20 - 1, largest - 1, largest]


def run_sip_sockets(family: int, host: str) -> None:
    server = socket.socket(family, socket.SOCK_DGRAM)
    client = socket.socket(family, socket.SOCK_DGRAM)
    for s in (server, client):
        s.bind((host, 0))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    server.setblocking(False)
    client.settimeout(0.05)
    target = server.getsockname()[:2]
    payloads: list[bytes] = []
    for size in datagram_sizes(family):
        payloads.append((b"INVITE " + b"x" * size)[:size])
        payloads.append(invite(body=b"v" * max(0, size - len(invite(length="00000"))))[:size])
    payloads += list(trying_inputs())[:60]
    try:
        # the batched reads and sends, from the loop's thread
        for data in payloads:
            client.sendto(data, target)
            deadline = time.monotonic() + 2.0
            got: list[Any] = []
            while not got and time.monotonic() < deadline:
                wait_readable(server.fileno(), 0.05)
                got, _, _, _ = _csipudp.recv_batch(server.fileno())
            assert got and got[0][0] == data, (len(data), got and len(got[0][0]))
            _csipudp.send_batch(server.fileno(), family, [(data, client.getsockname()[:2])] * 2)
            for _ in range(2):
                with contextlib.suppress(OSError):
                    client.recv(70000)
            count("csipudp")
        _csipudp.send_batch(
            server.fileno(),
            family,
            [(b"x", ("not a host", 1)), (b"", ("", -1)), ("str", target), (b"y",), None],
        )
        # the reader thread, answering 100s from there
        reader = _csipthr.start(server.fileno(), family, "sipbridge-hostile", 0, True)
        try:
            wake = _csipthr.wake_fd(reader)
            for data in payloads:
                client.sendto(data, target)
                deadline = time.monotonic() + 2.0
                got = []
                while not got and time.monotonic() < deadline:
                    wait_readable(wake, 0.05)
                    got = _csipthr.drain(reader, 64)[0]
                assert got and got[0][0] == data, (len(data), got and len(got[0][0]))
                _csipthr.send(reader, [(data, client.getsockname()[:2]), (b"", ("bad", 0))])
                count("csipthr")
            # a burst of everything at once, drained while it comes
            for data in payloads * 3:
                client.sendto(data, target)
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline and _csipthr.drain(reader, 17)[0]:
                wait_readable(wake, 0.05)
            count("csipthr", len(payloads) * 3)
        finally:
            _csipthr.stop(reader)
    finally:
        server.close()
        client.close()


# -- all of it ---------------------------------------------------------------------------------


def run(part: str, function: Callable[[], None]) -> bool:
    started = time.monotonic()
    try:
        function()
    except AssertionError as error:
        print(f"{part}: FAILED {error!r}"[:400], flush=True)
        return False
    print(f"{part}: ok in {time.monotonic() - started:.1f} s", flush=True)
    return True


def main() -> None:
    if sip_message.C_MESSAGE is None:
        sys.exit("sipbridge.sip._csipmsg is not built (or SIPBRIDGE_NO_CSIPMSG is set)")
    rng = random.Random(1)
    base = [invite(), invite(body=b"v=0\r\n"), invite("Via: SIP/2.0/UDP h;branch=z9hG4bKx\r\n")]

    def sip_heads() -> None:
        for data in heads():
            check_parse(data)
            check_c_message(data)
        for message in base:
            for data in mutations(message):
                check_parse(data)
                check_c_message(data)
        for _ in range(3000):  # random bytes spliced into a real head
            message = rng.choice(base)
            at = rng.randrange(len(message))
            noise = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
            check_parse(message[:at] + noise + message[at + rng.randrange(3) :])

    def trying() -> None:
        for data in trying_inputs():
            check_trying(data, _csipthr)
            for cut in range(0, len(data) + 1, max(1, len(data) // 300)):
                _csipthr.trying(data[:cut], "127.0.0.1", 5062, "s")
        for message in base:
            for data in mutations(message):
                _csipthr.trying(data, "127.0.0.1", 5062, "s")
                count("trying")
        _csipthr.trying(invite() + b"\x00" * (65535 - len(invite())), "127.0.0.1", 1, "s")
        _csipthr.trying(invite() + b"\x00" * (65536 - len(invite())), "127.0.0.1", 1, "s")

    rtp = list(rtp_inputs())
    ok = all(
        [
            run("_csipmsg parse_head and helpers", sip_heads),
            run("_csipmsg serialize and header_block", check_serialize),
            run("_csipthr trying", trying),
            run(
                "_csipudp and _csipthr on 127.0.0.1",
                lambda: run_sip_sockets(socket.AF_INET, "127.0.0.1"),
            ),
            run("_csipudp and _csipthr on ::1", lambda: run_sip_sockets(socket.AF_INET6, "::1")),
            run("_crelay on 127.0.0.1", lambda: run_relay(socket.AF_INET, "127.0.0.1", rtp)),
            run("_crelay on ::1", lambda: run_relay(socket.AF_INET6, "::1", rtp[:80])),
        ]
    )
    for part, n in sorted(RUNS.items()):
        print(f"  {part:<24} {n:>8} inputs")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
