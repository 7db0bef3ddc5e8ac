"""A headless baresip 1.0 (Debian baresip-core) as a scriptable phone for interop tests.

    async with phone(tmp_path / "a", codecs="PCMU") as a, phone(tmp_path / "b") as b:
        await a.dial(b.uri)
        await a.wait_event("CALL_ESTABLISHED", fail_on=("CALL_CLOSED",))
        await b.wait_event("CALL_ESTABLISHED")
        ...
        await a.send_dtmf("123#")
        assert await b.wait_dtmf("123#") == "123#"
        await a.hangup()
        await b.wait_event("CALL_CLOSED")
    coefficient, lag_s = b.heard_from(a)  # what b recorded against what a sent

Each `Phone` is one `baresip -f DIR -t LIFETIME` with its own config directory, SIP port
(UDP+TCP, and TLS on port+1 when a certificate is given), ctrl_tcp port and RTP port range. It is
driven over ctrl_tcp (netstrings of JSON); a reader task keeps every event in `events`, so none
is missed whatever the order of waits. baresip runs in its directory, where the sndfile module
writes `dump-<time>-dec.wav` (what it decoded: heard) and `dump-<time>-enc.wav` (what it
encoded: sent) per call; `recorded()` and `sent()` return the newest of each.

baresip 1.0.0 facts this relies on (checked on Debian 12; see the report in the test module):
- `aufile` is only an audio *source* in 1.0 (no player) and does not resample: the WAV must have
  the codec's rate and channels (8 kHz mono G.711, 16 kHz mono G.722, 48 kHz stereo Opus), and
  the call is hung up when the file ends, so the signal is padded with silence.
- No audio player module is loaded, so nothing plays; the sndfile filter records what was heard.
- A re-INVITE (hold/resume, or one from a server) drops the sndfile filter from the receive path
  (1.0.0 bug): what is heard afterwards is not recorded; `audio_stats()` still counts packets.
- Paths in the config are limited (128 bytes for the source, 128 for sndfile's file name), so
  the process runs in its directory and the config uses relative paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import re
import shutil
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tests.audio import Float, best_correlation, distinct_signal, read_wav, write_wav
from tests.harness import eventually
from tests.helpers import free_port

__all__ = [
    "CODECS",
    "MODULES",
    "WAIT_S",
    "AudioStats",
    "Codec",
    "Phone",
    "available",
    "distinct_signal",
    "phone",
    "write_wav",
]

MODULES = Path("/usr/lib/baresip/modules")
WAIT_S = 5.0  # default bound of every wait for baresip


@dataclass(frozen=True)
class Codec:
    """An audio codec as baresip's `audio_codecs` account parameter names it, and the WAV format
    aufile must be given for it (aufile does not resample)."""

    account: str  # e.g. "G722/16000/1": a bare "G722" matches nothing (8000 Hz is assumed)
    rate: int
    channels: int
    sdp: str  # the rtpmap encoding name as it appears in SDP


CODECS: dict[str, Codec] = {
    "PCMU": Codec("PCMU", 8000, 1, "PCMU/8000"),
    "PCMA": Codec("PCMA", 8000, 1, "PCMA/8000"),
    "G722": Codec("G722/16000/1", 16000, 1, "G722/8000"),
    "opus": Codec("opus/48000/2", 48000, 2, "opus/48000/2"),
}

# Loaded when present in MODULES: codecs, the aufile source, the sndfile recorder, SDES-SRTP.
AUDIO_MODULES = ("g711", "g722", "opus", "aufile", "sndfile", "srtp")

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_tokens = itertools.count(1)
_reserved_rtp: set[int] = set()  # RTP range starts handed out in this process


def available() -> bool:
    """Whether baresip and its module directory are installed (Debian baresip-core)."""
    return shutil.which("baresip") is not None and MODULES.is_dir()


def codec(name: str) -> Codec:
    try:
        return CODECS[name] if name in CODECS else CODECS[name.upper()]
    except KeyError:
        raise ValueError(f"unknown codec {name!r}; known: {', '.join(CODECS)}") from None


# -- ports ----------------------------------------------------------------------------------------


def _bindable(port: int, *kinds: int) -> bool:
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def sip_port() -> int:
    """P free for UDP and TCP, and P+1 free for TCP (where baresip listens for TLS)."""
    for _ in range(100):
        port = free_port(socket.SOCK_DGRAM)
        if port < 65535 and _bindable(port, socket.SOCK_STREAM) and _bindable(port + 1):
            return port
    raise RuntimeError("no free SIP port")


def tcp_port() -> int:
    return free_port()


def rtp_range(size: int = 20) -> tuple[int, int]:
    """An even-started range of UDP ports, all free now, below the kernel's ephemeral range (so
    other sockets are unlikely to take them) and not handed out before in this process. baresip
    picks a random pair in it and retries on a taken port."""
    rng = random.Random()
    for _ in range(200):
        start = rng.randrange(20000, 32000 - size, 2)
        if any(abs(start - other) < size for other in _reserved_rtp):
            continue
        if all(_bindable(p, socket.SOCK_DGRAM) for p in range(start, start + size)):
            _reserved_rtp.add(start)
            return start, start + size - 1
    raise RuntimeError("no free RTP port range")


# -- the phone ------------------------------------------------------------------------------------


class BaresipError(AssertionError):
    """A wait or command failed; the message carries the tail of baresip's log."""


