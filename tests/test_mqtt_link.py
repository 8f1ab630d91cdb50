"""gateway/mqtt.py against a real mosquitto (sim/broker.py), with an independent paho
subscriber as the witness: birth and will, events and PUBACKs, broker SIGKILLs mid-stream,
failover and backoff, commands good and bad, MQTT 3.1.1.

Time bounds here are liveness checks (something must happen), never speed tests."""

import json
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

import jsonschema
import paho.mqtt.client as mqtt
import pytest
from conftest import read_retained, wait_for
from hallgate.gateway.commands import DisplayCommand, PanelCommand, VoteCommand
from hallgate.gateway.mqtt import LinkFull, MqttLink, parse_url
from hallgate.sim.broker import Mosquitto, free_port
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

SCHEMAS = Path(__file__).resolve().parent.parent / "protocols" / "schemas"
SITE = "s1"
GW = "gw-1"
STATUS = f"hall/v1/{SITE}/gw/{GW}/status"
ERRORS = f"hall/v1/{SITE}/gw/{GW}/errors"
DEVICES = f"hall/v1/{SITE}/gw/{GW}/devices"


def topic(window, kind):
    return f"hall/v1/{SITE}/window/{window}/{kind}"


def check_schema(name, payload):
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    jsonschema.Draft7Validator(schema).validate(payload)
    return payload


class Witness:
    """An independent subscriber, as the central service would be: QoS 1, a persistent
    session (so it survives a broker restart once the broker has saved it), reconnecting."""

    def __init__(self, broker, topic_filter="hall/#", client_id="witness"):
        self.messages = []  # (topic, payload bytes, retain), in arrival order
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        c.reconnect_delay_set(0.05, 0.5)
        c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(topic_filter, qos=1)
        c.on_subscribe = lambda *a: self._subscribed.set()
        c.on_message = self._on_message
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        c.connect("127.0.0.1", broker.port, clean_start=False, properties=props)
        c.loop_start()
        self.client = c
        assert self._subscribed.wait(5), "witness could not subscribe"

    def _on_message(self, client, userdata, msg):
        with self._lock:
            self.messages.append((msg.topic, msg.payload, msg.retain))

    def payloads(self, topic_name):
        with self._lock:
            return [p for t, p, _ in self.messages if t == topic_name]

    def json(self, topic_name):
        return [json.loads(p) for p in self.payloads(topic_name) if p]

    def publish(self, topic_name, payload, retain=False):
        if not isinstance(payload, bytes | str):
            payload = json.dumps(payload)
        self.client.publish(topic_name, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def retained(broker, topic_name, timeout=3.0):
    """The retained payload (parsed) on a topic, read by a fresh client; None if none."""
    raw = read_retained(broker.port, topic_name, timeout)
    return json.loads(raw) if raw else None


class Recorder:
    """The daemon's side of the callbacks."""

    def __init__(self):
        self.commands = []
        self.delivered = []
        self.connections = []
        self.lock = threading.Lock()

    def on_command(self, window, kind, command):
        with self.lock:
            self.commands.append((window, kind, command))

    def on_delivered(self, tokens):
        with self.lock:
            self.delivered.extend(tokens)

    def on_connection(self, up, url):
        self.connections.append((up, url))

    def commands_for(self, window, kind):
        with self.lock:
            return [c for w, k, c in self.commands if (w, k) == (window, kind)]


@pytest.fixture
def witness(broker):
    w = Witness(broker)
    yield w
    w.close()


@pytest.fixture
def make_link():
    links = []

    def make(urls, recorder=None, **kw):
        rec = recorder or Recorder()
        kw.setdefault("on_command", rec.on_command)
        kw.setdefault("on_delivered", rec.on_delivered)
        kw.setdefault("on_connection", rec.on_connection)
        kw.setdefault("delivery", "puback")  # these tests are about the PUBACK path
        link = MqttLink(SITE, GW, urls, **kw)
        link.rec = rec
        links.append(link)
        return link.start()

    yield make
    for link in links:
        link.stop(timeout=2)


def event(i, window):
    return json.dumps({"id": f"ev-{i}", "window": window, "n": i}).encode()


# -- status: birth, will, clean stop ----------------------------------------------------------


def test_birth_on_connect_and_offline_on_clean_stop(broker, witness, make_link):
    link = make_link([broker.url], boot_id="boot-1")
    assert link.wait_connected(5)
    assert link.rec.connections == [(True, broker.url)]
    wait_for(lambda: witness.json(STATUS), what="birth")
    birth = check_schema("status", retained(broker, STATUS))
    assert birth["state"] == "online" and birth["boot_id"] == "boot-1"
    assert birth["version"]

    assert link.stop(timeout=3) is True  # offline acknowledged
    assert not link.connected
    status = check_schema("status", retained(broker, STATUS))
    assert (status["state"], status["reason"], status["boot_id"]) == (
        "offline",
        "stopped",
        "boot-1",
    )
    assert "connection-lost" not in {m.get("reason") for m in witness.json(STATUS)}


CHILD = r"""
import sys, time
from hallgate.gateway.mqtt import MqttLink
link = MqttLink("s1", "gw-1", [sys.argv[1]], boot_id="child",
                on_connection=lambda up, url: print("up" if up else "down", flush=True))
link.start()
time.sleep(60)
"""


def test_will_says_offline_when_the_gateway_process_is_killed(broker, witness):
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, broker.url], stdout=subprocess.PIPE, text=True
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 15)
        assert ready and proc.stdout.readline().strip() == "up"
        wait_for(lambda: witness.json(STATUS), what="birth")
        assert retained(broker, STATUS)["state"] == "online"
        proc.kill()  # SIGKILL: no offline from the gateway, the broker's will instead
        proc.wait(5)
        wait_for(lambda: witness.json(STATUS)[-1]["state"] == "offline", what="last will")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    will = check_schema("status", retained(broker, STATUS))
    assert (will["state"], will["reason"], will["boot_id"]) == (
        "offline",
        "connection-lost",
        "child",
    )


