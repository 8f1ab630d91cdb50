"""The city page: every centre of a city on one screen, worst first, live.

Design note
-----------
Operations: `CityPages(city, broker_urls, host, port).start()` reads the city's retained
overview, ``city/v1/{city}/overview`` (protocols/MQTT.md section 10, made by
central/overview.py), with a client of its own that fails over between the city's broker
nodes (`CityFeed`, on `central.overview.BrokerLoop`), and serves (hallgate/web/asgi.py):

========================  ======================================================
``/city``                 the city page (hallgate/web/static/city.*): the city's
                          totals, then a row per centre, worst first
``/``                     a redirect to ``/city``
``/api/city``             its data as JSON: the overview, the link's status
``/api/city/events``      server-sent events: ``state`` (the snapshot, at connect
                          and when it changes), ``ping``
``/static/NAME``          the page's scripts and styles (those of the hall's pages,
                          and its own)
========================  ======================================================

`hallgate central overview --http` serves it beside the overview service it runs.
Everything is GET (and HEAD): any other method is a 405, an unknown path a 404, any
parameter a 400, each with a line saying why (asgi.py). With `manager_url`, a template
such as ``http://{site}.halls.example:8080/``, each centre's name links to its own
manager's view (hallgate/web/hallpages.py, served by that centre's `central run --http`).
Goals: as the hall's pages (hallgate/web/__init__.py): read only, from the topic and not
from the overview service's memory, so the page can run anywhere a broker node is
reachable, with a read-only certificate; at most one push per `PUSH_EVERY_S`; never
figures without a word when they may be old: the overview's own ``ts`` gives its age (a
dead overview service stays retained), and the page says so past `STALE_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from importlib.resources import files
from pathlib import Path
from typing import Any

from hallgate.central.overview import BrokerLoop, overview_topic

from .asgi import HTTPError, Response, Route, Stream, WebApp, WebServer, sse

__all__ = ["CityFeed", "CityPages", "city_app", "manager_url"]

log = logging.getLogger(__name__)

STATIC = Path(str(files("hallgate.web") / "static"))
ASSETS = ("pages.css", "manager.css", "city.css", "live.js", "city.js", "icon.svg")
PUSH_EVERY_S = 0.25
RETRY_MS = 2000  # the browser's wait before it reconnects a stream
STALE_S = 150.0  # the overview is republished at least every 60 s: 2.5 of those missed


def manager_url(template: str) -> str:
    """A centre's manager's view as a template with ``{site}``; ValueError with the reason.

    >>> manager_url("http://{site}.halls.example:8080/")
    'http://{site}.halls.example:8080/'
    """
    if not template.startswith(("http://", "https://")) or "{site}" not in template:
        raise ValueError(f"{template!r}: an http:// or https:// URL with {{site}} in it, "
                         "e.g. http://{site}.halls.example:8080/")
    return template


def _age(ts: Any, now: float) -> float | None:
    """Seconds since an ISO 8601 ``ts`` (the contract's), None if it is not one."""
    if not isinstance(ts, str):
        return None
    try:
        at = datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
    return round(max(0.0, now - at), 1)


class CityFeed(BrokerLoop):
    """A read-only client keeping the city's last overview; `on_change()` is called (on
    the client's thread) when it or the link changes."""

    def __init__(self, city: str, urls: str | list[str], *, protocol: str = "3.1.1",
                 client_id: str | None = None, on_change=None, **tls: Any) -> None:
        import uuid

        super().__init__(urls, client_id=client_id or
                         f"hallgate-citypage-{city}-{uuid.uuid4().hex[:8]}",
                         protocol=protocol, name=f"hallgate-citypage-{city}", **tls)
        self.city = city
        self.topics = (overview_topic(city),)
        self.on_change = on_change
        self.lock = threading.Lock()
        self.overview: dict | None = None

    def on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        try:
            body = json.loads(payload) if payload else None
        except ValueError:
            return
        if body is not None and not (isinstance(body, dict)
                                     and isinstance(body.get("centres"), dict)):
            return
        with self.lock:
            self.overview = body
        self._changed()

    def on_link(self, up: bool) -> None:
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception:
                log.exception("city page: on_change")

    def snapshot(self) -> dict:
        with self.lock:
            overview = self.overview
        return {"city": self.city,
                "status": {"broker": self.connected,
                           "overview_age_s": None if overview is None
                           else _age(overview.get("ts"), time.time())},
                "overview": overview}


def city_app(state: Callable[[], dict], on_start=()) -> WebApp:
    """The page's routes over `state()`, the snapshot (CityPages adds the pushes)."""
    app: WebApp
    body = (STATIC / "city.html").read_bytes()

    def home(req) -> Response:
        raise HTTPError(302, "the city page is at /city", headers=(("location", "/city"),))

    routes = [
        Route("/city", lambda req: Response(200, body, "text/html; charset=utf-8")),
        Route("/", home),
        Route("/api/city", lambda req: Response.json(state())),
        Route("/api/city/events", lambda req: Stream(app.broadcaster.subscribe(
            "city", lambda: sse("state", state(), retry_ms=RETRY_MS)))),
    ]
    app = WebApp(routes, {name: STATIC / name for name in ASSETS}, on_start=list(on_start))
    return app


class CityPages:
    """The city page of `city`, read from the brokers at `broker_urls` (`protocol`; for
    ``mqtts://`` the CA and a monitoring certificate), served on `host`:`port` (0: a free
    port; `url` says where)."""

    def __init__(self, city: str, broker_urls: str | list[str], host: str, port: int, *,
                 protocol: str = "3.1.1", manager: str | None = None,
                 ca_file: str | None = None, cert_file: str | None = None,
                 key_file: str | None = None, username: str | None = None,
                 password: str | None = None, client_id: str | None = None) -> None:
        self.feed = CityFeed(city, broker_urls, protocol=protocol, client_id=client_id,
                             on_change=self._changed, ca_file=ca_file, cert_file=cert_file,
                             key_file=key_file, username=username, password=password)
        self.manager = None if manager is None else manager_url(manager)
        self.app = city_app(self.state, on_start=[self._push])
        self.server = WebServer(self.app, host, port, name=f"hallgate-citypage-{city}")
        self._dirty: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"{self.server.url}/city"

    def state(self) -> dict:
        """What the page shows: the feed's snapshot and where the centres' views are."""
        return {**self.feed.snapshot(), "manager_url": self.manager}

    def start(self) -> CityPages:
        self.server.start()
        self.feed.start()
        return self

    def stop(self) -> None:
        self.feed.stop()
        self.server.stop()

    def __enter__(self) -> CityPages:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _changed(self) -> None:
        """The feed's news, on the MQTT client's thread: wake the pusher."""
        loop, dirty = self.app.broadcaster.loop, self._dirty
        if loop is not None and dirty is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(dirty.set)

    async def _push(self) -> None:
        """The snapshot to the streams when something changed, at most every
        PUSH_EVERY_S."""
        self._dirty = asyncio.Event()
        b = self.app.broadcaster
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            if b.clients("city"):
                b.publish("city", sse("state", self.state()))
            await asyncio.sleep(PUSH_EVERY_S)
