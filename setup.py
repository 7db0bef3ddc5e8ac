"""The compiled parts of sipbridge, both optional; everything else is in pyproject.toml.

- The relay engine (src/sipbridge/_crelay.c, driven by server/media/crelay.py), always tried:
  when it cannot be built (no compiler, no Python headers) the install goes on and the relay
  uses the pure-Python path.
- Batched UDP I/O for the SIP socket (src/sipbridge/_csipudp.c), the same: without it the SIP
  socket is the event loop's datagram endpoint.
- The SIP UDP socket's reader thread (src/sipbridge/_csipthr.c), the same.
- The head of a SIP message of the common shape cut in C (src/sipbridge/_csipmsg.c, used by
  sip/message.py's `parse_message`), the same.
- With `SIPBRIDGE_COMPILE=1` (the Makefile's `compiled` target), also the COMPILED packages and
  modules, compiled by mypyc from their own .py sources into C extensions beside them, and the
  stamp `sipbridge/_compiled.py` checks at import. Without it (a plain `pip install`), nothing
  of that: the sources run.
"""

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class ParallelBuildExt(build_ext):
    """build_ext whose compiler runs the C files of one extension side by side, one per core:
    mypyc writes the compiled core as one extension of a hundred-odd C files, which distutils
    compiles one after another (`-j` only runs whole extensions side by side). Each extension
    still links once all its objects are built."""

    def build_extensions(self) -> None:
        compiler = self.compiler
        compile_in_order = compiler.compile
        jobs = os.cpu_count() or 1

        def compile_side_by_side(sources: list[str], *args: object, **kwargs: object) -> list[str]:
            if jobs < 2 or len(sources) < 2:
                return compile_in_order(sources, *args, **kwargs)

            def compile_one(source: str) -> list[str]:
                return compile_in_order([source], *args, **kwargs)

            with ThreadPoolExecutor(jobs) as pool:
                return [obj for objects in pool.map(compile_one, sources) for obj in objects]

        compiler.compile = compile_side_by_side
        try:
            super().build_extensions()
        finally:
            del compiler.compile


# The hand-written C under AddressSanitizer and UBSan (`make asan`, fuzz/asan.sh, in a copy of the
# tree under build/asan): SIPBRIDGE_SANITIZE=1 builds them at -O1 with debug information, so
# that a report names the line.
C_FLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]
LINK_FLAGS: list[str] = []
if os.environ.get("SIPBRIDGE_SANITIZE") == "1":
    LINK_FLAGS = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g", "-O1"]
    C_FLAGS = [*C_FLAGS[1:], *LINK_FLAGS]

# The sans-IO core and the SIP driver: what every call's signalling and media pass through.
COMPILED = [
    "src/sipbridge/sip",
    "src/sipbridge/sdp",
    "src/sipbridge/media",
    "src/sipbridge/telephony",
    "src/sipbridge/rooms",
    "src/sipbridge/server/sip",
    "src/sipbridge/server/deadline.py",
    # The call runners, the media service and the runtime state they keep, per call.
    "src/sipbridge/server/calls",
    "src/sipbridge/server/media",
    "src/sipbridge/server/state",
    # A room's signalling (issue 18: a room each is a WebSocket join, its updates and a Twirp
    # request a call): the join, the session's writer and its updates, the Twirp router and the
    # room service. (Not the peer connections' media, aiortc's.)
    "src/sipbridge/server/rtc/join.py",
    "src/sipbridge/server/rtc/own_requests.py",
    # Speakers and connection quality: a timer over every room with a session, every 400 ms
    # (issue 18: 1.5-2.6% of the loop interpreted, at 300 calls/s shared and a room each).
    "src/sipbridge/server/rtc/room_stats.py",
    "src/sipbridge/server/rtc/session.py",
    "src/sipbridge/server/rtc/signal.py",
    "src/sipbridge/server/rtc/updates.py",
    "src/sipbridge/server/rtc/writer.py",
    "src/sipbridge/server/api/room_api.py",
    "src/sipbridge/server/api/twirp.py",
]

ext_modules = [
    Extension(
        "sipbridge._crelay",
        ["src/sipbridge/_crelay.c"],
        depends=["src/sipbridge/_sockaddr.h"],
        extra_compile_args=C_FLAGS,
        extra_link_args=LINK_FLAGS,
        libraries=["m"],
        optional=True,
    ),
    # Batched UDP I/O for the SIP socket (server/sip/udp.py), tried the same way.
    Extension(
        "sipbridge._csipudp",
        ["src/sipbridge/_csipudp.c"],
        depends=["src/sipbridge/_sockaddr.h", "src/sipbridge/_pyaddr.h"],
        extra_compile_args=C_FLAGS,
        extra_link_args=LINK_FLAGS,
        optional=True,
    ),
    # The SIP UDP socket read on a thread of its own, a new INVITE's 100 sent there
    # (server/sip/udp_thread.py), tried the same way.
    Extension(
        "sipbridge._csipthr",
        ["src/sipbridge/_csipthr.c"],
        depends=["src/sipbridge/_sockaddr.h", "src/sipbridge/_pyaddr.h"],
        extra_compile_args=C_FLAGS,
        extra_link_args=LINK_FLAGS,
        libraries=["pthread"],
        optional=True,
    ),
    # The common case of a SIP message's head (sip/message.py `parse_message`), tried the same way.
    Extension(
        "sipbridge.sip._csipmsg",
        ["src/sipbridge/_csipmsg.c"],
        extra_compile_args=C_FLAGS,
        extra_link_args=LINK_FLAGS,
        optional=True,
    ),
]
compiled: dict[str, Path] = {}
if os.environ.get("SIPBRIDGE_COMPILE") == "1":
    from mypyc.build import mypycify

    sources = sorted(
        path
        for entry in map(Path, COMPILED)
        for path in (entry.rglob("*.py") if entry.is_dir() else [entry])
    )
    compiled = {
        ".".join(path.relative_to("src").with_suffix("").parts).removesuffix(".__init__"): path
        for path in sources
    }
    ext_modules += mypycify(
        [str(path) for path in sources],
        opt_level=os.environ.get("SIPBRIDGE_COMPILE_OPT", "1"),
        debug_level="0",
        multi_file=True,
    )

setup(ext_modules=ext_modules, cmdclass={"build_ext": ParallelBuildExt})

if compiled:
    import sys

    sys.path.insert(0, "src")
    os.environ["SIPBRIDGE_INTERPRETED"] = "1"  # this process reads no stamp, it writes it
    from sipbridge._compiled import write_stamp

    write_stamp({name: path.resolve() for name, path in compiled.items()})