# -- events -----------------------------------------------------------------------------------


def test_event_reaches_subscriber_and_is_delivered_only_after_puback(broker, witness, make_link):
    link = make_link([broker.url])
    assert link.wait_connected(5)
    payload = b'{"id":"gw-1.1","window":3,"type":"key","key":"call"}'
    link.publish_event(3, payload, token="t1")
    wait_for(lambda: link.rec.delivered == ["t1"], what="PUBACK of t1")
    wait_for(lambda: witness.payloads(topic(3, "event")), what="event at the witness")
    assert witness.payloads(topic(3, "event")) == [payload]
    assert link.in_flight == 0 and link.room == link.max_inflight

    broker.pause()  # the TCP connection stays up, no PUBACK comes
    try:
        link.publish_event(3, b'{"id":"gw-1.2"}', token="t2")
        time.sleep(0.5)
        assert link.rec.delivered == ["t1"], "on_delivered before the PUBACK"
        assert link.in_flight == 1 and link.pending() == ["t2"]
        assert link.stats.published == 2
    finally:
        broker.resume()
    wait_for(lambda: link.rec.delivered == ["t1", "t2"], what="PUBACK of t2")
    assert link.wait_delivered(1)
    time.sleep(0.2)
    assert link.rec.delivered == ["t1", "t2"]  # once per token
    assert link.stats.delivered == 2


