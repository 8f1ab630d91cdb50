"""Fairness and liveness of the queue's selection rule (central.selection), over random days.

- No starvation within the stated bound: at every successful call of U at window w, every
  other waiting ticket T that w could call then has waited at most C = `max_credit` more
  than U, and U has the highest score (ties: the lower seq), both taken just before the call;
  who may be called, the waits and the head starts agree with a model of the docstrings
  kept apart from the queue (`Model`).
- No double call: a ticket is at one window at most, a window holds one ticket at most,
  `Window.ticket` <-> `Ticket.window` agree and the window's mode is the ticket's state.
- Every issued ticket ends exactly once (served, noshow or closed), and once final never
  changes; a drain at the end leaves nothing open.
- Liveness under load: in a walk-in day where every window calls whenever idle, no ticket
  is passed by one issued more than the hall's largest credit after it, and each ticket's
  wait is within the bound that follows: the work at its windows when it came plus the
  work of the tickets issued up to that credit after it, shared among its windows.
- Redelivered events, staff-app requests and ticket requests change nothing.
- Examples that pin the rule's intent with hand-made numbers.
"""

import math
from collections import Counter
from dataclasses import asdict
from datetime import UTC, datetime

import pytest
from hallgate.central import selection
from hallgate.central.queue import KEYS, Queue, QueueConfig, Refused
from hallgate.central.state import CALLED, CLOSED, FINAL, NOSHOW, SERVED, SERVING, WAITING, Dirty
from hypothesis import given, settings, target
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

T0 = 1_795_420_800.0  # 2026-11-23 08:00 UTC

OPERATORS = {"o1": {"name": "Ivanova", "pin": "1234"}, "o2": {"name": "Petrov", "pin": "5678"},
             "o3": {"name": "Sidorova", "pin": "1357"}, "o4": {"pin": "2468"}}
BASE = {
    "services": {"A": "Passports", "B": "Benefits", "C": "Certificates", "D": "Driving"},
    "windows": [
        {"n": 1, "services": {"A": 3, "B": 1}, "redirect_to": "C", "operator": "o1"},
        {"n": 2, "services": {"B": 2, "C": 1}, "redirect_to": "A"},
        {"n": 3, "services": ["A", "C", "D"]},
        {"n": 4, "services": {"D": 3, "A": 1}},
    ],
    "operators": OPERATORS,
    "tz": "UTC",
    "grace_s": 300,
}
CONFIGS = {
    # Late visitors become walk-ins; no hours; the default credits.
    "walk-in": QueueConfig.from_dict({**BASE, "late": "walk-in"}),
    # Late visitors are refused; the hall closes at 20:00 and ends the waiting tickets;
    # other credits (C = 9 x 300 + 8 x 200 + 600 + 400).
    "refuse": QueueConfig.from_dict({
        **BASE, "late": "refuse", "last_ticket": "19:30", "closes": "20:00",
        "at_close": "end", "priority_credit_s": 300, "skill_credit_s": 200,
        "appointment_credit_s": 600, "redirect_credit_s": 400}),
}
SERVICES = sorted(BASE["services"])
WINDOWS = [w["n"] for w in BASE["windows"]]
PIN_KEYS = {oid: [KEYS[int(d) - 1] for d in o["pin"]] for oid, o in OPERATORS.items()}


def wc_of(cfg, n):
    return next(w for w in cfg.windows if w.n == n)


def local_minutes(now):
    dt = datetime.fromtimestamp(now, UTC)
    return dt.hour * 60 + dt.minute


def day_of(ts):
    return datetime.fromtimestamp(ts, UTC).date().isoformat()


def hhmm(s):
    return int(s[:2]) * 60 + int(s[3:])


