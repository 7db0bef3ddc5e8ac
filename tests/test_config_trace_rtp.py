"""--trace-rtp / `trace_rtp:` (config.py): the trunks whose calls' RTP headers are traced."""

from __future__ import annotations

from pathlib import Path

from sipbridge.cli import build_parser
from sipbridge.config import build_settings


def test_trace_rtp_from_flags_file_or_neither(tmp_path: Path) -> None:
    assert build_settings(dev=True, environ={}).trace_rtp == ()
    flags = build_parser().parse_args(["serve", "--dev", "--trace-rtp", "ST_a", "ST_b"])
    assert build_settings(dev=True, trace_rtp=flags.trace_rtp, environ={}).trace_rtp == (
        "ST_a",
        "ST_b",
    )
    config = tmp_path / "sipbridge.yaml"
    config.write_text("trace_rtp: all\n")
    assert build_settings(dev=True, config_file=str(config), environ={}).trace_rtp == ("all",)
    config.write_text("trace_rtp: [ST_c, ' ']\n")
    settings = build_settings(dev=True, config_file=str(config), trace_rtp=["ST_d"], environ={})
    assert settings.trace_rtp == ("ST_d",)  # the flag wins
    assert build_settings(dev=True, config_file=str(config), environ={}).trace_rtp == ("ST_c",)
