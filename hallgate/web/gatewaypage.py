"""The gateway's technician page, served by the daemon itself (``[http] listen``).

Design note
-----------
Operations: the daemon (gateway/daemon.py) makes a `GatewayPage(gateway, host, port,
token)` only when its config has ``[http] listen``: nothing of this package is imported
otherwise. From then on the page keeps the last errors the gateway reports (`ErrorRing`);
`start()` binds and serves (hallgate/web/asgi.py) from a thread of its own, `stop()` ends
it, before the daemon closes its outbox.

========================  ======================================================
``/``                     the page (hallgate/web/static/gateway.*)
``/api/gateway``          its figures as JSON (`GatewayPage.snapshot`)
``/api/gateway/events``   server-sent events: ``state`` (the figures, at connect and
                          every `PUSH_S` while anyone watches), ``ping``
``/api/identify``         POST ``{"bus", "address", "seconds"}``: the device shows itself
                          (a display flashes, a panel beeps), as `hallgate identify`
``/login``                only with a token: the form (GET), its check (POST)
``/static/NAME``          the page's scripts and styles
========================  ======================================================

Where the figures come from: the daemon, in its own process: `Gateway.status()` (what
`hallgate status` shows: the broker link, the outbox, the devices online),
`Gateway.device_rows()` (what `hallgate devices` shows), each bus master's counters
(`hallgate bus stats`), the updates running and those ended in the last hour (`hallgate
ota --status`), and the last errors the gateway reported on its errors topic. They are
read in a worker thread, never on the server's loop: a bus master's lock is held while
an event goes into the outbox.

Safety: the page only reads, but for identify: a device blinks or beeps for some seconds,
the queue is not touched. Identify is a POST from the page itself (the same origin, this
host, the page's token in a header: asgi.csrf_refusal), one at a time, waited for at most
as long as `hallgate identify` waits (the technician's own handler runs it). Every
request must name this machine in its Host (an IP address or its host name): a page of
another site whose name was pointed at 127.0.0.1 (DNS rebinding) gets a 403, so a
loopback page without a token is not readable from the technician's other tabs. With a
token (the config requires one off loopback), every route but the login form and the
static files needs the session cookie, HMAC(token, gateway id): HttpOnly,
SameSite=Strict, for `SESSION_S`; a new token ends every session; a wrong token is
answered after `LOGIN_DELAY_S`.
Cost: +4.6 MB resident with a browser watching (x86-64, 32 bus devices: bench/footprint.py
measures the daemon with the page on beside off, against the 50 MB a gateway on a Pi must
stay under); a push a second, a few hundred bytes per device, to each open page.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import threading
import time
from collections import deque
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from hallgate.gateway.commands import utc_ts
from hallgate.gateway.control import ControlError
from hallgate.gateway.technician import Technician
from hallgate.protocols import bus

from .asgi import (
    SAFE_METHODS,
    HTTPError,
    Request,
    Response,
    Route,
    Stream,
    WebApp,
    WebServer,
    host_refusal,
)

__all__ = ["ErrorRing", "GatewayPage", "device_errors"]

log = logging.getLogger(__name__)

STATIC = Path(str(files("hallgate.web") / "static"))
ASSETS = ("pages.css", "gateway.css", "live.js", "gateway.js", "icon.svg")
PUSH_S = 1.0  # the figures to the open pages, this often
RETRY_MS = 2000  # the browser's wait before it reconnects a stream
ERRORS_KEPT = 20  # the last errors shown; a repeat of the newest adds to its count
REASON_CHARS = 300
UPDATES_KEPT = 20  # update results read from the history for the last hour
IDENTIFY_S = 10  # as `hallgate identify`
COOKIE = "hallgate_page"
SESSION_S = 12 * 3600  # a working day; then the login form again
LOGIN_DELAY_S = 1.0


def device_errors(row: dict) -> int | None:
    """Every error counted for a device, as `hallgate devices` sums them: by it (CRC
    errors, queue overflows) and by the gateway (timeouts, garbled replies, CRC errors);
    None when neither is known.

    >>> device_errors({"device": {"crc_errors": 1, "overflows": 0},
    ...                "link": {"timeouts": 2, "garbled": 0, "crc_errors": 3}})
    6
    """
    d, ln = row.get("device"), row.get("link")
    if d is None and ln is None:
        return None
    return (sum((d or {}).get(k) or 0 for k in ("crc_errors", "overflows"))
            + sum((ln or {}).get(k) or 0 for k in ("timeouts", "garbled", "crc_errors")))


class ErrorRing:
    """The last `keep` errors the gateway reported on its errors topic, newest first; a
    repeat of the newest (same kind and reason) adds to its count instead of a line, so a
    burst cannot push the others out at once. Memory: `keep` short dicts.

    `attach(link)` makes it the MQTT link's `on_error`, told of every report (the
    daemon's and the link's own) before the link's rate limit, so the page counts what the
    topic sums up.

    >>> ring = ErrorRing(keep=2)
    >>> for kind in ("a", "b", "b", "c"):
    ...     ring.add(kind, "why", {"bus": "hall", "payload_size": 3, "x": [1]})
    >>> [(e["kind"], e["count"]) for e in ring.recent()], ring.total
    ([('c', 1), ('b', 2)], 4)
    >>> sorted(ring.recent()[0])
    ['at', 'bus', 'count', 'kind', 'payload_size', 'reason', 'ts']
    """

    def __init__(self, keep: int = ERRORS_KEPT) -> None:
        self._items: deque[dict] = deque(maxlen=keep)
        self._lock = threading.Lock()
        self.total = 0

    def attach(self, link: Any) -> None:
        link.on_error = self.add

    def add(self, kind: Any, reason: Any, extra: dict) -> None:
        try:
            self._add(kind, reason, extra)
        except Exception:  # the page's bookkeeping never stops a report
            log.exception("page: error ring")

    def _add(self, kind: Any, reason: Any, extra: dict) -> None:
        kind, reason = str(kind)[:60], str(reason)[:REASON_CHARS]
        now = time.time()
        with self._lock:
            self.total += 1
            last = self._items[-1] if self._items else None
            if last is not None and last["kind"] == kind and last["reason"] == reason:
                last["count"] += 1
                last["at"], last["ts"] = now, utc_ts(now)
                return
            item = {k: (v[:100] if isinstance(v, str) else v) for k, v in list(extra.items())[:6]
                    if isinstance(v, str | int | float | bool) or v is None}
            item.update(at=now, ts=utc_ts(now), kind=kind, reason=reason, count=1)
            self._items.append(item)

    def recent(self) -> list[dict]:
        with self._lock:
            return [dict(e) for e in reversed(self._items)]


def _page(name: str, **fill: str) -> bytes:
    """A page of static/, with each ``__NAME__`` replaced (values safe in HTML)."""
    body = (STATIC / name).read_text(encoding="utf-8")
    for k, v in fill.items():
        body = body.replace(f"__{k.upper()}__", v)
    return body.encode()


class GatewayPage:
    """The technician's page of `gateway` (a gateway.daemon.Gateway), on `host`:`port`;
    with `token`, behind a login."""

    def __init__(self, gateway: Any, host: str, port: int, *, token: str | None = None) -> None:
        self.gw = gateway
        self.host, self.port = host, port
        self.errors = ErrorRing()
        self.errors.attach(gateway.link)
        self.technician = Technician(gateway)
        self._identifying = threading.Lock()
        self._history_lock = threading.Lock()
        self._history_key: tuple | None = None
        self._history: list[dict] = []
        self.session = None if token is None else hmac.new(
            token.encode(), f"hallgate gateway page {gateway.site}/{gateway.name}".encode(),
            hashlib.sha256).hexdigest()
        self._token = token
        routes = [
            Route("/", self._answer_page),
            Route("/api/gateway", self._answer_snapshot),
            Route("/api/gateway/events", self._answer_events),
            Route("/api/identify", self._answer_identify, methods=("POST",)),
        ]
        if token is not None:
            routes.append(Route("/login", self._answer_login, methods=("GET", "POST"),
                                public=True, token=False))
        self.app = WebApp(routes, {name: STATIC / name for name in ASSETS},
                          on_start=[self._push], guard=self._guard)
        self._html = _page("gateway.html", token=self.app.token)
        if token is not None:
            login = _page("login.html")
            self._login_html = login
            self._wrong_html = login.replace(b' id="wrong" hidden', b' id="wrong"')
        self.server: WebServer | None = None

    @property
    def url(self) -> str:
        return self.server.url if self.server is not None else f"http://{self.host}:{self.port}"

    def start(self) -> GatewayPage:
        """Binds (OSError: the port is taken, or not ours to bind) and serves."""
        self.server = WebServer(self.app, self.host, self.port,
                                name=f"hallgate-page-{self.gw.name}").start()
        log.info("technician page on %s%s", self.server.url,
                 " (with a token)" if self.session else "")
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    # -- who may ask ------------------------------------------------------------------

    def _guard(self, req: Request) -> None:
        why = host_refusal(req, self.app.hosts)
        if why is not None:
            raise HTTPError(403, f"refused: {why}")
        if self.session is None or self._signed_in(req):
            return
        if req.path == "/" and req.method in SAFE_METHODS:
            raise HTTPError(303, "log in first: /login", (("location", "/login"),))
        raise HTTPError(401, "log in first: /login")

    def _signed_in(self, req: Request) -> bool:
        assert self.session is not None
        for part in req.headers.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE and hmac.compare_digest(value.encode("latin-1"),
                                                      self.session.encode()):
                return True
        return False

    async def _answer_login(self, req: Request) -> Response:
        why = host_refusal(req, self.app.hosts)
        if why is not None:
            raise HTTPError(403, f"refused: {why}")
        html = "text/html; charset=utf-8"
        if req.method != "POST":
            return Response(200, self._login_html, html)
        try:
            form = dict(parse_qsl(req.body.decode("utf-8"), keep_blank_values=True,
                                  strict_parsing=True, max_num_fields=4))
        except (UnicodeDecodeError, ValueError):
            raise HTTPError(400, "bad form: token=...") from None
        given = form.get("token", "")
        assert self._token is not None and self.session is not None
        if not hmac.compare_digest(given.encode("utf-8"), self._token.encode("utf-8")):
            log.warning("page: a wrong token from %s", req.client)
            await asyncio.sleep(LOGIN_DELAY_S)
            return Response(403, self._wrong_html, html)
        cookie = (f"{COOKIE}={self.session}; Path=/; Max-Age={SESSION_S}; HttpOnly; "
                  "SameSite=Strict")
        return Response(303, b"", headers=(("location", "/"), ("set-cookie", cookie)))

    # -- what it shows -----------------------------------------------------------------

    def _answer_page(self, req: Request) -> Response:
        return Response(200, self._html, "text/html; charset=utf-8")

    async def _answer_snapshot(self, req: Request) -> Response:
        snap = await asyncio.to_thread(self.snapshot)
        return Response(200, json.dumps(snap, separators=(",", ":"), default=str).encode(),
                        "application/json", cache="no-store")

    def _answer_events(self, req: Request) -> Stream:
        return Stream(self._events())

    async def _events(self):
        first = _event(await asyncio.to_thread(self.snapshot), retry_ms=RETRY_MS)
        async for event in self.app.broadcaster.subscribe("gateway", lambda: first):
            yield event

    async def _push(self) -> None:
        """The figures to the streams every PUSH_S while there is one."""
        b = self.app.broadcaster
        while True:
            await asyncio.sleep(PUSH_S)
            if not b.clients("gateway"):
                continue
            try:
                b.publish("gateway", _event(await asyncio.to_thread(self.snapshot)))
            except Exception:  # a bad figure must not end the pushes for good
                log.exception("page: snapshot")

    def snapshot(self) -> dict:
        """Everything the page shows (in a worker thread: it takes the masters' locks and
        reads the outbox)."""
        gw = self.gw
        st = gw.status()
        rows = [{**r, "errors": device_errors(r)} for r in gw.device_rows()]
        now = time.monotonic()
        buses = {}
        for name, master in gw.masters.items():
            s = master.stats
            seen = s.pop("last_seen", None)
            s["seen_ago_s"] = round(now - seen, 3) if seen else None
            buses[name] = {"port": gw.bus_port(name), **s}
        link = st["broker"]
        return {
            "gateway": st["gateway"], "site": st["site"], "version": st["version"],
            "pid": st["pid"], "state": st["state"], "started": st["started"], "ts": st["ts"],
            "at": time.time(), "uptime_s": round(time.time() - gw.started, 1),
            "broker": link,
            "outbox": st["outbox"],
            "devices": {"online": sum(bool(r["online"]) for r in rows), "total": len(rows),
                        "rows": rows},
            "buses": buses,
            "updates": {"running": st["updates"], "recent": self._recent_updates()},
            "errors": {"recent": self.errors.recent(), "reported": self.errors.total,
                       "published": link.get("errors_published"),
                       "suppressed": link.get("errors_suppressed"),
                       "dropped": link.get("errors_dropped")},
            "rejected_device_events": st["rejected_device_events"],
            "stale_commands": st["stale_commands"],
        }

    def _recent_updates(self) -> list[dict]:
        """Update results of the last hour, newest first; the history file is read again
        only when it changed."""
        history = self.gw.updates.history
        try:
            s = os.stat(history.path)
            key = (s.st_mtime_ns, s.st_size)
        except OSError:
            key = None
        with self._history_lock:
            if key != self._history_key:
                self._history_key = key
                self._history = history.read(limit=UPDATES_KEPT) if key else []
            past = list(self._history)
        hour_ago = utc_ts(time.time() - 3600)
        return [r for r in reversed(past) if str(r.get("ended", "")) >= hour_ago]

    # -- the one thing it does -----------------------------------------------------------

    async def _answer_identify(self, req: Request) -> Response:
        name, addr, seconds = self._identify_args(req.body)
        if not self._identifying.acquire(blocking=False):
            raise HTTPError(429, "an identify is running: try again in a few seconds")
        try:
            done = await asyncio.to_thread(self._identify, name, addr, seconds)
        finally:
            self._identifying.release()
        log.info("page: identify %s:%s for %d s, asked from %s", name, addr, seconds,
                 req.client)
        return Response.json({"ok": True, **done})

    def _identify_args(self, body: bytes) -> tuple[str, int, int]:
        try:
            ask = json.loads(body)
        except ValueError:
            raise HTTPError(400, 'the body must be JSON: {"bus": NAME, "address": N, '
                                 '"seconds": S}') from None
        if not isinstance(ask, dict) or not set(ask) <= {"bus", "address", "seconds"}:
            raise HTTPError(400, 'expected {"bus": NAME, "address": N, "seconds": S}')
        addr, seconds = ask.get("address"), ask.get("seconds", IDENTIFY_S)
        for what, v, lo, hi in (("address", addr, 1, bus.MAX_ADDRESS),
                                ("seconds", seconds, 1, 255)):
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise HTTPError(400, f"{what}: a whole number {lo}-{hi}, not "
                                     f"{json.dumps(v)[:40]}")
        masters = self.gw.masters
        buses = ", ".join(masters) or "none"
        name = ask.get("bus")
        if name is None:
            if len(masters) != 1:
                raise HTTPError(400, f"say which bus (buses: {buses})")
            name = next(iter(masters))
        if not isinstance(name, str) or name not in masters:
            raise HTTPError(404, f"no bus {json.dumps(name)[:40]} (buses: {buses})")
        return name, addr, seconds

    def _identify(self, name: str, addr: int, seconds: int) -> dict:
        """`hallgate identify` in the daemon: the technician's handler (its wait bounded
        by technician.MASTER_WAIT_S); a device the daemon does not know is a 404, one that did not
        answer a 504, each with the handler's words."""
        if self.gw.masters[name].device(addr) is None:
            raise HTTPError(404, f"device {addr} is not known on bus {name}")
        try:
            return self.technician.identify({"bus": name, "address": addr,
                                             "seconds": seconds}, None)
        except ControlError as e:
            raise HTTPError(504, str(e)) from None


def _event(snapshot: dict, retry_ms: int | None = None) -> bytes:
    """The ``state`` event (as asgi.sse, with str() for what JSON has no type for)."""
    lines = [] if retry_ms is None else [f"retry: {retry_ms}"]
    lines += ["event: state",
              "data: " + json.dumps(snapshot, separators=(",", ":"), default=str)]
    return ("\n".join(lines) + "\n\n").encode()

