"""The protocol cores do no I/O and read no clock (STYLE.md 1 and 2).

`sip/`, `media/`, `telephony/` and `rooms/` take time as an argument and return events; only the
asyncio adapter above them touches sockets, tasks and clocks. This test reads their source with
`ast` and fails on any import of a module that does I/O, concurrency or timekeeping.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

# The source tree itself, not whatever copy of the package happens to be installed.
PACKAGE = Path(__file__).resolve().parents[1] / "src" / "sipbridge"
PURE_LAYERS = ("sip", "media", "telephony", "rooms")

# Top-level modules the pure layers must not import. `time` covers clocks; the others cover
# event loops, sockets, threads and processes.
FORBIDDEN = frozenset(
    {
        "asyncio",
        "socket",
        "time",
        "threading",
        "subprocess",
        "select",
        "selectors",
        "multiprocessing",
        "concurrent",
    }
)


def forbidden_imports(source: str, filename: str = "<test>") -> list[str]:
    """Every forbidden import in `source`, as "line: module" strings."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source, filename)):
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        elif (
            # __import__("time") and importlib.import_module("time") would dodge the check
            isinstance(node, ast.Call)
            and (
                (isinstance(node.func, ast.Name) and node.func.id == "__import__")
                or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            )
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            modules = [node.args[0].value]
        for module in modules:
            if module.split(".")[0] in FORBIDDEN:
                found.append(f"{getattr(node, 'lineno', 0)}: {module}")
    return found


def pure_modules() -> list[Path]:
    return sorted(p for layer in PURE_LAYERS for p in (PACKAGE / layer).rglob("*.py"))


@pytest.mark.parametrize("layer", PURE_LAYERS)
def test_layer_exists(layer: str) -> None:
    # a renamed folder must not make the main test pass vacuously
    assert (PACKAGE / layer / "__init__.py").is_file()


def test_pure_layers_do_no_io() -> None:
    modules = pure_modules()
    assert len(modules) >= len(PURE_LAYERS)
    offenders = {
        str(path.relative_to(PACKAGE)): found
        for path in modules
        if (found := forbidden_imports(path.read_text(encoding="utf-8"), str(path)))
    }
    assert offenders == {}, f"pure layers import I/O or clock modules: {offenders}"


@pytest.mark.parametrize(
    "source",
    [
        "import asyncio",
        "import asyncio.events",
        "import socket",
        "import time",
        "import time as clock",
        "from time import monotonic",
        "from time import monotonic as now, sleep",
        "from asyncio import get_running_loop",
        "from asyncio.events import AbstractEventLoop",
        "import os, socket",
        "import threading",
        "import subprocess",
        "import select",
        "import selectors",
        "from concurrent.futures import ThreadPoolExecutor",
        "import multiprocessing.pool",
        "def f():\n    import time\n    return time.time()",
        "class C:\n    def m(self):\n        from socket import socket",
        "if True:\n    try:\n        import asyncio\n    except ImportError:\n        pass",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import asyncio",
        "t = __import__('time')",
        "import importlib\nt = importlib.import_module('socket')",
    ],
)
def test_checker_catches(source: str) -> None:
    assert forbidden_imports(source), source


@pytest.mark.parametrize(
    "source",
    [
        "",
        "import os",
        "import datetime",
        "import timeit",
        "import sockets_helper",
        "from sipbridge.time import clock",
        "from . import time",
        "from .time import monotonic",
        "from .. import socket",
        "import sipbridge.rooms.events",
        "from collections import deque",
        "x = 'import time'",
        "# import asyncio",
        "def time(): pass\ntime()",
    ],
)
def test_checker_allows(source: str) -> None:
    assert forbidden_imports(source) == [], source


def test_checker_reports_line_and_module() -> None:
    assert forbidden_imports("import os\n\nfrom time import monotonic\nimport asyncio.events") == [
        "3: time",
        "4: asyncio.events",
    ]
