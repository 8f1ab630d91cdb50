"""The central service on a real mosquitto: an independent paho client plays the gateway
and a kiosk; tickets, calls, votes, duplicates, a restart and the report."""

import json
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import jsonschema
import paho.mqtt.client as paho
import pytest
from conftest import wait_for
from hallgate.central.clock import FakeClock
from hallgate.central.config import ConfigError, load_config, load_config_dict
from hallgate.central.mqtt import CentralService
from hallgate.central.queue import QueueConfig
from hallgate.central.service import Central
from hallgate.sim.broker import Mosquitto
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "protocols" / "schemas"
SITE = "t-1"
P = f"hall/v1/{SITE}"
DAY = "2026-11-23"  # FakeClock's default start

def check(name, payload):
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(payload))
    assert not errors, [e.message for e in errors]


def test_doc_central_examples_validate():
    doc = (ROOT / "protocols" / "MQTT.md").read_text()
    found = re.findall(r"<!-- central-example: (\w+) -->\n```jsonc\n(.*?)\n```", doc, re.S)
    assert {n for n, _ in found} == {"ticket_request", "ticket_issued", "central_stats",
                                     "central_errors", "central_alerts", "ticket_refused"}
    for name, text in found:
        check(name, json.loads(text))


def test_config_example_and_errors(tmp_path):
    cfg = load_config(ROOT / "central" / "example.toml")
    assert cfg.site == "msk-01" and cfg.queue.services["A"].name == "Passports"
    base = {"site": "x", "broker": "mqtt://h", "database": "d.db",
            "services": {"A": "P"}, "windows": [{"n": 1, "services": ["A"]}]}
    for change, key in [({"site": "a/b"}, "site"), ({"broker": "http://h"}, "broker"),
                        ({"windows": [{"n": "1", "services": ["A"]}]}, "windows[0].n"),
                        ({"windows": [{"n": 1, "services": ["Z"]}]}, "unknown service"),
                        ({"tz": "Mars/Base"}, "tz"), ({"norm_s": "x"}, "norm_s")]:
        with pytest.raises(ConfigError, match=re.escape(key)):
            load_config_dict({**base, **change}, tmp_path)
    bad = tmp_path / "bad.toml"
    bad.write_text("site = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


class Witness:
    """An independent client: the gateway and the kiosk, logging everything under P/#."""

    def __init__(self, port):
        self.msgs = []
        self.lock = threading.Lock()
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"w-{uuid.uuid4().hex}",
                             protocol=paho.MQTTv5)
        self.c.on_message = self._msg
        self.c.connect("127.0.0.1", port)
        self.c.subscribe(f"{P}/#", qos=1)
        self.c.loop_start()

    def _msg(self, client, userdata, m):
        try:
            payload = json.loads(m.payload) if m.payload else None
        except ValueError:
            payload = m.payload  # the malformed ones the test sends itself
        with self.lock:
            self.msgs.append((m.topic, payload))

    def on(self, topic):
        with self.lock:
            return [p for t, p in self.msgs if t == f"{P}/{topic}"]

    def last(self, topic):
        got = self.on(topic)
        return got[-1] if got else None

    def pub(self, topic, payload):
        self.c.publish(f"{P}/{topic}", json.dumps(payload) if isinstance(payload, dict)
                       else payload, qos=1).wait_for_publish(5)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def ev(seq, key=None, vote=None, ticket=None, window=1):
    e = {"id": f"gw-1.{seq:012d}", "gateway": "gw-1", "seq": seq,
         "ts": "2026-11-23T08:00:00.000Z", "window": window}
    if key:
        e.update(type="key", key=key, action="press", source={"gpio": 5})
    else:
        e.update(type="vote", vote=vote, ticket=ticket, misuse=False, source={"gpio": 17})
    check("event", e)
    return e


def req(rid, service="A"):
    r = {"id": rid, "service": service, "ts": "2026-11-23T08:00:00.000Z"}
    check("ticket_request", r)
    return r


QCFG = {"services": {"A": "Passports", "B": "Registration"}, "tz": "UTC",
        "windows": [{"n": 1, "services": ["A"], "operator": "ivanova"},
                    {"n": 2, "services": ["A", "B"]}]}


