"""The viewer's web server (aiohttp): the page, its files and a WebSocket per open page.

aiohttp because it serves files, HTTP and WebSockets from one asyncio loop with no other dependency, and
is well kept. The loop runs in the thread that calls :func:`serve`; the bus is followed in a thread of its
own (:mod:`.follower`, or :class:`.offline.RecordingSource` for a recording), which hands every message to
:meth:`Pages.publish`; that hops onto the loop (``call_soon_threadsafe``) and queues it for each page. A page
that cannot keep up loses frames (counted, and the page is told), never the others' or the bus thread's time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web

from .core import Access, is_loopback

log = logging.getLogger("mushu.viewer")

STATIC = Path(__file__).with_name("static")
COOKIE = "mushu_viewer_token"
#: Messages queued for one page before it loses frames.
PAGE_QUEUE = 400
#: Largest message a page may send (a command).
MAX_COMMAND_BYTES = 4096


class Pages:
    """The open pages and what goes to each."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queues: set[asyncio.Queue] = set()
        self.sockets: set = set()

    async def close(self):
        """Tell every open page that the viewer goes (it reconnects to the next one)."""
        for ws in list(self.sockets):
            await ws.close(code=1001, message=b"the viewer stops")

    def publish(self, message):
        """From any thread: ``message`` (bytes: a frame; dict: JSON) for every open page."""
        self.loop.call_soon_threadsafe(self._broadcast, message)

    def _broadcast(self, message):
        text = message if isinstance(message, bytes) else json.dumps(message)
        for q in self.queues:
            try:
                q.put_nowait(text)
            except asyncio.QueueFull:
                q.dropped += 1


def make_app(source, access: Access, bind_host: str) -> web.Application:
    """The application: ``/`` (the page), ``/static/...``, ``/ws`` (the page's WebSocket)."""
    app = web.Application(client_max_size=MAX_COMMAND_BYTES)
    loopback_only = is_loopback(bind_host)

    def role_of(request: web.Request) -> str | None:
        token = request.query.get("token") or request.cookies.get(COOKIE)
        return access.role(token, loopback_only and is_loopback(request.remote))

    async def page(request: web.Request):
        role = role_of(request)
        if role is None:
            return web.Response(status=401, text="mushu viewer: open the URL with ?token= that `mushu view` printed "
                                "(a viewer's or a controller's)\n")
        response = web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})
        token = request.query.get("token")
        if token:
            response.set_cookie(COOKIE, token, httponly=True, samesite="Strict")
        return response

    async def socket(request: web.Request):
        role = role_of(request)
        origin = request.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc != request.host:  # another site's page: refused
            return web.Response(status=403, text=f"mushu viewer: WebSocket from another origin ({origin}) refused\n")
        if role is None:
            return web.Response(status=401, text="mushu viewer: no valid token\n")
        # no permessage-deflate: float samples hardly compress, and zlib would cost the most CPU of all
        ws = web.WebSocketResponse(heartbeat=10.0, max_msg_size=MAX_COMMAND_BYTES, compress=False)
        await ws.prepare(request)
        pages: Pages = app["pages"]
        q: asyncio.Queue = asyncio.Queue(PAGE_QUEUE)
        q.dropped = 0
        await ws.send_json({"type": "hello", "role": role, "mode": source.mode})
        for message in source.snapshot():
            await (ws.send_bytes(message) if isinstance(message, bytes) else ws.send_json(message))
        pages.queues.add(q)
        pages.sockets.add(ws)
        sender = asyncio.ensure_future(_send(ws, q))
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    await ws.send_json({"type": "error", "text": "the viewer takes JSON text commands only"})
                    continue
                await _command(ws, source, role, msg.data)
        finally:
            pages.queues.discard(q)
            pages.sockets.discard(ws)
            sender.cancel()
        return ws

    app.router.add_get("/", page)
    app.router.add_get("/ws", socket)
    app.router.add_get("/favicon.ico", lambda request: _no_icon())
    app.router.add_static("/static/", STATIC, show_index=False)
    return app


async def _no_icon():
    return web.Response(status=204)


async def _send(ws: web.WebSocketResponse, q: asyncio.Queue):
    told = 0
    while not ws.closed:
        message = await q.get()
        if q.dropped != told:  # frames this page did not get: it draws a gap there
            told = q.dropped
            await ws.send_json({"type": "error", "text": f"this page fell behind: {told} messages not sent to it"})
        await (ws.send_bytes(message) if isinstance(message, bytes) else ws.send_str(message))


#: Page commands -> (what the role needs, the source's command, its arguments).
COMMANDS = {"record": ("record", "record", ("name",)), "stop_recording": ("record", "stop_recording", ()),
            "marker": ("marker", "marker", ("label",)), "window": ("look", "window", ("start", "n"))}


async def _command(ws, source, role: str, text: str):
    try:
        request = json.loads(text)
        kind = request["type"]
        need, command, names = COMMANDS[kind]
    except (ValueError, KeyError, TypeError):
        await ws.send_json({"type": "error", "text": f"not a viewer command: {text[:80]!r}; commands are "
                            + ", ".join(COMMANDS)})
        return
    reply = {"type": "reply", "id": request.get("id"), "command": kind}
    if not Access.may(role, need):
        log.warning("a %s page asked to %s: refused", role, kind)
        await ws.send_json({**reply, "ok": False, "error": f"a {role} may not {kind.replace('_', ' ')}; open the "
                            "controller's URL that `mushu view` printed"})
        return
    try:
        result = await asyncio.wrap_future(source.call(command, **{n: request.get(n) for n in names}))
    except Exception as exc:  # what the service said, for the page to show
        await ws.send_json({**reply, "ok": False, "error": f"{type(exc).__name__}: {exc}"})
        return
    if isinstance(result, bytes):  # a window of a recording
        await ws.send_bytes(result)
        result = {}
    await ws.send_json({**reply, "ok": True, **result})


class Viewer:
    """The viewer as a service: ``run()`` serves until ``shutdown()`` (process.serve's contract).

    Parameters
    ----------
    source : BusThread or RecordingSource
        What the pages show; its ``run()`` goes in a thread of its own.
    access : Access
        The tokens of the roles.
    host, port : str, int
        Where to listen (port 0: any free port; :attr:`port` says which once :attr:`ready` is set).
    """

    def __init__(self, source, access: Access, host: str, port: int):
        self.source, self.access, self.host, self.port = source, access, host, port
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()

    def urls(self) -> dict[str, str]:
        """Each role's URL of the page."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return {role: f"http://{host}:{self.port}/?token={token}" for role, token in self.access.tokens.items()}

    def run(self):
        loop = self.loop
        asyncio.set_event_loop(loop)
        app = make_app(self.source, self.access, self.host)
        app["pages"] = pages = Pages(loop)
        self.source.publish = pages.publish
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, self.host, self.port)
        loop.run_until_complete(site.start())
        self.port = runner.addresses[0][1]
        follower = threading.Thread(target=self._follow, name="mushu-viewer-bus", daemon=True)
        follower.start()
        self.ready.set()
        try:
            loop.run_forever()
        finally:
            self.source.shutdown()
            follower.join(5.0)
            loop.run_until_complete(pages.close())
            loop.run_until_complete(runner.cleanup())
            loop.close()

    def _follow(self):
        try:
            self.source.run()
        except Exception:  # the pages would show a stream that stands still: stop, and say why
            log.exception("the viewer's bus thread failed; the viewer stops")
            self.shutdown()

    def shutdown(self):
        """Make :meth:`run` return (from a signal handler or another thread)."""
        self.loop.call_soon_threadsafe(self.loop.stop)
