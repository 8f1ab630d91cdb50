"""The hall as its MQTT topics tell it: what the board and the manager's view show.

Design note
-----------
Operations: `HallFeed(site, url).start()` subscribes, as a client of its own, to the
site's ``window/+/panel`` and ``window/+/session`` (retained desired state; or the panels
in the site's one ``desired`` message, when its central publishes that way), and
``central/stats``, ``central/status``, ``central/alerts`` (protocols/MQTT.md); `board()`
and `manager()` are snapshots for the pages; `on_change(kind, data)` is called (on the
MQTT client's thread) with ``"call"`` and the call at once, and with ``"state"`` when
anything else changed. It never publishes: a page cannot change the queue through it, and
on the secured broker it runs with a read-only monitoring certificate.
Why the topics and not the central's memory: they are the contract, so the pages work
beside any central that speaks it, and in another process or on another machine; the
figures are the central's own (``central/stats``: `central.stats.live_stats`, the same
code as `hallgate central report`), republished every `stats_s`.
A call is a panel going to ``called`` with ``beep`` (a call or a recall: the central
sets it exactly then) in a version newer than one already seen for that window, arriving
live: so the retained state replayed at every (re)subscription, and the central
republishing all of it when it (re)connects, are never announced again. Calls from
before the feed started, or missed while the broker was away, come from the stats'
``now.calls`` (the last 12), taken whenever the link to the broker is (re)made.
Goals: every wait bounded, nothing that arrives can raise out of the client's thread
(malformed payloads are ignored: the central's own errors go to ``central/errors``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

__all__ = ["HallFeed", "CALLS_KEPT"]

log = logging.getLogger(__name__)

CALLS_KEPT = 12  # as central.stats.CALLS_KEPT: the most a board lists
ALERTS_KEPT = 20


def _window(rest: list[str]) -> int | None:
    """The window number of ``window/{n}/...``, None for anything malformed."""
    if len(rest) == 3 and rest[0] == "window" and rest[1].isdigit() and rest[1][0] != "0":
        return int(rest[1])
    return None



def _site_snapshot(payload: bytes) -> dict:
    """{window: {kind: payload}} of a site's `desired` message; {} if it is malformed (the
    gateway's parser: gateway/desired.py)."""
    from hallgate.gateway.desired import SnapshotError, parse_snapshot

    try:
        return parse_snapshot(payload)
    except SnapshotError:
        return {}

