"""The pages' web stack: a small ASGI application, served by uvicorn from a thread.

Design note
-----------
Operations: `WebApp(routes, static)` is the ASGI application: exact paths (`Route`), each
with the methods it answers and the query parameters it takes (a parser per name that
raises ValueError with the message for the 400); `static`, a fixed set of files read once
at start, so no part of a request ever reaches the file system; a handler answers a
`Response` or a `Stream` of server-sent events (`sse`). `Broadcaster` carries events
from any thread (the MQTT client's) to the streams on the server's event loop.
`WebServer(app, host, port).start()` binds at once (a port in use is the caller's error,
not a log line in a thread), serves from a thread of its own; `stop()` ends the streams,
then the server.
Goals: pages that only read; every bad path, method or parameter answered with a 4xx
and one line saying why, never a traceback (a bug is a logged 500 with no detail);
requests that change anything (the gateway's identify, and its login form) only from
the same origin, with the app's token (`csrf_refusal`); an app may guard its routes (the
gateway page's login and Host check: `guard`); headers that keep the pages
out of frames and other sites' scripts (`SECURITY_HEADERS`); bounded memory per client
(a stream that falls `Broadcaster.backlog` events behind is closed: its browser
reconnects and gets a fresh snapshot).
Plan: uvicorn with h11 (pure Python), no lifespan, no WebSocket, no access log, its own
logging config off (the process's stays as it is); a cap on connections and a keep-alive
timeout; request heads limited by h11 to 16 KiB, bodies here to `MAX_BODY`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import inspect
import ipaddress
import json
import logging
import secrets
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

__all__ = ["Broadcaster", "HTTPError", "Request", "Response", "Route", "Stream", "WebApp",
           "WebServer", "csrf_refusal", "host_refusal", "sse"]

log = logging.getLogger(__name__)

MAX_BODY = 16 * 1024  # bytes of a request body (an identify request is a few dozen)
MAX_PARAMS = 16
SAFE_METHODS = ("GET", "HEAD")
TOKEN_HEADER = "x-hallgate-token"
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml",
                 ".png": "image/png", ".json": "application/json"}
# Scripts, styles and connections from this server only (no inline script: the pages
# keep theirs in files), never framed, no referrer, no type sniffing.
SECURITY_HEADERS = (
    ("content-security-policy", "default-src 'self'; script-src 'self'; style-src 'self'; "
                                "img-src 'self' data:; connect-src 'self'; "
                                "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "no-referrer"),
)


class HTTPError(Exception):
    """Raised by a handler (or a parameter's parser via ValueError): the status and a
    line for the person or program that asked (and headers, e.g. a redirect's location)."""

    def __init__(self, status: int, message: str,
                 headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, Any]  # parsed by the route's `params`
    headers: dict[str, str]  # names in lower case; a repeated header: the last one
    body: bytes = b""
    client: str | None = None


@dataclass(frozen=True)
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()
    cache: str = "no-cache"  # revalidate: a restarted server's new files are seen

    @classmethod
    def text(cls, text: str, status: int = 200) -> Response:
        return cls(status, text.encode() + b"\n")

    @classmethod
    def json(cls, obj: Any, status: int = 200) -> Response:
        return cls(status, json.dumps(obj, separators=(",", ":")).encode(),
                   "application/json", cache="no-store")


@dataclass
class Stream:
    """An answer of server-sent events: `events` yields whole events (`sse`); it ends
    when the client goes, the server stops, or the iterator ends."""

    events: AsyncIterator[bytes]


def sse(event: str | None, data: Any, *, retry_ms: int | None = None) -> bytes:
    """One server-sent event, `data` as JSON on one line.

    >>> sse("call", {"ticket": "A017"}, retry_ms=2000)
    b'retry: 2000\\nevent: call\\ndata: {"ticket":"A017"}\\n\\n'
    """
    lines = [] if retry_ms is None else [f"retry: {retry_ms}"]
    if event is not None:
        lines.append(f"event: {event}")
    lines.append("data: " + json.dumps(data, separators=(",", ":"), ensure_ascii=False))
    return ("\n".join(lines) + "\n\n").encode()


Handler = Callable[[Request], "Response | Stream | Awaitable[Response | Stream]"]


@dataclass(frozen=True)
class Route:
    path: str
    handler: Handler
    methods: tuple[str, ...] = ("GET",)  # HEAD is answered wherever GET is
    params: Mapping[str, Callable[[str], Any]] = field(default_factory=dict)
    # Passed without the app's `guard` (a login form, for one).
    public: bool = False
    # An unsafe request needs the token header besides the same origin (csrf_refusal);
    # False only for a plain HTML form (a login), which cannot send headers.
    token: bool = True


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def host_refusal(req: Request, hosts: frozenset[str]) -> str | None:
    """Why the request's Host is not this server's (None: it is): an IP address or one of
    `hosts`, so a page of another site whose name was made to point here (DNS rebinding)
    is not answered."""
    host = req.headers.get("host", "")
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    if not (_is_ip(name) or name.lower() in hosts):
        return f"host {host[:100]!r} is not this server's: use its address or {sorted(hosts)}"
    return None


def csrf_refusal(req: Request, token: str, hosts: frozenset[str],
                 need_token: bool = True) -> str | None:
    """Why an unsafe request is refused (None: allowed). Three checks, each enough alone
    against a plain cross-site form or fetch, together also against DNS rebinding:
    the Host is this machine by an IP address or a known name (`hosts`); the browser says
    the request comes from this origin (Sec-Fetch-Site, else Origin = this host); and
    the request carries the app's token in a header (a cross-site page cannot set one
    without a CORS preflight, which is refused, nor read the token from our pages).
    Without `need_token` (a login form), the first two: and then the Origin must be there
    (or Sec-Fetch-Site), so a client that says neither is refused."""
    why = host_refusal(req, hosts)
    if why is not None:
        return why
    host = req.headers.get("host", "")
    site = req.headers.get("sec-fetch-site")
    origin = req.headers.get("origin")
    if site is not None and site != "same-origin":
        return f"a cross-site request (Sec-Fetch-Site: {site})"
    # Under our Referrer-Policy no-referrer, a browser sends "Origin: null" with a POST
    # (the Fetch standard's rule for a same-origin request, a form's or fetch()'s); then
    # its Sec-Fetch-Site, which a page cannot set, says where it comes from.
    if origin is not None and origin not in (f"http://{host}", f"https://{host}") and not (
            origin == "null" and site == "same-origin"):
        return f"a request from another origin ({origin[:100]})"
    if not need_token:
        return None if site is not None or origin is not None else (
            "no Origin header: send it from this server's page")
    if not hmac.compare_digest(req.headers.get(TOKEN_HEADER, "").encode("latin-1"),
                               token.encode()):
        return f"no valid {TOKEN_HEADER} header (the page's token)"
    return None


class Broadcaster:
    """Events from any thread to the streams subscribed to a channel, on the server's
    loop. Each stream has a queue of at most `backlog` events; one that falls further
    behind (a stalled TV, a dead link) is closed: its browser reconnects and starts over
    from a snapshot, so memory stays bounded whatever the clients do."""

    _CLOSE = b""

    def __init__(self, backlog: int = 64, heartbeat_s: float = 10.0) -> None:
        self.backlog = backlog
        self.heartbeat_s = heartbeat_s
        self.loop: asyncio.AbstractEventLoop | None = None
        self._queues: dict[str, set[asyncio.Queue]] = {}

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def publish(self, channel: str, event: bytes) -> None:
        """From any thread; dropped while no server runs."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._put, channel, event)

    def _put(self, channel: str, event: bytes) -> None:
        for q in list(self._queues.get(channel, ())):
            try:
                q.put_nowait(event)
            except asyncio.QueueFull:
                while not q.empty():
                    q.get_nowait()
                q.put_nowait(self._CLOSE)
                self._queues[channel].discard(q)

    def clients(self, channel: str) -> int:
        return len(self._queues.get(channel, ()))

    async def subscribe(self, channel: str, first: Callable[[], bytes]) -> AsyncIterator[bytes]:
        """The stream of `channel`: `first()` (taken after subscribing, so nothing falls
        between it and the events), then each event, a ``ping`` after `heartbeat_s` of
        silence (the page's watchdog hears the server is alive)."""
        q: asyncio.Queue = asyncio.Queue(self.backlog)
        self._queues.setdefault(channel, set()).add(q)
        try:
            yield first()
            while True:
                try:
                    event = await asyncio.wait_for(q.get(), self.heartbeat_s)
                except TimeoutError:
                    event = sse("ping", {})
                if event is self._CLOSE:
                    return
                yield event
        finally:
            self._queues.get(channel, set()).discard(q)


class WebApp:
    """The ASGI application: `routes` by exact path, `static` files served under
    ``/static/NAME`` (name -> file, read now), `on_start` coroutines run on the server's
    loop (e.g. a task that pushes snapshots), `hosts`: names of this machine accepted on
    unsafe requests besides IP addresses (`csrf_refusal`). `guard(req)`, if given, is
    asked first for every route that is not `public` (before its parameters and body are
    read): it raises HTTPError to refuse (a login needed, a foreign Host)."""

    def __init__(self, routes: list[Route], static: Mapping[str, Path] = {}, *,
                 on_start: list[Callable[[], Awaitable[None]]] | None = None,
                 hosts: tuple[str, ...] = (),
                 guard: Callable[[Request], None] | None = None) -> None:
        self.routes = {r.path: r for r in routes}
        self.files: dict[str, tuple[bytes, str]] = {}
        for name, path in static.items():
            ctype = CONTENT_TYPES.get(Path(name).suffix, "application/octet-stream")
            self.files[f"/static/{name}"] = (Path(path).read_bytes(), ctype)
        self.broadcaster = Broadcaster()
        self.on_start = list(on_start or ())
        # Unsafe requests carry it (csrf_refusal); a page that makes one gets it from a
        # same-origin route of its own (none of the hall's pages does).
        self.token = secrets.token_urlsafe(24)
        me = socket.gethostname().lower()
        self.hosts = frozenset({"localhost", me, f"{me}.local", *(h.lower() for h in hosts)})
        self.guard = guard
        self.closing: asyncio.Event | None = None
        self._tasks: list[asyncio.Task] = []

    async def started(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the server's loop, before it accepts connections."""
        self.closing = asyncio.Event()
        self.broadcaster.attach(loop)
        self._tasks = [asyncio.create_task(start()) for start in self.on_start]

    def close(self) -> None:
        """On the server's loop: streams end, background tasks stop."""
        if self.closing is not None:
            self.closing.set()
        for task in self._tasks:
            task.cancel()

    # -- ASGI -----------------------------------------------------------------------------

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":  # no lifespan, no WebSocket (uvicorn is told so)
            return
        started = False

        async def tracked(message: dict) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            await self._http(scope, receive, tracked)
        except Exception:
            log.exception("web: %s %s", scope.get("method"), scope.get("path"))
            if not started:  # a bug: said in the log, not to the client
                await self._send(tracked, Response.text("internal error", 500))

    async def _http(self, scope: dict, receive: Callable, send: Callable) -> None:
        method, path = scope["method"], scope["path"]
        try:
            req, route = await self._request(scope, receive)
            answer = route.handler(req) if route is not None else self._file(path)
            if inspect.isawaitable(answer):
                answer = await answer
        except HTTPError as e:
            answer = Response.text(e.message, e.status)
            headers = e.headers
            if e.status == 405:
                headers = (*headers, ("allow", self._allowed(path)))
            if headers:
                answer = Response(e.status, answer.body, headers=headers)
        if isinstance(answer, Stream) and method == "HEAD":  # the head, not a stream
            closer = getattr(answer.events, "aclose", None)
            if closer is not None:
                await closer()
            answer = Response(200, b"", "text/event-stream; charset=utf-8", cache="no-store")
        if isinstance(answer, Stream):
            await self._stream(answer, receive, send)
        else:
            await self._send(send, answer, head=method == "HEAD")

    def _allowed(self, path: str) -> str:
        route = self.routes.get(path)
        methods = route.methods if route is not None else ("GET",)
        return ", ".join(sorted({*methods, *(("HEAD",) if "GET" in methods else ())}))

    async def _request(self, scope: dict, receive: Callable) -> tuple[Request, Route | None]:
        method, path = scope["method"], scope["path"]
        route = self.routes.get(path)
        if route is None and path not in self.files:
            raise HTTPError(404, f"not found: {path[:200]}")
        methods = route.methods if route is not None else ("GET",)
        if not (method in methods or (method == "HEAD" and "GET" in methods)):
            raise HTTPError(405, f"{method} is not allowed here: {self._allowed(path)}")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        client = scope.get("client")
        client = f"{client[0]}:{client[1]}" if client else None
        if self.guard is not None and route is not None and not route.public:
            self.guard(Request(method, path, {}, headers, b"", client))
        query = self._query(scope.get("query_string", b""),
                            route.params if route is not None else {})
        body = b""
        if method not in SAFE_METHODS:
            body = await self._body(receive)
        req = Request(method, path, query, headers, body, client)
        if method not in SAFE_METHODS:
            why = csrf_refusal(req, self.token, self.hosts,
                               need_token=route is None or route.token)
            if why is not None:
                log.warning("web: refused %s %s from %s: %s", method, path, req.client, why)
                raise HTTPError(403, f"refused: {why}")
        return req, route

    @staticmethod
    def _query(raw: bytes, params: Mapping[str, Callable[[str], Any]]) -> dict[str, Any]:
        try:
            pairs = parse_qsl(raw.decode("ascii"), keep_blank_values=True, strict_parsing=True,
                              errors="strict", max_num_fields=MAX_PARAMS) if raw else []
        except ValueError as e:  # not ASCII, not name=value, not UTF-8 once decoded, too many
            raise HTTPError(400, f"bad query string: {e}") from None
        out: dict[str, Any] = {}
        for name, value in pairs:
            if name not in params:
                known = ", ".join(sorted(params)) or "none"
                raise HTTPError(400, f"unknown parameter {name[:40]!r} (known: {known})")
            if name in out:
                raise HTTPError(400, f"parameter {name!r} given twice")
            try:
                out[name] = params[name](value)
            except ValueError as e:
                raise HTTPError(400, f"{name}: {e}") from None
        return out

    @staticmethod
    async def _body(receive: Callable) -> bytes:
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise HTTPError(400, "the client went away")
            body += message.get("body", b"")
            if len(body) > MAX_BODY:
                raise HTTPError(413, f"the body is over {MAX_BODY} bytes")
            if not message.get("more_body"):
                return bytes(body)

    def _file(self, path: str) -> Response:
        body, ctype = self.files[path]
        return Response(200, body, ctype)

    async def _send(self, send: Callable, r: Response, head: bool = False) -> None:
        headers = [(b"content-type", r.content_type.encode()),
                   (b"content-length", str(len(r.body)).encode()),
                   (b"cache-control", r.cache.encode())]
        headers += [(k.encode(), v.encode()) for k, v in (*SECURITY_HEADERS, *r.headers)]
        await send({"type": "http.response.start", "status": r.status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if head else r.body})

    async def _stream(self, stream: Stream, receive: Callable, send: Callable) -> None:
        headers = [(b"content-type", b"text/event-stream; charset=utf-8"),
                   (b"cache-control", b"no-store"), (b"x-accel-buffering", b"no")]
        headers += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS]
        await send({"type": "http.response.start", "status": 200, "headers": headers})

        async def pump() -> None:
            async for event in stream.events:
                await send({"type": "http.response.body", "body": event, "more_body": True})

        async def gone() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        assert self.closing is not None
        tasks = [asyncio.create_task(pump()), asyncio.create_task(gone()),
                 asyncio.create_task(self.closing.wait())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            closer = getattr(stream.events, "aclose", None)
            if closer is not None:
                await closer()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class WebServer:
    """`app` served by uvicorn on `host`:`port` (0: a free port; `.port` says which) from
    a thread of its own. The socket is bound here, so a port in use raises OSError now."""

    def __init__(self, app: WebApp, host: str, port: int, *, max_connections: int = 64,
                 name: str = "hallgate-web") -> None:
        self.app = app
        self.host = host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        self.sock = sock
        self.port = sock.getsockname()[1]
        self.max_connections = max_connections
        self.name = name
        self._server: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        shown = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(self.host, self.host)
        if ":" in shown and not shown.startswith("["):
            shown = f"[{shown}]"
        return f"http://{shown}:{self.port}"

    def start(self, timeout: float = 10.0) -> WebServer:
        import uvicorn  # here: the stack is loaded only when a page is served

        for name in ("uvicorn", "uvicorn.error"):  # its start/stop lines are ours to say
            if logging.getLogger(name).level == logging.NOTSET:
                logging.getLogger(name).setLevel(logging.WARNING)
        config = uvicorn.Config(
            self.app, lifespan="off", log_config=None, access_log=False, loop="asyncio",
            http="h11", ws="none", interface="asgi3", proxy_headers=False,
            server_header=False, limit_concurrency=self.max_connections,
            timeout_keep_alive=5, timeout_graceful_shutdown=2,
            h11_max_incomplete_event_size=16 * 1024)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            raise RuntimeError(f"the web server on {self.url} did not start: {self._error}")
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:  # said to start(), or logged when it had returned
            self._error = e
            if self._ready.is_set():
                log.exception("web: the server on %s stopped", self.url)
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.app.started(self._loop)
        serving = asyncio.create_task(self._server.serve(sockets=[self.sock]))
        while not self._server.started and not serving.done():
            await asyncio.sleep(0.01)
        self._ready.set()
        await serving

    def stop(self, timeout: float = 5.0) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self.app.close)
        if self._server is not None:
            self._server.should_exit = True
        if thread is not None:
            thread.join(timeout)
        self.sock.close()
        self._thread = None

    def __enter__(self) -> WebServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
