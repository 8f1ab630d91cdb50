"""The central queue state machine: numbering, order, keys, votes, dedupe, desired state."""

import json
import pathlib

import jsonschema
import pytest
from hallgate.central.clock import FakeClock
from hallgate.central.queue import MAX_RECALLS, Queue, QueueConfig, QueueError

ROOT = pathlib.Path(__file__).resolve().parents[1]

SCHEMAS = {k: json.loads((ROOT / "protocols/schemas" / f"{k}.schema.json").read_text())
           for k in ("display", "panel", "vote", "session")}

CONFIG = {
    "services": {"A": "Passports", "B": "Benefits", "C": "Certificates"},
    "windows": [
        {"n": 1, "services": ["A"], "redirect_to": "B", "operator": "ivanova"},
        {"n": 2, "services": ["A", "B"], "operator": "petrov"},
        {"n": 3, "services": ["B", "C"]},
    ],
    "tz": "UTC",
}


class Hall:
    """A queue, a fake clock and an event id counter."""

    def __init__(self, config=CONFIG):
        self.clock = FakeClock()
        self.q = Queue(QueueConfig.from_dict(config))
        self.n = 0

    def issue(self, service, **kw):
        return self.q.issue(service, now=self.clock.now(), **kw)

    def key(self, window, key, **extra):
        self.n += 1
        ev = {"id": f"e{self.n}", "window": window, "type": "key", "key": key,
              "action": "press", **extra}
        return self.q.handle_event(ev, now=self.clock.now())

    def vote(self, window, vote, ticket, misuse=False, reason=None):
        self.n += 1
        ev = {"id": f"e{self.n}", "window": window, "type": "vote", "vote": vote,
              "ticket": ticket, "misuse": misuse, "ts": "2026-11-23T10:00:00.000Z"}
        if reason:
            ev["misuse_reason"] = reason
        return self.q.handle_event(ev, now=self.clock.now())

    def called(self, window):
        return self.key(window, "call").ticket.number


def test_numbering_per_service_per_day_and_wrap():
    h = Hall()
    assert [h.issue("A").number for _ in range(3)] == ["A001", "A002", "A003"]
    assert h.issue("B").number == "B001"
    h.clock.advance(24 * 3600)
    # A new day starts at 1 again, skipping the numbers yesterday's visitors still hold.
    assert h.issue("A").number == "A004"
    for _ in range(4):
        h.called(1)
        h.key(1, "noshow")
    assert h.issue("A").number == "A005"
    for _ in range(993):
        h.issue("B")
    last = h.issue("B")
    assert last.number == "B995" and last.tid.endswith("/B/995")
    assert len({t.tid for t in h.q.tickets.values()}) == len(h.q.tickets)
    with pytest.raises(QueueError, match="unknown service"):
        h.issue("Z")


def test_a_wrapped_counter_skips_numbers_still_held_and_refuses_when_none_is_free():
    from hallgate.central.queue import Refused

    h = Hall({**CONFIG, "services": {**CONFIG["services"],
                                     "A": {"name": "Passports", "digits": 1}}})
    tickets = [h.issue("A") for _ in range(9)]
    assert [t.number for t in tickets] == [f"A{i}" for i in range(1, 10)]
    with pytest.raises(Refused) as refused:
        h.issue("A")
    assert refused.value.code == "numbers-exhausted"
    for _ in range(2):  # A1 and A2 leave the hall
        h.called(1)
        h.key(1, "noshow")
    again = h.issue("A")
    assert again.number == "A1" and again.tid.endswith("/A/10")
    assert h.issue("A").number == "A2"
    open_numbers = [t.number for t in h.q.tickets.values() if t.state == "waiting"]
    assert len(open_numbers) == len(set(open_numbers))


def test_appointment_priority_then_longest_waiting_by_head_start():
    h = Hall()
    plain = h.issue("A")
    h.clock.advance(10)
    appt = h.issue("A", appointment=True)
    h.clock.advance(10)
    prio = h.issue("A", priority=1)
    h.clock.advance(10)
    plain2 = h.issue("A")
    order = []
    for _ in range(4):
        order.append(h.called(1))
        h.key(1, "noshow")
    # Head starts (central.selection): an appointment due now 900 s, priority 1 600 s.
    assert order == [appt.number, prio.number, plain.number, plain2.number]