class Phone:
    """One headless baresip driven over ctrl_tcp. See the module docstring.

    `codecs`: names from CODECS ("PCMU", "PCMA", "G722", "opus") or raw baresip spellings, in
    preference order; the first decides the format of the generated source WAV (`reference`, at
    `rate`). `source`: a WAV to send instead (it must match the negotiated codec's rate and
    channels). `source_rate`: for a phone offering codecs of different formats, a mono WAV at this
    rate that baresip resamples (`ausrc_srate`/`ausrc_channels`) to whatever is negotiated; the
    signal is kept below 2.8 kHz since librem's resampler is crude (48000 -> 8000 correlates about
    0.91; 16000 -> 8000 only about 0.7, so prefer 48000). `answermode`:
    "auto" or "manual" (then `answer()`). `mediaenc`: None, "srtp" (SDES offered on RTP/AVP),
    "srtp-mand" (RTP/SAVP, required) or "srtp-mandf" (RTP/SAVPF). `auth_user`/`auth_pass`: digest
    credentials for challenges. `cert`: a PEM with certificate and key: listen for TLS on
    sip_port + 1. `config`/`account_params`: extra lines / parameters, overriding the defaults.
    """

    def __init__(
        self,
        directory: Path,
        *,
        name: str | None = None,
        codecs: str | Sequence[str] = "PCMU",
        source: Path | None = None,
        source_rate: int | None = None,
        signal_s: float = 3.0,
        pad_s: float = 30.0,
        top_hz: float | None = None,
        lead_s: float = 0.0,
        answermode: str = "auto",
        mediaenc: str | None = None,
        auth_user: str | None = None,
        auth_pass: str | None = None,
        cert: Path | None = None,
        cafile: Path | None = None,
        lifetime_s: int = 90,
        sip_trace: bool = True,
        config: dict[str, str | Sequence[str]] | None = None,
        account_params: dict[str, str] | None = None,
        host: str = "127.0.0.1",
        exec_prefix: Sequence[str] = (),
    ) -> None:
        # Where it listens (SIP, RTP, ctrl_tcp), and what runs it: `ip netns exec NS` puts it in
        # a network namespace (tests/netns.py) with `host` the namespace's address.
        self.host = host
        self.exec_prefix = list(exec_prefix)
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.name = name or self.directory.name
        self.user = f"{self.name}-{uuid.uuid4().hex[:6]}"  # unique: proves whose ctrl port it is
        names = [codecs] if isinstance(codecs, str) else list(codecs)
        self.codecs = [CODECS.get(n) or Codec(n, 8000, 1, n) for n in names]
        self.rate = source_rate or self.codecs[0].rate
        self.channels = 1 if source_rate else self.codecs[0].channels
        self.source_rate = source_rate
        self.answermode = answermode
        self.mediaenc = mediaenc
        self.auth_user = auth_user
        self.auth_pass = auth_pass
        self.cert = cert
        self.cafile = cafile
        self.lifetime_s = lifetime_s
        self.sip_trace = sip_trace
        self.extra_config = dict(config or {})
        self.account_params = dict(account_params or {})
        self.reference: Float | None = None  # the mono signal sent (when generated here)
        if source is None:
            top = top_hz or (2800.0 if source_rate else None)
            self.reference = distinct_signal(
                self.name, self.rate, signal_s, pad_s=pad_s, top_hz=top
            )
            if lead_s:
                # silence first: a receiver's jitter buffer settles before the signal starts
                lead = np.zeros(int(lead_s * self.rate))
                self.reference = np.concatenate((lead, self.reference))
            source = write_wav(
                self.directory / "source.wav", self.reference, self.rate, self.channels
            )
        self.source = Path(source)
        self.log = self.directory / "baresip.log"
        self.sip_port = 0
        self.ctrl_port = 0
        self.rtp_ports = (0, 0)
        self.proc: asyncio.subprocess.Process | None = None
        self.events: list[dict[str, Any]] = []
        self._consumed: set[int] = set()
        self._changed = asyncio.Event()
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._lost: BaseException | None = None

    # -- addresses

    @property
    def uri(self) -> str:
        """This phone's address for others to dial (UDP)."""
        return f"sip:{self.user}@{self.host}:{self.sip_port}"

    def uri_for(self, transport: str) -> str:
        port = self.sip_port + 1 if transport == "tls" else self.sip_port
        return f"sip:{self.user}@{self.host}:{port};transport={transport}"

    # -- configuration

    def account_line(self) -> str:
        params: dict[str, str] = {
            "regint": "0",
            "answermode": self.answermode,
            "audio_codecs": ",".join(c.account for c in self.codecs),
        }
        if self.mediaenc:
            params["mediaenc"] = self.mediaenc
        if self.auth_user:
            params["auth_user"] = self.auth_user
        if self.auth_pass:
            params["auth_pass"] = self.auth_pass
        params.update(self.account_params)
        return f"<sip:{self.user}@{self.host}>" + "".join(f";{k}={v}" for k, v in params.items())

    def config_lines(self) -> list[str]:
        modules = [f"{m}.so" for m in AUDIO_MODULES if (MODULES / f"{m}.so").exists()]
        config: dict[str, str | Sequence[str]] = {
            "poll_method": "epoll",
            "net_interface": self.host,
            "sip_listen": f"{self.host}:{self.sip_port}",
            # relative to the directory the process runs in (config paths are length-limited)
            "audio_source": f"aufile,{self._relative(self.source)}",
            "snd_path": ".",
            "rtp_ports": f"{self.rtp_ports[0]}-{self.rtp_ports[1]}",
            "call_local_timeout": "20",
            "module_path": str(MODULES),
            "module": modules,
            "module_tmp": ["uuid.so", "account.so"],
            "module_app": ["menu.so", "ctrl_tcp.so"],
            "ctrl_tcp_listen": f"{self.host}:{self.ctrl_port}",
        }
        if self.source_rate:
            config["ausrc_srate"] = str(self.source_rate)
            config["ausrc_channels"] = "1"
        if self.cert is not None:
            config["sip_certificate"] = str(self.cert)
        if self.cafile is not None:
            config["sip_cafile"] = str(self.cafile)
        config.update(self.extra_config)
        lines = []
        for key, value in config.items():
            for item in [value] if isinstance(value, str) else value:
                lines.append(f"{key}\t{item}")
        return lines

    def _relative(self, path: Path) -> str:
        try:
            return str(path.resolve().relative_to(self.directory.resolve()))
        except ValueError:
            return str(path)

    def _write_config(self) -> None:
        self.sip_port = sip_port()
        self.ctrl_port = tcp_port()
        self.rtp_ports = rtp_range()
        (self.directory / "config").write_text("\n".join(self.config_lines()) + "\n")
        (self.directory / "accounts").write_text(self.account_line() + "\n")

    # -- process

    async def start(self, timeout: float = WAIT_S) -> None:
        """Start baresip and connect to its ctrl_tcp; retried with new ports when one was taken."""
        for attempt in range(3):
            try:
                await self._start(timeout)
                return
            except BaresipError:
                await self._kill()
                if attempt == 2:
                    raise

    async def _start(self, timeout: float) -> None:
        self._write_config()
        args = [*self.exec_prefix, "baresip", "-f", str(self.directory), "-t", str(self.lifetime_s)]
        if self.sip_trace:
            args.append("-s")
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *args,
                cwd=self.directory,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        proc = self.proc

        async def control() -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
            if proc.returncode is not None:
                raise BaresipError(f"baresip did not start:\n{self.output()}")
            try:
                return await asyncio.open_connection(self.host, self.ctrl_port)
            except OSError:
                return None

        try:
            self._reader, self._writer = await eventually(
                control, "baresip's control port", timeout=timeout, interval=0.02
            )
        except BaresipError:
            raise
        except AssertionError:
            raise BaresipError(f"baresip did not start:\n{self.output()}") from None
        self._lost = None
        self._task = asyncio.create_task(self._read_loop())
        # Someone else's ctrl_tcp may have been listening on our port: check it is us.
        reply = await self.command("reginfo", timeout=max(0.5, deadline - loop.time()))
        if self.user not in str(reply.get("data", "")):
            raise BaresipError(f"ctrl port {self.ctrl_port} is not ours: {reply}")

    async def stop(self, timeout: float = 2.0) -> int | None:
        """`quit` (which closes open calls and finishes the recordings), then kill if needed."""
        if self.proc is not None and self.proc.returncode is None and self._writer is not None:
            with contextlib.suppress(Exception):
                (await self._send("quit")).cancel()  # the reply may never come
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), timeout)
        await self._kill()
        return self.proc.returncode if self.proc else None

    async def _kill(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._writer.wait_closed(), 1)
            self._writer = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def __aenter__(self) -> Phone:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def output(self, tail: int = 12000) -> str:
        """The tail of baresip's log (stdout and stderr, with the SIP trace)."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return _ANSI.sub("", text)[-tail:]

    # -- ctrl_tcp

    async def _read_message(self) -> dict[str, Any]:
        assert self._reader is not None
        length = await self._reader.readuntil(b":")
        payload = await self._reader.readexactly(int(length[:-1]))
        if await self._reader.readexactly(1) != b",":
            raise ValueError("bad netstring")
        message: dict[str, Any] = json.loads(payload)
        return message

    async def _read_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                message = await self._read_message()
                if message.get("response"):
                    future = self._pending.pop(str(message.get("token")), None)
                    if future is not None and not future.done():
                        future.set_result(message)
                elif message.get("event"):
                    message["time"] = loop.time()
                    self.events.append(message)
                    self._changed.set()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError) as error:
            self._lost = error
        finally:
            self._lost = self._lost or ConnectionError("ctrl_tcp reader stopped")
            self._changed.set()
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(BaresipError(f"ctrl_tcp closed:\n{self.output()}"))
            self._pending.clear()

    async def _send(self, command: str, params: str = "") -> asyncio.Future[dict[str, Any]]:
        if self._writer is None or self._lost is not None:
            raise BaresipError(f"not connected to baresip ({self._lost}):\n{self.output()}")
        token = str(next(_tokens))
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[token] = future
        data = json.dumps({"command": command, "params": params, "token": token}).encode()
        self._writer.write(b"%d:%s," % (len(data), data))
        await self._writer.drain()
        return future

    async def command(
        self, command: str, params: str = "", *, timeout: float = WAIT_S
    ) -> dict[str, Any]:
        """Send a ctrl_tcp command; its response: {"response": true, "ok": bool, "data": str}.
        A command unknown at the time (e.g. `hold` outside a call) answers ok=false."""
        future = await self._send(command, params)
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise BaresipError(f"no response to {command!r}:\n{self.output()}") from None

    async def ok(self, command: str, params: str = "", *, timeout: float = WAIT_S) -> str:
        """`command`, asserting ok; its data."""
        reply = await self.command(command, params, timeout=timeout)
        if not reply.get("ok"):
            raise BaresipError(f"{command} {params!r} failed: {reply}\n{self.output()}")
        return str(reply.get("data", ""))

    async def help(self) -> str:
        return await self.ok("help")

    # -- calls

    async def dial(self, uri: str, *, established: bool = False, timeout: float = WAIT_S) -> None:
        """Dial `uri` (another Phone's `.uri`); with `established`, also wait for the answer."""
        await self.ok("dial", uri)
        if established:
            await self.wait_event("CALL_ESTABLISHED", timeout, fail_on=("CALL_CLOSED",))

    async def answer(self) -> None:
        """Accept the incoming call (answermode=manual)."""
        await self.ok("accept")

    async def hangup(self) -> None:
        await self.ok("hangup")

    async def hang_up_and_stop(self) -> None:
        """Hang up, see the call closed, and quit: its recording (`recorded`) is then whole."""
        await self.hangup()
        await self.wait_event("CALL_CLOSED")
        await self.stop()

    async def send_dtmf(self, digits: str, *, gap_s: float = 0.12) -> None:
        """RFC 4733 telephone-events, one `sndcode` per digit (press then release) with `gap_s`
        between: baresip 1.0 sends only in-band events (no SIP INFO; it receives both)."""
        for i, digit in enumerate(digits):
            if i:
                await asyncio.sleep(gap_s)
            await self.ok("sndcode", digit)

    async def hold(self) -> None:
        """re-INVITE with a=sendonly (ctrl_tcp `hold`, only known during a call)."""
        await self.ok("hold")

    async def resume(self) -> None:
        """re-INVITE with a=sendrecv (ctrl_tcp `resume`)."""
        await self.ok("resume")

    async def mute(self) -> None:
        """Toggle mute of the microphone (ctrl_tcp `mute`)."""
        await self.ok("mute")

    async def transfer(self, uri: str) -> None:
        await self.ok("transfer", uri)

    async def listcalls(self) -> str:
        return await self.ok("listcalls")

    async def audio_stats(self) -> AudioStats:
        """The current call's audio stream, from ctrl_tcp `audio_debug` (only during a call)."""
        return AudioStats.parse(await self.ok("audio_debug"))

    # -- events

    async def wait_event(
        self,
        kind: str,
        timeout: float = WAIT_S,
        *,
        fail_on: Iterable[str] = (),
        param: str | None = None,
    ) -> dict[str, Any]:
        """The oldest event of type `kind` (and `param`, if given) not returned before.

        Every event is kept in `events` as it arrives, so an event that came before the wait is
        found too. An unconsumed event of a type in `fail_on` seen first fails the wait."""
        fail_on = tuple(fail_on)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for i, event in enumerate(self.events):
                if i in self._consumed:
                    continue
                if event.get("type") == kind and (param is None or event.get("param") == param):
                    self._consumed.add(i)
                    return event
                if event.get("type") in fail_on:
                    self._consumed.add(i)
                    raise BaresipError(f"{event} before {kind}:\n{self.output()}")
            if self._lost is not None:
                raise BaresipError(f"ctrl_tcp lost ({self._lost}) before {kind}:\n{self.output()}")
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise BaresipError(
                    f"no {kind} within {timeout} s (events: {self.event_types()}):\n{self.output()}"
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def wait_dtmf(self, digits: str, timeout: float = WAIT_S) -> str:
        """Wait until the CALL_DTMF_START events received spell `digits`; return what came."""
        got = ""
        for _ in digits:
            try:
                got += str((await self.wait_event("CALL_DTMF_START", timeout))["param"])
            except BaresipError as error:
                raise BaresipError(f"DTMF {got!r} of {digits!r}: {error}") from None
        return got

    def event_types(self) -> list[str]:
        return [str(e.get("type")) for e in self.events]

    # -- recordings

    def _dump(self, kind: str) -> Path:
        files = sorted(
            self.directory.glob(f"dump-*-{kind}.wav"), key=lambda p: (p.stat().st_mtime, p.name)
        )
        if not files:
            raise BaresipError(f"no {kind} recording in {self.directory}:\n{self.output()}")
        return files[-1]

    def recorded(self) -> Path:
        """WAV of what the newest call decoded (heard), at the codec's rate and channels. Its
        header is finished when the call ends; `read_wav` copes if it was not. Two calls started
        in the same second share one file name (sndfile names them by the second)."""
        return self._dump("dec")

    def sent(self) -> Path:
        """WAV of what the newest call encoded (sent)."""
        return self._dump("enc")

    def heard_from(self, other: Phone, max_lag_s: float = 2.0) -> tuple[float, float]:
        """How well this phone's recording matches what `other` sent: (coefficient, lag_s) from
        `best_correlation` of `other.reference` against `recorded()` (resampled if need be)."""
        if other.reference is None:
            raise ValueError(f"{other.name} was given a source WAV: correlate against it yourself")
        pcm, rate = read_wav(self.recorded())
        return best_correlation(other.reference, pcm, other.rate, max_lag_s, recorded_rate=rate)


@dataclass(frozen=True)
class AudioStats:
    """What baresip's `audio_debug` says about the call's audio stream."""

    codec: str  # encoder name, e.g. "PCMU", "G722", "opus"
    rate: int
    channels: int
    direction: str  # sendrecv, sendonly, recvonly, inactive
    tx_packets: int
    rx_packets: int
    text: str

    @classmethod
    def parse(cls, text: str) -> AudioStats:
        def find(pattern: str, default: str = "") -> str:
            match = re.search(pattern, text)
            return match.group(1) if match else default

        codec = re.search(r"encode: (\S+) (\d+)Hz/(\d+)ch", text)
        return cls(
            codec=codec.group(1) if codec else "",
            rate=int(codec.group(2)) if codec else 0,
            channels=int(codec.group(3)) if codec else 0,
            direction=find(r"audio dir=(\w+)"),
            tx_packets=int(find(r"TX: packets=(\d+)", "0")),
            rx_packets=sum(int(n) for n in re.findall(r"rcvd=(\d+)", text)),
            text=text,
        )


@contextlib.asynccontextmanager
async def phone(directory: Path, **options: Any) -> AsyncIterator[Phone]:
    """A started Phone, stopped (quit, then killed) on exit whatever happens."""
    peer = Phone(directory, **options)
    try:
        await peer.start()
        yield peer
    finally:
        await peer.stop()
