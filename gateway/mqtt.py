"""The gateway's MQTT link: events up, desired state down (contract: protocols/MQTT.md).

Design note
-----------
Operations: the daemon makes one `MqttLink`, `start()`s it and feeds it events from the
durable outbox with `publish_event(window, payload, token, event_id)` while `room > 0`; the
link calls `on_delivered([token, ...])` once those events are confirmed, and only then, so
the daemon deletes the outbox rows there. Confirmed means, by `delivery`: "receipt" (the
default) the central service's receipt names the event (protocols/MQTT.md section 4a: it is
in the central's database); "puback" the broker acknowledged it (for a central that sends no
receipts: a broker crash then loses what it acknowledged and had not saved). Desired state
arrives as typed commands through `on_command(window, kind, command)`; device tables and
faults go out with `publish_devices` and `publish_error`. `stop()` says offline.

Goals:
- Nothing lost, nothing hidden in RAM: an event leaves the outbox only when confirmed. The
  link holds at most `max_unconfirmed` events (its window; at most `max_inflight` of them
  on the wire without a PUBACK); every unconfirmed event is sent again, oldest first, on
  every new connection, when the central's status says `online` anew (it restarted or
  reconnected and may have lost what it had not committed), and `receipt_timeout` after
  its PUBACK without a receipt (doubling to 8x; not while the central says offline, when
  the broker keeps the events for it). So the order of first arrivals per window is the
  feed order, and a duplicate (a lost receipt or PUBACK) is the same payload with the same
  id: receivers dedupe by id.
- Bad input never stops the link: a malformed command or receipt is answered on the errors
  topic with the topic and the reason (gateway/commands.py, protocols/receipts.py); error
  reports are rate-limited per kind and what is held back is summed up, never dropped
  unsaid (gateway/errorlimit.py); a missing broker is retried, a callback that raises is
  logged.
- A failure says what to fix: a TLS one in plain words (gateway/tls.py: the broker's
  certificate from an unknown CA, expired or for another host name; the broker refused
  ours, with what our certificate file shows), in `last_error` and the log.
- Every wait is bounded: reconnect backoff from `reconnect_min` doubling to `reconnect_max`
  (0.2 s to 3 s), a CONNACK within `connect_timeout`, `stop(timeout)`.

Plan:
- One thread of our own ("hallgate-mqtt-GATEWAY") owns paho: it connects, runs paho's
  external-loop calls (loop_read / loop_write / loop_misc) under select() on the socket and a
  wake-up socketpair, and makes every paho call. Other threads only put work under a lock
  (the window, the device table, queued errors, window changes) and wake the loop. Why:
  paho's client is not safe to write from two threads when no loop_start() thread exists
  (two writers can pop packets out of order), and paho calls on_publish holding its own
  mutex, so a lock taken both there and around publish() would deadlock. Our callbacks
  run in this thread, never inside paho's callbacks: paho's callbacks only record what came.
- A fresh paho client per connection attempt: a new URL may need TLS or not (paho configures
  TLS once per client), and a fresh client has no in-RAM retransmission queue of its own, so
  the only re-send is ours, from the window, in order. The MQTT session still persists on
  the broker (stable client id, clean start off, session expiry for MQTT 5), so QoS 1
  commands published while the gateway was away are delivered when it comes back.
- On every connection: retained birth, subscribe the desired state (the broker then sends
  the retained desired state again: converge, not replay) and, with receipts, our receipt
  topic and central/status; the last device table, queued errors, then the window's events
  in order. At most `max_inflight` events without a PUBACK, fewer if the broker's Receive
  Maximum (MQTT 5) says so.
- TLS failures: a broker certificate we reject fails paho's connect() (the handshake is
  ours: an ssl.SSLCertVerificationError with OpenSSL's verify code). The broker's verdict
  on our certificate comes later under TLS 1.3, after our side of the handshake is done: an
  alert, or a bare close, on the first read, which paho only logs; `on_log` keeps paho's
  last error of the connection, and a close before any CONNACK is explained from it and
  from our own certificate file (expired? issued by a CA that is not in ca_file? none?).
- Desired state: which topics are subscribed ("windows", "kinds" or "site", the config's
  `[mqtt] subscribe`) and what a message on them means is gateway/desired.py's.
- Failover: URLs are tried in turn; the next one right after a failure or a lost connection,
  the backoff delay after each full pass without a connection.

How a daemon feeds it: from one thread, whenever woken (a new outbox row, on_delivered,
on_connection), hand over the next outbox rows after the last one fed, at most `room` of
them, in outbox order; never one that is in `pending()`. The link re-sends its own window,
so the daemon does not re-feed; after a daemon restart (a new link) it starts again from
the oldest row in the outbox.

Example (needs a broker, so not a doctest)::

    link = MqttLink("msk-01", "gw-1", ["mqtt://127.0.0.1:1883"], windows=[1, 2],
                    on_delivered=lambda seqs: outbox.delete(*seqs),
                    on_command=reconciler.apply)
    with link:
        link.publish_event(1, entry.payload, token=entry.seq, event_id=entry.id)
"""

import collections
import contextlib
import json
import logging
import random
import re
import select
import socket
import ssl
import threading
import time
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from hallgate.gateway import desired
from hallgate.gateway.commands import utc_ts
from hallgate.gateway.errorlimit import ErrorLimiter
from hallgate.gateway.tls import Tls, explain_early_close, explain_tls_error, explain_tls_files
from hallgate.protocols import receipts
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from hallgate import __version__
from hallgate.nodelay import no_delay

