"""Fixtures shared by the interop tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import netns
from tests.helpers import ServerProcess, free_sip_port

RTC_PORTS = "16000-16999"  # WebRTC (ICE) ports of `rtc_server`


@pytest.fixture
def media_server(tmp_path: Path) -> Iterator[ServerProcess]:
    port = free_sip_port()
    proc = ServerProcess(tmp_path, "--sip", f"127.0.0.1:{port}", "--rtp-ports", "14000-14999")
    proc.sip_port = port  # type: ignore[attr-defined]
    proc.start()
    yield proc
    if proc.proc is not None:
        assert proc.stop() == 0, proc.log.read_text()


@pytest.fixture
def namespace() -> Iterator[netns.VethNamespace]:
    with netns.veth_namespace() as ns:
        yield ns


@pytest.fixture
def rtc_server(tmp_path: Path, namespace: netns.VethNamespace) -> Iterator[ServerProcess]:
    port = free_sip_port()
    proc = ServerProcess(
        tmp_path,
        "--sip",
        f"127.0.0.1:{port}",
        "--rtp-ports",
        "14000-14999",
        "--rtc-ip",
        namespace.host_ip,
        "--rtc-ports",
        RTC_PORTS,
        http_host=namespace.host_ip,
    )
    proc.sip_port = port  # type: ignore[attr-defined]
    proc.start()
    yield proc
    if proc.proc is not None:
        assert proc.stop() == 0, proc.log.read_text()
