"""The webhook sender at a node's stop (`server/api/webhooks.py` `WebhookNotifier.stop`): the
events queued go out while the receiver takes them, even past one drain window; a receiver that
takes none holds the stop for one window only. Real HTTP on loopback (aiohttp)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from aiohttp import web

from sipbridge.server.api.webhooks import WebhookNotifier

Handler = Callable[[web.Request], Awaitable[web.Response]]


@asynccontextmanager
async def receiver(handle: Handler) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    finally:
        await runner.cleanup()


async def test_a_slow_receiver_gets_every_queued_event_at_stop() -> None:
    got: list[bytes] = []

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.05)  # a busy receiver: 12 events take longer than one window
        got.append(await request.read())
        return web.Response()

    async with receiver(slow) as url:
        notifier = WebhookNotifier([url], "key", "secret-long-enough-for-hs256-0123456789abcdef")
        await notifier.start()
        for n in range(12):
            notifier.notify(f"room_finished_{n}")
        await notifier.stop(drain_s=0.2)
    assert len(got) == 12
    assert notifier.stats["delivered"] == 12 and notifier.stats["unsent"] == 0


async def test_a_hung_receiver_holds_the_stop_for_one_window() -> None:
    release = asyncio.Event()

    async def hang(_: web.Request) -> web.Response:
        await release.wait()
        return web.Response()

    async with receiver(hang) as url:
        notifier = WebhookNotifier([url], "key", "secret-long-enough-for-hs256-0123456789abcdef")
        await notifier.start()
        for n in range(3):
            notifier.notify(f"room_finished_{n}")
        loop = asyncio.get_running_loop()
        started = loop.time()
        await notifier.stop(drain_s=0.2, limit_s=30.0)
        assert loop.time() - started < 5.0  # one window and the cancel, not the limit
        release.set()
    assert notifier.stats["delivered"] == 0 and notifier.stats["unsent"] == 3
