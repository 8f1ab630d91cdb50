"""The simulator's eye on the broker: one MQTT client logging a site's topics.

It keeps the last retained state of each window, the tickets issued, the events (first
delivery of each id), the central's rejections and stats. The live view reads it, the
report cross-checks the central against it, and the simulated people use it where a person
would look: the kiosk's answer, a rejected call.
"""

import json
import threading
import time
import uuid

import paho.mqtt.client as paho
from hallgate.gateway.desired import SnapshotError, parse_snapshot
from paho.mqtt.enums import CallbackAPIVersion

from hallgate.nodelay import no_delay


class Observer:
    """An MQTT client that logs the hall's topics: the last retained state of each window,
    the tickets issued, the events, the central's stats. Thread-safe reads; `wait(pred)`."""

    def __init__(self, host, port, protocol, site):
        self.prefix = f"hall/v1/{site}/"
        self.cond = threading.Condition()
        self.issued = {}  # request id -> ticket number
        self.windows = {}  # n -> {"display": ..., "panel": ..., "vote": ...}
        self.events = {}  # event id -> event payload (first delivery)
        self.keys_seen = []  # (monotonic, window, key) of each key event's first delivery
        self.rejected = []  # (monotonic, window, reason) of events the central rejected
        self.deliveries = 0
        self.stats = None
        self.central_errors = 0
        v5 = protocol == "5"
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"hallgate-sim-observer-"
                        f"{uuid.uuid4().hex[:8]}",
                        protocol=paho.MQTTv5 if v5 else paho.MQTTv311)
        no_delay(c)  # the kiosk's requests go out at once
        c.on_connect = lambda c, u, f, rc, p: c.subscribe(self.prefix + "#", qos=1)
        c.on_message = self._on_message
        c.connect(host, port)
        c.loop_start()
        self.client = c

    def _on_message(self, client, userdata, msg):
        rest = msg.topic[len(self.prefix):].split("/")
        try:
            body = json.loads(msg.payload) if msg.payload else None
        except ValueError:
            return
        with self.cond:
            if rest[0] == "window" and len(rest) == 3:
                if rest[2] == "event":
                    self.deliveries += 1
                    if body.get("id") not in self.events and body.get("type") == "key":
                        self.keys_seen.append((time.monotonic(), body.get("window"),
                                               body.get("key")))
                    self.events.setdefault(body.get("id"), body)
                else:
                    self.windows.setdefault(int(rest[1]), {})[rest[2]] = body
            elif rest == ["desired"]:  # the whole site in one message (desired = "site")
                try:
                    windows = parse_snapshot(msg.payload)
                except SnapshotError:  # the central's own: not expected
                    return
                for n, kinds in windows.items():
                    for kind in ("display", "panel", "vote"):
                        self.windows.setdefault(n, {})[kind] = kinds.get(kind)
            elif rest == ["ticket", "issued"] and body:
                self.issued[body.get("request_id")] = body.get("ticket")
            elif rest == ["ticket", "refused"] and body:  # answered, with no ticket
                self.issued.setdefault(body.get("request_id"), None)
            elif rest == ["central", "stats"]:
                self.stats = body
            elif rest == ["central", "errors"]:
                self.central_errors += 1
                where = (body or {}).get("topic", "").split("/")
                if (body or {}).get("kind") == "event-rejected" and len(where) == 6:
                    self.rejected.append((time.monotonic(), int(where[4]), body["reason"]))
            self.cond.notify_all()

    def wait(self, predicate, timeout):
        with self.cond:
            return self.cond.wait_for(predicate, timeout)

    def desired(self, window, kind):
        """The central's last published state of `kind` for `window` ({} before any)."""
        with self.cond:
            return dict(self.windows.get(window, {}).get(kind) or {})

    def key_seen(self, window, key, since):
        """When (monotonic) the first `key` event of `window` after `since` reached the
        broker; None if none has."""
        with self.cond:
            return next((t for t, w, k in self.keys_seen
                         if t >= since and w == window and k == key), None)

    def rejection(self, window, since):
        """The central's reason for rejecting an event of `window` since `since`, or None."""
        with self.cond:
            return next((r for t, w, r in self.rejected if t >= since and w == window), None)

    def votes_at(self, window):
        """Vote events (distinct ids) seen from `window`."""
        return sum(1 for e in self.events.values()
                   if e.get("type") == "vote" and e.get("window") == window)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()