class HallFeed:
    """A read-only MQTT client keeping the hall's state for the pages. `url`:
    ``mqtt://host[:port]`` or ``mqtts://`` (then `ca_file`, and the monitoring
    certificate `cert_file`/`key_file`); `protocol` "5" or "3.1.1"."""

    def __init__(self, site: str, url: str, *, protocol: str = "3.1.1",
                 client_id: str | None = None, ca_file: str | None = None,
                 cert_file: str | None = None, key_file: str | None = None,
                 on_change: Callable[[str, Any], None] | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(f"broker url {url!r}: mqtt://host[:port] or mqtts://host[:port]")
        self.site = site
        self.url = url
        self.prefix = f"hall/v1/{site}/"
        self.on_change = on_change
        self.lock = threading.Lock()
        self.connected = False
        self.central: dict[str, Any] = {}  # the retained central/status
        self.stats: dict[str, Any] | None = None
        self.stats_at: float | None = None  # when (time.time()) the last stats came
        self.panels: dict[int, dict] = {}
        self.sessions: dict[int, dict] = {}
        self._versions: dict[int, int] = {}  # the newest panel version seen per window
        self.calls: deque[dict] = deque(maxlen=CALLS_KEPT)  # newest first
        self.alerts: deque[dict] = deque(maxlen=ALERTS_KEPT)  # newest first
        self._resync = True  # take the stats' last calls at the next stats
        self._live: set[str] = set()  # ids of the calls seen live since the (re)connect
        tls = parts.scheme == "mqtts"
        self.host, self.port = parts.hostname, parts.port or (8883 if tls else 1883)
        v5 = protocol == "5"
        c = paho.Client(CallbackAPIVersion.VERSION2,
                        client_id=client_id or f"hallgate-pages-{site}-{uuid.uuid4().hex[:8]}",
                        protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
                        clean_session=None if v5 else True)
        c.enable_logger(logging.getLogger(__name__ + ".paho"))
        c.reconnect_delay_set(0.2, 3.0)
        if tls:
            c.tls_set(ca_certs=ca_file, certfile=cert_file, keyfile=key_file)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        self.client = c

    def start(self) -> HallFeed:
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()
        return self

    def stop(self) -> None:
        with self.lock:
            self.connected = False  # a stop, not a lost broker
        self.client.disconnect()
        self.client.loop_stop()

    # -- what the pages read -----------------------------------------------------------

    def status(self) -> dict:
        """The links a page's warning is about: the broker, the central, the stats' age."""
        with self.lock:
            return self._status()

    def _status(self) -> dict:
        return {"broker": self.connected, "central": self.central.get("state"),
                "central_since": self.central.get("ts"),
                "stats_age_s": None if self.stats_at is None
                else round(time.time() - self.stats_at, 1)}

    def board(self) -> dict:
        with self.lock:
            return {"site": self.site, "calls": list(self.calls), "status": self._status()}

    def manager(self) -> dict:
        with self.lock:
            windows = sorted(set(self.panels) | set(self.sessions))
            return {"site": self.site, "status": self._status(), "stats": self.stats,
                    "windows": {str(n): {"panel": self.panels.get(n),
                                         "session": self.sessions.get(n)} for n in windows},
                    "calls": list(self.calls), "alerts": list(self.alerts)}

    # -- the MQTT client's thread ------------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("pages: broker %s refused the connection: %s", self.url, reason_code)
            return
        client.subscribe([(self.prefix + t, 1) for t in (
            "window/+/panel", "window/+/session", "desired", "central/stats",
            "central/status", "central/alerts")])
        with self.lock:
            self.connected = True
            self._resync = True  # calls may have been missed while away
            self._live.clear()
        log.info("pages: reading hall %s from %s", self.site, self.url)
        self._changed("state", None)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self.lock:
            was, self.connected = self.connected, False
        if was:
            log.warning("pages: lost the broker %s: %s", self.url, reason_code)
            self._changed("state", None)

    def _on_message(self, client, userdata, msg) -> None:
        try:
            self._take(msg.topic, bytes(msg.payload), bool(msg.retain))
        except Exception:  # nothing from the broker may stop the client's thread
            log.exception("pages: message on %s", msg.topic)

    def _take(self, topic: str, payload: bytes, retained: bool) -> None:
        rest = topic.removeprefix(self.prefix).split("/")
        try:
            body = json.loads(payload) if payload else None
        except ValueError:
            return
        if body is not None and not isinstance(body, dict):
            return
        calls = []
        with self.lock:
            n = _window(rest)
            if n is not None and rest[2] == "panel":
                calls.append(self._panel(n, body, retained))
            elif rest == ["desired"]:  # every window's panel in one message
                for w, kinds in _site_snapshot(payload).items():
                    panel = kinds.get("panel")
                    calls.append(self._panel(w, panel if isinstance(panel, dict) else None,
                                             retained))
            elif n is not None and rest[2] == "session":
                self.sessions[n] = body or {}
            elif rest == ["central", "stats"] and body is not None:
                self.stats, self.stats_at = body, time.time()
                if self._resync:
                    self._resync = False
                    self._merge_calls(body.get("now", {}).get("calls"))
            elif rest == ["central", "status"]:
                self.central = body or {}
            elif rest == ["central", "alerts"] and body is not None and not retained:
                self.alerts.appendleft(body)
            else:
                return
        for call in calls:
            if call is not None:
                self._changed("call", call)
        self._changed("state", None)

    def _panel(self, n: int, body: dict | None, retained: bool) -> dict | None:
        """Keeps window `n`'s panel; the call it announces, if it is one (see the note)."""
        if body is None:  # cleared: no desired state
            self.panels.pop(n, None)
            return None
        self.panels[n] = body
        version, seen = body.get("version"), self._versions.get(n)
        if not isinstance(version, int) or (seen is not None and version <= seen):
            return None
        self._versions[n] = version
        ticket = body.get("text")
        if (retained or seen is None or body.get("mode") != "called" or not body.get("beep")
                or not isinstance(ticket, str) or not ticket):
            return None
        recall = bool(self.calls) and any(c["ticket"] == ticket and c["window"] == n
                                          for c in self.calls)
        call = {"id": f"{n}.{version}", "ticket": ticket, "window": n, "recall": recall}
        self._drop_call(ticket, n)
        self.calls.appendleft(call)
        self._live.add(call["id"])
        return call

    def _drop_call(self, ticket: str, window: int) -> None:
        for c in list(self.calls):
            if c["ticket"] == ticket and c["window"] == window:
                self.calls.remove(c)

    def _merge_calls(self, listed: Any) -> None:
        """The central's last calls (newest first) as the list, with the calls seen live
        since the (re)connect that it does not list yet on top."""
        if not isinstance(listed, list):
            return
        theirs = [{"id": f"c.{c['window']}.{c['ticket']}", "ticket": c["ticket"],
                   "window": c["window"], "recall": False} for c in listed
                  if isinstance(c, dict) and isinstance(c.get("ticket"), str)
                  and isinstance(c.get("window"), int)]
        known = {(c["ticket"], c["window"]) for c in theirs}
        ours = [c for c in self.calls
                if c["id"] in self._live and (c["ticket"], c["window"]) not in known]
        self.calls.clear()
        self.calls.extend((ours + theirs)[:CALLS_KEPT])

    def _changed(self, kind: str, data: Any) -> None:
        if self.on_change is not None:
            try:
                self.on_change(kind, data)
            except Exception:
                log.exception("pages: on_change")
