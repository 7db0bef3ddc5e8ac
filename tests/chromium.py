"""A Chromium driven by one of tests/browser's node scripts (driver.mjs for the livekit-client
pages, console_driver.mjs for the console): JSON lines on its stdin and stdout."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
from pathlib import Path

BROWSER_DIR = Path(__file__).parent / "browser"
CHROMIUM = shutil.which("chromium")
NODE = shutil.which("node")
INSTALLED = (BROWSER_DIR / "node_modules" / "playwright-core").is_dir()


class DriverProcess:
    """`node script` in tests/browser (one Chromium), its stderr in `log`.stderr; a thread runs
    `_read` over its stdout. A subclass sets what `_read` fills before calling this."""

    def __init__(self, script: str, log: Path) -> None:
        self.log = log
        self._stderr = log.with_suffix(".stderr").open("ab")
        self.proc = subprocess.Popen(
            [NODE or "node", script],
            cwd=BROWSER_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env={**os.environ, "CHROMIUM": CHROMIUM or "/usr/bin/chromium"},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Its stdin closed: the driver closes Chromium and exits (killed after 15 s)."""
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self._stderr.close()
