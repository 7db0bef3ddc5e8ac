"""The layers of `src/sipbridge` (DESIGN.md, STYLE.md 1 and 2), checked on the source with `ast`.

Two rules:

- The protocol cores do no I/O and read no clock. `sip/`, `sdp/`, `media/`, `telephony/` and
  `rooms/` take time as an argument and return events; only the asyncio adapter above them
  touches sockets, tasks and clocks. Any import of a module that does I/O, concurrency or
  timekeeping fails.
- Imports point one way. `ALLOWED_IMPORTS` below says, for every layer, which other layers it
  may import; every import of every module under `src/sipbridge` - at the top, inside functions,
  under `TYPE_CHECKING`, relative (`from . import x`, `from .. import sdp`) or through
  `__import__`/`importlib.import_module` - is an edge, and an edge not in the table fails.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path

import pytest

# The source tree itself, not whatever copy of the package happens to be installed.
PACKAGE = Path(__file__).resolve().parents[1] / "src" / "sipbridge"
PURE_LAYERS = ("sip", "sdp", "media", "telephony", "rooms")

# -- import directions ---------------------------------------------------------------------------
#
# A layer is a package (`sip`, `sdp`...) or a module (`cli`, `config`...) directly under
# src/sipbridge; "sipbridge" is the package's own __init__ (its version). A layer may always
# import itself. Read each row as "<layer> may import <these>":
#
#   cli -> server -> telephony -> sip -> sdp
#                              -> sdp
#                              -> media
#                              -> rooms
#   store, config: below server; errors, ids: shared leaves for the domain layers
#
# `sdp/` is pure data about sessions: it knows neither the signalling that carries it nor the
# media it describes. `media/` knows no SIP and no SDP: `telephony/` maps SDP codecs and SDES
# lines onto it. `sip/` may carry SDP (the user agent's offer/answer), never the reverse. No
# layer but `cli` imports `server`, and nothing imports `cli` but `__main__`.
ALLOWED_IMPORTS: Mapping[str, frozenset[str]] = {
    "sipbridge": frozenset({"_compiled"}),  # first: whether the compiled core runs (its doc)
    "_compiled": frozenset(),
    "errors": frozenset(),
    "ids": frozenset(),
    "config": frozenset(),
    "sdp": frozenset(),
    "sip": frozenset({"sdp"}),
    "media": frozenset(),
    "rooms": frozenset({"errors", "ids"}),
    "telephony": frozenset({"errors", "ids", "sip", "sdp", "media", "rooms"}),
    "store": frozenset({"errors", "ids"}),
    "server": frozenset(
        {"sipbridge", "errors", "ids", "config", "store"}
        | {"sip", "sdp", "media", "rooms", "telephony"}
    ),
    "cli": frozenset(
        {"sipbridge", "errors", "ids", "config", "store"}
        | {"sip", "sdp", "media", "rooms", "telephony", "server"}
    ),
    "__main__": frozenset({"cli"}),
}

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


# -- import directions: the checker ----------------------------------------------------------------


def _imported_names(node: ast.AST, package: str) -> list[str]:
    """The absolute dotted names one AST node imports; `package` resolves relative imports.

    `from X import Y` gives `X.Y`, since Y may be a module (`from sipbridge import sdp`).
    """
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            parts = package.split(".")
            if node.level - 1 >= len(parts):
                return ["<beyond the top-level package>"]
            base = ".".join(parts[: len(parts) - (node.level - 1)])
            if node.module:
                base = f"{base}.{node.module}"
        else:
            base = node.module or ""
        return [f"{base}.{alias.name}" for alias in node.names]
    if (
        isinstance(node, ast.Call)
        and (
            (isinstance(node.func, ast.Name) and node.func.id == "__import__")
            or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
        )
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ):
        return [node.args[0].value]
    return []


def layer_of(name: str) -> str | None:
    """The layer a dotted module name belongs to, None outside sipbridge.

    A name under sipbridge that is no layer (`sipbridge.__version__`) is the package root.
    """
    parts = name.split(".")
    if parts[0] != "sipbridge":
        return "<invalid>" if name.startswith("<") else None
    if len(parts) > 1 and parts[1] in ALLOWED_IMPORTS:
        return parts[1]
    return "sipbridge"


def wrong_direction_imports(source: str, module: str, *, is_package: bool = False) -> list[str]:
    """Every import in `source` (the text of `module`) that the table forbids, as
    "line: layer -> imported.name" strings."""
    layer = layer_of(module)
    assert layer is not None and layer in ALLOWED_IMPORTS, f"{module} is in no known layer"
    package = module if is_package else module.rpartition(".")[0]
    allowed = ALLOWED_IMPORTS[layer] | {layer}
    found: list[str] = []
    for node in ast.walk(ast.parse(source, module)):
        for name in _imported_names(node, package):
            target = layer_of(name)
            if target is not None and target not in allowed:
                found.append(f"{getattr(node, 'lineno', 0)}: {layer} -> {name}")
    return found


def all_modules() -> list[tuple[str, Path, bool]]:
    """(dotted name, path, is a package's __init__) of every module under src/sipbridge."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ("sipbridge", *path.relative_to(PACKAGE).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found.append((".".join(parts[:-1] if is_package else parts), path, is_package))
    return found


def test_every_layer_is_in_the_table() -> None:
    # a new package or module under src/sipbridge must be placed before it can import anything
    entries = {
        path.stem if path.is_file() else path.name
        for path in PACKAGE.iterdir()
        if (path.is_file() and path.suffix == ".py" and path.stem != "__init__")
        or (path.is_dir() and (path / "__init__.py").is_file())
    }
    assert entries | {"sipbridge"} == set(ALLOWED_IMPORTS)
    for layer, allowed in ALLOWED_IMPORTS.items():
        assert allowed <= set(ALLOWED_IMPORTS), layer
        assert layer not in allowed, f"{layer} lists itself"


def test_the_table_keeps_the_rules_of_the_design() -> None:
    # what DESIGN.md and issue 11 require of the table itself, so that loosening it is a
    # decision and not an accident
    for layer in (*PURE_LAYERS, "store"):
        assert not {"server", "cli"} & ALLOWED_IMPORTS[layer], layer
    assert "sip" not in ALLOWED_IMPORTS["media"]
    assert "sdp" not in ALLOWED_IMPORTS["media"]
    assert ALLOWED_IMPORTS["sdp"] == frozenset()
    assert "cli" not in ALLOWED_IMPORTS["server"]
    # no cycles: the table is a partial order
    order: list[str] = []
    remaining = dict(ALLOWED_IMPORTS)
    while remaining:
        ready = [layer for layer, allowed in remaining.items() if allowed <= set(order)]
        assert ready, f"the table has a cycle among {sorted(remaining)}"
        order.extend(ready)
        for layer in ready:
            del remaining[layer]


def test_imports_point_the_allowed_way() -> None:
    modules = all_modules()
    assert len(modules) > len(ALLOWED_IMPORTS)
    offenders = {
        str(path.relative_to(PACKAGE)): found
        for module, path, is_package in modules
        if (
            found := wrong_direction_imports(
                path.read_text(encoding="utf-8"), module, is_package=is_package
            )
        )
    }
    assert offenders == {}, f"imports against the layers: {offenders}"


def _check(module: str, source: str) -> list[str]:
    # "<package>.__init__" names the package's own module, where `from . import x` is a sibling
    package = module.removesuffix(".__init__")
    return wrong_direction_imports(source, package, is_package=package != module)


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("sipbridge.media.codecs", "from sipbridge.sip import sdp"),
        ("sipbridge.media.codecs", "from sipbridge import sdp"),
        ("sipbridge.media.codecs", "import sipbridge.sip.message"),
        ("sipbridge.media.codecs", "from ..sip import message"),
        ("sipbridge.media.codecs", "from .. import sip"),
        ("sipbridge.media.codecs", "from ...sipbridge import sip"),
        ("sipbridge.media.codecs", "def f():\n    from sipbridge.sdp import Codec"),
        ("sipbridge.media.codecs", "if TYPE_CHECKING:\n    from sipbridge.sip.errors import E"),
        ("sipbridge.media.codecs", "m = __import__('sipbridge.sip.sdp')"),
        ("sipbridge.media.codecs", "import importlib\nimportlib.import_module('sipbridge.sdp')"),
        ("sipbridge.sdp.syntax", "from sipbridge.sip.errors import SipProtocolError"),
        ("sipbridge.sdp.syntax", "from sipbridge.media.codecs import CodecSpec"),
        ("sipbridge.sdp.syntax", "from sipbridge import errors"),
        ("sipbridge.sdp.__init__", "from ..sip.errors import SipProtocolError"),
        ("sipbridge.sip.dialog", "from sipbridge.server.sip.user_agent import Call"),
        ("sipbridge.sip.dialog", "from sipbridge.telephony import media"),
        ("sipbridge.telephony.media", "from sipbridge.server.media.service import MediaService"),
        ("sipbridge.rooms.model", "from sipbridge import cli"),
        ("sipbridge.rooms.model", "import sipbridge.server"),
        ("sipbridge.store.sqlite", "from sipbridge.server.app import main"),
        ("sipbridge.store.sqlite", "from sipbridge import __version__"),
        ("sipbridge.server.app", "from sipbridge.cli import main"),
        ("sipbridge.errors", "from sipbridge.rooms import model"),
        ("sipbridge.ids", "from . import errors"),
        ("sipbridge.media.__init__", "from .. import sdp"),
        ("sipbridge.media.__init__", "from .codecs import x\nfrom ..sdp import Codec"),
    ],
)
def test_direction_checker_catches(module: str, source: str) -> None:
    assert _check(module, source), (module, source)


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("sipbridge.media.codecs", "import numpy\nfrom sipbridge.media import g711"),
        ("sipbridge.media.codecs", "from . import g711\nfrom .errors import MediaError"),
        ("sipbridge.media.__init__", "from . import codecs"),
        ("sipbridge.sdp.__init__", "from .syntax import parse_sdp\nfrom sipbridge.sdp import E"),
        ("sipbridge.sip.ua", "from sipbridge import sdp"),
        ("sipbridge.telephony.sdes", "from sipbridge import sdp\nfrom ..media import srtp"),
        ("sipbridge.telephony.media", "from sipbridge.rooms.model import Room"),
        ("sipbridge.rooms.model", "from sipbridge import errors, ids"),
        ("sipbridge.server.app", "from sipbridge import __version__\nimport sipbridge.sip"),
        ("sipbridge.cli", "from sipbridge.server.app import main"),
        ("sipbridge.__main__", "from sipbridge.cli import main"),
        ("sipbridge.media.codecs", "x = 'from sipbridge.sip import sdp'"),
        ("sipbridge.media.codecs", "import sipbridgex.sip"),
    ],
)
def test_direction_checker_allows(module: str, source: str) -> None:
    assert _check(module, source) == [], (module, source)


def test_direction_checker_reports_line_layer_and_name() -> None:
    source = "import os\nfrom sipbridge.media import rtp\n\ndef f():\n    from .. import sip\n"
    assert wrong_direction_imports(source, "sipbridge.media.codecs") == [
        "5: media -> sipbridge.sip"
    ]
    assert wrong_direction_imports("from .... import x", "sipbridge.sip.ua.session") == [
        "1: sip -> <beyond the top-level package>"
    ]


SERVER_MODULE_LINES = 500  # README (layout): no module in server/ over this; split by concern


def test_no_server_module_is_over_the_line_limit() -> None:
    long = {
        str(path.relative_to(PACKAGE)): lines
        for path in sorted((PACKAGE / "server").rglob("*.py"))
        if (lines := len(path.read_text().splitlines())) > SERVER_MODULE_LINES
    }
    assert not long, f"split by concern: {long}"