class Model:
    """Each ticket as the docstrings describe it, kept apart from the queue's own fields:
    its service, when its present stretch of waiting began (issue, the slot if later, a
    redirect), the whole wait before it, and so its head start at a window."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.t = {}

    def issued(self, tid, now, service, priority, slot):
        self.t[tid] = {"service": service, "priority": priority, "slot": slot, "acc": 0.0,
                       "since": now if slot is None else max(now, slot), "redirected": False}

    def after(self, key, out, now, target=None):
        """Follow a key's outcome: a call ends a stretch of waiting, a redirect begins one."""
        if not out.ok or out.ticket is None:
            return
        m = self.t[out.ticket.tid]
        if key == "call":
            m["acc"] += max(0.0, now - m["since"])
            m["redirected"] = False
        elif key == "redirect":
            m["since"], m["redirected"], m["service"] = now, True, target

    def eligible(self, wc, tid, now):
        m = self.t[tid]
        return m["service"] in wc.services and (
            m["redirected"] or m["slot"] is None or m["slot"] <= now)

    def wait(self, tid, now):
        m = self.t[tid]
        return m["acc"] + max(0.0, now - m["since"])

    def credit(self, wc, tid):
        m, cfg = self.t[tid], self.cfg
        c = m["priority"] * cfg.priority_credit_s
        c += (wc.weights.get(m["service"], 1) - 1) * cfg.skill_credit_s
        if m["redirected"]:
            c += cfg.redirect_credit_s
        elif m["slot"] is not None:
            c += cfg.appointment_credit_s
        return c


def checked_call(q, n, now, send, model):
    """Press call at window `n` through `send()` and check the choice against the rule:
    the stated bound (waits) and the exact one (scores, then seq), both taken before;
    the waits, head starts and who may be called agree with `model`."""
    cfg = q.config
    wc = wc_of(cfg, n)
    w = q.windows[n]
    mode = w.mode
    states = {tid: t.state for tid, t in q.tickets.items()}
    for t in q.tickets.values():
        if t.state == WAITING:
            assert t.service == model.t[t.tid]["service"]
            ok = model.eligible(wc, t.tid, now)
            assert selection.eligible(wc, t, now) == ok, t
            if ok:
                assert math.isclose(t.waiting_now(now), model.wait(t.tid, now), abs_tol=1e-6)
                assert selection.credit(cfg, wc, t) == model.credit(wc, t.tid), t
    here = [t for t in q.tickets.values() if t.state == WAITING and t.service in wc.services]
    callable_ = {t.tid: (t.waiting_now(now), selection.score(cfg, wc, t, now), t.seq)
                 for t in here if selection.eligible(wc, t, now)}
    out = send()
    if mode != "idle":
        # busy, paused or closed (there "call" is PIN digit 1): nobody is called.
        assert out.ticket is None
        assert {tid: t.state for tid, t in q.tickets.items()} == states
        if mode in (CALLED, SERVING, "paused"):
            assert not out.ok and out.reason
        return out
    if not callable_:
        assert not out.ok and out.reason.startswith(f"nothing waiting for window {n}")
        assert {tid: t.state for tid, t in q.tickets.items()} == states
        future = [t.slot for t in here if t.slot is not None and t.slot > now]
        if future:  # an early appointment: the reason says when the next one is due
            assert "(the next appointment is due in " in out.reason, out.reason
            m = int(out.reason.split("due in ")[1].split(" min")[0])
            due = min(future) - now  # in whole minutes, rounded up (of whole seconds)
            assert (m - 1) * 60 < due < m * 60 + 1, (out.reason, due)
        return out
    assert out.ok, out.reason
    u = out.ticket
    assert u.tid in callable_, "called a ticket the window may not call"
    wait_u, score_u, seq_u = callable_[u.tid]
    c = selection.max_credit(cfg)
    for tid, (wait_t, score_t, seq_t) in callable_.items():
        if tid == u.tid:
            continue
        # The stated bound: T is not passed by U if U waited more than C less.
        assert wait_t <= wait_u + c, (
            f"{u.number} (waited {wait_u}) passed {q.tickets[tid].number} (waited {wait_t}) "
            f"by more than C = {c} at window {n}")
        # The exact rule: the highest score, then the lower seq.
        assert score_u > score_t or (score_u == score_t and seq_u < seq_t), (
            u.number, score_u, q.tickets[tid].number, score_t)
    assert u.state == CALLED and u.window == n and w.ticket == u.tid and w.mode == CALLED
    assert u.waited_s == wait_u and u.called_at == now and u.head_since is None
    assert all(t.state == states[tid] for tid, t in q.tickets.items() if tid != u.tid)
    return out


