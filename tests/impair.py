"""Loss and jitter on the packets a namespace sends from some UDP ports (tests/netns.py).

`impair(ns, sport=..., delay=..., jitter=..., loss=...)` puts the packets that leave the namespace
from UDP source ports `sport`/`mask` (a phone's RTP) through netem's model: each packet is
dropped with probability `loss`, else delayed by a uniform draw from [delay - jitter,
delay + jitter] (netem's `delay D J` without a distribution table), and leaves at its own time,
so packets reorder when the draws cross (netem's time-sorted tfifo). Other traffic (SIP, the
phone's control connection) is untouched.

- With `tc netem` (kernel `sch_netem`): a prio qdisc on the namespace's veth end, netem on its
  second band, a u32 filter on the source ports; what it applied is read from `tc -s qdisc`.
- Without it (kernels built without sch_netem, such as this suite's VMs, where `tc qdisc add ...
  netem` says "Specified qdisc kind is unknown"): the same model in user space. A policy route in
  the namespace (`ip rule ... ipproto udp sport A-B`) sends those packets into a TUN device whose
  file descriptor this process holds; a thread drops or delays each one and writes it into a
  second TUN device on the host side, where the kernel delivers it as if it came off the wire.

Either way `applied()` says how many packets were dropped and passed, for comparing with what
the receiver measured. Skips (pytest.skip) when neither is possible. Every command has a timeout.
"""

from __future__ import annotations

import contextlib
import fcntl
import heapq
import os
import random
import re
import select
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.netns import VethNamespace

CMD_TIMEOUT = 10.0
TUNSETIFF = 0x400454CA  # <linux/if_tun.h>
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
TABLE = 213  # the namespace's routing table for the impaired ports


@dataclass(frozen=True)
class Applied:
    """What the impairment did: packets dropped and passed, and how (`netem` or `userspace`)."""

    dropped: int
    passed: int
    how: str

    @property
    def loss(self) -> float:
        total = self.dropped + self.passed
        return self.dropped / total if total else 0.0


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=CMD_TIMEOUT,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


class Impairment:
    def applied(self) -> Applied:
        raise NotImplementedError


class Netem(Impairment):
    def __init__(self, ns: VethNamespace) -> None:
        self.ns = ns

    def applied(self) -> Applied:
        out = _run(*self.ns.exec_args("tc", "-s", "qdisc", "show", "dev", self.ns.ns_if)).stdout
        m = re.search(r"qdisc netem 20:.*?Sent \d+ bytes (\d+) pkt \(dropped (\d+)", out, re.S)
        if m is None:
            raise AssertionError(f"no netem statistics in:\n{out}")
        return Applied(dropped=int(m.group(2)), passed=int(m.group(1)), how="netem")


def _try_netem(
    ns: VethNamespace, *, sport: int, mask: int, delay: float, jitter: float, loss: float
) -> Netem | None:
    tc = [*ns.exec_args("tc")]
    dev = ns.ns_if
    prio = _run(*tc, "qdisc", "add", "dev", dev, "root", "handle", "1:", "prio", "bands", "2",
                "priomap", *["0"] * 16, check=False)  # fmt: skip
    if prio.returncode != 0:
        return None
    netem = _run(*tc, "qdisc", "add", "dev", dev, "parent", "1:2", "handle", "20:", "netem",
                 "delay", f"{delay * 1000:g}ms", f"{jitter * 1000:g}ms", "loss", f"{loss * 100:g}%",
                 "limit", "10000", check=False)  # fmt: skip
    if netem.returncode != 0:
        _run(*tc, "qdisc", "del", "dev", dev, "root", check=False)
        return None
    _run(*tc, "filter", "add", "dev", dev, "parent", "1:", "protocol", "ip", "prio", "1", "u32",
         "match", "ip", "protocol", "17", "0xff", "match", "ip", "sport", str(sport), hex(mask),
         "flowid", "1:2")  # fmt: skip
    return Netem(ns)


