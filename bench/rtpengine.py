"""Debian's rtpengine as the media benchmark's reference: the daemon in userspace on loopback and
a client of its ng control protocol (bencode dictionaries over UDP, each message prefixed with a
cookie that the reply repeats).

    apt-get install rtpengine-daemon    # Debian bookworm: 10.5

The daemon runs in the foreground with no kernel forwarding (`--table=-1`: every packet goes
through its userspace relay, as sipbridge's do), without the packaged config file, on
127.0.0.1 only. A bridged call is one `offer` (caller A's SDP; rtpengine's answer is the SDP
callee B is given: the address B sends to) and one `answer` (B's SDP; the reply is what A is
given), then `delete` at the end: the same pair of legs a room of two SIP callers is in
sipbridge.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

BINARY = "rtpengine"
NG_TIMEOUT_S = 2.0
NG_TRIES = 3


class NgError(RuntimeError):
    """rtpengine refused a command, or did not answer."""


# -- bencode (BEP 3): the ng protocol's encoding ------------------------------------------------


def bencode(value: object) -> bytes:
    """Dictionaries (keys sorted), lists, byte and text strings, integers."""
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        return b"i%de" % value
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        return b"%d:%s" % (len(value), value)
    if isinstance(value, list | tuple):
        return b"l" + b"".join(bencode(v) for v in value) + b"e"
    if isinstance(value, dict):
        items = sorted((k.encode() if isinstance(k, str) else k, v) for k, v in value.items())
        return b"d" + b"".join(bencode(k) + bencode(v) for k, v in items) + b"e"
    raise TypeError(f"cannot bencode {type(value).__name__}")


def bdecode(data: bytes) -> object:
    """The value `data` holds; ValueError when it is not exactly one bencoded value."""
    value, end = _decode(data, 0, 0)
    if end != len(data):
        raise ValueError("trailing bytes after the bencoded value")
    return value


def _decode(data: bytes, i: int, depth: int) -> tuple[object, int]:
    if depth > 32 or i >= len(data):
        raise ValueError("bencode: truncated or nested too deep")
    lead = data[i : i + 1]
    if lead == b"i":
        end = data.index(b"e", i)
        return int(data[i + 1 : end]), end + 1
    if lead in (b"l", b"d"):
        i += 1
        items: list[object] = []
        for _ in range(len(data)):
            if data[i : i + 1] == b"e":
                break
            item, i = _decode(data, i, depth + 1)
            items.append(item)
        else:
            raise ValueError("bencode: unterminated list")
        if lead == b"l":
            return items, i + 1
        if len(items) % 2:
            raise ValueError("bencode: a key without a value")
        return {
            (k.decode() if isinstance(k, bytes) else str(k)): v
            for k, v in zip(items[::2], items[1::2], strict=True)
        }, i + 1
    colon = data.index(b":", i)
    length = int(data[i:colon])
    start = colon + 1
    if length < 0 or start + length > len(data):
        raise ValueError("bencode: string runs past the end")
    return data[start : start + length], start + length


# -- the control client -------------------------------------------------------------------------


class NgClient:
    """Commands to rtpengine's ng port, one at a time, retried on silence."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(NG_TIMEOUT_S)
        self.sock.connect(address)

    def command(self, name: str, **fields: object) -> dict[str, object]:
        cookie = secrets.token_hex(8).encode()
        body = {"command": name, **{k.replace("_", "-"): v for k, v in fields.items()}}
        message = cookie + b" " + bencode(body)
        for _ in range(NG_TRIES):
            self.sock.send(message)
            deadline = time.monotonic() + NG_TIMEOUT_S
            while time.monotonic() < deadline:
                try:
                    reply = self.sock.recv(65535)
                except TimeoutError:
                    break
                got, _, rest = reply.partition(b" ")
                if got != cookie:
                    continue  # a late reply to an earlier try
                decoded = bdecode(rest)
                if not isinstance(decoded, dict):
                    raise NgError(f"{name}: reply is not a dictionary")
                if decoded.get("result") not in (b"ok", b"pong"):
                    reason = decoded.get("error-reason", decoded.get("result"))
                    raise NgError(f"{name}: {reason!r}")
                return decoded
        raise NgError(f"{name}: no reply from rtpengine at {self.address}")

    def ping(self) -> bool:
        try:
            reply = self.command("ping")
        except (NgError, OSError, ValueError):
            return False
        return reply.get("result") == b"pong"

    def close(self) -> None:
        self.sock.close()


def audio_sdp(session: int, rtp_port: int, rtcp_port: int) -> str:
    """A phone's SDP: PCMU and RFC 4733 events on 127.0.0.1, RTCP on its own port."""
    return (
        f"v=0\r\no=gen {session} 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {rtp_port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n"
        f"a=rtcp:{rtcp_port}\r\na=ptime:20\r\na=sendrecv\r\n"
    )


def sdp_audio_address(sdp: bytes) -> tuple[str, int]:
    """(the last c= address, the m=audio port) of an SDP rtpengine returned."""
    address, port = "", 0
    for line in sdp.decode(errors="replace").splitlines():
        if line.startswith("c=IN IP4 "):
            address = line.split()[2]
        elif line.startswith("m=audio "):
            port = int(line.split()[1])
    if not address or not port:
        raise NgError("rtpengine's SDP has no audio address")
    return address, port


def bridge(
    ng: NgClient, call_id: str, a: tuple[int, int], b: tuple[int, int]
) -> tuple[tuple[str, int], tuple[str, int]]:
    """One call from A (rtp, rtcp ports) to B through rtpengine: (where A sends, where B sends)."""
    offer = ng.command("offer", call_id=call_id, from_tag="a", sdp=audio_sdp(1, *a), ICE="remove")
    b_sends_to = sdp_audio_address(_sdp(offer))
    answer = ng.command(
        "answer", call_id=call_id, from_tag="a", to_tag="b", sdp=audio_sdp(2, *b), ICE="remove"
    )
    return sdp_audio_address(_sdp(answer)), b_sends_to


def _sdp(reply: dict[str, object]) -> bytes:
    sdp = reply.get("sdp")
    if not isinstance(sdp, bytes):
        raise NgError("reply without SDP")
    return sdp


class Daemon:
    """`rtpengine` in the foreground, userspace only, on 127.0.0.1, ports LO-HI."""

    def __init__(self, log: Path, ng_port: int, ports: tuple[int, int], threads: int) -> None:
        self.log = log
        self.ng_port = ng_port
        self.ports = ports
        self.threads = threads
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> str | None:
        return shutil.which(BINARY)

    def start(self, timeout: float = 10.0) -> NgClient:
        binary = self.available()
        if binary is None:
            raise RuntimeError("rtpengine not installed (apt-get install rtpengine-daemon)")
        args = [
            binary,
            "--config-file=none",
            "--foreground",
            "--log-stderr",
            "--log-level=4",
            "--table=-1",  # no kernel forwarding: the userspace relay
            "--interface=127.0.0.1",
            f"--listen-ng=127.0.0.1:{self.ng_port}",
            f"--port-min={self.ports[0]}",
            f"--port-max={self.ports[1]}",
            f"--num-threads={self.threads}",
            "--delete-delay=0",
        ]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        ng = NgClient(("127.0.0.1", self.ng_port))
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout * 20) + 1):
            if self.proc.poll() is not None:
                ng.close()
                raise RuntimeError(f"rtpengine exited early:\n{self.log.read_text()[-2000:]}")
            if ng.ping():
                return ng
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        ng.close()
        self.stop()
        raise RuntimeError(f"rtpengine did not answer ping:\n{self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
