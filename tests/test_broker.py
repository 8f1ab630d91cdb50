"""sim/broker.py: the real mosquitto on a free loopback port, its restarts and its errors;
the embedded amqtt broker (MQTT 3.1.1) and `start_broker`, the simulator's choice of the two."""

import logging
import socket
import subprocess
import sys

import paho.mqtt.client as mqtt
import pytest
from conftest import read_retained, wait_for
from hallgate.sim import broker as broker_mod
from hallgate.sim.broker import (
    BrokerError,
    EmbeddedBroker,
    Mosquitto,
    port_accepts,
    start_broker,
)
from paho.mqtt.enums import CallbackAPIVersion


def publish_retained(port, topic, payload):
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="", protocol=mqtt.MQTTv5)
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        c.publish(topic, payload, qos=1, retain=True).wait_for_publish(3)
    finally:
        c.disconnect()
        c.loop_stop()


def test_start_stop_and_url(tmp_path):
    b = Mosquitto(tmp_path)
    assert not b.running
    with b:
        assert b.running
        assert b.url == f"mqtt://127.0.0.1:{b.port}"
        assert port_accepts("127.0.0.1", b.port)
        conf = b.config_path.read_text()
        assert f"listener {b.port} 127.0.0.1" in conf
        assert "autosave_interval 1" in conf
    assert not b.running
    assert not port_accepts("127.0.0.1", b.port)
    assert "running" in b.log_text()


def test_restart_keeps_port_and_retained_after_sigterm_and_sigkill(tmp_path):
    with Mosquitto(tmp_path) as b:
        port = b.port
        publish_retained(port, "t/a", b"kept by SIGTERM")
        b.restart()
        assert b.port == port
        assert read_retained(port, "t/a") == b"kept by SIGTERM"
        publish_retained(port, "t/b", b"kept by autosave")
        b.wait_saved()  # autosave_interval 1: within about 2 s
        b.restart(kill=True)
        assert read_retained(port, "t/b") == b"kept by autosave"
        assert b.starts == 3


def test_pause_and_resume(tmp_path):
    with Mosquitto(tmp_path) as b:
        b.pause()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        try:
            c.connect("127.0.0.1", b.port)  # TCP completes (the kernel's), CONNACK never comes
            c.loop(timeout=0.3)
            assert not c.is_connected()
        finally:
            c.disconnect()
        b.resume()
        assert read_retained(b.port, "nothing/here", timeout=0.2) is None  # answers again


def test_missing_binary_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(broker_mod, "BINARY_PATHS", ())
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BrokerError, match="make test"):
        Mosquitto(tmp_path)


def test_bad_config_fails_with_the_log(tmp_path):
    b = Mosquitto(tmp_path, extra_config=["no_such_option 1"])
    with pytest.raises(BrokerError) as e:
        b.start()
    assert "no_such_option" in str(e.value)
    assert not b.running


# -- embedded amqtt broker (MQTT 3.1.1 only) -------------------------------------------------


class V311:
    """A paho 2.x MQTT 3.1.1 client on loopback that records what it receives."""

    def __init__(self, port, client_id="", clean_session=True, subscribe=()):
        self.got = []  # (topic, payload, retain, qos)
        self.session_present = []
        self.subscribed = []
        self.c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=clean_session,
        )
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = lambda cl, u, mid, rcs, p: self.subscribed.append(mid)
        self.c.on_message = lambda cl, u, m: self.got.append((m.topic, m.payload, m.retain, m.qos))
        self.topics = list(subscribe)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        wait_for(lambda: self.c.is_connected(), 5, "CONNACK")
        if self.topics:
            wait_for(lambda: self.subscribed, 5, "SUBACK")

    def _on_connect(self, client, userdata, flags, rc, props):
        self.session_present.append(flags.session_present)
        for topic in self.topics:
            client.subscribe(topic, qos=1)

    def publish(self, topic, payload, retain=False):
        info = self.c.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(5)
        assert info.is_published()  # PUBACK came

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def amqtt_broker(tmp_path):
    with EmbeddedBroker(tmp_path) as b:
        yield b


def test_embedded_start_url_protocol_and_idempotent_stop(tmp_path):
    b = EmbeddedBroker(tmp_path)
    assert not b.running
    assert EmbeddedBroker.protocol == "3.1.1" and Mosquitto.protocol == "5"
    with b:
        assert b.running
        assert b.url == f"mqtt://127.0.0.1:{b.port}"
        assert repr(b) == f"EmbeddedBroker({b.url}, running)"
        c = V311(b.port)  # a real CONNECT/CONNACK, not a bare TCP probe
        c.close()
    assert not b.running
    assert b.thread is None
    assert not port_accepts("127.0.0.1", b.port)
    b.stop()  # idempotent
    assert not b.running
    b.start()  # and it comes back on the same port
    try:
        assert b.running and b.starts == 2
        V311(b.port).close()
    finally:
        b.stop()
    assert not port_accepts("127.0.0.1", b.port)


def test_embedded_stop_with_connected_clients_frees_the_port(amqtt_broker):
    c = V311(amqtt_broker.port, client_id="stays", clean_session=False, subscribe=["x/#"])
    try:
        amqtt_broker.stop()
        assert not port_accepts("127.0.0.1", amqtt_broker.port)
        wait_for(lambda: not c.c.is_connected(), 5, "the client to see the broker go")
    finally:
        c.c.loop_stop()


