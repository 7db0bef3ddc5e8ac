"""A real Kamailio (Debian's `kamailio`, installed by `make test`) in front of sipbridge nodes,
run from the committed docs/kamailio-dispatcher.cfg - the file users deploy - with the test's
own listening port, dispatcher list, runtime directory and control socket: no system service,
stopped by whoever started it.

One UDP worker by default: with two, a node's 180 and 200 can leave Kamailio in the other
order (each worker relays what it read), which a carrier ignores but sipp counts as a failed
call.

`targets()` reads the dispatcher's view of each node through `kamcmd dispatcher.list` (flags
`A` active, `I` inactive, `P` probing, as the dispatcher module documents them).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.harness import bound, sipp_port

CONFIG = Path(__file__).resolve().parent.parent / "docs" / "kamailio-dispatcher.cfg"
KAMAILIO = shutil.which("kamailio") or "/usr/sbin/kamailio"
KAMCMD = shutil.which("kamcmd") or "/usr/sbin/kamcmd"


def require_kamailio() -> None:
    """Skip, saying why, where Debian's kamailio is not installed (`make test` installs it)."""
    if not Path(KAMAILIO).exists():
        pytest.skip("kamailio is not installed: `make system-deps` installs it")


class Kamailio:
    """Kamailio on 127.0.0.1:`port` (UDP) dispatching to `nodes` ("HOST:PORT" each)."""

    def __init__(
        self, directory: Path, nodes: Sequence[str], *, alg: int = 4, children: int = 1
    ) -> None:
        self.directory = directory
        self.nodes = list(nodes)
        self.alg = alg
        self.children = children
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = directory / "kamailio.log"
        self.ctl = directory / "ctl.sock"

    def start(self, timeout: float = 10.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = self.port or sipp_port()
        ds_list = self.directory / "dispatcher.list"
        ds_list.write_text("".join(f"1 sip:{node}\n" for node in self.nodes))
        args = [
            KAMAILIO,
            "-f",
            str(CONFIG),
            "-DD",  # in the foreground (its children still fork)
            "-E",  # log to stderr
            "-Y",
            str(self.directory),
            "-w",
            str(self.directory),
            "-P",
            str(self.directory / "kamailio.pid"),
            "-m",
            "64",
            "-M",
            "8",
            "-A",
            f"LISTEN=udp:127.0.0.1:{self.port}",
            "-A",
            f'DS_LIST="{ds_list}"',
            "-A",
            f'DS_ALG="{self.alg}"',
            "-A",
            f'CTL_SOCKET="unix:{self.ctl}"',
            "-A",
            f"CHILDREN={self.children}",
        ]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kamailio exited early:\n{self.log_tail()}")
            if bound(self.port) and self.ctl.exists():
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"kamailio did not start within {timeout:g} s:\n{self.log_tail()}")

    def log_tail(self, size: int = 5000) -> str:
        return self.log.read_text(errors="replace")[-size:] if self.log.exists() else ""

    def targets(self) -> dict[str, str]:
        """Each node ("HOST:PORT") and its dispatcher flags now (e.g. "AP", "IP")."""
        out = subprocess.run(
            [KAMCMD, "-s", f"unix:{self.ctl}", "dispatcher.list"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
        found = re.findall(r"URI:\s*sip:(\S+)\s+FLAGS:\s*(\S+)", out)
        return dict(found)

    def wait_active(self, timeout: float = 10.0) -> None:
        """Until the dispatcher holds every node active (a probe answered), as a front in
        service does before it takes calls; the log and the view say why not past `timeout`."""
        deadline = time.monotonic() + timeout
        view: dict[str, str] = {}
        while time.monotonic() < deadline:
            view = self.targets()
            if len(view) == len(self.nodes) and all(f.startswith("A") for f in view.values()):
                return
            time.sleep(0.05)
        raise AssertionError(f"the dispatcher never held every node up: {view}\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (it stops its children) and wait; SIGKILL to its whole process group past
        `timeout`, or when it died without stopping its children."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None


@contextlib.contextmanager
def kamailio(directory: Path, nodes: Sequence[str], **kw: int) -> Iterator[Kamailio]:
    require_kamailio()
    front = Kamailio(directory, nodes, **kw)
    front.start()
    try:
        yield front
    finally:
        front.stop()
