"""A network namespace joined to this host by a veth pair, for WebRTC tests on one machine.

libwebrtc (the official SDK's core) ignores loopback, so an SDK client must reach the server over
a real interface. `veth_namespace()` makes one that leads nowhere else (WIRE.md section 6):

- namespace `sbns<pid>-<n>`, veth pair `sbh<pid>-<n>` (host end) / `sbn<pid>-<n>` (namespace end);
- 10.213.<x>.1/30 on the host end, 10.213.<x>.2/30 in the namespace, <x> the first subnet no
  address or route of this host uses (chosen under a file lock, so concurrent runs differ);
- IPv6 disabled on both ends and in the namespace (no link-local traffic), the namespace's `lo` up,
  no default route in the namespace: from inside only 10.213.<x>.1 is reachable;
- teardown always: the processes left in the namespace are killed (they can only be this run's),
  then `ip netns del` (which removes the pair). Leftovers of dead test processes are removed first.

Skips the test (pytest.skip) when not root or without `ip`. Every command has a timeout.

    with veth_namespace() as ns:
        subprocess.run(ns.exec_args(sys.executable, "client.py", "--url", f"ws://{ns.host_ip}:..."))
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PREFIX = "sbns"
SUBNET = "10.213"
CMD_TIMEOUT = 10.0
_LOCK = Path("/run/lock" if Path("/run/lock").is_dir() else "/tmp") / "sipbridge-netns.lock"
_counter = itertools.count(1)
_NAME = re.compile(rf"^{PREFIX}(\d+)-(\d+)$")
_LINK = re.compile(r"^sb[hn](\d+)-(\d+)$")


@dataclass(frozen=True)
class VethNamespace:
    name: str  # the namespace
    host_if: str  # veth end in the host's namespace
    ns_if: str  # veth end inside the namespace
    index: int  # <x> of 10.213.<x>.0/30
    host_ip: str  # 10.213.<x>.1, on host_if: where servers listen for clients in the namespace
    ns_ip: str  # 10.213.<x>.2, on ns_if

    def exec_args(self, *cmd: str) -> list[str]:
        """A command line running `cmd` inside the namespace."""
        return ["ip", "netns", "exec", self.name, *cmd]

    def pids(self) -> list[int]:
        """Processes running inside the namespace."""
        out = _ip("netns", "pids", self.name, check=False)
        return [int(p) for p in out.split() if p.isdigit()]


def _run(*cmd: str, check: bool = True, timeout: float = CMD_TIMEOUT) -> str:
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def _ip(*args: str, check: bool = True) -> str:
    return _run("ip", *args, check=check)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def namespaces() -> list[str]:
    """Names of the network namespaces `ip netns` knows."""
    return [line.split()[0] for line in _ip("netns", "list").splitlines() if line.strip()]


def _kill_inside(name: str, grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL, the processes still inside our namespace (started by this run)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [int(p) for p in _ip("netns", "pids", name, check=False).split() if p.isdigit()]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not _ip("netns", "pids", name, check=False).split():
                return
            time.sleep(0.05)


def _delete(name: str, host_if: str | None = None) -> None:
    _kill_inside(name)
    _ip("netns", "del", name, check=False)
    if host_if is not None and _ip("link", "show", "dev", host_if, check=False).strip():
        _ip("link", "del", "dev", host_if, check=False)  # held by a process we could not end


def cleanup_stale() -> list[str]:
    """Remove namespaces and host veth ends of this module whose creating process is gone."""
    removed = []
    for name in namespaces():
        m = _NAME.match(name)
        if m and not _alive(int(m.group(1))):
            _delete(name)
            removed.append(name)
    for line in _ip("-o", "link", "show").splitlines():
        parts = line.split(":", 2)
        if len(parts) < 2:
            continue
        link = parts[1].strip().split("@")[0]
        m = _LINK.match(link)
        if m and not _alive(int(m.group(1))):
            _ip("link", "del", "dev", link, check=False)
            removed.append(link)
    return removed


def _used_subnets() -> set[int]:
    """<x> of every 10.213.<x>.* address or route on this host."""
    text = _ip("-o", "-4", "addr", "show") + _ip("-4", "route", "show", "table", "all")
    pattern = re.compile(rf"\b{re.escape(SUBNET)}\.(\d{{1,3}})\.")
    return {int(m.group(1)) for m in pattern.finditer(text)}


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    with open(_LOCK, "a+") as f:
        deadline = time.monotonic() + 30
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{_LOCK} held for 30 s") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _disable_ipv6(ns: VethNamespace) -> None:
    if not Path("/proc/sys/net/ipv6").exists():
        return  # no IPv6 in this kernel: nothing to silence
    _run("sysctl", "-qw", f"net.ipv6.conf.{ns.host_if}.disable_ipv6=1")
    keys = ("all", "default", "lo", ns.ns_if)
    _run(*ns.exec_args("sysctl", "-qw", *(f"net.ipv6.conf.{k}.disable_ipv6=1" for k in keys)))


def available() -> str | None:
    """Why a namespace cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is missing"
    if shutil.which("sysctl") is None:
        return "the `sysctl` command (procps) is missing"
    return None


