"""A plain paho client that fails over between the city's broker URLs: the kiosks' and the
city witness's connection (the gateways have their own, gateway/mqtt.py).

Design note
-----------
Operations: `FailoverClient(urls, client_id, topics, on_message).start()`; `publish` from
any thread; `stop()`. `connections` logs (time.time(), "connected"|"lost", url).
Goals: a SIGKILLed broker node costs a reconnect to the next node, not the client: a
persistent session (clean session off, a stable client id) so QoS 1 messages published
meanwhile wait for us in the cluster; subscriptions are made when the session is new.
Plan: paho's own network thread (`loop_start`) and its capped reconnect backoff; its host
and port are moved to the next URL whenever a connection is lost or an attempt fails
(paho allows that once the connection is closed), so its next retry goes there.
"""

from __future__ import annotations

import logging
import threading
import time
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from hallgate.nodelay import no_delay

log = logging.getLogger(__name__)


class FailoverClient:
    def __init__(self, urls, client_id, *, topics=(), on_message=None, protocol="3.1.1",
                 clean=False, max_inflight=200, qos=1):
        self.urls = [(urlsplit(u).hostname, urlsplit(u).port or 1883, u) for u in urls]
        self.k = 0
        self.topics = list(topics)
        self.qos = qos  # of the subscriptions
        self.on_message = on_message
        self.connections = []
        self.connected = threading.Event()
        v5 = protocol == "5"
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                        protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
                        clean_session=None if v5 else clean)
        no_delay(c)
        c.reconnect_delay_set(0.2, 2.0)
        c.max_inflight_messages_set(max_inflight)
        c.max_queued_messages_set(0)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_connect_fail = lambda *_: self._next()
        c.on_message = self._on_message
        self.client = c

    @property
    def url(self):
        return self.urls[self.k][2]

    def start(self, timeout=30.0):
        host, port, _ = self.urls[self.k]
        self.client.connect_async(host, port, keepalive=10)
        self.client.loop_start()
        if not self.connected.wait(timeout):
            raise TimeoutError(f"no broker of {[u for *_, u in self.urls]} took "
                               f"{self.client._client_id!r} within {timeout:.0f} s")
        return self

    def _next(self):
        """The next URL for paho's next attempt (called with the connection closed)."""
        self.k = (self.k + 1) % len(self.urls)
        host, port, _ = self.urls[self.k]
        try:
            self.client.host, self.client.port = host, port
        except RuntimeError:  # still open: the next loss moves it
            pass

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            self._next()
            return
        # Subscribe only into a new session: NATS re-creates a subscription's JetStream
        # consumer when it is made again, and the messages queued for it meanwhile went
        # with the old one (measured: the witness missed events published during a node's
        # death until it stopped re-subscribing).
        if self.topics and not flags.session_present:
            client.subscribe([(t, self.qos) for t in self.topics])
        self.connections.append((time.time(), "connected", self.url))
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        if self.connected.is_set():
            self.connections.append((time.time(), "lost", self.url))
        self.connected.clear()
        self._next()

    def _on_message(self, client, userdata, msg):
        if self.on_message is not None:
            try:
                self.on_message(msg.topic, bytes(msg.payload))
            except Exception:
                log.exception("message on %s", msg.topic)

    def publish(self, topic, payload, qos=1, retain=False):
        return self.client.publish(topic, payload, qos=qos, retain=retain)

    def stop(self):
        self.connected.clear()
        self.client.disconnect()
        self.client.loop_stop()