class FairnessMachine(RuleBasedStateMachine):
    """A hall with operators (PINs and a staff app), weighted skills, priorities,
    appointments early, due and late, redirects, pauses and time passing."""

    @initialize(late=st.sampled_from(sorted(CONFIGS)))
    def open_hall(self, late):
        self.cfg = CONFIGS[late]
        # The strict hall starts at 19:00: the last ticket (19:30) and the close (20:00,
        # the waiting end "closed") come within a few steps.
        self.now = T0 if late == "walk-in" else T0 + 11 * 3600
        self.q = Queue(self.cfg, now=self.now)
        self.model = Model(self.cfg)
        self.n = 0
        self.sent = []  # ("event" | "session", payload), for redelivery
        self.requests = {}  # ticket request id -> (kwargs, tid)
        self.issued = []  # tids, in issue order
        self.states = {}  # tid -> state seen after the last command
        self.finals = Counter()  # tid -> transitions into a final state
        self.ended = Counter()  # tid -> finish/noshow outcomes that ended it
        self.versions = {}
        self.observe()

    # -- plumbing -------------------------------------------------------------------------

    def observe(self):
        """Diff the ticket states against the last command's: a final state never changes
        and each transition into one is counted."""
        tickets = self.q.tickets
        assert set(self.states) <= set(tickets), "a ticket disappeared"
        for tid, t in tickets.items():
            prev = self.states.get(tid)
            if prev is None:
                assert tid in self.issued and t.state == WAITING
            elif prev in FINAL:
                assert t.state == prev, f"{t.number}: final {prev} became {t.state}"
            if t.state in FINAL and prev not in FINAL:
                self.finals[tid] += 1
                if t.state == CLOSED:
                    assert t.window is None and prev == WAITING
            self.states[tid] = t.state

    def send(self, window, key, **extra):
        self.n += 1
        ev = {"id": f"e{self.n}", "window": window, "type": "key", "key": key,
              "action": "press", **extra}
        self.sent.append(("event", ev))
        out = self.q.handle_event(ev, now=self.now)
        assert not out.duplicate
        self.model.after(key, out, self.now,
                         extra.get("service") or wc_of(self.cfg, window).redirect_to)
        if out.ok and key in ("finish", "noshow") and out.ticket is not None:
            assert out.ticket.state == (SERVED if key == "finish" else NOSHOW)
            self.ended[out.ticket.tid] += 1
        self.observe()
        return out

    def app(self, window, action, operator):
        self.n += 1
        req = {"id": f"s{self.n}", "window": window, "action": action, "operator": operator}
        self.sent.append(("session", req))
        out = self.q.session(req, now=self.now)
        assert not out.duplicate
        self.observe()
        return out

    def call(self, window):
        return checked_call(self.q, window, self.now, lambda: self.send(window, "call"),
                            self.model)

    def busy(self, operator):
        return any(w.operator == operator and w.mode in (CALLED, SERVING)
                   for w in self.q.windows.values())

    # -- rules ----------------------------------------------------------------------------

    @rule(service=st.sampled_from(SERVICES), priority=st.integers(0, 2),
          kind=st.sampled_from(["walk-in", "walk-in", "due", "slot", "slot"]),
          offset=st.one_of(st.integers(-1200, 2400), st.sampled_from([-301, -300, 0, 1])),
          with_id=st.booleans())
    def issue(self, service, priority, kind, offset, with_id):
        self.new_ticket(service, priority, kind, offset, with_id)

    def new_ticket(self, service, priority, kind, offset, with_id):
        cfg, now = self.cfg, self.now
        slot = now + offset if kind == "slot" else None
        kw = {"priority": priority, "appointment": kind == "due", "slot": slot}
        rid = f"r{len(self.requests)}" if with_id else None
        last = cfg.last_ticket or cfg.closes
        want = None
        if last is not None and local_minutes(now) >= hhmm(last):
            want = "after-last-ticket"
        elif slot is not None and day_of(slot) != day_of(now):
            want = "slot-not-today"
        elif slot is not None and now > slot + cfg.grace_s and cfg.late == "refuse":
            want = "late-for-slot"
        before = self.q.snapshot()
        try:
            t = self.q.issue(service, now=now, request_id=rid, **kw)
        except Refused as e:
            assert e.code == want, (e.code, want)
            assert self.q.snapshot() == before
            return
        assert want is None, f"issued although {want}"
        self.issued.append(t.tid)
        if rid is not None:
            self.requests[rid] = (dict(service=service, **kw), t.tid)
        late = slot is not None and now > slot + cfg.grace_s
        booked = None if late or kind == "walk-in" else now if kind == "due" else slot
        assert t.late == late and t.appointment == (kind != "walk-in") and t.slot == booked
        self.model.issued(t.tid, now, service, priority, booked)
        assert (t.service, t.priority, t.state, t.window) == (service, priority, WAITING, None)
        self.observe()

    @rule(batch=st.lists(st.tuples(st.sampled_from(SERVICES), st.integers(0, 2),
                                   st.sampled_from(["walk-in", "due", "slot"]),
                                   st.integers(-900, 1800)), min_size=1, max_size=4))
    def arrive(self, batch):
        """Several visitors at the kiosk at once."""
        for service, priority, kind, offset in batch:
            self.new_ticket(service, priority, kind, offset, False)

    @rule(window=st.sampled_from(WINDOWS))
    def press_call(self, window):
        self.call(window)

    @rule(window=st.sampled_from(WINDOWS), key=st.sampled_from(KEYS),
          to=st.sampled_from([None, *SERVICES]))
    def key(self, window, key, to):
        if key == "call":
            self.call(window)
            return
        w = self.q.windows[window]
        mode, op = w.mode, w.operator
        t = self.q.tickets.get(w.ticket) if w.ticket else None
        service = t.service if t is not None else None
        states = {tid: x.state for tid, x in self.q.tickets.items()}
        out = self.send(window, key, **({"service": to} if key == "redirect" and to else {}))
        if mode == "closed":  # a PIN digit: no visitor moves
            assert out.ticket is None
            assert {tid: x.state for tid, x in self.q.tickets.items()} == states
            assert w.mode == "closed" or (w.mode == "idle" and w.operator is not None)
            return
        if key == "pause":
            assert out.ok == (mode in ("idle", "paused"))
            if mode == "paused":  # pause twice: logged out, the window closes
                assert (w.mode, w.operator, w.session) == ("closed", None, None)
                assert [r for r in self.q.state.sessions.values()
                        if r.operator == op and r.end is None] == []
            elif mode == "idle":
                assert w.mode == "paused"
        elif key == "resume":
            assert out.ok == (mode == "paused")
            assert w.mode == ("idle" if mode == "paused" else mode)
        elif key == "start":
            assert out.ok == (mode == CALLED)
        elif key == "finish":
            assert out.ok == (mode == SERVING)
            if out.ok:
                assert t.state == SERVED and t.ended_window == window and w.mode == "idle"
        elif key == "noshow":
            assert out.ok == (mode == CALLED)
            if out.ok:
                assert t.state == NOSHOW and w.mode == "idle"
        elif key == "recall":
            assert not out.ok or mode == CALLED
        elif key == "redirect":
            target = to or wc_of(self.cfg, window).redirect_to
            if t is None:
                assert not out.ok
            else:
                assert out.ok == (target is not None and target != service), out.reason
                if out.ok:
                    assert (t.state, t.window, t.service, t.head_since) == (
                        WAITING, None, target, self.now)
                    assert (w.mode, w.ticket) == ("idle", None)
        if not out.ok:
            assert out.reason

    @rule(window=st.sampled_from(WINDOWS),
          choices=st.lists(st.sampled_from(["go", "go", "noshow", "redirect", "redirect"]),
                           min_size=1, max_size=6),
          to=st.sampled_from([None, *SERVICES]))
    def work(self, window, choices, to):
        """The usual next steps at a window (what operators do most of the time): call,
        start or no-show, finish, or redirect; resume a pause; log in where closed."""
        w = self.q.windows[window]
        for choice in choices:
            if w.mode == "closed":
                free = [o for o in sorted(OPERATORS) if not any(
                    x.operator == o for x in self.q.windows.values())]
                if not free:
                    return
                assert self.app(window, "login", free[0]).ok
            elif w.mode == "paused":
                assert self.send(window, "resume").ok
            elif w.mode == "idle":
                self.call(window)
            elif choice == "redirect":
                t = self.q.tickets[w.ticket]
                target = to or wc_of(self.cfg, window).redirect_to
                if target is None or target == t.service:
                    continue
                waited = t.waited_s
                assert self.send(window, "redirect", service=target).ok
                assert (t.service, t.state, t.head_since) == (target, WAITING, self.now)
                assert t.waiting_now(self.now) == waited  # keeps the whole wait
            elif w.mode == CALLED:
                assert self.send(window, "noshow" if choice == "noshow" else "start").ok
            else:
                assert self.send(window, "finish").ok

    @rule(window=st.sampled_from(WINDOWS), operator=st.sampled_from(sorted(OPERATORS)))
    def pin_login(self, window, operator):
        """The operator types their PIN on a closed window's panel."""
        w = self.q.windows[window]
        locked = w.pin_locked_until is not None and self.now < w.pin_locked_until
        if w.mode != "closed" or w.pin or locked:
            return
        busy = self.busy(operator)
        was = [x.n for x in self.q.windows.values() if x.operator == operator]
        for key in PIN_KEYS[operator]:
            out = self.send(window, key)
        assert out.ok != busy, out.reason
        if busy:
            assert w.mode == "closed" and w.operator is None
        else:
            assert (w.mode, w.operator) == ("idle", operator)
            assert self.q.state.sessions[w.session].via == "panel"
            for n in was:  # logged out where they were
                assert self.q.windows[n].mode == "closed"

    @rule(window=st.sampled_from(WINDOWS), action=st.sampled_from(["login", "logout"]),
          operator=st.sampled_from([*sorted(OPERATORS), "ghost"]))
    def staff_app(self, window, action, operator):
        w = self.q.windows[window]
        mode, op = w.mode, w.operator
        busy_here = mode in (CALLED, SERVING)
        busy_there = self.busy(operator) and op != operator
        out = self.app(window, action, operator)
        if action == "logout":
            assert out.ok == (op is not None and not busy_here), out.reason
            if out.ok:
                assert (w.mode, w.operator) == ("closed", None)
            return
        ok = operator in OPERATORS and not busy_here and not busy_there
        assert out.ok == ok, out.reason
        if ok:
            assert w.operator == operator
            assert [x.n for x in self.q.windows.values() if x.operator == operator] == [window]
            assert w.mode == ("paused" if mode == "paused" and op == operator else "idle")
        else:
            assert (w.mode, w.operator) == (mode, op)

    @rule(seconds=st.one_of(st.floats(0, 1200),
                            st.sampled_from([59.5, 300.0, 900.0, 1800.0, 3 * 3600.0])))
    def wait(self, seconds):
        self.now += seconds
        self.q.tick(now=self.now)
        self.q.take_alerts()
        self.observe()
        cfg = self.cfg
        if cfg.at_close == "end" and local_minutes(self.now) >= hhmm(cfg.closes):
            assert not [t for t in self.q.tickets.values() if t.state == WAITING]

    @rule(i=st.integers(0, 10_000))
    def redeliver(self, i):
        """A gateway's resend or a staff app's retry: a duplicate, nothing changes."""
        if not self.sent:
            return
        kind, payload = self.sent[-1 - i % len(self.sent)]  # mostly a recent one
        self.q.take_dirty()
        self.drain_desired()
        before = self.full_snapshot()
        if kind == "event":
            out = self.q.handle_event(payload, now=self.now)
        else:
            out = self.q.session(payload, now=self.now)
        assert out.duplicate and not out.ok and out.ticket is None
        assert self.full_snapshot() == before
        assert self.q.take_dirty() == Dirty() and self.q.take_desired() == []

    @rule(i=st.integers(0, 10_000))
    def reissue(self, i):
        """A kiosk's retried ticket request gets the ticket it got, nothing else."""
        if not self.requests:
            return
        rid = sorted(self.requests)[i % len(self.requests)]
        kw, tid = self.requests[rid]
        self.q.take_dirty()
        before = self.full_snapshot()
        assert self.q.issue(now=self.now, request_id=rid, **kw) is self.q.tickets[tid]
        assert self.full_snapshot() == before and self.q.take_dirty() == Dirty()

    def full_snapshot(self):
        s = self.q.state
        return (self.q.snapshot(), {k: asdict(r) for k, r in s.sessions.items()},
                s.session_seq)

    def drain_desired(self):
        for d in self.q.take_desired():
            assert d.payload["version"] > self.versions.get((d.window, d.kind), 0)
            self.versions[(d.window, d.kind)] = d.payload["version"]

    # -- invariants ---------------------------------------------------------------------

    @invariant()
    def one_window_per_ticket(self):
        windows, tickets = self.q.windows, self.q.tickets
        held = [w.ticket for w in windows.values() if w.ticket]
        assert len(held) == len(set(held)), "a ticket held by two windows"
        for w in windows.values():
            if w.ticket:
                t = tickets[w.ticket]
                assert t.window == w.n and t.state == w.mode and w.mode in (CALLED, SERVING)
            else:
                assert w.mode in ("idle", "paused", "closed")
        for t in tickets.values():
            if t.state in (CALLED, SERVING):
                assert t.window is not None and windows[t.window].ticket == t.tid
            else:
                assert t.window is None
        at_windows = sum(t.state in (CALLED, SERVING) for t in tickets.values())
        assert at_windows == len(held)

    @invariant()
    def sessions_agree(self):
        """Closed exactly when nobody is logged in; an operator at one window at most;
        each logged-in window has its open session record."""
        windows = self.q.windows.values()
        ops = [w.operator for w in windows if w.operator is not None]
        assert len(ops) == len(set(ops))
        for w in windows:
            assert (w.mode == "closed") == (w.operator is None), (w.n, w.mode, w.operator)
            if w.operator is not None:
                rec = self.q.state.sessions[w.session]
                assert (rec.operator, rec.window, rec.end) == (w.operator, w.n, None)
        open_ = {r.sid for r in self.q.state.sessions.values() if r.end is None}
        assert open_ == {w.session for w in windows if w.session is not None}

    @invariant()
    def versions_only_grow(self):
        self.drain_desired()

    @invariant()
    def each_ticket_ends_once(self):
        assert all(v == 1 for v in self.finals.values())
        assert all(v == 1 for v in self.ended.values())
        assert self.q.state.seq == len(self.issued) == len(self.q.tickets)

    def teardown(self):
        """Log in every closed window, drain the queue past every slot; then every ticket
        issued is final, having reached it exactly once."""
        if not hasattr(self, "q"):
            return
        q = self.q
        for n, w in q.windows.items():  # finish the visitors at the windows
            if w.mode == CALLED:
                self.send(n, "start")
            if w.mode == SERVING:
                assert self.send(n, "finish").ok
            if w.mode == "paused":
                assert self.send(n, "resume").ok
        for n, w in q.windows.items():
            if w.mode == "closed":
                free = next(o for o in sorted(OPERATORS)
                            if all(x.operator != o for x in q.windows.values()))
                assert self.app(n, "login", free).ok
        slots = [t.slot for t in q.tickets.values() if t.slot is not None]
        self.now = max([self.now, *slots]) + 1
        if self.cfg.at_close == "end" and len(self.issued) % 2:
            # Half the strict halls end by the close (the waiting end "closed"), the
            # others by calling everyone.
            close = datetime.fromtimestamp(self.now, UTC).replace(
                hour=int(self.cfg.closes[:2]), minute=int(self.cfg.closes[3:]), second=0,
                microsecond=0).timestamp()
            self.now = max(self.now, close)
        q.tick(now=self.now)
        self.observe()
        for r in range(10 * len(q.tickets) + 10):
            progressed = False
            for n, w in q.windows.items():
                assert w.mode != "closed" and w.mode != "paused"
                if w.mode == CALLED:
                    assert self.send(n, "noshow" if (n + r) % 3 == 0 else "start").ok
                if w.mode == SERVING:
                    assert self.send(n, "finish").ok
                progressed |= self.call(n).ok
            if not progressed:
                break
        for n, w in q.windows.items():
            if w.mode == CALLED:
                self.send(n, "start")
            if w.mode == SERVING:
                self.send(n, "finish")
        by = Counter(t.state for t in q.tickets.values())
        assert set(by) <= set(FINAL), by
        assert all(self.finals[tid] == 1 for tid in self.issued)
        assert len(self.issued) == by[SERVED] + by[NOSHOW] + by[CLOSED]
        assert all(self.ended[t.tid] == (t.state != CLOSED) for t in q.tickets.values())


