"""The central service on MQTT: events and ticket requests in, retained desired state out.

Design note
-----------
Operations: `CentralService(central, site, urls).start()` connects and serves until
`stop()`; `urls` is one broker URL or a list of them (the nodes of a cluster: on a lost
connection, or a failed attempt, the next one is tried). Topics (protocols/MQTT.md): it
subscribes ``window/+/event`` and ``ticket/request`` (QoS 1); each event goes to
`Central.handle_event`, each request to `Central.issue` (deduped by its ``id``, answered on
``ticket/issued``, or ``ticket/refused``); it also takes a staff app's logins and logouts on
``staff/session`` (answered on ``staff/session/result``); every desired payload that comes
back is published retained, QoS 1, on ``window/{n}/{kind}``, or with `desired="site"` in
one snapshot per site on ``desired``, at most every `desired_batch_s` (central/desired.py,
for a clustered broker). The live
statistics go retained on ``central/stats`` every `stats_s`, wait alerts on
``central/alerts`` (a visitor past `warn_s`, then past the norm), the birth and the last will on
``central/status``; malformed input and rejected events are logged, counted (`counters`)
and published on ``central/errors``.
Goals: nothing published that a restart could take back (Central commits first); a
redelivered event or request changes nothing; QoS 1 events published while the service
was away are delivered when it returns (a persistent session: stable client id, clean
start off or clean session off, MQTT 5 session expiry 7 days); every wait bounded.
Receipts (protocols/MQTT.md section 4a): after the commit, each gateway is told which of
its events the store now holds, on ``gw/{gateway}/receipt``, batched: at most
`receipt_batch` ids per message, sent at the latest `receipt_delay_s` after the first of
them was committed. A duplicate is receipted again (its receipt may be what was lost); an
event that is malformed but names its id and gateway is kept in the store's `bad_events`
and receipted, so a gateway does not resend it for ever. A gateway holds each event until
its receipt: that, not the broker's PUBACK, is what makes a broker crash lose nothing.
Plan: paho 2.x with its own network thread (`loop_start`) and its capped reconnect
backoff (`reconnect_min` doubling to `reconnect_max`). paho's thread only queues each
message; our worker thread takes every message queued (up to BATCH), applies them in
order, commits them in one transaction (one fsync for the batch: group commit), then
acknowledges them (manual PUBACK, so a broker still redelivers what a crash kept from the
store), publishes the desired state and queues the receipts. A third thread runs
`Central.tick` every `tick_s` and publishes the stats. One lock around `Central`; paho's
`publish` is safe from any thread under `loop_start`. On every connection: subscriptions,
then, once the broker has confirmed them (SUBACK), status online and `all_desired()`
retained (converge a broker that lost its retained messages). Online only after the
SUBACK, because gateways send their unconfirmed events again when they see it; and only if
it granted every subscription (a NATS node just after another died may refuse one: it is
asked again, backing off from 0.25 to 5 s).
Failover between URLs: one paho client for the service's life, pointed at the next URL by
`connect_async(next host)` from `on_disconnect` and `on_connect_fail` (paho's loop thread
then reconnects there after its backoff). Why not a fresh client per connection, as the
gateway's link does: the central's client holds nothing of its own to re-send in order
(events in are acked by the worker, not replayed), keeps its three threads instead of
making new ones on every failover, and the session it resumes lives in the cluster, not the
node, so re-sending its unacked publishes (desired state, receipts) to another node of the
same cluster is what MQTT asks. The price: every URL has the same scheme (TLS is set once
per paho client), checked at construction.
Many sites in one process (central/city.py): `ticker=False` leaves out the third thread;
the owner calls `tick_due()` of every service from one thread of its own instead.
`stop(offline=False)` leaves without a word (a clean DISCONNECT: no last will either),
for a worker that lost a site to another: its "offline" must not overwrite the new
owner's "online".

Example (needs a broker, so not a doctest)::

    central = Central(config.queue, "central.db")
    with CentralService(central, "msk-01", "mqtt://127.0.0.1:1883"):
        signal.pause()
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from hallgate.protocols.receipts import MAX_IDS, make_receipt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from hallgate.nodelay import no_delay

from .clock import utc_ts
from .desired import DesiredOut
from .messages import (
    GATEWAY_NAME,
    Malformed,
    check_event,
    decode,
    issued_answer,
    request_id,
    ticket_request,
)
from .queue import Desired, QueueError, Refused
from .service import Central

__all__ = ["CentralService", "utc_ts"]

log = logging.getLogger(__name__)

SESSION_EXPIRY = 7 * 24 * 3600
BATCH = 500  # messages applied and committed in one transaction, at most


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


class CentralService:
    """`Central` wired to a broker. Counters in `counters` (events, duplicates, rejected,
    malformed, tickets, published, connects)."""

    def __init__(self, central: Central, site: str, urls: str | list[str], *,
                 client_id: str | None = None, tick_s: float = 1.0, stats_s: float = 5.0,
                 protocol: str = "5", keepalive: int = 30, username: str | None = None,
                 password: str | None = None, reconnect_min: float = 0.2,
                 reconnect_max: float = 3.0, version: str = "0.1.0",
                 ca_file: str | None = None, cert_file: str | None = None,
                 key_file: str | None = None, receipt_batch: int = 200,
                 receipt_delay_s: float = 0.05, ticker: bool = True,
                 desired: str = "windows", desired_batch_s: float = 0.25) -> None:
        if isinstance(urls, str):
            urls = [urls]
        self.brokers: list[tuple[str, str, int]] = []  # (url, host, port)
        for url in urls:
            parts = urlsplit(url)
            try:
                port = parts.port
            except ValueError:
                port = -1
            if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname or port == -1:
                raise ValueError(f"broker url {url!r}: mqtt://host[:port] or "
                                 "mqtts://host[:port]")
            self.brokers.append((url, parts.hostname,
                                 port or (8883 if parts.scheme == "mqtts" else 1883)))
        if not self.brokers:
            raise ValueError("no broker url")
        if len({u.split(":", 1)[0] for u, _, _ in self.brokers}) > 1:
            raise ValueError(f"broker urls {list(urls)}: all mqtt:// or all mqtts://")
        if protocol not in ("5", "3.1.1"):
            raise ValueError(f"protocol {protocol!r}: '5' or '3.1.1'")
        self.central = central
        self.site = site
        self.urls = [u for u, _, _ in self.brokers]
        self._broker = 0  # index in self.brokers of the one connected or tried
        self.tls = self.urls[0].startswith("mqtts://")
        self.ticker = ticker
        self._next_tick = self._next_stats = 0.0
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
        self._worker: threading.Thread | None = None
        self._messages: queue.SimpleQueue = queue.SimpleQueue()  # (topic, payload, mid, qos)
        self._sub_mid: int | None = None
        self._connection = 0  # connections made (paho's thread): stale re-subscribes skip
        self._sub_refusals = 0
        self._sub_lock = threading.Lock()
        self._leaving = False  # stop(offline=False): the site goes to another worker
        if not 1 <= receipt_batch <= MAX_IDS:
            raise ValueError(f"receipt_batch {receipt_batch}: 1-{MAX_IDS}")
        self.receipt_batch = receipt_batch
        self.receipt_delay_s = receipt_delay_s
        self._receipts: dict[str, list[str]] = {}  # gateway -> ids committed, not receipted
        self._receipts_since: float | None = None  # monotonic time of the oldest waiting id
        self._after_commit: list[tuple[str, Any]] = []  # (topic, payload) of the batch
        self.desired = DesiredOut(self.topic, lambda t, p: self._publish(t, p, retain=True),
                                  shape=desired, batch_s=desired_batch_s)
        v5 = protocol == "5"
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                        protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
                        clean_session=None if v5 else False)
        c.enable_logger(logging.getLogger(__name__ + ".paho"))
        no_delay(c)  # a window's states go out together, not 40 ms apart (hallgate/nodelay.py)
        c.reconnect_delay_set(reconnect_min, reconnect_max)  # type: ignore[arg-type]
        c.max_queued_messages_set(0)
        c.max_inflight_messages_set(100)
        c.manual_ack_set(True)  # PUBACK after the commit (the worker acks)
        if username is not None:
            c.username_pw_set(username, password)
        if self.tls:  # a client certificate: the secured broker's identity (hardware/mosquitto)
            c.tls_set(ca_certs=ca_file, certfile=cert_file, keyfile=key_file)
        c.will_set(self.topic("central/status"), self._status("offline", "connection-lost"),
                   qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_connect_fail = self._on_connect_fail
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        self.client = c

    # -- topics -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The broker connected to (or being tried)."""
        return self.brokers[self._broker][0]

    @property
    def host(self) -> str:
        return self.brokers[self._broker][1]

    @property
    def port(self) -> int:
        return self.brokers[self._broker][2]

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
        self._connect_async()
        self.client.loop_start()
        self._thread = threading.Thread(target=self._ticker, name="hallgate-central-tick",
                                        daemon=True)
        if self.ticker:
            self._thread.start()
        self._worker = threading.Thread(target=self._work, name="hallgate-central-worker",
                                        daemon=True)
        self._worker.start()
        return self

    def _connect_async(self) -> None:
        """Points paho at the current broker; its loop thread connects."""
        kw: dict[str, Any] = {}
        if self.protocol == "5":
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = SESSION_EXPIRY
            kw = {"clean_start": False, "properties": props}
        self.client.connect_async(self.host, self.port, self.keepalive, **kw)

    def _next_broker(self) -> None:
        """paho's thread, after a lost connection or a failed attempt: the next URL."""
        if len(self.brokers) > 1 and not self._stop.is_set():
            self._broker = (self._broker + 1) % len(self.brokers)
            self._connect_async()

    def stop(self, timeout: float = 5.0, *, offline: bool = True) -> bool:
        """Publishes offline (waits for its PUBACK), disconnects, ends both threads, all
        within about `timeout` s. True if the offline status was acknowledged.
        `offline=False`: a silent clean disconnect (no status, no will), and the messages
        queued but not committed are left to the broker (not acked: redelivered to the
        site's next owner)."""
        if self._thread is None:
            return False
        deadline = time.monotonic() + timeout
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(max(0.1, timeout / 4))
        if self._worker is not None:
            if not offline:
                self._drop_queued()
                self._leaving = True  # the next owner sends the whole desired state
            self._messages.put(None)  # wakes the worker: it commits, acks, receipts, ends
            self._worker.join(max(0.1, timeout / 4))
        acked = False
        if self.connected and offline:
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

    def _drop_queued(self) -> None:
        while True:
            try:
                self._messages.get_nowait()
            except queue.Empty:
                return

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

    def _publish_desired(self, desired: list[Desired], *, now: bool = False) -> None:
        if self.desired.add(desired, now=now) and threading.current_thread() is not self._worker:
            self._messages.put(())  # a snapshot waits: the worker sends it when due

    def publish_stats(self) -> None:
        with self.lock:
            stats = self.central.stats()
        stats["service"] = dict(sorted(self.counters.items()))
        # window payloads changed, and the messages that carried them (fewer: "site")
        stats["service"].update(desired_changes=self.desired.changes,
                                desired_messages=self.desired.messages)
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
        self._connection += 1
        self._subscribe(self._connection)

    def _subscribe(self, connection: int) -> None:
        """Our subscriptions, on connection number `connection` (nothing if it is gone)."""
        if connection != self._connection or self._stop.is_set():
            return
        with self._sub_lock:  # the SUBACK must find its mid (a timer's call races paho's)
            _, self._sub_mid = self.client.subscribe([(self.topic("window/+/event"), 1),
                                                      (self.topic("ticket/request"), 1),
                                                      (self.topic("staff/session"), 1)])

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        with self._sub_lock:
            if mid != self._sub_mid:
                return
        refused = [code for code in reason_codes if code.is_failure]
        if refused:
            # Not subscribed: not online either (gateways would send into the void).
            # Seen on a NATS cluster just after a node died: its JetStream consumer for
            # the subscription could not be made yet. Asked again, backing off to 5 s.
            self.counters["subscriptions_refused"] += 1
            delay = min(5.0, 0.25 * 2 ** min(self._sub_refusals, 5))
            self._sub_refusals += 1
            log.error("central: the broker refused a subscription (%s); again in %.1f s",
                      refused[0], delay)
            timer = threading.Timer(delay, self._subscribe, (self._connection,))
            timer.daemon = True
            timer.start()
            return
        self._sub_refusals = 0
        # Now subscribed: gateways that see this send their unconfirmed events again.
        client.publish(self.topic("central/status"), self._status("online"), qos=1,
                       retain=True)
        with self.lock:
            self._publish_desired(self.central.all_desired(), now=True)
        self._connected.set()
        try:
            self.publish_stats()
        except Exception:
            log.exception("central: stats")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self._connected.is_set():
            log.warning("central: lost the broker %s: %s", self.url, reason_code)
        self._connected.clear()
        self._next_broker()

    def _on_connect_fail(self, client, userdata) -> None:
        log.info("central: no connection to %s", self.url)
        self._next_broker()

    def _on_message(self, client, userdata, msg) -> None:
        # paho's thread: only queue it (acknowledged by the worker, after the commit)
        self._messages.put((msg.topic, bytes(msg.payload), msg.mid, msg.qos))

    def _work(self) -> None:
        """Applies queued messages in batches: one commit, then PUBACKs and receipts."""
        stopping = False
        while not stopping:
            wait = 0.5
            if self._receipts_since is not None:
                wait = max(0.0, self._receipts_since + self.receipt_delay_s - time.monotonic())
            snapshot_due = self.desired.due_in()
            if snapshot_due is not None:
                wait = min(wait, snapshot_due)
            try:
                first = self._messages.get(timeout=wait)
            except queue.Empty:
                first = ()
            batch = [] if not first else [first]
            stopping = first is None
            while len(batch) < BATCH and not stopping:
                try:
                    item = self._messages.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                elif item:  # () only wakes the worker
                    batch.append(item)
            try:
                if batch:
                    self._apply(batch)
                self._send_receipts(force=stopping)
                self.desired.flush(force=stopping and not self._leaving)
            except Exception:
                self.counters["internal_errors"] += 1
                log.exception("central: worker")

    def _apply(self, batch: list) -> None:
        """Every message of the batch in order, one commit, then the acks and receipts."""
        errors: list[tuple] = []
        committed: list[tuple[str, str]] = []  # (gateway, id) of events now in the store
        with self.lock:
            for topic, payload, _, _ in batch:
                try:
                    committed.extend(self._take(topic, payload, errors))
                except Exception as e:  # a bug must not stop the service: no receipt
                    self.counters["internal_errors"] += 1
                    log.exception("central: handling %r", topic)
                    errors.append(("internal-error", repr(e), topic, payload))
            try:
                desired = self.central.commit()
            finally:
                answers, self._after_commit = self._after_commit, []
        # Committed (a failed commit raised: nothing acked, announced or receipted)
        for _, _, mid, qos in batch:
            if qos:
                self.client.ack(mid, qos)
        self._publish_desired(desired)
        for topic, answer in answers:
            self._publish(topic, answer, retain=False)
        for kind, reason, topic, payload in errors:
            self._error(kind, reason, topic, payload)
        if committed and self._receipts_since is None:
            self._receipts_since = time.monotonic()
        for gateway, event_id in committed:
            ids = self._receipts.setdefault(gateway, [])
            ids.append(event_id)
        self._send_receipts(force=False)

    def _take(self, topic: str, payload: bytes, errors: list) -> list[tuple[str, str]]:
        """One message applied to the queue (not committed); the (gateway, id) to receipt."""
        is_request = topic in (self.topic("ticket/request"), self.topic("staff/session"))
        try:
            if topic == self.topic("ticket/request"):
                self._take_request(topic, payload)
                return []
            if is_request:
                self._take_session(payload)
                return []
            return [self._take_event(topic, payload, errors)]
        except Malformed as e:
            self.counters["malformed"] += 1
            errors.append(("bad-request" if is_request else "bad-event", str(e), topic,
                           payload))
            return [] if is_request else self._keep_bad(topic, payload, e)

    def _keep_bad(self, topic: str, payload: bytes, bad: Malformed) -> list[tuple[str, str]]:
        """A malformed event that names its id and gateway is kept in the store (for a
        person to look at) and receipted: resending it would never make it valid."""
        event = bad.obj or {}
        eid, gateway = event.get("id"), event.get("gateway")
        if not (isinstance(eid, str) and 1 <= len(eid) <= 128 and isinstance(gateway, str)
                and GATEWAY_NAME.fullmatch(gateway)):
            return []
        self.central.keep_bad_event(eid, gateway, topic, str(bad), payload)
        return [(gateway, eid)]

    def _send_receipts(self, force: bool) -> None:
        """Receipts for what waits: a full batch at once, the rest once the oldest id has
        waited receipt_delay_s (or now, if `force`)."""
        if self._receipts_since is None:
            return
        due = force or time.monotonic() >= self._receipts_since + self.receipt_delay_s
        for gateway in list(self._receipts):
            ids = self._receipts[gateway]
            while len(ids) >= self.receipt_batch or (ids and due):
                chunk, ids[:] = ids[:self.receipt_batch], ids[self.receipt_batch:]
                self.client.publish(self.topic(f"gw/{gateway}/receipt"),
                                    make_receipt(gateway, chunk, utc_ts()), qos=1)
                self.counters["receipts"] += 1
            if not ids:
                del self._receipts[gateway]
        if not self._receipts:
            self._receipts_since = None

    def _take_event(self, topic: str, payload: bytes, errors: list) -> tuple[str, str]:
        event = check_event(topic, payload)
        out = self.central.apply_event(event, payload.decode("utf-8"))
        self.counters["events"] += 1
        if out.duplicate:
            self.counters["duplicates"] += 1
            log.info("central: %s", out.reason)
        elif not out.ok:
            self.counters["rejected"] += 1
            errors.append(("event-rejected", out.reason or "rejected", topic, payload))
        return event["gateway"], event["id"]

    def _take_request(self, topic: str, payload: bytes) -> None:
        rid, kwargs = ticket_request(payload, self.central.clock.now(), self.central.config.tz)
        try:
            ticket = self.central.apply_issue(request_id=rid, **kwargs)
        except Refused as e:  # the time of day, the slot: the kiosk says why
            self.counters["refused"] += 1
            self._after_commit.append((self.topic("ticket/refused"), {
                "ts": utc_ts(), "request_id": rid, "code": e.code, "reason": str(e)}))
            return
        except QueueError as e:
            raise Malformed(str(e)) from None
        self.counters["tickets"] += 1
        self._after_commit.append((self.topic("ticket/issued"),  # a ticket a restart
                                   issued_answer(self.central.queue, rid, ticket)))  # could
        # take back is never announced

    def _take_session(self, payload: bytes) -> None:
        """A staff app's login or logout; answered on staff/session/result after the
        commit (a redelivered request is a duplicate: answered again as it stands)."""
        req = decode(payload)
        rid = request_id(req)
        out = self.central.apply_session(req)
        self.counters["duplicates" if out.duplicate else "sessions" if out.ok
                      else "sessions_refused"] += 1
        n = req.get("window")
        w = self.central.queue.windows.get(n) if isinstance(n, int) else None
        answer: dict[str, Any] = {"ts": utc_ts(), "request_id": rid,
                                  "ok": out.ok or out.duplicate}
        if not out.ok and not out.duplicate:
            answer["reason"] = out.reason
        if w is not None:
            answer.update(window=w.n, operator=w.operator)
        self._after_commit.append((self.topic("staff/session/result"), answer))

    # -- our thread -------------------------------------------------------------------------

    def _ticker(self) -> None:
        while not self._stop.wait(min(self.tick_s, self.stats_s)):
            self.tick_due()

    def tick_due(self) -> None:
        """`Central.tick` if `tick_s` has passed since the last, the stats if `stats_s`
        has: what the ticker thread runs, or the owner of many services (`ticker=False`)
        from one thread of its own. Never raises."""
        if self._stop.is_set():
            return
        try:
            if time.monotonic() >= self._next_tick:
                self._next_tick = time.monotonic() + self.tick_s
                with self.lock:
                    desired, alerts = self.central.tick()
                    self._publish_desired(desired)
                for alert in alerts:
                    self.counters["alerts"] += 1
                    self._publish(self.topic("central/alerts"),
                                  {"ts": utc_ts(), **alert}, retain=False)
            if self.connected and time.monotonic() >= self._next_stats:
                self._next_stats = time.monotonic() + self.stats_s
                self.publish_stats()
        except Exception:
            self.counters["internal_errors"] += 1
            log.exception("central: tick")
