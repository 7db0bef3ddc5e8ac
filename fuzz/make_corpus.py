"""Write the seed corpus (fuzz/corpus/<target>/) from the project's own test data.

    PYTHONPATH=src python -m fuzz.make_corpus

Three sources, each file named for where it came from (fuzz/README.md lists them):

- `rfc4475-<name>`: the RFC 4475 torture messages of tests/sip/test_torture.py, byte exact;
- `sipp-<scenario>-<n>`: the messages the sipp scenarios of tests/interop/sipp/*.xml send, with
  sipp's fields filled in as sipp would on loopback (and a scenario's requests in order, as
  one multi-datagram input, for the endpoint and the user agent);
- `<test file>-<test>-<hash>`: what the unit tests of tests/sip, tests/sdp and tests/media
  hand the parsers, captured while those tests run (RFC 3665 call flows, RFC 4733 packets,
  SDP from Asterisk, FreeSWITCH and carriers, RTCP reports, Digest exchanges...). Inputs that
  Hypothesis generated are left out: the corpus is real messages, the fuzzer makes the rest.

Each target keeps at most MAX_FILES distinct inputs of at most MAX_SIZE octets; `python -m
fuzz.run --merge` can shrink a corpus further to the inputs that add coverage.
"""

from __future__ import annotations

import hashlib
import importlib
import pkgutil
import re
import shutil
import sys
import textwrap
import xml.etree.ElementTree as ET
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import sipbridge
from fuzz.targets import (
    DATAGRAM_SEPARATOR,
    DIGEST_NOW,
    DIGEST_REALM,
    DIGEST_USERS,
    TARGETS,
    digest_server,
)
from sipbridge.sip.digest import DigestClient

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"
MAX_FILES = 1000
MAX_SIZE = 16 * 1024
TEST_FOLDERS = ("tests/sip", "tests/sdp", "tests/media")

Corpus = dict[str, dict[bytes, str]]  # target -> input -> file name


def _add(corpus: Corpus, target: str, data: bytes, name: str) -> None:
    if len(data) <= MAX_SIZE and data not in corpus[target]:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:70].strip("_")
        corpus[target][data] = f"{safe}-{hashlib.sha1(data).hexdigest()[:8]}"


# -- RFC 4475 ----------------------------------------------------------------------------------


def torture(corpus: Corpus) -> None:
    from tests.sip.test_torture import MESSAGES  # noqa: PLC0415 - the tests are not a library

    for name, data in MESSAGES.items():
        for target in ("sip_message", "endpoint", "user_agent"):
            _add(corpus, target, data, f"rfc4475-{name}")
        _add(corpus, "sip_stream", b"\x00" + data, f"rfc4475-{name}")


# -- sipp scenarios ----------------------------------------------------------------------------

# What sipp puts in its fields on loopback (sipp's reference, "Keywords"): we play the peer at
# 127.0.0.1:5062, sipbridge is at 127.0.0.1:5060. Our first To tag is 0000000000000001
# (fuzz/targets.py deterministic_tags), so a scenario's ACK and BYE reach the dialog.
OUR_TAG = "0000000000000001"
SIPP_FIELDS = {
    "local_ip": "127.0.0.1",
    "local_port": "5062",
    "remote_ip": "127.0.0.1",
    "remote_port": "5060",
    "transport": "UDP",
    "local_ip_type": "4",
    "media_ip": "127.0.0.1",
    "media_ip_type": "4",
    "media_port": "6000",
    "call_number": "1",
    "pid": "4242",
    "call_id": "1-4242@127.0.0.1",
    "cseq": "1",
    "service": "bob",
    "caller": "+15550100",
    "called": "+15550199",
    "customer": "cust-7",
    "next_url": "sip:+15550199@127.0.0.1:5060",
    "routes": "",
    "interval": "1800",
    "window": "20",
    "peer_tag_param": f";tag={OUR_TAG}",
    "status": "200",
    "reason": "OK",
    "early_audio": "",
    "allow": "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE",
    "last_Via:": "Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK0000000000000000002;rport",
    "last_From:": "From: <sip:+15550100@127.0.0.1:5060>;tag=4242SIPpTag001",
    "last_To:": f"To: <sip:+15550199@127.0.0.1:5062>;tag={OUR_TAG}",
    "last_Call-ID:": "Call-ID: 1-4242@127.0.0.1",
    "last_CSeq:": "CSeq: 1 INVITE",
    "last_Contact:": "Contact: <sip:127.0.0.1:5060>",
}
_FIELD = re.compile(r"\[([^\]\[]+)\]")


