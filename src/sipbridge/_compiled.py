"""Whether the compiled build of sipbridge's core runs, or its Python sources.

`make` compiles the sans-IO packages and the SIP driver with mypyc (`setup.py`, COMPILED): the
same `.py` sources built into C extensions beside them, which Python imports before a `.py`.
The build writes `STAMP`: each compiled module's source, with its size and modification time.
This module, imported first by `sipbridge/__init__.py`, decides once per process:

- `compiled`: every module the stamp lists has its extension and an unchanged source;
- `interpreted`: `SIPBRIDGE_INTERPRETED=1` asks for the sources (coverage, debugging, the
  fallback's own tests), or nothing was compiled;
- `stale`: a source changed since the build (an edit not yet built by `make`), or an extension
  is missing. Compiled modules call each other directly, so stale compiled code mixed with
  edited source would run neither: every listed module is then imported from its source, and
  one line on stderr says so.

In the last two cases a finder placed first on `sys.meta_path` imports the listed modules from
their `.py` files; nothing else changes.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

PACKAGE_DIR = Path(__file__).resolve().parent
STAMP = PACKAGE_DIR / "_compiled.json"
ENV = "SIPBRIDGE_INTERPRETED"


def source_state(path: Path) -> list[int]:
    """What the stamp keeps of a source: its size and modification time (ns)."""
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def write_stamp(modules: dict[str, Path], package_dir: Path = PACKAGE_DIR) -> None:
    """Called by the build once every module in `modules` (name -> source) is compiled."""
    entries = {
        name: [str(path.relative_to(package_dir)), *source_state(path)]
        for name, path in sorted(modules.items())
    }
    (package_dir / STAMP.name).write_text(json.dumps({"modules": entries}, indent=1) + "\n")


def listed(package_dir: Path = PACKAGE_DIR) -> dict[str, Path]:
    """The stamp's modules (name -> source), whatever their state; empty without a stamp."""
    try:
        entries = json.loads((package_dir / STAMP.name).read_text())["modules"]
        return {name: package_dir / entry[0] for name, entry in entries.items()}
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return {}


def built(package_dir: Path = PACKAGE_DIR) -> bool:
    """Whether every module the stamp lists has its extension, built from its present source."""
    try:
        entries = json.loads((package_dir / STAMP.name).read_text())["modules"]
        return bool(entries) and all(
            source_state(package_dir / relative) == [size, mtime]
            and extension_of(package_dir / relative).exists()
            for relative, size, mtime in entries.values()
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def extension_of(source: Path) -> Path:
    """Where the build puts the extension of `source` (a package's is its `__init__`'s)."""
    return source.with_name(source.stem + importlib.machinery.EXTENSION_SUFFIXES[0])


class _FromSource(importlib.abc.MetaPathFinder):
    """Imports the compiled modules from their `.py` sources instead."""

    def __init__(self, modules: dict[str, Path]) -> None:
        self.modules = modules

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        source = self.modules.get(fullname)
        if source is None:
            return None
        if source.name == "__init__.py":
            return importlib.util.spec_from_file_location(
                fullname, source, submodule_search_locations=[str(source.parent)]
            )
        return importlib.util.spec_from_file_location(fullname, source)


def _decide() -> str:
    modules = listed()
    if not modules:
        return "interpreted"
    if os.environ.get(ENV, "") not in ("", "0"):
        sys.meta_path.insert(0, _FromSource(modules))
        return "interpreted"
    if not built():
        sys.meta_path.insert(0, _FromSource(modules))
        sys.stderr.write(
            "sipbridge: the compiled modules are older than their sources (run `make`): "
            "running the sources\n"
        )
        return "stale"
    return "compiled"


MODE = _decide()
