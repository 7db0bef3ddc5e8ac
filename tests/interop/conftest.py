"""Fixtures shared by the interop tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import netns
from tests.harness import served, sip_server_process
from tests.helpers import ServerProcess

RTC_PORTS = "16000-16999"  # WebRTC (ICE) ports of `rtc_server`


MEDIA_FLAGS = ("--rtp-ports", "14000-14999")


def rtc_server_process(
    tmp_path: Path, namespace: netns.VethNamespace, *extra: str
) -> ServerProcess:
    """A server (not started) for SDK clients in `namespace`: its API and WebRTC (ICE) on the
    namespace's host address, RTC_PORTS, then `extra` flags."""
    flags = ("--rtc-ip", namespace.host_ip, "--rtc-ports", RTC_PORTS, *extra)
    return sip_server_process(tmp_path, *MEDIA_FLAGS, *flags, http_host=namespace.host_ip)


def loopback_rtc_server(tmp: Path) -> Iterator[ServerProcess]:
    """The body of a fixture (`yield from`): a started server for browsers on loopback (in a
    namespace of the test's: Chromium's WebRTC takes 127.0.0.1 there), stopped cleanly after."""
    flags = ("--rtc-ip", "127.0.0.1", "--rtc-ports", RTC_PORTS)
    with served(sip_server_process(tmp, *MEDIA_FLAGS, *flags)) as proc:
        yield proc


@pytest.fixture
def media_server(tmp_path: Path) -> Iterator[ServerProcess]:
    with served(sip_server_process(tmp_path, *MEDIA_FLAGS)) as proc:
        yield proc


@pytest.fixture
def namespace() -> Iterator[netns.VethNamespace]:
    with netns.veth_namespace() as ns:
        yield ns


@pytest.fixture
def rtc_server(tmp_path: Path, namespace: netns.VethNamespace) -> Iterator[ServerProcess]:
    with served(rtc_server_process(tmp_path, namespace)) as proc:
        yield proc
