"""Appointments: called from the slot within the grace, early visitors wait for it, late
ones become walk-ins or are refused, walk-ins do not starve behind them; and the window's
main services first (weighted skills)."""

import pytest
from hallgate.central.clock import FakeClock
from hallgate.central.queue import Queue, QueueConfig, Refused
from hallgate.central.selection import max_credit

T0 = FakeClock().now()  # 2026-11-23 08:00 UTC
CONFIG = {"services": {"A": "Passports", "B": "Registration"}, "tz": "UTC",
          "windows": [{"n": 1, "services": ["A"]}, {"n": 2, "services": {"A": 3, "B": 1}}]}


class Hall:
    def __init__(self, **extra):
        self.now = T0
        self.q = Queue(QueueConfig.from_dict({**CONFIG, **extra}))
        self.n = 0

    def issue(self, service="A", **kw):
        return self.q.issue(service, now=self.now, **kw)

    def key(self, window, key):
        self.n += 1
        return self.q.handle_event({"id": f"e{self.n}", "window": window, "type": "key",
                                    "key": key}, now=self.now)

    def serve_next(self, window):
        out = self.key(window, "call")
        if out.ok:
            self.key(window, "start")
            self.key(window, "finish")
        return out


def test_an_early_visitor_waits_for_the_slot_then_goes_first():
    h = Hall()
    booked = h.issue(slot=T0 + 1800)  # came 30 min early
    out = h.key(1, "call")
    assert not out.ok and "the next appointment is due in 30 min" in out.reason
    walkin = h.issue()
    h.now += 600
    assert h.serve_next(1).ticket is walkin  # the slot has not come: the walk-in
    h.now = T0 + 1200
    later = h.issue()
    h.now = T0 + 1800
    # At the slot: 900 s head start against a walk-in who waited 600 s.
    assert h.serve_next(1).ticket is booked
    assert booked.wait_s == 0.0 and not booked.tea  # the wait counts from the slot
    assert later.waiting_now(h.now) == 600


def test_a_walkin_past_the_norm_goes_before_a_just_due_appointment():
    h = Hall()
    walkin = h.issue()
    h.now += 901
    booked = h.issue(slot=h.now)
    assert h.serve_next(1).ticket is walkin
    assert h.serve_next(1).ticket is booked


def test_late_arrivals_become_walkins_or_are_refused():
    h = Hall(grace_s=300)
    on_time = h.issue(slot=T0 - 299)
    assert on_time.slot == T0 - 299 and not on_time.late
    late = h.issue(slot=T0 - 301)
    assert late.slot is None and late.late and late.appointment
    strict = Hall(grace_s=300, late="refuse")
    with pytest.raises(Refused) as refused:
        strict.issue(slot=T0 - 400)
    assert refused.value.code == "late-for-slot" and "6 min late" in str(refused.value)
    with pytest.raises(Refused) as other_day:
        strict.issue(slot=T0 + 86400)
    assert other_day.value.code == "slot-not-today"


def test_an_appointment_still_waiting_past_the_grace_is_alerted_once():
    h = Hall(grace_s=300)
    booked = h.issue(slot=T0 + 60)
    h.q.tick(now=T0 + 359)
    assert h.q.take_alerts() == []
    h.q.tick(now=T0 + 360)
    alerts = h.q.take_alerts()
    assert [(a["kind"], a["ticket"]) for a in alerts] == [("slot-overdue", booked.number)]
    assert alerts[0]["slot_ts"] == "2026-11-23T08:01:00.000Z"
    h.q.tick(now=T0 + 400)
    assert h.q.take_alerts() == []


def test_the_main_service_first_but_not_for_ever():
    """Window 2: A weight 3, B weight 1: A has a 600 s head start there."""
    h = Hall()
    b = h.issue("B")
    h.now += 500
    a = h.issue("A")
    assert h.serve_next(2).ticket is a  # B: 500 against A: 0 + 600
    a2 = h.issue("A")
    h.now += 101
    assert h.serve_next(2).ticket is a2  # B: 601 against A: 101 + 600
    h.issue("A")
    h.now += 700
    assert h.serve_next(2).ticket is b  # B: 1301 against A: 700 + 600
    assert h.serve_next(1).ok  # window 1 serves A alone: the last A


def test_priority_is_a_head_start_with_a_bound():
    h = Hall()
    plain = h.issue()
    h.now += 1199
    prio = h.issue(priority=2)  # 2 x 600 s
    assert h.serve_next(1).ticket is prio  # 1200 against 1199
    assert h.serve_next(1).ticket is plain
    early = h.issue()
    h.now += 1201
    h.issue(priority=2)
    assert h.serve_next(1).ticket is early  # 1201 against 1200
    assert max_credit(h.q.config) == 9 * 600 + 8 * 300 + 900