TestFairnessMachine = FairnessMachine.TestCase
TestFairnessMachine.settings = settings(max_examples=150, stateful_step_count=40,
                                        deadline=None)


# -- liveness under load: a walk-in day --------------------------------------------------

LIVE = QueueConfig.from_dict({
    "services": {"A": "a", "B": "b", "C": "c"},
    # B is nobody's main service: what the other two leave, it gets.
    "windows": [{"n": 1, "services": {"A": 3, "B": 1}},
                {"n": 2, "services": {"A": 2, "C": 1}},
                {"n": 3, "services": {"C": 3, "B": 1}}],
    "tz": "UTC", "priority_credit_s": 120, "skill_credit_s": 60,
    "appointment_credit_s": 0, "redirect_credit_s": 0,
})
S_MIN, S_MAX = 60, 300  # service times, s
MAX_PRIORITY, MAX_WEIGHT = 2, 3
# The largest credit this hall can give (priorities <= 2, weights <= 3): a sharper bound
# than max_credit's 9 priority levels and weight 9, which it must not exceed.
C_LIVE = MAX_PRIORITY * LIVE.priority_credit_s + (MAX_WEIGHT - 1) * LIVE.skill_credit_s
assert C_LIVE <= selection.max_credit(LIVE)

# Bursts and lulls: a gap of 82 s on average against a capacity of 3 windows at 180 s
# on average (60 s): the queue builds in bursts and clears between them.
gaps = st.one_of(st.just(0), st.integers(0, 90), st.integers(0, 400))
arrivals = st.lists(st.tuples(gaps, st.sampled_from("ABC"), st.sampled_from([0, 0, 0, 1, 2])),
                    min_size=10, max_size=80)


