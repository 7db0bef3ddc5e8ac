"""`sipbridge serve | trunk | rule | room | participant`.

`serve` runs the server. The other commands are for humans and scripts; they talk to a running
server through the official `livekit-api` client, exactly as any LiveKit user's code would, using
`--url`/`LIVEKIT_URL` and `--api-key`/`--api-secret` (or `LIVEKIT_API_KEY`/`LIVEKIT_API_SECRET`).
"""

from sipbridge.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