def _fill(template: str, branch: int) -> bytes:
    lines = textwrap.dedent(template.strip("\n")).strip().split("\n")

    def field(match: re.Match[str]) -> str:
        name = match.group(1)
        if name.startswith("branch"):
            return f"z9hG4bK-4242-1-{branch}"
        if name.startswith("authentication"):
            return (
                'Authorization: Digest username="sipp", realm="sipbridge", nonce="x", '
                'uri="sip:127.0.0.1:5060", response="00000000000000000000000000000000"'
            )
        if name == "len":
            return "[len]"
        if name.startswith("$"):
            return {"$min_se": "90", "$se1": "1800", "$cseq": "2"}.get(name, "1")
        return SIPP_FIELDS.get(name, "x")

    text = "\r\n".join(_FIELD.sub(field, line.strip()) for line in lines)
    head, _sep, body = text.partition("\r\n\r\n")
    head = "\r\n".join(line for line in head.split("\r\n") if line)  # empty [routes]
    body = body + "\r\n" if body else ""
    text = head.replace("[len]", str(len(body.encode()))) + "\r\n\r\n" + body
    return text.encode()


def sipp(corpus: Corpus) -> None:
    for path in sorted((ROOT / "tests" / "interop" / "sipp").glob("*.xml")):
        scenario = path.stem
        requests = []
        for number, send in enumerate(ET.parse(path).getroot().iter("send"), 1):
            message = _fill(send.text or "", number)
            _add(corpus, "sip_message", message, f"sipp-{scenario}-{number}")
            _add(corpus, "endpoint", message, f"sipp-{scenario}-{number}")
            _add(corpus, "user_agent", message, f"sipp-{scenario}-{number}")
            body = message.partition(b"\r\n\r\n")[2]
            if body.startswith(b"v=0"):
                _add(corpus, "sdp", body, f"sipp-{scenario}-{number}")
            if not message.startswith(b"SIP/2.0"):
                requests.append(message)
        if len(requests) > 1:
            flow = DATAGRAM_SEPARATOR.join(requests)
            _add(corpus, "endpoint", flow, f"sipp-{scenario}-flow")
            _add(corpus, "user_agent", flow, f"sipp-{scenario}-flow")
            _add(corpus, "sip_stream", b"\x0f" + b"".join(requests), f"sipp-{scenario}-flow")


# -- Digest credentials the fuzzed server accepts ---------------------------------------------


def digest_answers(corpus: Corpus) -> None:
    server = digest_server()
    challenges = server.challenge(DIGEST_REALM, DIGEST_NOW)
    for challenge in challenges:
        _add(corpus, "digest", challenge.encode(), "challenge")
        for username, password in DIGEST_USERS.items():
            client = DigestClient(username, password, new_cnonce=lambda: "0a4f113b")
            value = client.answer([challenge], "INVITE", "sip:bob@sip.example.com")
            algorithm = "sha256" if "SHA-256" in challenge else "md5"
            _add(corpus, "digest", value.encode(), f"credentials-{username}-{algorithm}")


# -- what the unit tests hand the parsers ------------------------------------------------------


