"""The central's desired state in one message per site (central/desired.py): the batching
on a fake clock, the message against its schema, the config keys, and the service on a real
mosquitto publishing `desired` instead of the window topics."""

import json
import re

import pytest
from conftest import wait_for
from hallgate.central.clock import FakeClock
from hallgate.central.config import ConfigError, load_config_dict
from hallgate.central.desired import DesiredOut
from hallgate.central.mqtt import CentralService
from hallgate.central.queue import QueueConfig
from hallgate.central.service import Central
from hallgate.central.state import Desired
from hallgate.sim.broker import Mosquitto
from test_central_mqtt import QCFG, SITE, Witness, ev, req
from test_mqtt_contract import validator


class Now:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def out(shape="site", batch_s=0.25):
    sent, now = [], Now()
    o = DesiredOut(lambda rest: f"hall/v1/s/{rest}", lambda t, p: sent.append((t, p)),
                   shape=shape, batch_s=batch_s, clock=now)
    return o, sent, now


def panel(v, queue=0):
    return {"version": v, "text": "", "mode": "idle", "queue": queue, "wait_s": 0,
            "tea": False, "beep": False}


def test_a_site_snapshot_goes_at_once_then_at_most_every_interval():
    o, sent, now = out()
    assert o.add([Desired(1, "panel", panel(1))]) is False  # quiet before: at once
    assert [t for t, _ in sent] == ["hall/v1/s/desired"]
    assert sent[0][1]["windows"] == {"1": {"panel": panel(1)}}
    now.t += 0.1
    assert o.add([Desired(2, "panel", panel(1, 3)), Desired(1, "panel", panel(2, 3))]) is True
    assert o.add([Desired(1, "panel", panel(3, 4))]) is True
    assert len(sent) == 1 and o.due_in() == pytest.approx(0.15)
    o.flush()  # not due yet
    assert len(sent) == 1
    now.t += 0.15
    assert o.due_in() == 0
    o.flush()
    assert len(sent) == 2 and o.due_in() is None
    # the whole site, each window's latest payload
    assert sent[1][1]["windows"] == {"1": {"panel": panel(3, 4)}, "2": {"panel": panel(1, 3)}}
    assert (o.changes, o.messages) == (4, 2)
    for _, payload in sent:
        errors = list(validator("desired").iter_errors(payload))
        assert not errors, [e.message for e in errors]


def test_a_new_connection_sends_at_once_and_a_stop_forces_the_last():
    o, sent, now = out()
    o.add([Desired(1, "display", {"version": 1, "text": "A001 > 1"})])
    now.t += 0.01
    o.add([Desired(1, "display", {"version": 2, "text": ""})], now=True)
    assert len(sent) == 2
    now.t += 0.01
    o.add([Desired(1, "vote", {"version": 1, "open": False})])
    o.flush(force=True)
    assert len(sent) == 3 and sent[2][1]["windows"]["1"] == {
        "display": {"version": 2, "text": ""}, "vote": {"version": 1, "open": False}}


def test_session_stays_per_window_and_the_windows_shape_sends_each_at_once():
    o, sent, _ = out()
    session = {"version": 1, "operator": "ivanova", "name": None, "since": None, "via": None}
    o.add([Desired(3, "session", session)])
    assert sent == [("hall/v1/s/window/3/session", session)] and o.due_in() is None
    o, sent, _ = out("windows")
    o.add([Desired(1, "panel", panel(1)), Desired(1, "vote", {"version": 1, "open": False})])
    assert [t for t, _ in sent] == ["hall/v1/s/window/1/panel", "hall/v1/s/window/1/vote"]
    with pytest.raises(ValueError, match="'windows'.*'site'"):
        out("all")


def test_the_config_keys_and_their_errors(tmp_path):
    base = {"site": "x", "broker": "mqtt://h", "database": "d.db",
            "services": {"A": "P"}, "windows": [{"n": 1, "services": ["A"]}]}
    cfg = load_config_dict({**base, "desired": "site", "desired_batch_s": 0.5}, tmp_path)
    assert (cfg.desired, cfg.desired_batch_s) == ("site", 0.5)
    assert load_config_dict(base, tmp_path).desired == "windows"
    for change, message in [({"desired": "sites"}, 'desired: \'sites\' must be "windows"'),
                            ({"desired_batch_s": -1}, "desired_batch_s: -1.0 must be 0-60"),
                            ({"desired_batch_s": "1"}, "desired_batch_s: '1' is not")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config_dict({**base, **change}, tmp_path)


def test_the_service_publishes_one_site_message_instead_of_the_window_topics(tmp_path):
    broker = Mosquitto(tmp_path / "broker").start()
    w = svc = None
    try:
        w = Witness(broker.port)
        svc = CentralService(Central(QueueConfig.from_dict(QCFG), tmp_path / "c.db",
                                     FakeClock()), SITE, broker.url, tick_s=0.05,
                             stats_s=0.5, desired="site", desired_batch_s=0.3).start()
        assert svc.wait_connected(5)
        # on the connection: the whole site at once (both windows: a closed/idle panel each)
        wait_for(lambda: w.on("desired"), 5, "the site's desired state")
        first = w.last("desired")
        assert set(first["windows"]) == {"1", "2"}
        for _ in range(3):
            w.pub("ticket/request", req(f"k{_}"))
        w.pub("window/1/event", ev(1, "call"))

        def called():
            last = w.last("desired") or {}
            return last.get("windows", {}).get("1", {}).get("display", {}).get("text")
        wait_for(lambda: called() == "A001 > 1", 5, "window 1's call in the site message")
        last = w.last("desired")
        assert not list(validator("desired").iter_errors(last))
        assert last["windows"]["1"]["panel"]["mode"] == "called"
        assert last["windows"]["2"]["panel"]["queue"] == 2  # A002, A003 still waiting
        # nothing on the window topics but the staff app's session
        kinds = {t.rsplit("/", 1)[1] for t, _ in w.msgs if "/window/" in t}
        assert kinds <= {"event", "session"}, kinds
        # three tickets and a call changed ~10 window payloads: fewer messages carried them
        assert svc.desired.changes > svc.desired.messages >= 2
        json.dumps(svc.counters)
    finally:
        if svc is not None:
            svc.stop()
        if w is not None:
            w.close()
        broker.stop()
