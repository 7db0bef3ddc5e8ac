"""What the client commands print: tables (or JSON) of records, and where they find the server."""

from __future__ import annotations

import argparse
import os
import warnings
from collections.abc import Sequence
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message

from sipbridge.config import DEV_KEY, DEV_SECRET

# -- tables ----------------------------------------------------------------------------------

TABLE_COLUMNS = {
    "trunk": ["kind", "sip_trunk_id", "name", "numbers", "address", "allowed_addresses"],
    "rule": ["sip_dispatch_rule_id", "name", "rule", "trunk_ids", "inbound_numbers", "numbers"],
    "room": ["sid", "name", "num_participants", "creation_time", "metadata"],
    "participant": ["sid", "identity", "name", "kind", "state", "attributes"],
    "node": ["id", "state", "calls", "rooms", "cpu", "age", "sip", "http"],
    "call": [
        "call_id",
        "call_direction",
        "call_status",
        "from",
        "to",
        "room_name",
        "participant_identity",
        "status_code",
        "created",
    ],
}


def as_dict(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return out


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(_cell(v) for v in value)
    if isinstance(value, dict):
        return " ".join(f"{k}={_cell(v)}" for k, v in value.items())
    return str(value)


def render_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[_cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(line.rstrip() for line in lines)


def server_credentials(a: argparse.Namespace) -> tuple[str, str, str]:
    """The server's URL and the API key and secret to sign with: the flags, else LiveKit's
    environment variables, else the development server's. pyjwt's warning about a short key is
    kept for a secret of the user's, not for the development one everybody knows anyway."""
    url = a.url or os.environ.get("LIVEKIT_URL") or "http://127.0.0.1:7880"
    key = a.api_key or os.environ.get("LIVEKIT_API_KEY") or DEV_KEY
    secret = a.api_secret or os.environ.get("LIVEKIT_API_SECRET") or DEV_SECRET
    if secret == DEV_SECRET:
        from jwt.warnings import InsecureKeyLengthWarning  # noqa: PLC0415

        warnings.filterwarnings("ignore", category=InsecureKeyLengthWarning)
    return url, key, secret
