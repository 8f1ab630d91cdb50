"""The city overview: every centre's figures of the day on one retained topic.

Design note
-----------
Operations: `CityOverview(city, sites=None)` is the pure part. `take(site, stats, now)`
takes a site's retained ``hall/v1/{site}/central/stats`` (protocols/MQTT.md section 8:
`central.stats.live_stats`), `take_status(site, status)` its ``central/status`` (online,
or offline by a clean stop or the broker's last will), and `payload(now)` is the
overview: per centre its figures of the day, whether it is online and whether its
figures are fresh, the city's totals and the centres worst first. `OverviewService(city,
urls)` is it on MQTT: it subscribes ``hall/v1/+/central/stats`` and
``hall/v1/+/central/status`` and publishes the overview retained, QoS 1, on
``city/v1/{city}/overview`` every `period_s` when it changed (the figures, not the clock),
and at least every `refresh_s` even unchanged, so a reader can tell a quiet city from a
dead overview by its ``ts``; the first not before `settle_s` after its subscriptions are
confirmed (the retained stats come then: a newly started service must not overwrite the
last one's overview with a city it has not heard yet). One runs per city
(central/city.py: the worker holding the city's lock; or `hallgate central overview`);
it keeps nothing on disk, since every input is retained: a new one has the whole city as
soon as it has subscribed.
Goals: the centres' figures are their own, named as in central/stats.py (``served``,
``wait_avg_s``, ``over_norm_share``, ``satisfaction``..., and ``waiting``,
``longest_wait_s`` from ``now``); the city's totals are what one hall holding every
centre's visitors would report: counts summed, ``wait_avg_s`` weighted by each centre's
``waits`` (the number of waits its average is over: exact, to the 0.1 s the centres
round to), ``over_norm_share`` = over_norm / waits and ``satisfaction`` = likes / votes
over the city (exact), ``longest_wait_s`` the longest anywhere. A percentile cannot be
combined from percentiles, so the city has no p95 (each centre keeps its own). Totals
count the centres whose figures are of the newest day seen (a centre still showing
yesterday's is listed, not added). Nothing a broker carries can raise out of `take`:
a malformed payload is counted and ignored, and at most `MAX_CENTRES` sites are kept,
so a stray publisher cannot grow the overview without bound.
Stale: a centre whose stats have not come for `stale_s` (by the overview's clock: the
time each payload arrived, never the central's, which a simulation may run fast).
Plan: `BrokerLoop` is one paho client at a time over a list of broker URLs (a cluster's
nodes), driven by our own thread with ``client.loop()`` (as gateway/mqtt.py does): a
failed connect or a lost connection goes on to the next URL, a whole pass without one
waits, doubling from `reconnect_min` to `reconnect_max`; every wait is bounded and
`stop()` returns within its timeout. A clean session (every input is retained), a client
id of its own per process (two overviews of one city during a takeover must not take
each other's connection away). `hallgate/web/citypage.py` reads the topic with the same
loop.

>>> o = CityOverview("moscow")
>>> o.take("msk-01", {"day": "2026-11-23", "norm_s": 900, "all": {"served": 2, "waits": 2,
...        "wait_avg_s": 300.0, "over_norm": 1, "likes": 3, "dislikes": 1}}, now=0.0)
True
>>> p = o.payload(now=1.0)
>>> p["centres"]["msk-01"]["satisfaction"], p["all"]["over_norm_share"]
(0.75, 0.5)
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .clock import utc_ts

__all__ = ["BrokerLoop", "CityOverview", "OverviewService", "broker_url", "overview_topic"]

log = logging.getLogger(__name__)

NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")  # a site's or a city's name: one topic level
MAX_CENTRES = 1000  # sites kept at most (Moscow has 96): a stray publisher is not a city
STALE_S = 30.0  # a centre publishes every 5 s (stats_s): six missed are not a hiccup

COUNTS = ("issued", "served", "noshow", "waits", "over_norm", "likes", "dislikes")
FIGURES = ("wait_avg_s", "wait_p95_s")  # taken as the centre says them


def overview_topic(city: str) -> str:
    """The overview's topic.

    >>> overview_topic("moscow")
    'city/v1/moscow/overview'
    """
    return f"city/v1/{city}/overview"


def _name(what: str, value: str) -> str:
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise ValueError(f"{what} {value!r}: 1-64 letters, digits, '.', '_' or '-'")
    return value


def _count(x: Any) -> int:
    """A count as the centre gave it; 0 for anything that is not one."""
    return x if isinstance(x, int) and not isinstance(x, bool) and x >= 0 else 0


def _number(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float) or x != x or x in (
            float("inf"), float("-inf")):
        return None
    return x


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _decode(payload: Any) -> dict | None:
    """A payload as a dict: bytes or text (JSON) or a dict already; None if it is not one
    (an empty payload, a retained message cleared, is None too)."""
    if isinstance(payload, bytes | bytearray | str):
        if not payload:
            return None
        try:
            payload = json.loads(payload)
        except ValueError:
            return None
    return payload if isinstance(payload, dict) else None


@dataclass
class _Centre:
    stats: dict | None = None  # the figures taken from its last stats (see _figures)
    at: float | None = None  # when (the overview's clock) they came
    online: bool | None = None  # its central/status; None: never seen


ORDER = ("issued", "served", "noshow", "waiting", "waits", "wait_avg_s", "wait_p95_s",
         "over_norm", "over_norm_share", "likes", "dislikes", "votes", "satisfaction",
         "longest_wait_s", "windows_open")  # a payload's fields, as a reader scans them


def _figures(stats: Mapping[str, Any]) -> dict | None:
    """The centre's figures out of its central/stats; None if it is not stats at all."""
    a = stats.get("all")
    if not isinstance(a, dict):
        return None
    now = stats.get("now") if isinstance(stats.get("now"), dict) else {}
    windows = now.get("windows") if isinstance(now.get("windows"), dict) else {}
    got: dict[str, Any] = {k: _count(a.get(k)) for k in COUNTS}
    got.update({k: _number(a.get(k)) for k in FIGURES})
    got["votes"] = got["likes"] + got["dislikes"]
    got["over_norm_share"] = _share(got["over_norm"], got["waits"])
    got["satisfaction"] = _share(got["likes"], got["votes"])
    got["waiting"] = _count(now.get("waiting", a.get("waiting")))
    got["longest_wait_s"] = _number(now.get("longest_wait_s"))
    # windows with someone at them (closed and paused call nobody)
    got["windows_open"] = sum(1 for w in windows.values() if isinstance(w, dict)
                              and w.get("mode") in ("idle", "called", "serving"))
    day = stats.get("day")
    return {"day": day if isinstance(day, str) else None,
            "norm_s": _number(stats.get("norm_s")), "warn_s": _number(stats.get("warn_s")),
            **{k: got[k] for k in ORDER}}