def test_longest_waiting_first_across_services():
    h = Hall()
    b = h.issue("B")
    h.clock.advance(5)
    a = h.issue("A")
    assert h.called(2) == b.number
    h.key(2, "start")
    h.key(2, "finish")
    assert h.called(2) == a.number


def test_double_call_is_harmless():
    h = Hall()
    first = h.issue("A")
    h.issue("A")
    assert h.called(1) == first.number
    h.q.take_desired()
    again = h.key(1, "call")
    assert not again.ok and "already has A001" in again.reason
    assert h.q.take_desired() == []
    assert sum(t.state == "called" for t in h.q.tickets.values()) == 1
    h.key(1, "start")
    assert not h.key(1, "call").ok  # serving: finish first


def test_two_windows_never_call_the_same_ticket():
    h = Hall()
    only = h.issue("A")
    assert h.called(1) == only.number
    out = h.key(2, "call")
    assert not out.ok and out.reason == "nothing waiting for window 2"
    assert only.window == 1


def test_recall_cap():
    h = Hall()
    h.issue("A")
    h.called(1)
    h.q.take_desired()
    for _ in range(MAX_RECALLS):
        assert h.key(1, "recall").ok
        kinds = {d.kind: d.payload for d in h.q.take_desired()}
        assert kinds["display"]["blink_s"] == 10 and kinds["panel"]["beep"] is True
    out = h.key(1, "recall")
    assert not out.ok and "start or no-show" in out.reason
    assert h.key(1, "start").ok


def test_key_validity():
    h = Hall()
    assert not h.key(1, "recall").ok
    assert not h.key(1, "start").ok
    assert not h.key(1, "finish").ok
    assert not h.key(1, "noshow").ok
    assert not h.key(1, "resume").ok
    assert not h.key(1, "redirect").ok
    h.issue("A")
    assert h.key(1, "pause").ok
    assert not h.key(1, "call").ok  # paused windows never get calls
    assert h.key(2, "call").ok
    assert h.key(1, "resume").ok
    assert not h.key(2, "finish").ok  # called: start first
    assert not h.key(2, "pause").ok
    unknown = h.q.handle_event({"id": "x", "window": 9, "type": "key", "key": "call"}, now=0)
    assert not unknown.ok and "not configured" in unknown.reason


def test_redirect_keeps_ticket_and_goes_to_head():
    h = Hall()
    b1 = h.issue("B")
    a = h.issue("A")
    h.clock.advance(60)
    assert h.called(1) == a.number
    h.key(1, "start")
    assert h.key(1, "redirect").ok  # window 1's default target: B
    assert a.state == "waiting" and a.service == "B" and a.number == "A001"
    assert h.q.windows[1].mode == "idle"
    assert h.called(3) == a.number  # ahead of b1 who was there first: already waited once
    assert len(h.q.tickets) == 2
    h.key(3, "start")
    assert h.key(3, "redirect", service="C").ok  # explicit target
    assert a.service == "C"
    assert not h.key(3, "redirect").ok  # nobody at the window
    h.called(3)
    assert h.q.tickets[a.tid].window == 3
    assert not h.key(3, "redirect", service="C").ok  # already in C
    assert b1.state == "waiting"


def test_dedupe_by_event_id():
    h = Hall()
    h.issue("A")
    h.issue("A")
    ev = {"id": "gw-1.1", "window": 1, "type": "key", "key": "call", "action": "press"}
    assert h.q.handle_event(ev, now=h.clock.now()).ok
    h.key(1, "noshow")
    before = h.q.snapshot()
    dup = h.q.handle_event(ev, now=h.clock.now())
    assert dup.duplicate and not dup.ok
    assert h.q.snapshot() == before
    t1 = h.issue("A", request_id="kiosk-7")
    assert h.issue("A", request_id="kiosk-7") is t1


def test_seen_ids_bounded_by_day():
    h = Hall()
    h.key(1, "pause")
    h.clock.advance(86400)
    h.key(1, "resume")
    assert h.q.forget_seen_before("2026-11-24") == 1
    assert list(h.q.state.seen) == ["e2"]


