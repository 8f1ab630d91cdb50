"""Operator sessions: a PIN on the call panel's keys, pause twice to leave, a staff app's
logins; who gets the waits, services and votes; sessions kept across a restart."""

import json
import pathlib

import jsonschema
from hallgate.central.clock import FakeClock
from hallgate.central.queue import Queue, QueueConfig
from hallgate.central.service import Central
from hallgate.central.sessions import LOCK_S, MAX_FAILURES
from hallgate.central.stats import live_stats

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCHEMAS = {k: json.loads((ROOT / "protocols/schemas" / f"{k}.schema.json").read_text())
           for k in ("panel", "session")}
T0 = FakeClock().now()
CONFIG = {
    "services": {"A": "Passports"}, "tz": "UTC",
    "windows": [{"n": 1, "services": ["A"], "operator": "ivanova"},
                {"n": 2, "services": ["A"]}],
    "operators": {"ivanova": {"name": "Ivanova A.", "pin": "1357"},
                  "petrov": {"name": "Petrov S.", "pin": "2468"},
                  "sidorova": {"name": "Sidorova E."}},  # no PIN: staff app only
}
PETROV = ("recall", "finish", "pause", "redirect")  # 2 4 6 8


class Hall:
    def __init__(self, config=CONFIG):
        self.now = T0
        self.q = Queue(QueueConfig.from_dict(config), now=self.now)
        self.n = 0
        self.seen = {}

    def key(self, window, key):
        self.n += 1
        return self.q.handle_event({"id": f"e{self.n}", "window": window, "type": "key",
                                    "key": key}, now=self.now)

    def app(self, window, action, operator=None):
        self.n += 1
        req = {"id": f"s{self.n}", "window": window, "action": action}
        if operator:
            req["operator"] = operator
        return self.q.session(req, now=self.now)

    def shown(self, window, kind="panel"):
        for d in self.q.take_desired():
            if d.kind in SCHEMAS:
                jsonschema.validate(d.payload, SCHEMAS[d.kind])
            self.seen[(d.window, d.kind)] = d.payload
        return self.seen.get((window, kind))


def test_a_window_with_nobody_is_closed_and_a_pin_on_the_keys_logs_in():
    h = Hall()
    assert h.q.windows[1].operator == "ivanova" and h.q.windows[1].mode == "idle"
    assert h.q.windows[2].mode == "closed"
    h.q.issue("A", now=h.now)
    panel = h.shown(2)
    assert (panel["mode"], panel["text"], panel["queue"]) == ("closed", "PIn", 0)
    texts = []
    for key in PETROV:
        assert h.key(2, key).ok
        texts.append(h.shown(2)["text"])
    assert texts[:3] == ["P-", "P--", "P---"]
    panel = h.shown(2)
    assert panel["mode"] == "idle" and panel["beep"] and panel["queue"] == 1
    session = h.shown(2, "session")
    assert (session["operator"], session["name"], session["via"]) == (
        "petrov", "Petrov S.", "panel")
    assert h.key(2, "call").ok  # now the keys are keys again


def test_wrong_pins_show_err_then_lock_the_panel_for_a_while():
    h = Hall()
    for attempt in range(MAX_FAILURES):
        for key in ("call", "call", "call"):
            assert h.key(2, key).ok
        out = h.key(2, "call")  # 1111: nobody's
        assert not out.ok and "wrong PIN" in out.reason
        assert h.shown(2)["text"] == ("Err" if attempt < MAX_FAILURES - 1 else "LOC")
    out = h.key(2, PETROV[0])
    assert not out.ok and "locked" in out.reason and h.q.windows[2].pin == ""
    h.now += LOCK_S
    h.q.tick(now=h.now)
    assert h.shown(2)["text"] == "PIn"
    for key in PETROV:
        h.key(2, key)
    assert h.q.windows[2].operator == "petrov"


def test_pause_twice_logs_out_and_a_busy_window_cannot_change_hands():
    h = Hall()
    h.q.issue("A", now=h.now)
    assert h.key(1, "call").ok
    assert not h.key(1, "pause").ok
    out = h.app(1, "logout")
    assert not out.ok and "finish first" in out.reason
    out = h.app(1, "login", "petrov")
    assert not out.ok and "finish first" in out.reason
    h.key(1, "start")
    h.key(1, "finish")
    assert h.key(1, "pause").ok and h.q.windows[1].mode == "paused"
    assert h.key(1, "pause").ok
    assert h.q.windows[1].mode == "closed" and h.q.windows[1].operator is None
    assert h.shown(1, "session")["operator"] is None
    ended = [r for r in h.q.state.sessions.values() if r.operator == "ivanova"]
    assert len(ended) == 1 and ended[0].end == h.now and ended[0].end_via == "panel"