def test_central_on_mqtt(tmp_path):
    db = tmp_path / "central.db"
    clock = FakeClock()
    qcfg = QueueConfig.from_dict(QCFG)
    broker = Mosquitto(tmp_path / "broker").start()
    w = None
    svc = None

    def service():
        s = CentralService(Central(qcfg, db, clock), SITE, broker.url, tick_s=0.05,
                           stats_s=0.1, reconnect_max=0.5)
        s.start()
        assert s.wait_connected(5)
        return s

    try:
        w = Witness(broker.port)
        svc = service()
        wait_for(lambda: (w.last("central/status") or {}).get("state") == "online",
                 5, "status online")
        check("status", w.last("central/status"))

        # a ticket, and the same one for the same request again
        w.pub("ticket/request", req("k1"))
        wait_for(lambda: w.on("ticket/issued"), 5, "ticket issued")
        issued = w.last("ticket/issued")
        check("ticket_issued", issued)
        assert issued["ticket"] == "A001" and issued["queue_position"] == 1
        w.pub("ticket/request", req("k1"))
        wait_for(lambda: len(w.on("ticket/issued")) == 2, 5, "second answer")
        assert w.last("ticket/issued")["ticket"] == "A001"

        # call: retained display and panel for window 1
        clock.advance(60)
        w.pub("window/1/event", ev(1, "call"))
        wait_for(lambda: (w.last("window/1/display") or {}).get("text") == "A001 > 1",
                 5, "display A001")
        check("display", w.last("window/1/display"))
        wait_for(lambda: (w.last("window/1/panel") or {}).get("mode") == "called", 5, "panel")
        panel = w.last("window/1/panel")
        check("panel", panel)
        assert panel["text"] == "A001" and panel["wait_s"] == 60

        # start, finish: voting opens; a like is recorded and counted in the stats
        w.pub("window/1/event", ev(2, "start"))
        w.pub("window/1/event", ev(3, "finish"))
        wait_for(lambda: (w.last("window/1/vote") or {}).get("open") is True, 5, "vote open")
        vote_open = w.last("window/1/vote")
        check("vote", vote_open)
        assert vote_open["ticket"] == "A001"
        w.pub("window/1/event", ev(4, vote="like", ticket="A001"))
        wait_for(lambda: (w.last("window/1/vote") or {}).get("open") is False, 5, "vote closed")
        wait_for(lambda: (w.last("central/stats") or {}).get("all", {}).get("likes") == 1,
                 5, "like in the stats")
        stats = w.last("central/stats")
        check("central_stats", stats)
        assert stats["all"]["served"] == 1 and stats["by_window"]["1"]["satisfaction"] == 1.0

        # a duplicate event changes nothing; malformed input is reported
        versions = {k: svc.central.queue.desired(1, k)["version"]
                    for k in ("display", "panel", "vote")}
        w.pub("window/1/event", ev(3, "finish"))
        w.pub("window/1/event", ev(4, vote="like", ticket="A001"))
        w.pub("window/1/event", b"{not json")
        w.pub("window/1/event", ev(5, "finish", window=2))  # topic says window 1
        w.pub("ticket/request", req("k9", service="Z"))
        wait_for(lambda: len(w.on("central/errors")) == 3, 5, "three errors")
        for e in w.on("central/errors"):
            check("central_errors", e)
        assert [e["kind"] for e in w.on("central/errors")] == \
            ["bad-event", "bad-event", "bad-request"]
        assert svc.counters["duplicates"] == 2
        assert {k: svc.central.queue.desired(1, k)["version"]
                for k in ("display", "panel", "vote")} == versions
        assert len(svc.central.queue.state.votes) == 1

        # restart: events sent while the service is away arrive; tickets, votes, versions kept
        assert svc.stop() is True
        # The broker forwards the stop's status to the witness a moment after its PUBACK.
        wait_for(lambda: (w.last("central/status") or {}).get("reason") == "stopped", 5,
                 "the central's stopped status at the witness")
        svc.central.close()
        w.pub("ticket/request", req("k2"))
        w.pub("window/1/event", ev(6, "call"))
        svc = service()
        wait_for(lambda: (w.last("window/1/display") or {}).get("text") == "A002 > 1",
                 5, "A002 called after the restart")
        assert w.last("window/1/display")["version"] > versions["display"]
        assert w.last("window/1/panel")["version"] > versions["panel"]
        w.pub("ticket/request", req("k1"))
        wait_for(lambda: w.last("ticket/issued")["request_id"] == "k1", 5, "k1 again")
        assert w.last("ticket/issued")["ticket"] == "A001"
        assert "queue_position" not in w.last("ticket/issued")
        assert len(svc.central.queue.state.votes) == 1
        w.pub("window/1/event", ev(4, vote="like", ticket="A001"))  # still a duplicate
        wait_for(lambda: svc.counters["duplicates"] == 1, 5, "duplicate after restart")

        # the report, from another process, while the service runs
        cfg = tmp_path / "central.toml"
        cfg.write_text(f'site = "{SITE}"\nbroker = "{broker.url}"\ndatabase = "central.db"\n'
                       'tz = "UTC"\n[services]\nA = "Passports"\nB = "Registration"\n'
                       '[[windows]]\nn = 1\nservices = ["A"]\n')
        out = subprocess.run([sys.executable, "-m", "hallgate.cli", "central", "report",
                              "--config", str(cfg), "--day", DAY, "--json"],
                             capture_output=True, text=True, timeout=30, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        rep = json.loads(out.stdout)
        assert rep["all"]["served"] == 1 and rep["all"]["issued"] == 2
        assert rep["all"]["likes"] == 1
        table = subprocess.run([sys.executable, "-m", "hallgate.cli", "central", "report",
                                "--config", str(cfg), "--day", DAY],
                               capture_output=True, text=True, timeout=30, cwd=tmp_path)
        assert table.returncode == 0 and "-- by window" in table.stdout, table.stderr
        assert "-- by hour" in table.stdout and "r.out" in table.stdout, table.stdout
        assert "A Passports" in table.stdout  # the catalogue's name
        assert re.search(r"ivanova .* 1 session\(s\), logged in", table.stdout), table.stdout
        assert rep["by_operator"]["ivanova"]["sessions"] == 1
        assert rep["all"]["open"] == 1 and "wait_p50_s" in rep["all"]
    finally:
        if svc is not None:
            svc.stop()
            svc.central.close()
        if w is not None:
            w.close()
        broker.stop()


@pytest.fixture
def on_broker(tmp_path):
    """A broker, a witness, and start(config, clock): a central service on them (the last
    one started is stopped at the end)."""
    broker = Mosquitto(tmp_path / "broker").start()
    w = Witness(broker.port)
    running = []

    def start(cfg, clock):
        while running:
            old = running.pop()
            old.stop()
            old.central.close()
        svc = CentralService(Central(cfg, tmp_path / "c.db", clock), SITE, broker.url,
                             tick_s=0.05, stats_s=5).start()
        running.append(svc)
        assert svc.wait_connected(5)
        return svc

    yield w, start
    for svc in running:
        svc.stop()
        svc.central.close()
    w.close()
    broker.stop()


def test_a_long_wait_is_alerted_live_once_per_threshold(on_broker):
    w, start = on_broker
    clock, cfg = FakeClock(), QueueConfig.from_dict(QCFG)
    start(cfg, clock)
    w.pub("ticket/request", req("k1", "B"))
    wait_for(lambda: w.on("ticket/issued"), 5, "the ticket")
    clock.advance(599)
    w.pub("ticket/request", req("k2", "B"))  # a round trip: the ticks have run
    wait_for(lambda: len(w.on("ticket/issued")) == 2, 5, "the second ticket")
    assert w.on("central/alerts") == []
    clock.advance(2)  # B001 601 s, B002 2 s
    wait_for(lambda: w.on("central/alerts"), 5, "the warn alert")
    clock.advance(300)  # B001 901 s: over the norm; B002 302 s
    wait_for(lambda: len(w.on("central/alerts")) == 2, 5, "the over-norm alert")
    alerts = w.on("central/alerts")
    for a in alerts:
        check("central_alerts", a)
    assert [(a["kind"], a["ticket"]) for a in alerts] == [("wait-warn", "B001"),
                                                          ("over-norm", "B001")]
    assert alerts[0]["waiting"] == 2 and alerts[0]["windows_open"] == [2]
    assert alerts[1]["waited_s"] == 901 and alerts[1]["position"] == 1
    svc = start(cfg, clock)  # a restart does not say them again
    clock.advance(1)
    w.pub("ticket/request", req("k3", "A"))
    wait_for(lambda: len(w.on("ticket/issued")) == 3, 5, "a ticket after the restart")
    time.sleep(0.5)  # ten ticks of the new service
    assert svc.counters["alerts"] == 0 and len(w.on("central/alerts")) == 2


def test_a_request_out_of_hours_is_answered_with_the_reason(on_broker):
    w, start = on_broker
    clock = FakeClock()  # 08:00 UTC
    svc = start(QueueConfig.from_dict({**QCFG, "opens": "08:30", "closes": "20:00"}), clock)
    w.pub("ticket/request", req("early"))
    wait_for(lambda: w.on("ticket/refused"), 5, "the refusal")
    refused = w.last("ticket/refused")
    check("ticket_refused", refused)
    assert (refused["request_id"], refused["code"]) == ("early", "before-opening")
    assert "opens at 08:30" in refused["reason"]
    clock.advance(1800)
    w.pub("ticket/request", req("early"))  # the same request once open: a ticket
    wait_for(lambda: w.on("ticket/issued"), 5, "the ticket")
    assert w.last("ticket/issued")["ticket"] == "A001"
    assert w.on("central/errors") == [] and svc.counters["refused"] == 1


def test_a_staff_app_logs_in_and_a_booked_visitor_gets_the_slot(on_broker):
    w, start = on_broker
    clock = FakeClock()  # 08:00 UTC
    cfg = QueueConfig.from_dict({
        **QCFG, "services": {"A": {"name": "Passports", "expected_s": 600}, "B": "Registration"},
        "operators": {"ivanova": "Ivanova A.", "petrov": {"name": "Petrov S.", "pin": "2468"}}})
    svc = start(cfg, clock)
    wait_for(lambda: w.last("window/2/session"), 5, "the retained session of window 2")
    assert w.last("window/2/session")["operator"] is None
    assert w.last("window/2/panel")["mode"] == "closed"
    login = {"id": "staff-1", "ts": "2026-11-23T08:00:00.000Z", "window": 2,
             "action": "login", "operator": "petrov"}
    check("staff_session", login)
    w.pub("staff/session", login)
    wait_for(lambda: w.on("staff/session/result"), 5, "the answer")
    result = w.last("staff/session/result")
    check("staff_session_result", result)
    assert (result["ok"], result["operator"]) == (True, "petrov")
    wait_for(lambda: (w.last("window/2/session") or {}).get("operator") == "petrov", 5,
             "the session topic")
    session = w.last("window/2/session")
    check("session", session)
    assert (session["name"], session["via"]) == ("Petrov S.", "app")
    w.pub("staff/session", login)  # redelivered: answered again, nothing changes
    w.pub("staff/session", {**login, "id": "staff-2", "operator": "nobody"})
    wait_for(lambda: len(w.on("staff/session/result")) == 3, 5, "two more answers")
    again, refused = w.on("staff/session/result")[1:]
    assert again["ok"] and not refused["ok"] and "not configured" in refused["reason"]

    w.pub("ticket/request", req("walk-in"))
    w.pub("ticket/request", {**req("booked"), "slot": "08:30"})
    w.pub("ticket/request", {**req("bad-slot"), "slot": "half past eight"})
    wait_for(lambda: len(w.on("ticket/issued")) == 2 and w.on("central/errors"), 5,
             "two tickets and an error")
    walk_in, booked = w.on("ticket/issued")
    for answer in (walk_in, booked):
        check("ticket_issued", answer)
    assert walk_in["service_name"] == "Passports" and walk_in["expected_wait_s"] == 0
    assert booked["slot_ts"] == "2026-11-23T08:30:00.000Z"
    assert "slot: 'half past eight'" in w.last("central/errors")["reason"]
    w.pub("window/2/event", ev(1, "call", window=2))  # 08:00: the walk-in, not the slot
    wait_for(lambda: (w.last("window/2/panel") or {}).get("text") == walk_in["ticket"], 5,
             "the walk-in called")
    w.pub("window/2/event", ev(2, "noshow", window=2))
    w.pub("window/2/event", ev(3, "call", window=2))  # nothing due yet
    wait_for(lambda: any("due in 30 min" in e["reason"] for e in w.on("central/errors")), 5,
             "the call refused until the slot")
    clock.advance(1800)
    w.pub("window/2/event", ev(4, "call", window=2))
    wait_for(lambda: (w.last("window/2/panel") or {}).get("text") == booked["ticket"], 5,
             "the booked visitor called at the slot")
    assert svc.counters["sessions"] == 1 and svc.counters["sessions_refused"] == 1