EMPTY = {"day": None, "norm_s": None, "warn_s": None,
         **{k: 0 if k in COUNTS or k in ("votes", "waiting", "windows_open") else None
            for k in ORDER}}


class CityOverview:
    """The city's centres as their topics tell them (see the module's note). `sites`: the
    city's centres, listed even before anything came from them, and the only ones taken;
    None: every site that publishes (up to MAX_CENTRES)."""

    def __init__(self, city: str, sites: list[str] | None = None, *,
                 stale_s: float = STALE_S) -> None:
        self.city = _name("city", city)
        self.fixed = sites is not None
        self.centres: dict[str, _Centre] = {_name("site", s): _Centre() for s in sites or ()}
        self.stale_s = stale_s
        self.counters: Counter[str] = Counter()  # taken, malformed, ignored

    def _centre(self, site: str) -> _Centre | None:
        c = self.centres.get(site)
        if c is None and not self.fixed and NAME.fullmatch(site) and (
                len(self.centres) < MAX_CENTRES):
            c = self.centres[site] = _Centre()
        if c is None:
            self.counters["ignored"] += 1
        return c

    def take(self, site: str, stats: Any, now: float) -> bool:
        """A site's central/stats (a dict, or its JSON) arrived at `now`; False if it was
        not taken (malformed, or not one of the city's sites). An empty payload (the
        retained stats cleared) forgets the centre's figures."""
        body = _decode(stats)
        if body is None and stats not in (b"", "", None):
            self.counters["malformed"] += 1
            return False
        figures = None if body is None else _figures(body)
        if body is not None and figures is None:
            self.counters["malformed"] += 1
            return False
        c = self._centre(site)
        if c is None:
            return False
        c.stats, c.at = figures, (now if figures is not None else None)
        self.counters["taken"] += 1
        return True

    def take_status(self, site: str, status: Any) -> bool:
        """A site's central/status: online or offline (None when cleared)."""
        body = _decode(status)
        state = None if body is None else body.get("state")
        if (body is not None and state not in ("online", "offline")) or (
                body is None and status not in (b"", "", None)):
            self.counters["malformed"] += 1
            return False
        c = self._centre(site)
        if c is None:
            return False
        c.online = None if state is None else state == "online"
        return True

    def payload(self, now: float) -> dict:
        """The overview at `now` (the clock `take` was given), JSON-ready: see
        protocols/MQTT.md, section "City overview"."""
        centres: dict[str, dict] = {}
        for site in sorted(self.centres):
            c = self.centres[site]
            age = None if c.at is None else max(0.0, now - c.at)
            centres[site] = {"online": c.online,
                             "stale": age is None or age > self.stale_s,
                             "stats_age_s": None if age is None else round(age, 1),
                             **(c.stats or EMPTY)}
        days = [row["day"] for row in centres.values() if row["day"]]
        day = max(days, default=None)
        counted = [row for row in centres.values() if row["day"] == day and day]
        got: dict[str, Any] = {k: sum(row[k] for row in counted)
                               for k in (*COUNTS, "waiting", "windows_open")}
        got["votes"] = got["likes"] + got["dislikes"]
        waited = sum(row["wait_avg_s"] * row["waits"] for row in counted
                     if row["wait_avg_s"] is not None)
        got["wait_avg_s"] = round(waited / got["waits"], 1) if got["waits"] else None
        got["over_norm_share"] = _share(got["over_norm"], got["waits"])
        got["satisfaction"] = _share(got["likes"], got["votes"])
        got["longest_wait_s"] = max((row["longest_wait_s"] for row in counted
                                     if row["longest_wait_s"] is not None), default=None)
        total = {"centres": len(centres),
                 "online": sum(row["online"] is True for row in centres.values()),
                 "offline": sum(row["online"] is False for row in centres.values()),
                 "stale": sum(row["stale"] for row in centres.values()),
                 "counted": len(counted),
                 **{k: got[k] for k in ORDER if k != "wait_p95_s"}}
        return {"city": self.city, "ts": utc_ts(now), "day": day, "stale_s": self.stale_s,
                "all": total, "centres": centres, "worst_first": worst_first(centres)}


