"""The web console's files at `/console`: what `console/` (TypeScript, Vite) builds into
CONSOLE_DIST (`make console`, which `make serve` and `make test` run when its sources changed).

The files are looked up at each request, so a build while the server runs is served at once.
When nothing is built, `/console` answers 503 with a page that says how to build it. Only files
the build wrote are served (names listed from the directory, never joined from the URL); the
page gets a Content-Security-Policy that allows scripts and connections to this server only
(`ws:`/`wss:` for livekit-client's signalling).
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

CONSOLE_DIST = Path(__file__).parent / "console_dist"
TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
    ".map": "application/json",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; connect-src 'self' ws: wss:; "
        "img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
        "media-src 'self' blob: mediastream:; "
        "worker-src 'self' blob:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

NOT_BUILT = """<!doctype html>
<html lang="en"><meta charset="utf-8"><title>sipbridge console: not built</title>
<body style="font-family: sans-serif; max-width: 40em; margin: 3em auto; line-height: 1.5">
<h1>The console is not built</h1>
<p>This server serves the web console from <code>{dist}</code>, which has no
<code>index.html</code>. Build it from the source checkout (needs Node.js 20 and npm):</p>
<pre>make console        # or: cd console &amp;&amp; npm ci &amp;&amp; npm run build</pre>
<p><code>make serve</code> builds it too. Then reload this page.</p>
</body></html>
"""


class ConsoleFiles:
    def __init__(self, dist: Path = CONSOLE_DIST) -> None:
        self.dist = dist

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/console", self.index)
        app.router.add_get("/console/", self.index)
        app.router.add_get("/console/assets/{name}", self.asset)

    async def index(self, _: web.Request) -> web.Response:
        index = self.dist / "index.html"
        if not index.is_file():
            return web.Response(
                status=503,
                text=NOT_BUILT.format(dist=self.dist),
                content_type="text/html",
                headers={"Cache-Control": "no-store"},
            )
        return web.Response(
            body=index.read_bytes(),
            content_type="text/html",
            headers={"Cache-Control": "no-cache", **SECURITY_HEADERS},
        )

    async def asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        assets = self.dist / "assets"
        built = {p.name: p for p in assets.iterdir()} if assets.is_dir() else {}
        path = built.get(name)
        if path is None or not path.is_file():
            return web.Response(status=404, text="no such file\n")
        return web.Response(
            body=path.read_bytes(),
            content_type=TYPES.get(path.suffix, "application/octet-stream"),
            # Vite puts a hash of the content in each asset's name
            headers={"Cache-Control": "public, max-age=31536000, immutable", **SECURITY_HEADERS},
        )
