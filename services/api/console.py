"""The web console: static files shipped in the package (``console/``), served at ``/`` by the API service.

No build step: plain HTML, CSS and JavaScript modules, charts drawn as SVG by ``charts.js``. The files hold no data;
the page reads the API with the bearer token the user gives it, so they are public.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC = Path(__file__).with_name("console")
_TYPES = {".html": "text/html", ".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}


def add_routes(app: web.Application) -> None:
    files = {p.name: p for p in STATIC.iterdir() if p.suffix in _TYPES}

    async def index(_request: web.Request) -> web.Response:
        return _file(files["index.html"])

    async def asset(request: web.Request) -> web.Response:
        path = files.get(request.match_info["name"])
        if path is None:
            raise web.HTTPNotFound()
        return _file(path)

    app.router.add_get("/", index)
    app.router.add_get("/console/{name}", asset)


def _file(path: Path) -> web.Response:
    resp = web.Response(body=path.read_bytes(), content_type=_TYPES[path.suffix], charset="utf-8")
    resp.headers["Cache-Control"] = "no-cache"
    resp.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
        "connect-src 'self'"
    )
    return resp