def test_broker_killed_twice_while_streaming(tmp_path, make_link):
    broker = Mosquitto(tmp_path / "broker").start()
    witness = Witness(broker, f"hall/v1/{SITE}/window/+/event")
    try:
        broker.wait_saved()  # the witness's session is on disk: it survives a SIGKILL
        link = make_link([broker.url], max_inflight=32)
        assert link.wait_connected(5)
        n, windows = 900, (1, 2, 3)
        fed = {w: [] for w in windows}

        def feed():
            for i in range(n):
                w = windows[i % len(windows)]
                deadline = time.monotonic() + 30
                while link.room == 0 and time.monotonic() < deadline:
                    time.sleep(0.0005)
                link.publish_event(w, event(i, w), token=i)
                fed[w].append(f"ev-{i}")
                time.sleep(0.001)  # a stream, not one burst: the kills land in its middle

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        # 1st: a plain SIGKILL mid-stream. 2nd: the broker hangs first (SIGSTOP) until the
        # link's window is full of events without a PUBACK, then dies: they must all go again.
        for mark, hang in ((n // 3, False), (2 * n // 3, True)):
            wait_for(lambda m=mark: len(link.rec.delivered) >= m, timeout=20, what="progress")
            if hang:
                broker.pause()
                wait_for(lambda: link.room == 0, what="a full window while the broker hangs")
            broker.kill()
            broker.start()
        feeder.join(30)
        assert not feeder.is_alive()
        assert link.wait_delivered(20), f"{link.in_flight} events never acknowledged"

        assert sorted(link.rec.delivered) == list(range(n))  # every token, exactly once
        assert link.stats.losses >= 2 and link.stats.reconnects >= 2
        assert link.stats.resent >= 10  # at least the events on the wire when it hung

        def arrivals():
            return [json.loads(p)["id"] for t, p, _ in witness.messages]

        every = {f"ev-{i}" for i in range(n)}
        wait_for(lambda: every <= set(arrivals()), timeout=10, what="every id at the witness")
        got = arrivals()
        assert set(got) == every  # duplicates only as repeated ids
        print(f"{len(got) - n} duplicates; {link.stats!r}")
        for w in windows:
            first = []
            seen = set()
            for t, p, _ in witness.messages:
                eid = json.loads(p)["id"]
                if t == topic(w, "event") and eid not in seen:
                    seen.add(eid)
                    first.append(eid)
            assert first == fed[w], f"window {w}: first arrivals out of order"
    finally:
        witness.close()
        broker.stop()


def test_window_is_bounded_while_disconnected_and_stop_is_prompt(make_link):
    dead = f"mqtt://127.0.0.1:{free_port()}"
    link = make_link([dead], max_inflight=3)
    for i in range(3):
        link.publish_event(1, event(i, 1), token=i)
    with pytest.raises(LinkFull):
        link.publish_event(1, event(3, 1), token=3)
    with pytest.raises(ValueError):
        link.publish_event(1, event(0, 1), token=0)  # already in the link
    assert link.pending() == [0, 1, 2] and link.room == 0
    wait_for(lambda: link.stats.connect_failures >= 2, what="retries")
    assert not link.connected and "refused" in link.last_error
    t0 = time.monotonic()
    assert link.stop(timeout=1) is False  # never connected: no offline to acknowledge
    assert time.monotonic() - t0 < 2
    assert link.rec.delivered == []


# -- failover and backoff -----------------------------------------------------------------------


def test_failover_to_a_live_url_and_capped_backoff(broker, make_link):
    dead = f"mqtt://127.0.0.1:{free_port()}"
    link = make_link([dead, broker.url])
    assert link.wait_connected(5)
    assert link.url == broker.url
    assert link.stats.connect_failures >= 1

    broker.kill()
    wait_for(lambda: not link.connected, what="loss noticed")
    time.sleep(4)  # long enough for the backoff to reach its cap (3 s)
    broker.start()
    t0 = time.monotonic()
    wait_for(lambda: link.connected, timeout=10, what="reconnect after the broker came back")
    assert time.monotonic() - t0 < 10  # liveness: the delay is capped, not 120 s
    assert link.url == broker.url
    assert link.stats.reconnects == 1
    ups = [url for up, url in link.rec.connections if up]
    assert ups == [broker.url, broker.url]


def test_hung_broker_is_detected_by_keepalive_and_left_for_the_next(tmp_path, make_link):
    b1 = Mosquitto(tmp_path / "b1").start()
    b2 = Mosquitto(tmp_path / "b2").start()
    w2 = Witness(b2)
    try:
        link = make_link([b1.url, b2.url], keepalive=1)
        assert link.wait_connected(5) and link.url == b1.url
        b1.pause()  # TCP stays up, nothing answers: only the keepalive can tell
        link.publish_event(4, event(1, 4), token="x")
        wait_for(lambda: link.url == b2.url, timeout=10, what="failover to b2")
        assert "keepalive" in link.last_error or "lost" in link.last_error
        wait_for(lambda: link.rec.delivered == ["x"], what="the event re-sent via b2")
        wait_for(lambda: w2.payloads(topic(4, "event")), what="the event at b2's subscriber")
        assert w2.payloads(topic(4, "event")) == [event(1, 4)]
        assert retained(b2, STATUS)["state"] == "online"
    finally:
        w2.close()
        b1.stop()
        b2.stop()


# -- commands ---------------------------------------------------------------------------------

MALFORMED = [  # (window, kind, payload, what the reason says)
    (1, "display", b"{not json", "payload is not JSON"),
    (1, "display", b'{"version": 5, "text": "TOO LONG TEXT"}', "at most 8 allowed"),
    (1, "display", b"[1, 2]", "not an object"),
    (1, "display", b"\xff\xfe", "not UTF-8"),
    (1, "panel", b'{"version": 5, "mode": "lunch"}', 'mode: "lunch" is not one of'),
    (1, "vote", b'{"open": true, "ticket": "A1"}', "version: missing"),
    (2, "display", b'{"version": 0, "text": "A"}', "version: 0 is out of range"),
    (2, "panel", b'{"version": "3", "mode": "idle"}', "is not an integer"),
    (2, "vote", b'{"version": 2, "open": true}', "ticket: missing"),
    (2, "panel", b'{"version": 3, "mode": "idle", "tea": "yes"}', "tea:"),
    # 4,000 bytes under the 4,096 limit: raised RecursionError out of the parser once
    (1, "vote", b"[" * 2000 + b"]" * 2000, "nests deeper than"),
    # would make every later version stale
    (2, "display", b'{"version": 9007199254740991, "text": "A"}', "out of range 1-2147483647"),
]


def test_a_burst_of_bad_commands_is_reported_whole_rate_limited(broker, witness, make_link):
    """3,000 bad commands at once: the first ones each get an error, the rest are summed up
    ("N more like this"); every one is accounted for, none dropped unsaid."""
    link = make_link([broker.url], windows=[1])
    assert link.wait_connected(5)
    sender = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="burst")
    sender.max_inflight_messages_set(100)
    sender.connect("127.0.0.1", broker.port)
    sender.loop_start()
    try:
        infos = [sender.publish(topic(1, "display"), b"{not json %d" % i, qos=1)
                 for i in range(3000)]
        for info in infos:
            info.wait_for_publish(10)
    finally:
        sender.loop_stop()
        sender.disconnect()

    def accounted():
        errors = witness.json(ERRORS)
        return sum(e.get("suppressed", 1) for e in errors if e["kind"] == "bad-command")

    wait_for(lambda: accounted() == 3000, timeout=30, what="all 3,000 accounted for")
    errors = [check_schema("errors", e) for e in witness.json(ERRORS)]
    summaries = [e for e in errors if "suppressed" in e]
    assert summaries and len(errors) < 400, len(errors)
    assert "more like this" in summaries[0]["reason"]
    assert "payload is not JSON" in summaries[0]["first_reason"]
    assert link.stats.rejected == 3000 and link.stats.losses == 0
    assert link.stats.errors_dropped == 0


def test_commands_typed_malformed_answered_and_link_keeps_working(broker, witness, make_link):
    witness.publish(topic(1, "display"), {"version": 4, "text": "A042 > 1", "blink_s": 10}, True)
    witness.publish(
        topic(1, "panel"),
        {"version": 9, "text": "A042", "mode": "called", "queue": 12, "wait_s": 1020, "tea": True},
        True,
    )
    witness.publish(topic(2, "vote"), {"version": 3, "open": True, "ticket": "B007"}, True)
    witness.publish(topic(3, "display"), {"version": 1, "text": "NOT MINE"}, True)

    link = make_link([broker.url], windows=[1, 2])
    rec = link.rec
    wait_for(lambda: len(rec.commands) == 3, what="the retained state")
    assert rec.commands_for(1, "display") == [DisplayCommand(4, "A042 > 1", 10, 8)]
    assert rec.commands_for(1, "panel") == [PanelCommand(9, "called", "A042", 12, 1020, True)]
    assert rec.commands_for(2, "vote") == [VoteCommand(3, True, "B007")]

    for window, kind, payload, _ in MALFORMED:
        witness.publish(topic(window, kind), payload)
    wait_for(lambda: len(witness.json(ERRORS)) >= len(MALFORMED), what="an error per command")
    errors = witness.json(ERRORS)
    assert len(errors) == len(MALFORMED)
    for err, (window, kind, payload, reason) in zip(errors, MALFORMED, strict=True):
        check_schema("errors", err)
        assert err["kind"] == "bad-command" and err["gateway"] == GW
        assert err["topic"] == topic(window, kind)
        assert reason in err["reason"], err
        assert err["payload_size"] == len(payload)
    assert link.stats.rejected == len(MALFORMED)
    assert len(rec.commands) == 3  # none of them reached on_command
    assert link.stats.connects == 1 and link.stats.losses == 0  # none broke the connection

    # still working: a new version, a cleared topic, an event
    witness.publish(topic(1, "display"), {"version": 5, "text": ""}, True)
    witness.publish(topic(2, "vote"), b"", True)  # cleared retained: no desired state
    wait_for(lambda: len(rec.commands) == 5, what="commands after the bad ones")
    assert rec.commands_for(1, "display")[-1] == DisplayCommand(5, "")
    assert rec.commands_for(2, "vote")[-1] is None
    link.publish_event(1, event(1, 1), token=1)
    wait_for(lambda: rec.delivered == [1], what="an event after the bad commands")

    # windows can change while running
    link.set_windows([1, 2, 3])
    wait_for(lambda: rec.commands_for(3, "display"), what="window 3 added")
    assert rec.commands_for(3, "display") == [DisplayCommand(1, "NOT MINE")]
    link.set_windows([1])
    time.sleep(0.2)
    witness.publish(topic(2, "display"), {"version": 1, "text": "GONE"})
    link.publish_error("device-nak", "display 7 refused SET")  # a marker: it comes after
    wait_for(lambda: witness.json(ERRORS)[-1]["kind"] == "device-nak", what="marker error")
    assert rec.commands_for(2, "display") == []
    assert len(witness.json(ERRORS)) == len(MALFORMED) + 1  # no error for an unsubscribed window


def test_callback_that_raises_does_not_stop_the_link(broker, witness, make_link):
    rec = Recorder()

    def bad_on_command(window, kind, command):
        raise RuntimeError("reconciler bug")

    link = make_link([broker.url], rec, windows=[1], on_command=bad_on_command)
    assert link.wait_connected(5)
    witness.publish(topic(1, "display"), {"version": 1, "text": "A"})
    wait_for(lambda: link.stats.callback_errors == 1, what="the callback's error counted")
    link.publish_event(1, event(1, 1), token="after")
    wait_for(lambda: rec.delivered == ["after"], what="event after a callback error")


def test_subscription_left_by_an_earlier_config_is_answered_and_dropped(broker, witness):
    old = MqttLink(SITE, GW, [broker.url], windows=[1, 9]).start()
    assert old.wait_connected(5)
    wait_for(lambda: witness.json(STATUS), what="birth")
    old.stop()
    rec = Recorder()
    link = MqttLink(SITE, GW, [broker.url], windows=[1], on_command=rec.on_command).start()
    try:
        assert link.wait_connected(5)
        witness.publish(topic(9, "display"), {"version": 2, "text": "A"})
        wait_for(lambda: witness.json(ERRORS), what="error for window 9")
        err = check_schema("errors", witness.json(ERRORS)[0])
        assert err["topic"] == topic(9, "display")
        assert "window 9 is not served" in err["reason"]
        witness.publish(topic(9, "display"), {"version": 3, "text": "B"})
        link.publish_error("device-nak", "marker")
        wait_for(lambda: len(witness.json(ERRORS)) == 2, what="marker")
        assert witness.json(ERRORS)[1]["kind"] == "device-nak"  # unsubscribed: no 2nd error
        assert rec.commands == []
    finally:
        link.stop()


def test_device_table_and_errors(broker, witness, make_link):
    link = make_link([broker.url])
    table = [
        {
            "bus": "rs485-1",
            "address": 5,
            "role": "call-panel",
            "window": 5,
            "firmware": "0.1.0",
            "online": True,
            "last_seen": "2026-11-23T07:58:01.200Z",
        },
        {
            "bus": "rs485-1",
            "address": 9,
            "role": "window-display",
            "window": 6,
            "firmware": None,
            "online": False,
            "last_seen": None,
        },
    ]
    link.publish_devices(table)
    link.publish_error("outbox-overflow", "outbox full: dropped 3", payload=b"x" * 1000)
    wait_for(lambda: witness.json(ERRORS), what="error")
    err = check_schema("errors", witness.json(ERRORS)[0])
    assert err["kind"] == "outbox-overflow" and len(err["payload"]) == 256
    assert err["payload_size"] == 1000
    wait_for(lambda: retained(broker, DEVICES, timeout=0.5), what="retained device table")
    devices = check_schema("devices", retained(broker, DEVICES))
    assert devices["devices"] == table and devices["gateway"] == GW


# -- MQTT 3.1.1 -------------------------------------------------------------------------------


def test_mqtt_311(broker, witness, make_link):
    witness.publish(topic(2, "panel"), {"version": 1, "mode": "idle", "queue": 3}, True)
    link = make_link([broker.url], protocol="3.1.1", windows=[2])
    assert link.wait_connected(5)
    wait_for(lambda: link.rec.commands_for(2, "panel"), what="retained panel")
    assert link.rec.commands_for(2, "panel") == [PanelCommand(1, "idle", queue=3)]
    assert retained(broker, STATUS)["state"] == "online"
    link.publish_event(2, event(7, 2), token=7)
    wait_for(lambda: link.rec.delivered == [7], what="PUBACK under 3.1.1")
    # The PUBACK may come back before the broker has passed the message on.
    wait_for(lambda: witness.payloads(topic(2, "event")), what="the event at the witness")
    assert witness.payloads(topic(2, "event")) == [event(7, 2)]
    witness.publish(topic(2, "panel"), b'{"version": 2}')
    wait_for(lambda: witness.json(ERRORS), what="error under 3.1.1")
    assert link.stop(3) is True
    assert retained(broker, STATUS)["reason"] == "stopped"


# -- construction -----------------------------------------------------------------------------


def test_urls_names_and_tls_are_checked_up_front(tmp_path):
    assert parse_url("mqtt://10.0.0.5").port == 1883
    assert parse_url("mqtts://broker.local").port == 8883 and parse_url("mqtts://b:1").tls
    for bad in ["tcp://h:1883", "mqtt://", "mqtt://h:99999", "mqtt://u:p@h", "mqtt://h/x"]:
        with pytest.raises(ValueError):
            parse_url(bad)
    with pytest.raises(ValueError, match="site"):
        MqttLink("a/b", GW, ["mqtt://h"])
    with pytest.raises(ValueError, match="gateway"):
        MqttLink(SITE, "gw+1", ["mqtt://h"])
    with pytest.raises(ValueError, match="protocol"):
        MqttLink(SITE, GW, ["mqtt://h"], protocol="4")
    with pytest.raises(ValueError, match="no such file"):
        MqttLink(SITE, GW, ["mqtts://h"], tls={"ca": str(tmp_path / "missing.pem")})
    with pytest.raises(ValueError, match="window"):
        MqttLink(SITE, GW, ["mqtt://h"], windows=[0])
    link = MqttLink(SITE, GW, "mqtt://h")
    assert link.client_id == f"hallgate-{SITE}-{GW}"


def test_tls_failure_is_reported_and_retried(broker, tmp_path, make_link):
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate\n")
    link = make_link([f"mqtts://127.0.0.1:{broker.port}"], tls={"ca": str(ca)})
    wait_for(lambda: link.stats.connect_failures >= 2, what="TLS failures, retried")
    assert not link.connected
    assert link.last_error and f"127.0.0.1:{broker.port}" in link.last_error


def test_a_refused_subscription_is_asked_again(broker, witness):
    """A clustered broker refuses subscriptions for a few seconds after a node dies (NATS:
    SUBACK 0x80 while its streams elect a leader). The link's first SUBACK is turned into
    refusals here (mosquitto itself refuses none): the link says so on its errors topic and
    subscribes those topics again, until they are granted."""
    from paho.mqtt.reasoncodes import ReasonCode

    link = MqttLink(SITE, GW, [broker.url], windows=[4], delivery="puback", subscribe="kinds")
    subacks = []  # (mid, topics, granted) as the link's paho callback got them
    real = link._paho_subscribe

    def first_refused(client, userdata, mid, codes, props):
        if not subacks:
            codes = [ReasonCode(PacketTypes.SUBACK, identifier=0x80) for _ in codes]
        subacks.append((mid, tuple(link._sub_mids.get(mid, ())),
                        not any(c.is_failure for c in codes)))
        real(client, userdata, mid, codes, props)

    link._paho_subscribe = first_refused  # read when the link makes its paho client
    link.start()
    try:
        wait_for(lambda: len(subacks) >= 2 and subacks[-1][2], 10, "asked again, granted")
        refused_topics, again = set(subacks[0][1]), set(subacks[1][1])
        assert {f"hall/v1/{SITE}/window/+/{k}" for k in ("display", "panel", "vote")} \
            <= refused_topics == again
        assert link.stats.subscribe_refused == len(refused_topics)
        wait_for(lambda: not link._refused, 5, "nothing left to ask for")
        wait_for(lambda: any("asked again" in e.get("reason", "")
                             for e in witness.json(ERRORS)), 5, "the refusal reported")
    finally:
        link.stop(timeout=2)
