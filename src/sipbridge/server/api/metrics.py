"""`GET /metrics`: counters in the Prometheus text format (bad input is counted, too)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web

Sample = tuple[str, dict[str, str], float]


def render(samples: Iterable[Sample]) -> str:
    lines = []
    for name, labels, value in samples:
        if labels:
            inner = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
            lines.append(f"{name}{{{inner}}} {value:g}")
        else:
            lines.append(f"{name} {value:g}")
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def handler(
    collect: Callable[[], Iterable[Sample]],
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=render(collect()), content_type="text/plain")

    return metrics