def worst_first(centres: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The centres in the order a city's manager looks at them: those that say nothing
    (offline, or no fresh figures) first, then by the share of waits over the norm, then
    by the longest wait now, then by name.

    >>> worst_first({"a": {"online": True, "stale": False, "over_norm_share": 0.1},
    ...              "b": {"online": False, "stale": True},
    ...              "c": {"online": True, "stale": False, "over_norm_share": 0.3}})
    ['b', 'c', 'a']
    """
    def key(site: str) -> tuple:
        row = centres[site]
        silent = row.get("online") is False or bool(row.get("stale"))
        return (not silent, -(row.get("over_norm_share") or 0.0),
                -(row.get("longest_wait_s") or 0.0), site)
    return sorted(centres, key=key)


def changed_key(payload: Mapping[str, Any]) -> str:
    """What makes an overview new: everything but the clock (its ``ts``, the ages)."""
    return json.dumps({**payload, "ts": None, "centres": {
        s: {**row, "stats_age_s": None} for s, row in payload["centres"].items()}},
        sort_keys=True)


# -- on MQTT ------------------------------------------------------------------------------

@dataclass(frozen=True)
class BrokerUrl:
    url: str
    host: str
    port: int
    tls: bool


def broker_url(url: str) -> BrokerUrl:
    """``mqtt://host[:port]`` or ``mqtts://host[:port]``; ValueError with the reason.

    >>> broker_url("mqtt://10.0.0.5").port
    1883
    """
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname or port == -1 or (
            parts.path not in ("", "/")):
        raise ValueError(f"broker url {url!r}: mqtt://host[:port] or mqtts://host[:port]")
    tls = parts.scheme == "mqtts"
    return BrokerUrl(url, parts.hostname, port or (8883 if tls else 1883), tls)


class BrokerLoop:
    """One MQTT connection at a time over `urls`, in a thread of its own (the module's
    note). Subclasses say what to subscribe (`topics`), take messages (`on_message`, in
    the loop's thread) and may act every `tick_s` while connected (`tick`)."""

    topics: tuple[str, ...] = ()
    tick_s: float = 1.0

    def __init__(self, urls: str | list[str], *, client_id: str, protocol: str = "3.1.1",
                 username: str | None = None, password: str | None = None,
                 ca_file: str | None = None, cert_file: str | None = None,
                 key_file: str | None = None, keepalive: int = 30,
                 reconnect_min: float = 0.2, reconnect_max: float = 3.0,
                 connect_timeout: float = 5.0, name: str = "hallgate-mqtt") -> None:
        self.urls = [broker_url(u) for u in ([urls] if isinstance(urls, str) else urls)]
        if not self.urls:
            raise ValueError("no broker url")
        if protocol not in ("5", "3.1.1"):
            raise ValueError(f"protocol {protocol!r}: '5' or '3.1.1'")
        self.protocol = protocol
        self.client_id = client_id
        self.username, self.password = username, password
        for what, path in (("ca_file", ca_file), ("cert_file", cert_file),
                           ("key_file", key_file)):
            if path is not None and not os.path.isfile(path):  # said now, not per attempt
                raise ValueError(f"{what} {path}: no such file")
        self.tls_files = (ca_file, cert_file, key_file)
        self.keepalive = keepalive
        self.reconnect_min, self.reconnect_max = reconnect_min, reconnect_max
        self.connect_timeout = connect_timeout
        self.name = name
        self.url: str | None = None  # the broker connected to now
        self.last_error: str | None = None
        self.counters: Counter[str] = Counter()
        self.subscribed_at: float | None = None  # time.monotonic() of this link's SUBACK
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._connack: Any = None

    # -- hooks --------------------------------------------------------------------------

    def on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        """A message arrived (the loop's thread)."""

    def on_link(self, up: bool) -> None:
        """Connected and subscribed (True), or the connection is gone (False)."""

    def tick(self, client) -> None:
        """Every `tick_s` while connected (the loop's thread: `client` may publish)."""

    # -- life ---------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def start(self):
        """Starts (again, after a `stop`: a worker that lost the city's lock and got it
        back)."""
        old = self._thread
        if old is not None and old.is_alive():
            if not self._stop.is_set():
                raise RuntimeError(f"{self.name} already started")
            old.join(self.connect_timeout + 1.0)  # a stop still in a connect attempt
            if old.is_alive():
                raise RuntimeError(f"{self.name} is still stopping")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Disconnects and ends the thread, within about `timeout` s (a connect attempt
        under way ends by itself within `connect_timeout`)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- the loop's thread --------------------------------------------------------------

    def _run(self) -> None:
        index = failures = 0
        delay = self.reconnect_min
        while not self._stop.is_set():
            url = self.urls[index]
            try:
                outcome = self._session(url)
            except Exception as e:  # a bug of ours or paho's must not end the loop
                log.exception("%s: on %s", self.name, url.url)
                self.last_error = repr(e)
                outcome = "lost" if self.connected else "failed"
                self._down()
            if self._stop.is_set():
                break
            index = (index + 1) % len(self.urls)
            if outcome == "lost":  # the next node at once (after a breath)
                failures, delay = 0, self.reconnect_min
                self._stop.wait(self.reconnect_min)
                continue
            failures += 1
            if failures % len(self.urls) == 0:  # a whole pass without a connection
                self._stop.wait(delay)
                delay = min(delay * 2, self.reconnect_max)

    def _client(self, url: BrokerUrl):
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        v5 = self.protocol == "5"
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                        protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
                        clean_session=None if v5 else True, reconnect_on_failure=False)
        c.enable_logger(logging.getLogger(__name__ + ".paho"))
        c.connect_timeout = self.connect_timeout
        c.max_queued_messages_set(0)
        if self.username is not None:
            c.username_pw_set(self.username, self.password)
        if url.tls:
            ca, cert, key = self.tls_files
            c.tls_set(ca_certs=ca, certfile=cert, keyfile=key)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        return c

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connack = reason_code

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        for code in reason_codes:
            if code.is_failure:  # an ACL that does not let us read: say so, go on
                log.error("%s: the broker refused a subscription: %s", self.name, code)
        self.subscribed_at = time.monotonic()

    def _on_message(self, client, userdata, msg) -> None:
        self.counters["messages"] += 1
        try:
            self.on_message(msg.topic, bytes(msg.payload), bool(msg.retain))
        except Exception:  # nothing from the broker may end the loop
            self.counters["errors"] += 1
            log.exception("%s: message on %s", self.name, msg.topic)

    def _session(self, url: BrokerUrl) -> str:
        """One connection to `url`, kept until it is lost or we stop: "failed" (never
        made), "lost", or "stopped"."""
        from paho.mqtt.enums import MQTTErrorCode

        client = self._client(url)
        self._connack = None
        self.subscribed_at = None
        try:
            client.connect(url.host, url.port, self.keepalive)
        except (OSError, ValueError) as e:  # refused, unreachable, a TLS failure
            self._failed(url, str(e) or repr(e))
            return "failed"
        deadline = time.monotonic() + self.connect_timeout
        while self._connack is None:
            rc = client.loop(0.1)
            if self._stop.is_set() or rc != MQTTErrorCode.MQTT_ERR_SUCCESS or (
                    time.monotonic() > deadline):
                client.disconnect()
                self._failed(url, "no CONNACK" if rc == MQTTErrorCode.MQTT_ERR_SUCCESS
                             else f"connection closed: {rc.name}")
                return "stopped" if self._stop.is_set() else "failed"
        if self._connack.is_failure:
            client.disconnect()
            self._failed(url, f"refused: {self._connack}")
            return "failed"
        if self.topics:
            client.subscribe([(t, 1) for t in self.topics])
        self.url, self.last_error = url.url, None
        self.counters["connects"] += 1
        self._connected.set()
        log.info("%s: connected to %s", self.name, url.url)
        self.on_link(True)
        next_tick = time.monotonic()
        try:
            while not self._stop.is_set():
                rc = client.loop(min(0.2, self.tick_s))
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    self.last_error = f"lost: {rc.name}"
                    log.warning("%s: lost the broker %s: %s", self.name, url.url, rc.name)
                    return "lost"
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + self.tick_s
                    self.tick(client)
            client.disconnect()  # a clean stop: the DISCONNECT goes out now
            return "stopped"
        finally:
            self._down()

    def _failed(self, url: BrokerUrl, why: str) -> None:
        self.counters["failed_connects"] += 1
        if self.last_error != why:
            log.warning("%s: broker %s: %s", self.name, url.url, why)
        self.last_error = why

    def _down(self) -> None:
        if self._connected.is_set():
            self._connected.clear()
            self.on_link(False)
        self.url = None


class OverviewService(BrokerLoop):
    """`CityOverview` on MQTT (the module's note): the centres' stats and status in, the
    overview retained out. `overview` is the pure part; `last` the overview published
    last (None before the first)."""

    def __init__(self, city: str, urls: str | list[str], *, protocol: str = "3.1.1",
                 sites: list[str] | None = None, period_s: float = 5.0,
                 refresh_s: float = 60.0, stale_s: float = STALE_S, settle_s: float = 1.0,
                 client_id: str | None = None, username: str | None = None,
                 password: str | None = None, ca_file: str | None = None,
                 cert_file: str | None = None, key_file: str | None = None,
                 reconnect_min: float = 0.2, reconnect_max: float = 3.0,
                 connect_timeout: float = 5.0) -> None:
        if not period_s > 0 or not refresh_s >= period_s:
            raise ValueError(f"period_s {period_s}, refresh_s {refresh_s}: 0 < period <= "
                             "refresh")
        self.overview = CityOverview(city, sites, stale_s=stale_s)
        super().__init__(urls, client_id=client_id or
                         f"hallgate-overview-{city}-{uuid.uuid4().hex[:8]}",
                         protocol=protocol, username=username, password=password,
                         ca_file=ca_file, cert_file=cert_file, key_file=key_file,
                         reconnect_min=reconnect_min, reconnect_max=reconnect_max,
                         connect_timeout=connect_timeout, name=f"hallgate-overview-{city}")
        self.city = city
        self.topic = overview_topic(city)
        self.topics = ("hall/v1/+/central/stats", "hall/v1/+/central/status")
        self.tick_s = period_s
        self.refresh_s = refresh_s
        self.settle_s = settle_s
        self.lock = threading.Lock()  # around self.overview: `payload` from any thread
        self.last: dict | None = None
        self._last_key: str | None = None
        self._last_at = 0.0  # time.monotonic() of the last publication

    def payload(self) -> dict:
        with self.lock:
            return self.overview.payload(time.time())

    def on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        parts = topic.split("/")
        if len(parts) != 5 or parts[:2] != ["hall", "v1"] or parts[3] != "central":
            return
        with self.lock:
            if parts[4] == "stats":
                self.overview.take(parts[2], payload, time.time())
            elif parts[4] == "status":
                self.overview.take_status(parts[2], payload)

    def on_link(self, up: bool) -> None:
        if up:  # a new connection (maybe another node): say it there at the next tick
            self._last_key = None

    def tick(self, client) -> None:
        """Publishes the overview if it changed, or `refresh_s` passed since the last;
        never before the retained stats have had `settle_s` to come after the SUBACK (an
        overview of a city not yet heard would overwrite the last worker's good one)."""
        if self.subscribed_at is None or time.monotonic() - self.subscribed_at < self.settle_s:
            return
        p = self.payload()
        key = changed_key(p)
        if key == self._last_key and time.monotonic() - self._last_at < self.refresh_s:
            return
        client.publish(self.topic, json.dumps(p, separators=(",", ":")), qos=1, retain=True)
        self.counters["published"] += 1
        self.last, self._last_key, self._last_at = p, key, time.monotonic()
