"""What sipbridge tells clients and workers about itself (JoinResponse, worker registration).

SDKs compare the server's version with LiveKit's releases: the Rust core parses it as semver and
refuses RPC below 1.8.0. So `version` is the LiveKit release whose protocol sipbridge speaks,
and sipbridge's own version goes in `debug_info`.
"""

from __future__ import annotations

from livekit.protocol import models

from sipbridge import __version__

LIVEKIT_VERSION = "1.9.0"
PROTOCOL = 16


def server_info() -> models.ServerInfo:
    return models.ServerInfo(
        edition=models.ServerInfo.Edition.Standard,
        version=LIVEKIT_VERSION,
        protocol=PROTOCOL,
        debug_info=f"sipbridge {__version__}",
    )