def test_embedded_retained_qos1_reaches_a_later_subscriber(amqtt_broker):
    pub = V311(amqtt_broker.port)
    pub.publish("hall/1/state", b"open", retain=True)
    pub.close()
    sub = V311(amqtt_broker.port, subscribe=["hall/+/state"])
    try:
        wait_for(lambda: sub.got, 5, "the retained message")
        assert sub.got == [("hall/1/state", b"open", True, 1)]
    finally:
        sub.close()


def test_embedded_persistent_session_gets_what_was_sent_while_away(amqtt_broker):
    """clean_session=False as the gateway and central connect: amqtt's AnonymousAuthPlugin
    would drop the session and queue nothing; queued messages come without the retain flag."""
    port = amqtt_broker.port
    gw = V311(port, client_id="gw-1", clean_session=False, subscribe=["cmd/#"])
    assert gw.session_present == [False]
    gw.close()

    def offline():
        entry = amqtt_broker.amqtt.sessions.get("gw-1")
        return entry is not None and entry[0].transitions.state == "disconnected"

    wait_for(offline, 5, "amqtt to see gw-1 disconnect")
    pub = V311(port)
    for i in range(3):
        pub.publish("cmd/display", f"m{i}".encode())
    pub.close()
    gw = V311(port, client_id="gw-1", clean_session=False)  # no new SUBSCRIBE
    try:
        assert gw.session_present == [True]
        wait_for(lambda: len(gw.got) >= 3, 5, "the queued messages")
        assert gw.got == [("cmd/display", f"m{i}".encode(), False, 1) for i in range(3)]
    finally:
        gw.close()


def test_embedded_sends_no_retained_message_of_other_clients_subscriptions(amqtt_broker):
    """amqtt 0.12.1 sent a connecting client the retained messages matching ANY client's
    subscriptions; a client must get only those of its own SUBSCRIBE."""
    port = amqtt_broker.port
    other = V311(port, client_id="central", clean_session=False, subscribe=["status/#"])
    pub = V311(port)
    try:
        pub.publish("status/gw-1", b"online", retain=True)
        wait_for(lambda: other.got, 5, "the status at the subscriber")
        fresh = V311(port, subscribe=["cmd/gw-2"])
        try:
            pub.publish("cmd/gw-2", b"marker")  # after anything sent at CONNECT, in order
            wait_for(lambda: fresh.got, 5, "the marker")
            assert fresh.got == [("cmd/gw-2", b"marker", False, 1)]
        finally:
            fresh.close()
    finally:
        other.close()
        pub.close()


def test_embedded_refuses_mqtt5(amqtt_broker):
    codes = []
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.on_connect = lambda cl, u, f, rc, p: codes.append(rc)
    c.connect("127.0.0.1", amqtt_broker.port)
    c.loop_start()
    try:
        wait_for(lambda: codes, 5, "the CONNACK")
        assert codes[0].is_failure and "protocol version" in str(codes[0]).lower()
    finally:
        c.disconnect()
        c.loop_stop()


def test_embedded_port_in_use_fails_with_the_reason(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        b = EmbeddedBroker(tmp_path, port=s.getsockname()[1])
        with pytest.raises(BrokerError, match="address already in use"):
            b.start(timeout=5)
    assert not b.running
    assert b.thread is None


def test_embedded_quiets_amqtt_logs_unless_configured(tmp_path):
    amqtt_log, transitions_log = logging.getLogger("amqtt"), logging.getLogger("transitions")
    saved = amqtt_log.level, transitions_log.level
    amqtt_log.setLevel(logging.NOTSET)
    transitions_log.setLevel(logging.INFO)  # the caller's choice
    try:
        with EmbeddedBroker(tmp_path):
            assert amqtt_log.level == logging.WARNING
            assert transitions_log.level == logging.INFO
    finally:
        amqtt_log.setLevel(saved[0])
        transitions_log.setLevel(saved[1])


def test_importing_the_module_does_not_import_amqtt():
    code = "import sys, hallgate.sim.broker; print('amqtt' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# -- start_broker ----------------------------------------------------------------------------


def test_start_broker_prefers_mosquitto_when_installed(tmp_path):
    b = start_broker(tmp_path / "auto")
    try:
        assert isinstance(b, Mosquitto) and b.running and b.protocol == "5"
        publish_retained(b.port, "t/auto", b"v5")
        assert read_retained(b.port, "t/auto") == b"v5"
    finally:
        b.stop()
    b = start_broker(tmp_path / "forced", prefer="mosquitto")
    try:
        assert isinstance(b, Mosquitto) and b.running
    finally:
        b.stop()


def test_start_broker_amqtt_forced_or_when_mosquitto_is_missing(monkeypatch, tmp_path):
    b = start_broker(tmp_path, prefer="amqtt")
    try:
        assert isinstance(b, EmbeddedBroker) and b.running and b.protocol == "3.1.1"
        V311(b.port).close()
    finally:
        b.stop()
    monkeypatch.setattr(broker_mod, "BINARY_PATHS", ())
    monkeypatch.setenv("PATH", str(tmp_path))
    b = start_broker(tmp_path)
    try:
        assert isinstance(b, EmbeddedBroker) and b.running
    finally:
        b.stop()


@pytest.mark.parametrize("prefer", ["", "Mosquitto", "hbmqtt", None])
def test_start_broker_rejects_an_unknown_choice(tmp_path, prefer):
    with pytest.raises(ValueError, match="prefer must be one of auto, mosquitto, amqtt"):
        start_broker(tmp_path, prefer=prefer)