def _tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


class UserspaceNetem(Impairment):
    """netem's loss and uniform delay between two TUN devices, in a thread of its own."""

    def __init__(
        self, source: int, sink: int, *, delay: float, jitter: float, loss: float, seed: int
    ) -> None:
        self.source, self.sink = source, sink
        self.delay, self.jitter, self.loss = delay, jitter, loss
        self.random = random.Random(seed)
        self.dropped = self.passed = 0
        self._wake_r, self._wake_w = os.pipe()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="userspace netem", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        os.write(self._wake_w, b"x")
        self._thread.join(5)
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)

    def applied(self) -> Applied:
        return Applied(dropped=self.dropped, passed=self.passed, how="userspace")

    def _run(self) -> None:
        queue: list[tuple[float, int, bytes]] = []  # (when it leaves, order, packet)
        order = 0
        while not self._stopping:
            timeout = max(0.0, queue[0][0] - time.monotonic()) if queue else None
            readable, _, _ = select.select([self.source, self._wake_r], [], [], timeout)
            if self.source in readable:
                while True:
                    try:
                        packet = os.read(self.source, 65536)
                    except BlockingIOError:
                        break
                    if self.random.random() < self.loss:
                        self.dropped += 1
                        continue
                    hold = self.random.uniform(self.delay - self.jitter, self.delay + self.jitter)
                    heapq.heappush(queue, (time.monotonic() + max(0.0, hold), order, packet))
                    order += 1
            now = time.monotonic()
            while queue and queue[0][0] <= now:
                _, _, packet = heapq.heappop(queue)
                with contextlib.suppress(OSError):
                    os.write(self.sink, packet)
                    self.passed += 1


@contextlib.contextmanager
def impair(
    ns: VethNamespace,
    *,
    sport: int,
    mask: int,
    delay: float,
    jitter: float,
    loss: float,
    seed: int = 14,
    force_userspace: bool = False,
) -> Iterator[Impairment]:
    """Impair what `ns` sends from UDP ports `sport`/`mask` (`mask` of the form 0xfff0)."""
    if not force_userspace:
        netem = _try_netem(ns, sport=sport, mask=mask, delay=delay, jitter=jitter, loss=loss)
        if netem is not None:
            try:
                yield netem
            finally:
                _run(*ns.exec_args("tc", "qdisc", "del", "dev", ns.ns_if, "root"), check=False)
            return
    if not os.path.exists("/dev/net/tun"):
        pytest.skip("neither tc netem nor /dev/net/tun (TUN) is available")
    suffix = ns.name.removeprefix("sbns")
    inner, outer = f"sbi{suffix}", f"sbo{suffix}"
    low, high = sport & mask, (sport & mask) | (~mask & 0xFFFF)
    inner_fd = _tun(inner)
    outer_fd: int | None = None
    emulator: UserspaceNetem | None = None
    try:
        outer_fd = _tun(outer)
        _run("ip", "link", "set", inner, "netns", ns.name)
        _run("ip", "-n", ns.name, "link", "set", inner, "up")
        _run("ip", "-n", ns.name, "route", "add", ns.host_ip, "dev", inner, "table", str(TABLE))
        _run("ip", "-n", ns.name, "rule", "add", "ipproto", "udp", "sport", f"{low}-{high}",
             "lookup", str(TABLE), "priority", "100")  # fmt: skip
        _run("sysctl", "-qw", f"net.ipv4.conf.{outer}.rp_filter=0")
        _run("ip", "link", "set", outer, "up")
        emulator = UserspaceNetem(
            inner_fd, outer_fd, delay=delay, jitter=jitter, loss=loss, seed=seed
        )
        emulator.start()
        yield emulator
    finally:
        if emulator is not None:
            emulator.stop()
        for fd in (inner_fd, outer_fd):
            if fd is not None:
                os.close(fd)  # a TUN device that is not persistent goes with its descriptor
