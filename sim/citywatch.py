"""The city's independent witness: one MQTT client with its own persistent QoS 1 session that
counts every site's events (distinct ids; duplicates on the wire are fine) and logs every
central's status, for `lost` (a second check beside the database) and the take-over times.

It subscribes `hall/v1/+/window/+/event` and `hall/v1/+/central/status`, fails over between
the broker URLs like everyone else (sim/citymqtt.py), and touches nothing it watches.
"""

from __future__ import annotations

import collections
import json
import threading
import time

from hallgate.sim.citymqtt import FailoverClient


class Witness:
    def __init__(self, urls, protocol, name="hallgate-city-witness"):
        self.lock = threading.Lock()
        self.ids = collections.defaultdict(set)  # site -> event ids
        self.deliveries = 0
        self.status = collections.defaultdict(list)  # site -> [(time, state, boot_id)]
        self.client = FailoverClient(
            urls, name, protocol=protocol, on_message=self._message,
            topics=["hall/v1/+/window/+/event", "hall/v1/+/central/status"])

    def start(self):
        self.client.start()
        return self

    def _message(self, topic, payload):
        parts = topic.split("/")
        site = parts[2]
        try:
            body = json.loads(payload) if payload else {}
        except ValueError:
            return
        with self.lock:
            if parts[-1] == "event":
                self.deliveries += 1
                self.ids[site].add(body.get("id"))
            elif parts[-1] == "status":
                self.status[site].append((time.time(), body.get("state"), body.get("boot_id")))

    def online(self, sites):
        """The sites whose central says online now."""
        with self.lock:
            return {s for s in sites if self.status[s] and self.status[s][-1][1] == "online"}

    def events(self):
        with self.lock:
            return sum(len(v) for v in self.ids.values())

    def takeovers(self, killed_at, sites, window_s=10.0):
        """Per site whose central went offline within `window_s` after `killed_at`: real
        seconds from the kill to its `online` with a new boot id (None: not yet)."""
        out = {}
        with self.lock:
            for site in sites:
                log = self.status[site]
                before = [b for t, st, b in log if t < killed_at and st == "online"]
                old = before[-1] if before else None
                if not any(killed_at <= t <= killed_at + window_s and st == "offline"
                           for t, st, _ in log):
                    continue
                back = [t for t, st, b in log if t > killed_at and st == "online" and b != old]
                out[site] = round(back[0] - killed_at, 2) if back else None
        return out

    def stop(self):
        self.client.stop()


def retained_online(urls, protocol, sites, timeout=5.0):
    """The sites whose retained central/status says online, read afresh by a clean-session
    QoS 0 client (no JetStream consumer of its own): a second look for the sites whose
    status the witness has not seen (on NATS under load it misses some)."""
    states = {}
    lock = threading.Lock()

    def take(topic, payload):
        try:
            state = json.loads(payload).get("state") if payload else None
        except ValueError:
            state = None
        with lock:
            states[topic.split("/")[2]] = state

    client = FailoverClient(urls, f"hallgate-city-probe-{time.time_ns()}", protocol=protocol,
                            clean=True, on_message=take, qos=0,
                            topics=[f"hall/v1/{s}/central/status" for s in sites])
    try:
        client.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with lock:
                if len(states) == len(sites):
                    break
            time.sleep(0.05)
    finally:
        client.stop()
    with lock:
        return {s for s, state in states.items() if state == "online"}