def test_votes_tied_to_ticket_window_service_operator():
    h = Hall()
    a = h.issue("A")
    h.called(1)
    h.key(1, "start")
    assert h.q.desired(1, "vote")["open"] is False
    h.key(1, "finish")
    assert h.q.desired(1, "vote") == {"version": 2, "open": True, "ticket": "A001",
                                      "timeout_s": 60}
    out = h.vote(1, "like", "A001")
    v = out.vote
    assert (v.counted, v.misuse, v.tid, v.window, v.service, v.operator) == (
        True, False, a.tid, 1, "A", "ivanova")
    assert h.q.desired(1, "vote")["open"] is False  # a counted vote closes voting
    second = h.vote(1, "dislike", "A001", misuse=True, reason="second press for the same ticket")
    assert second.vote.misuse and not second.vote.counted and second.vote.tid == a.tid
    late = h.vote(1, "like", "A001")
    assert late.vote.misuse and late.vote.reason == "voting closed at window 1"
    nothing = h.vote(2, "like", None)
    assert nothing.vote.misuse and nothing.vote.tid is None and nothing.vote.operator == "petrov"
    assert len(h.q.state.votes) == 4


def test_vote_for_another_ticket_and_timeout_and_next_call():
    h = Hall()
    h.issue("A")
    h.issue("A")
    h.called(1)
    h.key(1, "start")
    h.key(1, "finish")
    wrong = h.vote(1, "like", "A777")
    assert wrong.vote.misuse and "not the one voting is open for (A001)" in wrong.vote.reason
    h.clock.advance(59)
    assert h.q.tick(now=h.clock.now()) == []
    h.clock.advance(1)
    assert h.q.tick(now=h.clock.now()) == [1]
    assert h.q.desired(1, "vote")["open"] is False
    h.called(1)
    h.key(1, "start")
    h.key(1, "finish")
    assert h.q.desired(1, "vote")["ticket"] == "A002"
    h.issue("A")
    h.called(1)  # the next call closes voting
    assert h.q.desired(1, "vote")["open"] is False


def test_desired_state_payloads_validate_and_versions_grow():
    h = Hall()
    seen = {}

    def check():
        for d in h.q.take_desired():
            jsonschema.validate(d.payload, SCHEMAS[d.kind])
            assert d.payload["version"] > seen.get((d.window, d.kind), 0)
            seen[(d.window, d.kind)] = d.payload["version"]

    check()
    t = h.issue("A")
    check()
    h.clock.advance(16 * 60)
    h.called(1)
    assert h.q.desired(1, "display") == {"version": 2, "text": "A001 > 1", "blink_s": 10,
                                         "brightness": 8}
    panel = h.q.desired(1, "panel")
    assert panel["mode"] == "called" and panel["tea"] is True and panel["wait_s"] == 960
    assert panel["beep"] is True and panel["text"] == t.number
    check()
    for key in ("recall", "start", "finish", "pause", "resume"):
        h.key(1, key)
        check()
    assert h.q.desired(1, "display")["text"] == ""
    assert h.q.desired(1, "panel")["mode"] == "idle"
    for d in h.q.all_desired():
        jsonschema.validate(d.payload, SCHEMAS[d.kind])


def test_long_window_numbers_fit_the_display():
    cfg = {"services": {"A": "x"}, "windows": [{"n": 123456, "services": ["A"]}], "tz": "UTC"}
    h = Hall(cfg)
    h.issue("A")
    h.called(123456)
    d = h.q.desired(123456, "display")
    assert d["text"] == "A001"
    jsonschema.validate(d, SCHEMAS["display"])


def test_bad_config_is_refused():
    with pytest.raises(QueueError, match="unknown service"):
        QueueConfig.from_dict({"services": {"A": "x"}, "windows": [{"n": 1, "services": ["B"]}]})
    with pytest.raises(QueueError, match="twice"):
        QueueConfig.from_dict({"services": {"A": "x"}, "windows": [
            {"n": 1, "services": ["A"]}, {"n": 1, "services": ["A"]}]})