@settings(max_examples=150, deadline=None)
@given(arrivals=arrivals, service_times=st.lists(st.integers(S_MIN, S_MAX), min_size=1),
       order=st.permutations([1, 2, 3]))
def test_a_walk_in_day_serves_everyone_within_the_bound(arrivals, service_times, order):
    """Every window calls whenever idle; each visitor takes a random service time."""
    q = Queue(LIVE)
    model = Model(LIVE)
    now, at = T0, T0
    schedule = []  # (time, service, priority)
    for gap, service, priority in arrivals:
        at += gap
        schedule.append((at, service, priority))
    busy = {n: None for n in order}  # window -> when its visitor is finished
    calls = []  # (time, window, tid, service time)
    n_ev = 0
    times = iter(service_times * (len(schedule) // len(service_times) + 1))

    def press(n, key):
        nonlocal n_ev
        n_ev += 1
        out = q.handle_event({"id": f"e{n_ev}", "window": n, "type": "key", "key": key},
                             now=now)
        model.after(key, out, now)
        return out

    i = 0
    while True:
        pending = [t for t in busy.values() if t is not None]
        if i == len(schedule) and not pending:
            break
        now = min(([schedule[i][0]] if i < len(schedule) else []) + pending)
        while i < len(schedule) and schedule[i][0] <= now:  # arrivals first
            t = q.issue(schedule[i][1], priority=schedule[i][2], now=now)
            model.issued(t.tid, now, t.service, t.priority, None)
            i += 1
        for n in order:
            if busy[n] is not None and busy[n] <= now:
                assert press(n, "finish").ok
                busy[n] = None
        for n in order:  # every idle window calls at once
            if busy[n] is None:
                out = checked_call(q, n, now, lambda n=n: press(n, "call"), model)
                if out.ok:
                    d = next(times)
                    calls.append((now, n, out.ticket.tid, d))
                    assert press(n, "start").ok
                    busy[n] = now + d
        assert any(b is not None for b in busy.values()) or not q.waiting(now=now)

    tickets = list(q.tickets.values())
    assert len(tickets) == len(schedule) and all(t.state == SERVED for t in tickets)
    assert len(calls) == len(tickets) == len({tid for _, _, tid, _ in calls})
    longest = 0.0
    for t in tickets:
        arrived, called = t.issued_at, t.first_called_at
        assert t.wait_s == called - arrived
        longest = max(longest, t.wait_s)
        mine = [wc.n for wc in LIVE.windows if t.issued_service in wc.services]
        # Whoever was called at one of T's windows while T waited was issued at most
        # C_LIVE after T: a later arrival never goes first.
        meanwhile = [(n, q.tickets[u], d) for at_, n, u, d in calls
                     if arrived <= at_ < called and n in mine]
        late = [u.number for _, u, _ in meanwhile if u.issued_at > arrived + C_LIVE]
        assert not late, f"{t.number} passed by {late}, issued more than {C_LIVE} s later"
        # The wait this bounds: T's windows are busy all the while, with the visitors
        # there when T came and then with tickets issued no later than C_LIVE after T;
        # so their work shared among T's windows bounds T's wait.
        at_arrival = sum(max(0, at_ + d - arrived) for at_, n, _, d in calls
                         if at_ < arrived and n in mine)
        first = sum(d for _, u, d in meanwhile if u.issued_at <= arrived + C_LIVE)
        assert t.wait_s * len(mine) <= at_arrival + first, (
            t.number, t.wait_s, at_arrival, first, len(mine))
    target(longest, label="the longest wait, s")


# -- the rule's intent, with hand-made numbers -----------------------------------------

PLAIN = {
    "services": {"A": "Passports", "B": "Benefits"},
    "windows": [{"n": 1, "services": {"A": 3, "B": 1}}],
    "tz": "UTC",
}


class Hall:
    """A queue, a clock that moves when told and an event id counter."""

    def __init__(self, config=PLAIN, **extra):
        self.q = Queue(QueueConfig.from_dict({**config, **extra}))
        self.now = T0
        self.n = 0

    def issue(self, service, **kw):
        return self.q.issue(service, now=self.now, **kw)

    def key(self, window, key, **extra):
        self.n += 1
        return self.q.handle_event({"id": f"e{self.n}", "window": window, "type": "key",
                                    "key": key, **extra}, now=self.now)

    def call(self, window=1):
        out = self.key(window, "call")
        assert out.ok, out.reason
        return out.ticket


@pytest.mark.parametrize("longer, first", [(599, "A"), (600, "B"), (601, "B")])
def test_the_main_service_goes_first_unless_the_other_waited_two_skill_credits_longer(
        longer, first):
    """Weight 3 is 2 x skill_credit_s (600 s) of head start at window 1: B waiting less
    than that longer than A goes after A; from 600 s (a tie: B was issued first) first."""
    h = Hall()
    assert h.q.config.skill_credit_s == 300
    b = h.issue("B")
    h.now += longer
    a = h.issue("A")
    h.now += 30
    assert h.call().service == first
    assert {a.state, b.state} == {CALLED, WAITING}


def test_an_appointment_at_its_slot_goes_before_a_walk_in_under_the_norm():
    h = Hall()
    assert h.q.config.appointment_credit_s == h.q.config.norm_s == 900
    walk_in = h.issue("B")
    booked = h.issue("B", slot=T0 + 800)  # came early: waits from the slot
    h.now = T0 + 800  # due now: score 0 + 900 > the walk-in's 800
    assert h.call() is booked
    h.key(1, "noshow")
    assert h.call() is walk_in


def test_a_walk_in_past_the_norm_goes_before_a_just_due_appointment():
    h = Hall()
    walk_in = h.issue("B")
    booked = h.issue("B", slot=T0 + 1000)
    h.now = T0 + 1000  # the walk-in waited 1000 s, past the norm (900)
    assert h.call() is walk_in
    h.key(1, "noshow")
    assert h.call() is booked


def test_an_early_appointment_is_not_called_before_its_slot():
    h = Hall()
    booked = h.issue("A", slot=T0 + 590, priority=2)
    out = h.key(1, "call")
    assert not out.ok and out.reason == ("nothing waiting for window 1 "
                                         "(the next appointment is due in 10 min)")
    h.now = T0 + 589
    walk_in = h.issue("B")
    assert h.call() is walk_in  # a walk-in waiting 0 s goes first: the booked one is early
    h.key(1, "noshow")
    assert not h.key(1, "call").ok
    h.now = T0 + 590
    assert h.call() is booked and booked.wait_s == 0


def test_late_for_the_slot_a_walk_in_without_head_start_or_refused():
    h = Hall()
    late = h.issue("A", slot=T0 - 301)
    assert late.late and late.slot is None and late.appointment
    assert selection.credit(h.q.config, None, late) == 0
    on_time = h.issue("A", slot=T0 - 300)  # within the grace: from arrival, with credit
    assert not on_time.late and on_time.waiting_now(T0) == 0
    assert h.call() is on_time
    strict = Hall(late="refuse")
    with pytest.raises(Refused) as e:
        strict.issue("A", slot=T0 - 301)
    assert e.value.code == "late-for-slot"
    assert strict.q.tickets == {}


@pytest.mark.parametrize("extra, first", [(-1, "vip"), (0, "walk-in"), (1, "walk-in")])
def test_the_bound_is_tight_for_the_largest_head_start(extra, first):
    """C is reached: a priority-9 visitor redirected to a window's weight-9 service passes
    a walk-in there that waited C - 1 s longer, not one that waited C s (the tie goes to
    the one issued first) or more."""
    h = Hall({"services": {"A": "a", "B": "b", "P": "p"},
              "windows": [{"n": 1, "services": {"A": 9, "B": 1}},
                          {"n": 2, "services": ["P"], "redirect_to": "A"}],
              "tz": "UTC", "appointment_credit_s": 0})
    c = selection.max_credit(h.q.config)
    assert c == 9 * 600 + 8 * 300 + 900
    walk_in = h.issue("B")
    h.now += c + extra
    vip = h.issue("P", priority=9)
    assert h.call(2) is vip
    assert h.key(2, "redirect").ok  # to A at once: waited 0 s, the redirect credit
    got = h.call(1)
    assert got is (vip if first == "vip" else walk_in)
    assert got.waited_s == (0.0 if first == "vip" else c + extra)
