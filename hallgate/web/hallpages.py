"""The hall's pages: the board at ``/board``, the manager's view at ``/``.

Design note
-----------
Operations: `HallPages(site, broker_url, host, port).start()` reads the hall from MQTT
(`HallFeed`) and serves (hallgate/web/asgi.py):

========================  ======================================================
``/``                     the manager's view (hallgate/web/static/manager.*)
``/board``                the hall board; ``?n=`` calls listed (1-12, default 6),
                          ``?lang=en|ru``, ``?sound=voice|chime|off``
``/api/board``            its data as JSON: the last calls, the links' status
``/api/manager``          the manager's: the central's stats, each window's panel and
                          operator, the last calls and wait alerts
``/api/board/events``     server-sent events: ``calls`` (the whole list, at connect and
``/api/manager/events``   when it changes), ``call`` (one new call, at once: the board
                          chimes and speaks it), ``state`` (the manager's snapshot), ``ping``
``/static/NAME``          the pages' scripts and styles
========================  ======================================================

Everything is GET (and HEAD); any other method is a 405, an unknown path a 404, an
unknown or bad parameter a 400, each with a line saying why.
Goals: a call on the board as soon as its panel message arrives (pushed on its own, not
with the snapshots); snapshots at most `PUSH_EVERY_S` apart however busy the hall is, so
a burst of changes costs one push.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from importlib.resources import files
from pathlib import Path
from typing import Any

from .asgi import Response, Route, Stream, WebApp, WebServer, sse
from .hallfeed import CALLS_KEPT, HallFeed

__all__ = ["HallPages", "hall_app"]

log = logging.getLogger(__name__)

STATIC = Path(str(files("hallgate.web") / "static"))
ASSETS = ("pages.css", "board.css", "manager.css", "live.js", "board.js", "manager.js",
          "icon.svg")
PUSH_EVERY_S = 0.25
RETRY_MS = 2000  # the browser's wait before it reconnects a stream


def _count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= CALLS_KEPT:
        raise ValueError(f"{text[:20]!r}: a whole number 1-{CALLS_KEPT}")
    return int(text)


def _one_of(*options: str):
    def parse(text: str) -> str:
        if text not in options:
            raise ValueError(f"{text[:20]!r}: one of {', '.join(options)}")
        return text
    return parse


BOARD_PARAMS = {"n": _count, "lang": _one_of("en", "ru"),
                "sound": _one_of("voice", "chime", "off")}


def _page(name: str):
    body = (STATIC / name).read_bytes()

    def answer(req) -> Response:  # the parameters were checked by the route
        return Response(200, body, "text/html; charset=utf-8")
    return answer


def hall_app(feed: HallFeed, on_start=()) -> WebApp:
    """The pages' routes over `feed` (HallPages adds the pushes)."""
    app: WebApp

    def stream(channel: str, first):
        return lambda req: Stream(app.broadcaster.subscribe(channel, first))

    routes = [
        Route("/", _page("manager.html")),
        Route("/board", _page("board.html"), params=BOARD_PARAMS),
        Route("/api/board", lambda req: Response.json(feed.board())),
        Route("/api/manager", lambda req: Response.json(feed.manager())),
        Route("/api/board/events", stream(
            "board", lambda: sse("calls", feed.board(), retry_ms=RETRY_MS))),
        Route("/api/manager/events", stream(
            "manager", lambda: sse("state", feed.manager(), retry_ms=RETRY_MS))),
    ]
    app = WebApp(routes, {name: STATIC / name for name in ASSETS}, on_start=list(on_start))
    return app


class HallPages:
    """The board and the manager's view of `site`, read from the broker at `broker_url`
    (`protocol`, and for ``mqtts://`` the CA and a monitoring certificate), served on
    `host`:`port` (0: a free port; `urls` says where)."""

    def __init__(self, site: str, broker_url: str, host: str, port: int, *,
                 protocol: str = "3.1.1", ca_file: str | None = None,
                 cert_file: str | None = None, key_file: str | None = None,
                 client_id: str | None = None) -> None:
        self.feed = HallFeed(site, broker_url, protocol=protocol, ca_file=ca_file,
                             cert_file=cert_file, key_file=key_file, client_id=client_id,
                             on_change=self._changed)
        self.app = hall_app(self.feed, on_start=[self._push])
        self.server = WebServer(self.app, host, port, name=f"hallgate-pages-{site}")
        self._dirty: asyncio.Event | None = None

    @property
    def urls(self) -> dict[str, str]:
        return {"board": f"{self.server.url}/board", "manager": f"{self.server.url}/"}

    def start(self) -> HallPages:
        self.server.start()
        self.feed.start()
        return self

    def stop(self) -> None:
        self.feed.stop()
        self.server.stop()

    def __enter__(self) -> HallPages:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _changed(self, kind: str, data: Any) -> None:
        """The feed's news, on the MQTT client's thread."""
        b = self.app.broadcaster
        if kind == "call":  # at once, on its own
            event = sse("call", data)
            b.publish("board", event)
            b.publish("manager", event)
        loop, dirty = b.loop, self._dirty
        if loop is not None and dirty is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(dirty.set)

    async def _push(self) -> None:
        """Snapshots to the streams when something changed, at most every PUSH_EVERY_S;
        the board's only when its calls or links changed."""
        self._dirty = asyncio.Event()
        b = self.app.broadcaster
        last_board = None
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            board = self.feed.board()
            key = json.dumps([board["calls"], {k: v for k, v in board["status"].items()
                                               if k != "stats_age_s"}])
            if key != last_board and b.clients("board"):
                b.publish("board", sse("calls", board))
                last_board = key
            if b.clients("manager"):
                b.publish("manager", sse("state", self.feed.manager()))
            await asyncio.sleep(PUSH_EVERY_S)