def test_a_staff_app_hands_over_and_moves_operators():
    h = Hall()
    assert h.app(2, "login", "sidorova").ok
    assert h.q.windows[2].operator == "sidorova" and h.q.windows[2].mode == "idle"
    assert h.app(1, "login", "sidorova").ok  # moves: logged out at 2, handover at 1
    assert h.q.windows[2].mode == "closed" and h.q.windows[1].operator == "sidorova"
    vias = sorted((r.operator, r.window, r.end_via) for r in h.q.state.sessions.values())
    assert vias == [("ivanova", 1, "app"), ("sidorova", 1, None),
                    ("sidorova", 2, "login-elsewhere")]
    for bad, why in [(("login", "nobody"), "not configured"), (("login", "a b"), "1-64"),
                     (("dance", "petrov"), "login or logout")]:
        out = h.app(1, *bad)
        assert not out.ok and why in out.reason
    req = {"id": "again", "window": 2, "action": "login", "operator": "petrov"}
    assert h.q.session(req, now=h.now).ok
    assert h.q.session(req, now=h.now).duplicate


def test_waits_services_and_votes_go_to_whoever_was_logged_in():
    h = Hall()
    t = h.q.issue("A", now=h.now)
    h.now += 120
    h.key(1, "call")  # ivanova calls: the wait is hers
    h.app(1, "login", "petrov")  # refused: she has a visitor
    h.key(1, "start")
    h.now += 300
    h.key(1, "finish")  # and the service
    h.key(1, "pause")
    h.key(1, "pause")  # she leaves; voting stays open for her visitor
    for key in PETROV:
        h.key(1, key)
    assert h.q.windows[1].operator == "petrov"
    vote = h.q.handle_event({"id": "v1", "window": 1, "type": "vote", "vote": "like",
                             "ticket": t.number}, now=h.now)
    assert vote.vote.counted and vote.vote.operator == "ivanova"
    assert (t.first_operator, t.ended_operator) == ("ivanova", "ivanova")
    h.now += 60
    stats = live_stats(h.q, now=h.now)
    iv, pe = stats["by_operator"]["ivanova"], stats["by_operator"]["petrov"]
    assert (iv["served"], iv["wait_avg_s"], iv["service_time_avg_s"], iv["likes"]) == (
        1, 120.0, 300.0, 1)
    assert (iv["sessions"], iv["logged_in_s"]) == (1, 420.0)
    assert (pe["served"], pe["sessions"], pe["logged_in_s"]) == (0, 1, 60.0)


def test_sessions_and_pin_entry_survive_a_restart(tmp_path):
    clock = FakeClock()
    cfg = QueueConfig.from_dict(CONFIG)
    c = Central(cfg, tmp_path / "c.db", clock)
    n = 0
    for key in PETROV[:2]:
        n += 1
        c.handle_event({"id": f"k{n}", "window": 2, "type": "key", "key": key})
    c.close()
    c = Central(cfg, tmp_path / "c.db", clock)
    assert c.queue.windows[2].pin == "24"  # half a PIN survives, like the panel's "P--"
    for key in PETROV[2:]:
        n += 1
        c.handle_event({"id": f"k{n}", "window": 2, "type": "key", "key": key})
    clock.advance(600)
    c.close()
    c = Central(cfg, tmp_path / "c.db", clock)
    assert c.queue.windows[2].operator == "petrov"
    assert {r.operator for r in c.queue.state.sessions.values() if r.end is None} == {
        "ivanova", "petrov"}
    report = c.day_report("2026-11-23")
    assert report["by_operator"]["petrov"]["logged_in_s"] == 600.0
    assert report["by_operator"]["ivanova"]["sessions"] == 1
    c.close()


def test_without_operators_windows_stay_open_as_before():
    h = Hall({"services": {"A": "x"}, "tz": "UTC", "windows": [{"n": 1, "services": ["A"]}]})
    assert h.q.windows[1].mode == "idle" and h.q.windows[1].operator is None
    h.q.issue("A", now=h.now)
    assert h.key(1, "call").ok
    h.key(1, "noshow")
    assert h.key(1, "pause").ok and h.key(1, "resume").ok  # no logout without sessions
    assert h.app(1, "login", "anyone").ok and h.q.windows[1].operator == "anyone"