class Capture:
    """A pytest plugin: every sipbridge reference to a parser is wrapped to record its input
    (with the test that gave it) before the test modules are imported."""

    def __init__(self, corpus: Corpus) -> None:
        self.corpus = corpus
        self.test = "unknown"
        self.recording = False
        self.flows: dict[int, list[bytes]] = defaultdict(list)
        self.streams: dict[int, list[bytes]] = defaultdict(list)
        self.dtmf: dict[int, list[bytes]] = defaultdict(list)

    def record(self, target: str, data: bytes) -> None:
        if self.recording:
            _add(self.corpus, target, data, self.test)

    # -- pytest hooks --

    def pytest_configure(self, config: pytest.Config) -> None:
        self.install()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Iterator[None]:
        path = Path(str(item.path)).stem.removeprefix("test_")
        self.test = f"{path}-{item.name.removeprefix('test_')}"
        function = getattr(item, "obj", None)
        self.recording = not getattr(function, "is_hypothesis_test", False)
        self.flows.clear()
        self.streams.clear()
        self.dtmf.clear()
        try:
            return (yield)
        finally:
            self.recording = False
            self.flush()

    def flush(self) -> None:
        for datagrams in self.flows.values():
            if len(datagrams) > 1:
                flow = DATAGRAM_SEPARATOR.join(datagrams[:16])
                _add(self.corpus, "endpoint", flow, f"{self.test}-flow")
                _add(self.corpus, "user_agent", flow, f"{self.test}-flow")
        for pieces in self.streams.values():
            _add(self.corpus, "sip_stream", b"\x00" + b"".join(pieces), self.test)
        for records in self.dtmf.values():
            _add(self.corpus, "dtmf", b"".join(records[:64]), self.test)

    # -- the wrappers --

    def install(self) -> None:
        from sipbridge.media import dtmf, rtp  # noqa: PLC0415
        from sipbridge.sip import digest, endpoint, message  # noqa: PLC0415

        for info in pkgutil.walk_packages(sipbridge.__path__, "sipbridge."):
            if info.name.split(".")[1] in ("sip", "sdp", "media"):
                importlib.import_module(info.name)
        text = self.text_recorder
        wrap: dict[Callable[..., Any], Callable[..., Any]] = {}
        for function, target, convert in [
            (message.parse_message, "sip_message", None),
            (sys.modules["sipbridge.sdp.syntax"].parse_sdp, "sdp", None),
            (rtp.parse_rtp, "rtp", None),
            (rtp.parse_rtcp, "rtp", None),
            (digest.parse_auth_header, "digest", text),
            (sys.modules["sipbridge.sip.uri"].parse_uri, "sip_header", text),
            (sys.modules["sipbridge.sip.headers"].parse_address, "sip_header", text),
            (sys.modules["sipbridge.sip.headers"].parse_via, "sip_header", text),
            (sys.modules["sipbridge.sip.headers"].parse_cseq, "sip_header", text),
            (sys.modules["sipbridge.sip.headers"].parse_session_expires, "sip_header", text),
        ]:
            wrap[function] = self.recorder(function, target, convert)
        for module_name, module in list(sys.modules.items()):
            if module_name.startswith("sipbridge"):
                for attribute, value in list(vars(module).items()):
                    if callable(value) and value in wrap:
                        setattr(module, attribute, wrap[value])
        self.wrap_method(endpoint.SipEndpoint, "receive", self.on_receive)
        self.wrap_method(message.StreamFramer, "feed", self.on_feed)
        self.wrap_method(dtmf.DtmfReceiver, "receive", self.on_dtmf)
        self.wrap_method(digest.DigestServer, "verify", self.on_verify)

    def text_recorder(self, value: object) -> bytes | None:
        return value.encode("utf-8", "surrogatepass") if isinstance(value, str) else None

    def recorder(
        self,
        function: Callable[..., Any],
        target: str,
        convert: Callable[[object], bytes | None] | None,
    ) -> Callable[..., Any]:
        def recording(data: Any, *args: Any, **kwargs: Any) -> Any:
            raw = convert(data) if convert else data
            if isinstance(raw, (bytes, bytearray)):
                self.record(target, bytes(raw))
            elif isinstance(raw, str):
                self.record(target, raw.encode("utf-8", "surrogatepass"))
            return function(data, *args, **kwargs)

        return recording

    @staticmethod
    def wrap_method(owner: type, name: str, before: Callable[..., None]) -> None:
        original = getattr(owner, name)

        def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
            before(self, *args, **kwargs)
            return original(self, *args, **kwargs)

        setattr(owner, name, wrapped)

    def on_receive(self, endpoint: object, data: bytes, *rest: object, **_: object) -> None:
        if self.recording:
            self.record("endpoint", data)
            self.record("user_agent", data)
            self.flows[id(endpoint)].append(data)

    def on_feed(self, framer: object, data: bytes) -> None:
        if self.recording:
            self.streams[id(framer)].append(bytes(data))

    def on_dtmf(self, receiver: object, packet: Any, now: float) -> None:
        records = self.dtmf[id(receiver)]
        if self.recording and len(packet.payload) == 4:
            # fuzz/targets.py dtmf: timestamp (4), delay since the previous packet in ms (2),
            # payload (4); the delay is kept relative, the first one from 0.
            previous = getattr(receiver, "_fuzz_last", 0.0)
            delay = max(0, min(0xFFFF, round((now - previous) * 1000)))
            receiver._fuzz_last = now  # type: ignore[attr-defined]
            records.append(
                (packet.timestamp & 0xFFFFFFFF).to_bytes(4, "big")
                + delay.to_bytes(2, "big")
                + packet.payload
            )

    def on_verify(self, server: object, header: str | None, **_: object) -> None:
        if header is not None:
            self.record("digest", header.encode("utf-8", "surrogatepass"))


def unit_tests(corpus: Corpus) -> None:
    capture = Capture(corpus)
    code = pytest.main(
        ["-q", "-p", "no:cacheprovider", "-p", "no:randomly", "--no-cov", *TEST_FOLDERS],
        plugins=[capture],
    )
    if code not in (0, 1):
        raise SystemExit(f"the unit tests could not run (pytest exit {code})")


def write(corpus: Corpus) -> None:
    for target in TARGETS:
        folder = CORPUS / target
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        # the named sources first (RFC, sipp, Digest), then the captures, each in input order
        entries = sorted(
            corpus[target].items(),
            key=lambda item: not item[1].startswith(("rfc", "sipp", "credentials", "challenge")),
        )
        for data, name in entries[:MAX_FILES]:
            (folder / name).write_bytes(data)
        print(f"{target}: {min(len(entries), MAX_FILES)} of {len(entries)} inputs")


def main() -> None:
    corpus: Corpus = defaultdict(dict)
    torture(corpus)
    sipp(corpus)
    digest_answers(corpus)
    unit_tests(corpus)
    write(corpus)


if __name__ == "__main__":
    main()
