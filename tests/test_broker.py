"""sim/broker.py: the real mosquitto on a free loopback port, its restarts and its errors."""


import paho.mqtt.client as mqtt
import pytest
from conftest import read_retained
from hallgate.sim import broker as broker_mod
from hallgate.sim.broker import BrokerError, Mosquitto, port_accepts
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