def test_the_whole_wait_and_the_tea_follow_a_redirected_visitor():
    """Waited 500 s for A, served 300 s, redirected, waited 500 s more for B: the panel at
    the second window shows 1,000 s and tea, and the statistics count 1,000 s."""
    h = Hall()
    t0 = h.clock.now()
    a = h.issue("A")
    h.clock.set(t0 + 500)
    assert h.key(1, "call").ticket is a
    assert (h.q.desired(1, "panel")["wait_s"], h.q.desired(1, "panel")["tea"]) == (500, False)
    h.key(1, "start")
    h.clock.set(t0 + 800)
    assert h.key(1, "redirect").ok  # to B
    h.clock.set(t0 + 1300)
    assert h.key(3, "call").ticket is a
    panel = h.q.desired(3, "panel")
    assert (panel["wait_s"], panel["tea"]) == (1000, True)
    assert a.wait_s == 1000


def test_waits_are_watched_from_the_warn_threshold_to_the_norm():
    h = Hall()
    t0 = h.clock.now()
    h.issue("A")
    h.clock.set(t0 + 300)
    h.issue("A")
    for at, kinds in ((599, []), (600, [("wait-warn", "A001")]), (700, []),
                      (900, [("wait-warn", "A002")]), (901, [("over-norm", "A001")]),
                      (2000, [("over-norm", "A002")]), (3000, [])):
        h.clock.set(t0 + at)
        h.q.tick(now=h.clock.now())
        assert [(a["kind"], a["ticket"]) for a in h.q.take_alerts()] == kinds, at
    assert h.key(1, "call").ok  # a called visitor is no longer watched


DAY_CONFIG = {**CONFIG, "opens": "08:30", "last_ticket": "19:30", "closes": "20:00"}


def test_the_day_tickets_only_in_opening_hours_with_a_reason():
    from hallgate.central.queue import Refused

    h = Hall(DAY_CONFIG)  # the clock starts at 08:00 UTC
    t0 = h.clock.now()
    with pytest.raises(Refused) as e:
        h.issue("A", request_id="k1")
    assert e.value.code == "before-opening" and "opens at 08:30" in str(e.value)
    h.clock.set(t0 + 30 * 60)
    assert h.issue("A", request_id="k1").number == "A001"
    h.clock.set(t0 + (11 * 60 + 30) * 60)  # 19:30
    assert h.issue("A", request_id="k1").number == "A001"  # the same request: its ticket
    with pytest.raises(Refused) as e:
        h.issue("A", request_id="k2")
    assert e.value.code == "after-last-ticket"
    assert str(e.value) == ("no more tickets today: the last one is issued before 19:30 "
                            "(the hall closes at 20:00)")
    for bad, says in (({"opens": "8:00"}, "HH:MM"), ({"opens": "21:00"}, "opens <= "),
                      ({"at_close": "wait"}, "at_close")):
        with pytest.raises(QueueError, match=says):
            QueueConfig.from_dict({**DAY_CONFIG, **bad})


@pytest.mark.parametrize("at_close", ["serve", "end"])
def test_closing_time_serves_or_ends_the_waiting_and_the_report_says_the_overrun(at_close):
    from hallgate.central.stats import day_stats

    h = Hall({**DAY_CONFIG, "at_close": at_close})
    t0 = h.clock.now()
    h.clock.set(t0 + (11 * 60 + 20) * 60)  # 19:20
    a, b = h.issue("A"), h.issue("A")
    assert h.key(1, "call").ticket is a
    h.key(1, "start")
    h.clock.set(t0 + 12 * 3600)  # 20:00: closing
    h.q.tick(now=h.clock.now())
    assert b.state == ("waiting" if at_close == "serve" else "closed")
    h.clock.set(t0 + 12 * 3600 + 600)
    h.key(1, "finish")  # the visitor at the window is finished as usual, 10 min late
    if at_close == "serve":
        assert h.key(1, "call").ticket is b
    else:
        assert not h.key(1, "call").ok  # nothing waiting
    s = day_stats(h.q.tickets.values(), [], day="2026-11-23", tz="UTC", closes="20:00")
    assert s["close"]["overrun"] and s["close"]["overrun_s"] == 600
    assert s["all"]["closed"] == (1 if at_close == "end" else 0)
    assert s["close"]["unfinished"] == (1 if at_close == "serve" else 0)