@contextlib.contextmanager
def veth_namespace(index: int | None = None) -> Iterator[VethNamespace]:
    """A fresh namespace and veth pair; `index` forces the subnet 10.213.<index>.0/30."""
    reason = available()
    if reason:
        pytest.skip(reason)
    if index is not None and not 0 <= index <= 255:
        raise ValueError(f"index {index} is not in 0..255")
    pid, n = os.getpid(), next(_counter)
    suffix = f"{pid}-{n}"
    if len(f"sbh{suffix}") > 15:
        raise RuntimeError(f"interface name sbh{suffix} is longer than 15 characters")
    name = f"{PREFIX}{suffix}"
    created = False
    ns: VethNamespace | None = None
    try:
        with _lock():
            cleanup_stale()
            used = _used_subnets()
            if index is None:
                free = [x for x in range(1, 255) if x not in used]
                if not free:
                    raise RuntimeError(f"every {SUBNET}.<x>.0/30 is in use")
                x = free[0]
            elif index in used:
                raise RuntimeError(f"{SUBNET}.{index}.0/30 is in use on this host")
            else:
                x = index
            ns = VethNamespace(
                name=name,
                host_if=f"sbh{suffix}",
                ns_if=f"sbn{suffix}",
                index=x,
                host_ip=f"{SUBNET}.{x}.1",
                ns_ip=f"{SUBNET}.{x}.2",
            )
            _ip("netns", "add", name)
            created = True
            # the peer is made directly inside the namespace: no moment with both ends on the host
            _ip("link", "add", ns.host_if, "type", "veth", "peer", "name", ns.ns_if, "netns", name)
            _disable_ipv6(ns)  # before any link is up, so not even one router solicitation leaves
            _ip("addr", "add", f"{ns.host_ip}/30", "dev", ns.host_if)
            _ip("-n", name, "addr", "add", f"{ns.ns_ip}/30", "dev", ns.ns_if)
        _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", name, "link", "set", ns.ns_if, "up")
        _ip("link", "set", ns.host_if, "up")
        yield ns
    finally:
        if created:
            _delete(name, ns.host_if if ns else None)


# -- a namespace with loopback only, entered by this thread ----------------------------------------

CLONE_NEWNET = 0x40000000  # <sched.h>


def _setns(fd: int) -> None:
    """setns(2) of the calling thread into the network namespace `fd` (os.setns is 3.12+)."""
    import ctypes  # noqa: PLC0415

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


@contextlib.contextmanager
def loopback_namespace() -> Iterator[str]:
    """A fresh network namespace whose only link is `lo` (up, IPv4 only), which the calling thread
    enters for the block: every socket it opens and every process it starts in the block lives
    there, and 127.0.0.1 is that namespace's own loopback. For a test whose server, peers and
    browser must all be on one loopback that leads nowhere else (test_browser.py).

    Only the calling thread moves (setns(2) is per thread): threads started before the block stay
    outside, so the block must not hand socket work to them (e.g. `asyncio.to_thread` of a loop
    made before it). The thread leaves before the teardown, which kills what is left inside and
    deletes the namespace (as `veth_namespace` does). Skips when not root."""
    reason = available()
    if reason:
        pytest.skip(reason)
    name = f"{PREFIX}{os.getpid()}-{next(_counter)}"
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    created = entered = False
    try:
        with _lock():
            cleanup_stale()
            _ip("netns", "add", name)
            created = True
        if Path("/proc/sys/net/ipv6").exists():
            keys = ("all", "default", "lo")
            _run(
                "ip",
                "netns",
                "exec",
                name,
                "sysctl",
                "-qw",
                *(f"net.ipv6.conf.{k}.disable_ipv6=1" for k in keys),
            )
        _ip("-n", name, "link", "set", "lo", "up")
        target = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            _setns(target)
            entered = True
        finally:
            os.close(target)
        yield name
    finally:
        try:
            if entered:
                _setns(home)  # first: `ip netns pids` would otherwise count this very process
        finally:
            os.close(home)
            if created:
                _delete(name)
