"""The central service on MQTT: events and ticket requests in, retained desired state out.

Design note
-----------
Operations: `CentralService(central, site, url).start()` connects and serves until
`stop()`. Topics (protocols/MQTT.md): it subscribes ``window/+/event`` and
``ticket/request`` (QoS 1); each event goes to `Central.handle_event`, each request to
`Central.issue` (deduped by its ``id``, answered on ``ticket/issued``); every desired
payload that comes back is published retained, QoS 1, on ``window/{n}/{kind}``. The live
statistics go retained on ``central/stats`` every `stats_s`, the birth and the last will on
``central/status``; malformed input and rejected events are logged, counted (`counters`)
and published on ``central/errors``.
Goals: nothing published that a restart could take back (Central commits first); a
redelivered event or request changes nothing; QoS 1 events published while the service
was away are delivered when it returns (a persistent session: stable client id, clean
start off, MQTT 5 session expiry 7 days); every wait bounded.
Plan: paho 2.x with its own network thread (`loop_start`) and its capped reconnect
backoff (`reconnect_min` doubling to `reconnect_max`). paho calls `on_message` in that
thread; a message is acknowledged (PUBACK) after the callback returns, so after the store
has committed it. A second thread of ours runs `Central.tick` every `tick_s` and publishes
the stats. One lock around `Central` (the two threads); paho's `publish` is safe from
either thread under `loop_start`. On every connection: status online, subscriptions, then
`all_desired()` retained (converge a broker that lost its retained messages).

Example (needs a broker, so not a doctest)::

    central = Central(config.queue, "central.db")
    with CentralService(central, "msk-01", "mqtt://127.0.0.1:1883"):
        signal.pause()
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .queue import Desired, QueueError, Ticket
from .service import Central

__all__ = ["CentralService", "utc_ts"]

log = logging.getLogger(__name__)

SESSION_EXPIRY = 7 * 24 * 3600
MAX_PAYLOAD = 4096  # an event or a request larger than this is malformed


def utc_ts(t: float | None = None) -> str:
    """``2026-11-23T10:15:02.123Z`` (the contract's timestamps)."""
    dt = datetime.fromtimestamp(time.time() if t is None else t, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


class _Bad(ValueError):
    """Malformed input: the reason goes on central/errors."""


def _decode(payload: bytes) -> dict:
    if len(payload) > MAX_PAYLOAD:
        raise _Bad(f"payload is {len(payload)} bytes, at most {MAX_PAYLOAD} allowed")
    try:
        obj = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError:
        raise _Bad("payload is not UTF-8") from None
    except ValueError as e:
        raise _Bad(f"payload is not JSON: {e}") from None
    if not isinstance(obj, dict):
        raise _Bad(f"payload is a JSON {type(obj).__name__}, not an object")
    return obj


class CentralService:
    """`Central` wired to a broker. Counters in `counters` (events, duplicates, rejected,
    malformed, tickets, published, connects)."""

    def __init__(self, central: Central, site: str, url: str, *,
                 client_id: str | None = None, tick_s: float = 1.0, stats_s: float = 5.0,
                 protocol: str = "5", keepalive: int = 30, username: str | None = None,
                 password: str | None = None, reconnect_min: float = 0.2,
                 reconnect_max: float = 3.0, version: str = "0.1.0",
                 ca_file: str | None = None, cert_file: str | None = None,
                 key_file: str | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError(f"broker url {url!r}: mqtt://host[:port] or mqtts://host[:port]")
        if protocol not in ("5", "3.1.1"):
            raise ValueError(f"protocol {protocol!r}: '5' or '3.1.1'")
        self.central = central
        self.site = site
        self.url = url
        self.host = parts.hostname
        self.tls = parts.scheme == "mqtts"
        self.port = parts.port or (8883 if self.tls else 1883)
        self.client_id = client_id or f"hallgate-central-{site}"
        self.tick_s = tick_s
        self.stats_s = stats_s
        self.protocol = protocol
        self.keepalive = keepalive
        self.boot_id = uuid.uuid4().hex
        self.version = version
        self.prefix = f"hall/v1/{site}"
        self.counters: Counter[str] = Counter()
        self.lock = threading.RLock()  # around self.central
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        v5 = protocol == "5"
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                        protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
                        clean_session=None if v5 else False)
        c.enable_logger(logging.getLogger(__name__ + ".paho"))
        c.reconnect_delay_set(reconnect_min, reconnect_max)  # type: ignore[arg-type]
        c.max_queued_messages_set(0)
        c.max_inflight_messages_set(100)
        if username is not None:
            c.username_pw_set(username, password)
        if self.tls:  # a client certificate: the secured broker's identity (hardware/mosquitto)
            c.tls_set(ca_certs=ca_file, certfile=cert_file, keyfile=key_file)
        c.will_set(self.topic("central/status"), self._status("offline", "connection-lost"),
                   qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        self.client = c

    # -- topics -----------------------------------------------------------------------------

    def topic(self, rest: str) -> str:
        return f"{self.prefix}/{rest}"

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    # -- life -------------------------------------------------------------------------------

    def start(self) -> CentralService:
        if self._thread is not None:
            raise RuntimeError("CentralService already started")
        props = None
        kw: dict[str, Any] = {}
        if self.protocol == "5":
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = SESSION_EXPIRY
            kw = {"clean_start": False, "properties": props}
        self.client.connect_async(self.host, self.port, self.keepalive, **kw)
        self.client.loop_start()
        self._thread = threading.Thread(target=self._ticker, name="hallgate-central-tick",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> bool:
        """Publishes offline (waits for its PUBACK), disconnects, ends both threads, all
        within about `timeout` s. True if the offline status was acknowledged."""
        if self._thread is None:
            return False
        deadline = time.monotonic() + timeout
        self._stop.set()
        self._thread.join(max(0.1, timeout / 2))
        acked = False
        if self.connected:
            info = self.client.publish(self.topic("central/status"),
                                       self._status("offline", "stopped"), qos=1, retain=True)
            try:
                info.wait_for_publish(max(0.1, deadline - time.monotonic()))
                acked = info.is_published()
            except (RuntimeError, ValueError):
                acked = False
        self._connected.clear()  # a clean stop is not a lost broker
        self.client.disconnect()
        self.client.loop_stop()
        self._thread = None
        return acked

    def __enter__(self) -> CentralService:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- publishing -------------------------------------------------------------------------

    def _status(self, state: str, reason: str | None = None) -> bytes:
        msg = {"state": state, "version": self.version, "boot_id": self.boot_id,
               "ts": utc_ts()}
        if reason is not None:
            msg["reason"] = reason
        return _json(msg)

    def _publish(self, topic: str, payload: Any, *, retain: bool) -> None:
        self.client.publish(topic, _json(payload), qos=1, retain=retain)
        self.counters["published"] += 1

    def _publish_desired(self, desired: list[Desired]) -> None:
        for d in desired:
            self._publish(self.topic(f"window/{d.window}/{d.kind}"), d.payload, retain=True)

    def publish_stats(self) -> None:
        with self.lock:
            stats = self.central.stats()
        stats["service"] = dict(sorted(self.counters.items()))
        self._publish(self.topic("central/stats"), stats, retain=True)

    def _error(self, kind: str, reason: str, topic: str, payload: bytes) -> None:
        log.warning("central: %s on %s: %s", kind, topic, reason)
        self._publish(self.topic("central/errors"), {
            "ts": utc_ts(), "kind": kind, "reason": reason, "topic": topic,
            "payload": payload[:256].decode("utf-8", "replace")[:256],
            "payload_size": len(payload)}, retain=False)

    # -- paho's thread ----------------------------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.warning("central: broker %s refused the connection: %s", self.url, reason_code)
            return
        self.counters["connects"] += 1
        log.info("central: connected to %s (session present: %s)", self.url,
                 flags.session_present)
        client.publish(self.topic("central/status"), self._status("online"), qos=1,
                       retain=True)
        client.subscribe([(self.topic("window/+/event"), 1),
                          (self.topic("ticket/request"), 1)])
        with self.lock:
            self._publish_desired(self.central.all_desired())
        self._connected.set()
        try:
            self.publish_stats()
        except Exception:
            log.exception("central: stats")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self._connected.is_set():
            log.warning("central: lost the broker %s: %s", self.url, reason_code)
        self._connected.clear()

    def _on_message(self, client, userdata, msg) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            self.counters["malformed"] += 1
            return
        payload = bytes(msg.payload)
        try:
            if topic == self.topic("ticket/request"):
                self._take_request(topic, payload)
            else:
                self._take_event(topic, payload)
        except _Bad as e:
            self.counters["malformed"] += 1
            self._error("bad-" + ("request" if topic.endswith("/request") else "event"),
                        str(e), topic, payload)
        except Exception as e:  # a bug must not stop the service (nor lose the message)
            self.counters["internal_errors"] += 1
            log.exception("central: handling %s", topic)
            self._error("internal-error", repr(e), topic, payload)

    def _take_event(self, topic: str, payload: bytes) -> None:
        parts = topic.split("/")
        if len(parts) != 6 or parts[3] != "window" or parts[5] != "event":
            raise _Bad("not an event topic")
        n = parts[4]
        if not n.isdigit() or n.startswith("0"):
            raise _Bad(f"window {n!r} in the topic: 1-999999 in plain decimal")
        event = _decode(payload)
        if not isinstance(event.get("id"), str) or not event["id"]:
            raise _Bad("id: missing or not a string")
        if event.get("window") != int(n):
            raise _Bad(f"window: {event.get('window')!r} is not the topic's window {n}")
        if event.get("type") not in ("key", "vote"):
            raise _Bad(f"type: {event.get('type')!r} is not key or vote")
        with self.lock:
            out, desired = self.central.handle_event(event)
            self._publish_desired(desired)
        self.counters["events"] += 1
        if out.duplicate:
            self.counters["duplicates"] += 1
            log.info("central: %s", out.reason)
        elif not out.ok:
            self.counters["rejected"] += 1
            self._error("event-rejected", out.reason or "rejected", topic, payload)

    def _take_request(self, topic: str, payload: bytes) -> None:
        req = _decode(payload)
        rid = req.get("id")
        if not isinstance(rid, str) or not 1 <= len(rid) <= 128:
            raise _Bad("id: a string of 1-128 characters expected")
        service = req.get("service")
        if not isinstance(service, str):
            raise _Bad(f"service: {service!r} is not a string")
        appointment = req.get("appointment", False)
        if not isinstance(appointment, bool):
            raise _Bad(f"appointment: {appointment!r} is not true or false")
        priority = req.get("priority", 0)
        if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 9:
            raise _Bad(f"priority: {priority!r} is not an integer 0-9")
        with self.lock:
            try:
                ticket, desired = self.central.issue(service, appointment=appointment,
                                                     priority=priority, request_id=rid)
            except QueueError as e:
                raise _Bad(str(e)) from None
            self._publish_desired(desired)
            answer = self._issued(rid, ticket)
        self.counters["tickets"] += 1
        self._publish(self.topic("ticket/issued"), answer, retain=False)

    def _issued(self, rid: str, t: Ticket) -> dict:
        out: dict[str, Any] = {"request_id": rid, "ticket": t.number,
                               "service": t.issued_service, "issued_ts": utc_ts(t.issued_at)}
        if t.state == "waiting":
            queue = self.central.queue.waiting([t.service])
            out["queue_position"] = next(i for i, q in enumerate(queue, 1) if q.tid == t.tid)
        return out

    # -- our thread -------------------------------------------------------------------------

    def _ticker(self) -> None:
        next_tick = next_stats = time.monotonic()
        while not self._stop.wait(min(self.tick_s, self.stats_s)):
            try:
                if time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + self.tick_s
                    with self.lock:
                        self._publish_desired(self.central.tick())
                if self.connected and time.monotonic() >= next_stats:
                    next_stats = time.monotonic() + self.stats_s
                    self.publish_stats()
            except Exception:
                self.counters["internal_errors"] += 1
                log.exception("central: tick")