log = logging.getLogger(__name__)

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
ERROR_QUEUE = 100  # errors waiting for a connection; past that the oldest go (counted)
ERROR_PAYLOAD_CHARS = 256  # how much of an offending payload an error message quotes
MAX_PACKET = desired.MAX_SNAPSHOT  # 256 KiB; MQTT 5: the broker sends us nothing larger
SUBSCRIBE_MODES = desired.MODES  # desired state: per window, per kind (window/+), per site
RECEIVE_RESERVE = 4  # of the broker's Receive Maximum, kept for status, devices, errors
_HOST = re.compile(r"[A-Za-z0-9._:%-]+")  # a DNS name, IPv4, or IPv6 (urlsplit drops the [])
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


class LinkFull(RuntimeError):
    """publish_event() with `max_inflight` events already in the link: wait for room."""


@dataclass(frozen=True)
class BrokerUrl:
    url: str
    host: str
    port: int
    tls: bool


def parse_url(url):
    """`mqtt://host[:port]` or `mqtts://host[:port]` -> BrokerUrl; ValueError otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS:
        raise ValueError(f"broker url {url!r}: scheme must be mqtt:// or mqtts://")
    if not parts.hostname:
        raise ValueError(f"broker url {url!r}: no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(
            f"broker url {url!r}: only scheme://host[:port] (credentials go in the config)"
        )
    if any(c.isspace() for c in parts.hostname) or not _HOST.fullmatch(parts.hostname):
        raise ValueError(f"broker url {url!r}: host {parts.hostname!r} is not a host name "
                         "or an IP address")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"broker url {url!r}: bad port (1-65535)") from None
    if port == 0:
        raise ValueError(f"broker url {url!r}: port 0 (1-65535)")
    port = port or DEFAULT_PORTS[parts.scheme]
    return BrokerUrl(url, parts.hostname, port, parts.scheme == "mqtts")


def check_name(what, value):
    """site and gateway ids are topic levels: letters, digits, '.', '_', '-' (1-64)."""
    if not isinstance(value, str) or not 1 <= len(value) <= 64 or not set(value) <= _NAME_CHARS:
        raise ValueError(f"{what} {value!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return value


def check_window(window):
    if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= 999999:
        raise ValueError(f"window {window!r}: an integer 1-999999")
    return window


def _json(obj):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# -- TLS failures in plain words ---------------------------------------------------------------


class LinkStats:
    """Counters of one link (plain ints, written by the link's thread)."""

    __slots__ = (
        "published",  # event PUBLISH packets sent, re-sends included
        "resent",  # ... of which re-sends after a lost connection
        "delivered",  # events confirmed (on_delivered called): by receipt, or PUBACK
        "receipts",  # receipt messages taken from the central service
        "receipt_unknown",  # ids in receipts that the link does not hold (repeats, late)
        "receipts_bad",  # malformed receipts, answered on the errors topic
        "resent_timeout",  # re-sends of events PUBACKed but without a receipt in time
        "resent_central",  # re-sends because the central service (re)started
        "refused",  # events the broker answered with a failure reason code (MQTT 5)
        "connects",  # connections that got a successful CONNACK
        "reconnects",  # ... after the first
        "connect_failures",  # attempts that failed: refused, unreachable, TLS, no CONNACK
        "losses",  # established connections that dropped
        "commands",  # valid commands passed to on_command (None for a cleared topic included)
        "rejected",  # malformed commands answered on the errors topic
        "foreign",  # "kinds", "site": commands (window, kind) for windows not served here
        "snapshots",  # subscribe="site": site snapshots accepted (rejected ones: `rejected`)
        "unchanged",  # ... their commands skipped: the same JSON as passed on last time
        "subscribe_refused",  # subscriptions the broker refused (each asked again)
        "errors_published",
        "errors_dropped",  # errors that waited for a connection and were pushed out
        "errors_suppressed",  # errors held back by the rate limit (sent as summaries)
        "callback_errors",  # our callers' callbacks that raised
    )

    def __init__(self):
        for name in LinkStats.__slots__:
            setattr(self, name, 0)

    def asdict(self):
        return {name: getattr(self, name) for name in LinkStats.__slots__}

    def __repr__(self):
        return f"LinkStats({self.asdict()!r})"


class _Entry:
    """An event in the window: fed, not yet confirmed (receipt, or PUBACK)."""

    __slots__ = ("token", "topic", "payload", "event_id", "mid", "sends", "refused", "acked",
                 "due", "timeouts")

    def __init__(self, token, topic, payload, event_id):
        self.token = token
        self.topic = topic
        self.payload = payload
        self.event_id = event_id
        self.mid = None  # packet id on the current connection; None: not sent on it
        self.sends = 0
        self.refused = False  # the broker said no on this connection: retry on the next
        self.acked = False  # confirmed; leaves the window once on_delivered has returned
        self.due = None  # receipt mode: PUBACKed; sent again at this monotonic time
        self.timeouts = 0  # re-sends for want of a receipt since the last full re-send


class MqttLink:
    """The gateway's connection to the broker (see the module's design note).

    Callbacks run in the link's own thread and must not block long; they may call any
    method of the link:
      on_command(window: int, kind: "display"|"panel"|"vote", command | None)
      on_delivered(tokens: list)               -- these events are confirmed: by the
                                                  central's receipt (delivery="receipt") or
                                                  the broker's PUBACK ("puback"); once each
      on_connection(connected: bool, url: str) -- after the birth and subscriptions are sent
    """

    def __init__(
        self,
        site,
        gateway,
        urls,
        *,
        protocol="5",
        username=None,
        password=None,
        tls=None,
        keepalive=30,
        client_id=None,
        on_command=None,
        on_delivered=None,
        on_connection=None,
        windows=(),
        subscribe="windows",
        max_inflight=32,
        delivery="receipt",
        max_unconfirmed=2000,
        receipt_timeout=30.0,
        reconnect_min=0.2,
        reconnect_max=3.0,
        connect_timeout=5.0,
        session_expiry=7 * 24 * 3600,
        version=__version__,
        boot_id=None,
    ):
        self.site = check_name("site", site)
        self.gateway = check_name("gateway", gateway)
        if isinstance(urls, str):
            urls = [urls]
        self.urls = [parse_url(u) for u in urls]
        if not self.urls:
            raise ValueError("no broker url")
        if protocol not in ("5", "3.1.1"):
            raise ValueError(f"protocol {protocol!r}: '5' or '3.1.1'")
        self.protocol = protocol
        if isinstance(tls, dict):
            tls = Tls(**tls)
        if tls is not None:
            tls.check()
        self.tls = tls
        self.username = username
        self.password = password
        self.keepalive = int(keepalive)
        self.client_id = client_id or f"hallgate-{site}-{gateway}"
        self.on_command = on_command
        self.on_delivered = on_delivered
        self.on_connection = on_connection
        if not 1 <= max_inflight <= 65535:
            raise ValueError("max_inflight: 1-65535")
        if delivery not in ("receipt", "puback"):
            raise ValueError(f"delivery {delivery!r}: 'receipt' or 'puback'")
        if subscribe not in SUBSCRIBE_MODES:
            raise ValueError(f"subscribe {subscribe!r}: 'windows' (a topic per window and "
                             f"kind), 'kinds' (window/+/kind) or 'site' (one snapshot of the "
                             f"site's desired state)")
        self.subscribe = subscribe
        self.max_inflight = max_inflight  # PUBLISH packets on the wire without a PUBACK
        self.delivery = delivery
        # Events held until confirmed: by receipt, many more than are on the wire.
        self.max_unconfirmed = max(max_unconfirmed, max_inflight) if delivery == "receipt" \
            else max_inflight
        self.receipt_timeout = receipt_timeout
        self.reconnect_min = reconnect_min
        self.reconnect_max = max(reconnect_max, reconnect_min)
        self.connect_timeout = connect_timeout
        self.session_expiry = session_expiry
        self.version = version
        self.boot_id = boot_id or uuid.uuid4().hex
        self.stats = LinkStats()
        self.last_error = None  # the latest failure, "URL: why" (kept after a reconnect)

        self.base = f"hall/v1/{site}"
        self.status_topic = f"{self.base}/gw/{gateway}/status"
        self.devices_topic = f"{self.base}/gw/{gateway}/devices"
        self.errors_topic = f"{self.base}/gw/{gateway}/errors"
        self.receipt_topic = f"{self.base}/gw/{gateway}/receipt"
        self.central_status_topic = f"{self.base}/central/status"
        self.central = None  # receipt mode: (state, boot_id, ts) of the central's status

        # Shared with callers' threads, under _lock.
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified when the window empties
        self._window = collections.OrderedDict()  # token -> _Entry, in feed order
        self._by_id = {}  # receipt mode: event id -> token
        self._unsent = collections.deque()  # tokens to send on this connection, in order
        self._windows = frozenset(check_window(w) for w in windows)
        self._windows_changed = False
        # The link thread's: desired-state topics and messages (gateway/desired.py).
        self._desired = desired.DesiredSubscription(site, subscribe, self._windows, gateway)
        self._devices_last = None  # payload of the last device table (re-sent on connect)
        self._devices_due = False
        self._errors = collections.deque()
        # A burst big enough for every retained command of a large hall at once (36
        # windows x 3 kinds after a central's bug), then 10 a second; the rest summed up.
        self._limiter = ErrorLimiter(burst=128, per_second=10.0)
        # on_error(kind, reason, extra): told of every report before the rate limit (the
        # technician's page keeps the recent ones); it must be quick and must not raise.
        self.on_error = None
        self._dropped_said = 0  # of stats.errors_dropped, how many a message has reported

        # The link thread's own.
        self._thread = None
        self._stopping = False
        self._stop_deadline = None
        self._stopped_clean = False
        self._client = None
        self._url = None
        self._connected = threading.Event()
        self._connack = None  # (reason_code, properties) from paho's on_connect
        self._acks = []  # (mid, reason_code) from paho's on_publish
        self._inbox = []  # (topic, payload) from paho's on_message
        self._suback = []  # (mid, reason codes) from paho's on_subscribe
        self._paho_error = None  # the last error paho logged on this connection (a read's)
        self._mid_token = {}  # packet id -> token of the events sent on this connection
        self._on_wire = 0  # events sent on this connection and not yet acknowledged
        self._gate = max_inflight  # at most this many on the wire (the broker's limit)
        self._sub_mids = {}  # mid -> topics of a SUBSCRIBE on this connection
        self._subscribed = set()
        self._dropped_topics = set()  # unsubscribed on purpose: late messages are dropped
        self._refused = {}  # topic -> (when to ask again, refusals in a row), this connection
        self._offline_mid = None
        self._timeouts_checked = 0.0  # monotonic time of the last receipt-timeout scan
        self._summaries_checked = 0.0  # ... of the last look for error summaries
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    # -- public face -----------------------------------------------------------------------

    @property
    def connected(self):
        """True between a successful CONNACK and the loss of that connection."""
        return self._connected.is_set()

    @property
    def url(self):
        """The URL of the current connection, or None."""
        return self._url.url if self._url is not None and self.connected else None

    @property
    def in_flight(self):
        """Events fed and not yet confirmed (sent, waiting to be sent, or to be re-sent)."""
        return len(self._window)

    @property
    def room(self):
        """How many more events publish_event() takes now."""
        return self.max_unconfirmed - len(self._window)

    def unconfirmed(self):
        """(fed but not yet sent on this connection, sent and awaiting confirmation)."""
        with self._lock:
            sent = sum(1 for e in self._window.values() if e.mid is not None or e.due)
            return len(self._window) - sent, sent

    @property
    def central_online(self):
        """Receipt mode: True/False from the central's retained status; None: not known."""
        return None if self.central is None else self.central[0] == "online"

    @property
    def windows(self):
        return sorted(self._windows)

    def pending(self):
        """Tokens in the link, oldest first: what a daemon must not feed again."""
        with self._lock:
            return list(self._window)

    def event_topic(self, window):
        return f"{self.base}/window/{window}/event"

    def publish_event(self, window, payload, token, event_id=None):
        """Queues one event (JSON bytes made by the outbox) for window `window`; sent at once
        when connected, else on the next connection. `token` (hashable, unique among the
        events in the link) comes back in on_delivered([token, ...]) once the event is
        confirmed: when a receipt names `event_id` (the payload's id; required in receipt
        mode), or on the PUBACK in puback mode.
        Raises LinkFull when `room` is 0, ValueError for a token already in the link."""
        check_window(window)
        if not isinstance(payload, bytes | bytearray):
            raise TypeError("payload: bytes (the event's JSON)")
        if self.delivery == "receipt" and not isinstance(event_id, str):
            raise ValueError("event_id: the event's id is needed to match its receipt")
        with self._lock:
            if token in self._window:
                raise ValueError(f"token {token!r} is already in the link")
            if len(self._window) >= self.max_unconfirmed:
                raise LinkFull(f"{len(self._window)} events unconfirmed (max_unconfirmed)")
            self._window[token] = _Entry(token, self.event_topic(window), bytes(payload),
                                         event_id)
            if self.delivery == "receipt":
                self._by_id[event_id] = token
            self._unsent.append(token)
        self._wake()

    def publish_devices(self, devices):
        """The device table (a list of dicts, protocols/schemas/devices.schema.json),
        retained on gw/{gateway}/devices; the latest one is re-sent on every connection."""
        payload = _json({"ts": utc_ts(), "gateway": self.gateway, "devices": list(devices)})
        with self._lock:
            self._devices_last = payload
            self._devices_due = True
        self._wake()

    def publish_error(self, kind, reason, topic=None, payload=None, **extra):
        """A fault for gw/{gateway}/errors (QoS 1, not retained). Rate-limited per kind
        (gateway/errorlimit.py): past a burst, reports are counted and summed up in one
        message ("N more like this in the last T s"). While disconnected up to ERROR_QUEUE
        errors wait for the next connection; past that the oldest are dropped, counted in
        stats.errors_dropped, and said in one message once connected."""
        if self.on_error is not None:
            self.on_error(kind, reason, extra)
        with self._lock:
            if not self._limiter.offer(str(kind), str(reason), time.monotonic()):
                self.stats.errors_suppressed += 1
                return
        self._queue_error({"ts": utc_ts(), "gateway": self.gateway, "kind": str(kind),
                           "reason": str(reason), **extra}, topic, payload)

    def _queue_error(self, msg, topic=None, payload=None):
        if topic is not None:
            msg["topic"] = topic
        if payload is not None:
            raw = bytes(payload) if not isinstance(payload, str) else payload.encode()
            text = raw.decode("utf-8", errors="replace")
            msg["payload"] = text[:ERROR_PAYLOAD_CHARS]
            msg["payload_size"] = len(raw)
        data = _json(msg)
        with self._lock:
            if len(self._errors) >= ERROR_QUEUE:
                self._errors.popleft()
                self.stats.errors_dropped += 1
            self._errors.append(data)
        self._wake()

    def _error_summaries(self):
        """What the rate limit held back, and what the queue dropped, said in messages."""
        with self._lock:
            summaries = self._limiter.take_summaries(time.monotonic())
            dropped = self.stats.errors_dropped - self._dropped_said
            self._dropped_said = self.stats.errors_dropped
        for s in summaries:
            self._queue_error({"ts": utc_ts(), "gateway": self.gateway, **s})
        if dropped:
            self._queue_error({"ts": utc_ts(), "gateway": self.gateway, "kind": "errors-dropped",
                               "reason": f"{dropped} error report(s) dropped while the broker "
                                         f"was away (at most {ERROR_QUEUE} wait)",
                               "suppressed": dropped})

    def set_windows(self, windows):
        """Serve these windows from now on. "windows": subscribes the new ones, unsubscribes
        the rest; "kinds" and "site" change no subscription ("site": a new window's desired
        state comes at once from the last snapshot)."""
        new = frozenset(check_window(w) for w in windows)
        with self._lock:
            self._windows = new
            self._windows_changed = True
        self._wake()

    def wait_connected(self, timeout):
        return self._connected.wait(timeout)

    def wait_delivered(self, timeout):
        """Blocks until every event in the link is confirmed; False after `timeout` s."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._window, timeout)

    def start(self):
        if self._thread is not None:
            raise RuntimeError("MqttLink already started")
        self._thread = threading.Thread(
            target=self._run, name=f"hallgate-mqtt-{self.gateway}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout=5.0):
        """Publishes the retained offline status (waiting for its PUBACK), disconnects and
        ends the link's thread, all within `timeout` seconds. True if offline was
        acknowledged; events not yet acknowledged stay in the outbox, not here."""
        if self._thread is None:
            return False
        self._stop_deadline = time.monotonic() + timeout
        self._stopping = True
        self._wake()
        self._thread.join(timeout + 0.5)
        if self._thread.is_alive():
            log.warning("mqtt link thread did not end within %.1f s", timeout)
        self._wake_r.close()
        self._wake_w.close()
        return self._stopped_clean

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self):
        state = f"connected to {self.url}" if self.connected else "disconnected"
        return f"MqttLink({self.site}/{self.gateway}, {state}, {self.in_flight} in flight)"

    # -- the link's thread -----------------------------------------------------------------

    def _wake(self):
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"\0")

    def _drain_wake(self):
        with contextlib.suppress(BlockingIOError, OSError):
            while self._wake_r.recv(4096):
                pass

    def _sleep(self, seconds):
        """Waits `seconds`, or less if stop() is called."""
        deadline = time.monotonic() + seconds
        while not self._stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            with contextlib.suppress(OSError, ValueError):
                select.select([self._wake_r], [], [], left)
            self._drain_wake()

    def _call(self, callback, *args):
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:
            self.stats.callback_errors += 1
            log.exception("mqtt link: callback %r raised", callback)

    def _run(self):
        index = 0
        failures = 0  # failed attempts since the last connection
        delay = self.reconnect_min
        while not self._stopping:
            url = self.urls[index]
            try:
                outcome = self._session(url)
            except Exception as e:  # a bug of ours or paho's must not end the link
                log.exception("mqtt: unexpected error on %s", url.url)
                self._client = None
                if self.connected:
                    self._on_lost(url, f"internal error: {e!r}")
                    outcome = "lost"
                else:
                    self._fail(url, f"internal error: {e!r}")
                    outcome = "failed"
            if self._stopping:
                break
            index = (index + 1) % len(self.urls)
            if outcome == "lost":
                failures = 0
                delay = self.reconnect_min
                self._sleep(self.reconnect_min * random.uniform(0.5, 1.0))
                continue
            failures += 1
            if failures % len(self.urls) == 0:  # a whole pass without a connection
                self._sleep(delay * random.uniform(0.75, 1.0))  # jitter: halls not in step
                delay = min(delay * 2, self.reconnect_max)

    def _new_client(self, url):
        v5 = self.protocol == "5"
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
            clean_session=None if v5 else False,
            reconnect_on_failure=False,
        )
        client.enable_logger(logging.getLogger(__name__ + ".paho"))
        no_delay(client)  # events of a burst go out at once (hallgate/nodelay.py)
        client.connect_timeout = self.connect_timeout
        client.max_inflight_messages_set(0)  # no limit in paho: _pump keeps to self._gate
        client.max_queued_messages_set(0)
        if self.username is not None:
            client.username_pw_set(self.username, self.password)
        if url.tls:
            tls = self.tls or Tls()
            client.tls_set(ca_certs=tls.ca, certfile=tls.cert, keyfile=tls.key)
        client.will_set(
            self.status_topic, self._status("offline", "connection-lost"), qos=1, retain=True
        )
        client.on_connect = self._paho_connect
        client.on_publish = self._paho_publish
        client.on_message = self._paho_message
        client.on_subscribe = self._paho_subscribe
        client.on_log = self._paho_log
        return client

    def _status(self, state, reason=None):
        msg = {"state": state, "version": self.version, "boot_id": self.boot_id, "ts": utc_ts()}
        if reason is not None:
            msg["reason"] = reason
        return _json(msg)

    # paho's callbacks (in our thread, inside paho's loop calls): record only.
    def _paho_connect(self, client, userdata, flags, reason_code, properties):
        self._connack = (reason_code, properties)

    def _paho_publish(self, client, userdata, mid, reason_code, properties):
        self._acks.append((mid, reason_code))

    def _paho_message(self, client, userdata, message):
        try:
            topic = message.topic
        except UnicodeDecodeError:
            return
        self._inbox.append((topic, message.payload))

    def _paho_subscribe(self, client, userdata, mid, reason_codes, properties):
        self._suback.append((mid, reason_codes))

    def _paho_log(self, client, userdata, level, text):
        if level == paho.MQTT_LOG_ERR:
            self._paho_error = text  # e.g. "failed to receive on socket: [SSL: ...] ..."

    def _fail(self, url, why):
        self.stats.connect_failures += 1
        self.last_error = f"{url.url}: {why}"
        log.warning("mqtt: cannot connect to %s: %s", url.url, why)

    def _session(self, url):
        """One connection attempt and, if it succeeds, its life: 'failed', 'lost', 'stopped'."""
        self._connack = None
        self._acks.clear()
        self._inbox.clear()
        self._suback.clear()
        self._mid_token.clear()
        self._sub_mids.clear()
        self._subscribed.clear()
        self._dropped_topics.clear()
        self._refused.clear()
        self._offline_mid = None
        self._paho_error = None
        self._url = url
        try:
            client = self._new_client(url)
        except ssl.SSLError as e:  # tls_set: a file that is not PEM, a key of another cert
            self._fail(url, explain_tls_files(e, self.tls))
            return "failed"
        except (OSError, ValueError) as e:
            self._fail(url, e)
            return "failed"
        try:
            if self.protocol == "5":
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = self.session_expiry
                props.MaximumPacketSize = MAX_PACKET
                client.connect(
                    url.host, url.port, self.keepalive, clean_start=False, properties=props
                )
            else:  # 3.1.1: clean_session=False was given to the client
                client.connect(url.host, url.port, self.keepalive)
        except ssl.SSLError as e:
            self._fail(url, explain_tls_error(e, self.tls, url.host))
            return "failed"
        except (OSError, ValueError) as e:
            self._fail(url, e)
            return "failed"
        self._client = client
        connack_deadline = time.monotonic() + self.connect_timeout
        why = "connection lost"
        try:
            while True:
                sock = client.socket()
                if sock is None:
                    break
                if self._stopping:
                    if self.connected:
                        self._clean_stop(client)
                    return "stopped"
                if not self.connected and time.monotonic() > connack_deadline:
                    why = f"no CONNACK within {self.connect_timeout} s"
                    break
                timeout = 1.0
                if isinstance(sock, ssl.SSLSocket) and sock.pending():
                    timeout = 0
                wlist = [sock] if client.want_write() else []
                try:
                    readable, _, _ = select.select([sock, self._wake_r], wlist, [], timeout)
                except (OSError, ValueError):
                    break
                if self._wake_r in readable:
                    self._drain_wake()
                if sock in readable or timeout == 0:
                    if client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                        break
                if client.want_write() and client.loop_write() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
                if client.loop_misc() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    why = "keepalive: no answer from the broker"
                    break
                if self._connack is not None and not self.connected:
                    reason = self._connack[0]
                    if reason.is_failure:
                        why = f"broker refused the connection: {reason}"
                        break
                    self._on_connected(client, url)
                self._pump(client)
        finally:
            self._client = None
            with contextlib.suppress(Exception):
                sock = client.socket()
                if sock is not None:
                    sock.close()
        if self.connected:
            self._on_lost(url, why)
            return "lost"
        if why == "connection lost" and self._connack is None:
            # Closed before any CONNACK: under TLS, the broker's verdict on our certificate.
            error = self._paho_error or ""
            if url.tls and "SSL" in error:
                why = explain_tls_error(error.removeprefix("failed to receive on socket: "),
                                        self.tls, url.host)
            else:
                why = explain_early_close(self.tls, url.tls)
        self._fail(url, why)
        return "failed"

    def _on_connected(self, client, url):
        props = self._connack[1]
        receive_max = getattr(props, "ReceiveMaximum", None) if props is not None else None
        self._gate = self.max_inflight
        if receive_max:  # MQTT 5: leave the broker room for status, devices and errors
            self._gate = max(1, min(self.max_inflight, receive_max - RECEIVE_RESERVE))
        self._on_wire = 0
        self.stats.connects += 1
        if self.stats.connects > 1:
            self.stats.reconnects += 1
        client.publish(self.status_topic, self._status("online"), qos=1, retain=True)
        with self._lock:
            windows = self._windows
            self._windows_changed = False
            if self._devices_last is not None:
                self._devices_due = True
            # Everything in the window goes again, in feed order: what had no PUBACK on the
            # last connection, then what was fed since.
            self._resend_all_locked()
        results = self._desired.set_windows(windows)
        self._desired.new_connection()  # the retained desired state that comes is taken whole
        leftovers = self._desired.leftovers()  # once per link: an earlier configuration's
        if leftovers:
            client.unsubscribe(sorted(leftovers))
        self._subscribe(client, self._topics())
        self._act(client, results)
        self._connected.set()
        log.info("mqtt: connected to %s as %s", url.url, self.client_id)
        self._call(self.on_connection, True, url.url)

    def _on_lost(self, url, why):
        self._connected.clear()
        self.stats.losses += 1
        self.last_error = f"{url.url}: {why}"
        log.warning("mqtt: lost %s: %s (%d events to re-send)", url.url, why, len(self._window))
        self._call(self.on_connection, False, url.url)

    def _topics(self):
        topics = self._desired.topics()
        if self.delivery == "receipt":
            topics |= {self.receipt_topic, self.central_status_topic}
        return topics

    def _resend_all_locked(self):
        """Every unconfirmed event goes (again) on this connection, in feed order."""
        for entry in self._window.values():
            entry.mid = None
            entry.refused = False
            entry.due = None
            entry.timeouts = 0
        self._unsent = collections.deque(t for t, e in self._window.items() if not e.acked)

    def _resend_overdue(self, now):
        """Receipt mode: events PUBACKed but without a receipt by their `due` time go again,
        oldest first; each wait doubles (up to 8x receipt_timeout), so a central that is
        slow, not gone, is not flooded. Skipped while the central says it is offline: the
        broker keeps the events for its session, and its return re-sends them anyway."""
        self._timeouts_checked = now
        if self.central_online is False:
            return
        with self._lock:
            late = [e for e in self._window.values()
                    if e.due is not None and e.due <= now and not e.acked]
            if not late:
                return
            for entry in late:
                entry.due = None
                entry.mid = None
                entry.timeouts += 1
            self._unsent = collections.deque(
                t for t, e in self._window.items() if e.mid is None and not e.acked)
        self.stats.resent_timeout += len(late)
        log.info("mqtt: %d event(s) without a receipt for %.0f s or more: sent again",
                 len(late), self.receipt_timeout)

    def _subscribe(self, client, topics):
        if not topics:
            return
        topics = sorted(topics)
        _, mid = client.subscribe([(t, 1) for t in topics])
        if mid is not None:
            self._sub_mids[mid] = topics
        self._subscribed.update(topics)
        self._dropped_topics.difference_update(topics)

    def _unsubscribe(self, client, topics):
        if not topics:
            return
        client.unsubscribe(sorted(topics))
        self._subscribed.difference_update(topics)
        self._dropped_topics.update(topics)

    def _pump(self, client):
        """After each network turn: hand up what came, send what waits."""
        if self._acks:
            self._take_acks()
        if self._suback:
            self._take_subacks()
        if self.connected and self._windows_changed:
            with self._lock:
                windows = self._windows
                self._windows_changed = False
            results = self._desired.set_windows(windows)
            want = self._topics()
            self._unsubscribe(client, self._subscribed - want)
            self._subscribe(client, want - self._subscribed)
            self._act(client, results)
        if self._refused and self.connected:
            self._subscribe_refused_again(client)
        if self._inbox:
            inbox, self._inbox = self._inbox, []
            for topic, payload in inbox:
                if topic == self.receipt_topic:
                    self._take_receipt(payload)
                elif topic == self.central_status_topic:
                    self._take_central_status(payload)
                else:
                    self._take_command(client, topic, payload)
        if not self.connected or self._stopping:
            return
        now = time.monotonic()
        if now - self._summaries_checked >= 1.0:
            self._summaries_checked = now
            self._error_summaries()
        if self.delivery == "receipt":
            if now - self._timeouts_checked >= min(0.5, self.receipt_timeout / 4):
                self._resend_overdue(now)
        with self._lock:
            devices = self._devices_last if self._devices_due else None
            self._devices_due = False
            errors = list(self._errors)
            self._errors.clear()
            sends = []
            while self._unsent and self._on_wire + len(sends) < self._gate:
                entry = self._window.get(self._unsent.popleft())
                if entry is not None and entry.mid is None:
                    sends.append(entry)
        if devices is not None:
            client.publish(self.devices_topic, devices, qos=1, retain=True)
        for data in errors:
            client.publish(self.errors_topic, data, qos=1)
            self.stats.errors_published += 1
        for entry in sends:
            info = client.publish(entry.topic, entry.payload, qos=1)
            entry.mid = info.mid
            self._mid_token[info.mid] = entry.token
            self._on_wire += 1
            if entry.sends:
                self.stats.resent += 1
            entry.sends += 1
            self.stats.published += 1

    def _take_acks(self):
        acks, self._acks = self._acks, []
        delivered = []
        refused = []
        with self._lock:
            for mid, reason in acks:
                if mid == self._offline_mid:
                    self._offline_mid = None
                    self._stopped_clean = not reason.is_failure
                    continue
                token = self._mid_token.pop(mid, None)
                if token is None:
                    continue  # status, devices, errors
                self._on_wire -= 1
                entry = self._window.get(token)
                if entry is None or entry.mid != mid:
                    continue
                if reason.is_failure:  # kept: re-sent on the next connection
                    entry.refused = True
                    entry.mid = None
                    refused.append((entry, reason))
                    continue
                if self.delivery == "receipt":  # the broker has it; the central may not
                    if entry.due is None:
                        backoff = min(2 ** entry.timeouts, 8)
                        entry.due = time.monotonic() + self.receipt_timeout * backoff
                    continue
                entry.acked = True
                delivered.append(token)
        for entry, reason in refused:
            self.stats.refused += 1
            self.publish_error(
                "publish-refused", f"broker refused the event: {reason}", topic=entry.topic
            )
        self._confirm(delivered)

    def _confirm(self, tokens):
        """on_delivered(tokens), then the tokens leave the window. They stay in it (and in
        pending()) until on_delivered has returned: the daemon deletes the outbox rows there,
        and a token in neither place would look unsent to it and be fed, and sent, twice."""
        if not tokens:
            return
        self.stats.delivered += len(tokens)
        self._call(self.on_delivered, tokens)
        with self._lock:
            for token in tokens:
                entry = self._window.pop(token, None)
                if entry is not None and entry.event_id is not None:
                    self._by_id.pop(entry.event_id, None)
            if not self._window:
                self._idle.notify_all()

    def _take_receipt(self, payload):
        """The central has committed these events: they leave the outbox. An id the link
        does not hold (confirmed already, or another outbox's) is counted and ignored."""
        try:
            ids = receipts.parse_receipt(payload)
        except ValueError as e:
            self.stats.receipts_bad += 1
            log.warning("mqtt: malformed receipt: %s", e)
            self.publish_error("bad-receipt", str(e), topic=self.receipt_topic,
                               payload=payload)
            return
        self.stats.receipts += 1
        tokens = []
        with self._lock:
            for event_id in ids:
                token = self._by_id.get(event_id)
                entry = None if token is None else self._window.get(token)
                if entry is None or entry.acked:
                    self.stats.receipt_unknown += 1
                    continue
                entry.acked = True
                tokens.append(token)
        self._confirm(tokens)

    def _take_central_status(self, payload):
        """The central's retained status, new on each of its connections. A new `online`
        means the central (re)started or reconnected: it may have lost what it had not
        committed (the broker acknowledged those to it before a crash), or its session with
        the broker (a broker that lost its disk state): everything unconfirmed goes again,
        now that it is subscribed (it says online only after its SUBACK)."""
        try:
            status = json.loads(bytes(payload).decode("utf-8")) if payload else {}
        except (ValueError, UnicodeDecodeError, RecursionError):
            status = None
        if not isinstance(status, dict) or status.get("state") not in ("online", "offline",
                                                                        None):
            log.warning("mqtt: central status not understood: %r", bytes(payload[:80]))
            return
        state = status.get("state", "offline")
        before = self.central
        self.central = (state, status.get("boot_id"), status.get("ts"))
        # A status seen before (the retained one again, after our reconnect) changes
        # nothing; the first one after our start costs one re-send of the window.
        if state == "online" and before != self.central:
            with self._lock:
                n = len(self._window)
                self._resend_all_locked()
            self.stats.resent_central += n
            log.info("mqtt: central service (re)started (boot %s): %d unconfirmed event(s) "
                     "sent again", self.central[1], n)

    def _take_subacks(self):
        """A refused subscription is asked for again, 0.25 s doubling to 5 s: a clustered
        broker refuses them for a few seconds after a node dies (NATS, while its streams
        elect a leader), and without it the gateway would get no desired state until its
        next connection."""
        subacks, self._suback = self._suback, []
        now = time.monotonic()
        for mid, codes in subacks:
            topics = self._sub_mids.pop(mid, [])
            for topic, code in zip(topics, codes, strict=False):
                if code.is_failure:
                    self.stats.subscribe_refused += 1
                    self.publish_error("subscribe-refused", f"broker said {code}; asked again",
                                       topic=topic)
                    self._subscribed.discard(topic)
                    _, n = self._refused.get(topic, (0.0, 0))
                    self._refused[topic] = (now + min(5.0, 0.25 * 2 ** n), n + 1)
                else:
                    self._refused.pop(topic, None)

    def _subscribe_refused_again(self, client):
        now = time.monotonic()
        due = {t for t, (at, _) in self._refused.items() if at <= now}
        due -= self._dropped_topics  # a window no longer served meanwhile
        if due:
            for topic in due:
                at, n = self._refused[topic]
                self._refused[topic] = (float("inf"), n)  # until its SUBACK
            self._subscribe(client, due)

    def _take_command(self, client, topic, payload):
        if topic in self._dropped_topics:
            return  # a window we stopped serving; this one was already on its way
        self._act(client, self._desired.take(topic, payload))

    def _act(self, client, results):
        """Does what gateway/desired.py's results say, in their order."""
        for r in results:
            if isinstance(r, desired.Apply):
                self.stats.commands += 1
                self._call(self.on_command, r.window, r.kind, r.command)
            elif isinstance(r, desired.Reject):
                self._reject(r.topic, r.payload, r.reason)
            elif isinstance(r, desired.Unsubscribe):
                self._unsubscribe(client, r.topics)
            elif isinstance(r, desired.Count):
                setattr(self.stats, r.stat, getattr(self.stats, r.stat) + r.n)

    def _reject(self, topic, payload, reason):
        self.stats.rejected += 1
        log.warning("mqtt: rejected command on %s: %s", topic, reason)
        self.publish_error("bad-command", reason, topic=topic, payload=payload)

    def _clean_stop(self, client):
        """Offline (retained, QoS 1), wait for its PUBACK, DISCONNECT: no last will."""
        deadline = self._stop_deadline or time.monotonic() + 5.0
        self._connected.clear()
        info = client.publish(
            self.status_topic, self._status("offline", "stopped"), qos=1, retain=True
        )
        self._offline_mid = info.mid
        while self._offline_mid is not None and time.monotonic() < deadline - 0.1:
            sock = client.socket()
            if sock is None:
                break
            wlist = [sock] if client.want_write() else []
            left = max(0.0, deadline - 0.1 - time.monotonic())
            try:
                readable, _, _ = select.select([sock], wlist, [], min(left, 0.2))
            except (OSError, ValueError):
                break
            if sock in readable and client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
            if client.want_write() and client.loop_write() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
            self._take_acks()
        client.disconnect()  # paho writes DISCONNECT at once (our thread) and closes
        self._call(self.on_connection, False, self._url.url)
