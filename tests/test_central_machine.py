"""Random interleavings of commands over several windows keep the queue's invariants."""

import json
import pathlib

import jsonschema
from hallgate.central.queue import KEYS, Queue, QueueConfig
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

CONFIG = QueueConfig.from_dict({
    "services": {"A": "a", "B": "b", "C": "c"},
    "windows": [
        {"n": 1, "services": ["A"], "redirect_to": "B"},
        {"n": 2, "services": ["A", "B"]},
        {"n": 3, "services": ["B", "C"], "redirect_to": "A"},
        {"n": 4, "services": ["C"]},
    ],
    "tz": "UTC",
})
ROOT = pathlib.Path(__file__).resolve().parents[1]
SCHEMAS = {k: json.loads((ROOT / "protocols/schemas" / f"{k}.schema.json").read_text())
           for k in ("display", "panel", "vote", "session")}
WINDOWS = [w.n for w in CONFIG.windows]


class QueueMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.q = Queue(CONFIG)
        self.now = 1_795_420_800.0
        self.n = 0
        self.sent = []
        self.versions = {}

    def send(self, window, key, **extra):
        self.n += 1
        ev = {"id": f"e{self.n}", "window": window, "type": "key", "key": key, **extra}
        self.sent.append(ev)
        return self.q.handle_event(ev, now=self.now)

    @rule(service=st.sampled_from("ABC"), appointment=st.booleans(),
          priority=st.integers(0, 2))
    def issue(self, service, appointment, priority):
        self.q.issue(service, appointment=appointment, priority=priority, now=self.now)

    @rule(window=st.sampled_from(WINDOWS), key=st.sampled_from(KEYS),
          to=st.sampled_from([None, "A", "B", "C"]))
    def key(self, window, key, to):
        extra = {"service": to} if key == "redirect" and to else {}
        before = self.q.windows[window].ticket
        out = self.send(window, key, **extra)
        if key == "call" and out.ok:
            assert before is None and out.ticket.window == window
        if not out.ok:
            assert out.reason

    @rule(seconds=st.floats(0, 1200))
    def wait(self, seconds):
        self.now += seconds
        self.q.tick(now=self.now)

    @precondition(lambda self: self.sent)
    @rule(i=st.integers(0, 10_000))
    def redeliver(self, i):
        before = self.q.snapshot()
        out = self.q.handle_event(self.sent[i % len(self.sent)], now=self.now)
        assert out.duplicate and self.q.snapshot() == before

    @invariant()
    def one_window_per_ticket(self):
        held = [w.ticket for w in self.q.windows.values() if w.ticket]
        assert len(held) == len(set(held))
        for w in self.q.windows.values():
            if w.ticket:
                t = self.q.tickets[w.ticket]
                assert t.window == w.n and t.state == w.mode
            else:
                assert w.mode in ("idle", "paused")
        for t in self.q.tickets.values():
            if t.window is not None:
                assert self.q.windows[t.window].ticket == t.tid
            assert t.recalls <= 5

    @invariant()
    def counts_balance(self):
        by = {}
        for t in self.q.tickets.values():
            by[t.state] = by.get(t.state, 0) + 1
        assert set(by) <= {"waiting", "called", "serving", "served", "noshow"}
        in_service = by.get("called", 0) + by.get("serving", 0)
        assert in_service == sum(1 for w in self.q.windows.values() if w.ticket)
        issued = self.q.state.seq
        assert issued == (by.get("served", 0) + by.get("noshow", 0) + by.get("waiting", 0)
                          + in_service)

    @invariant()
    def versions_only_grow(self):
        for d in self.q.take_desired():
            assert d.payload["version"] > self.versions.get((d.window, d.kind), 0)
            jsonschema.validate(d.payload, SCHEMAS[d.kind])
            self.versions[(d.window, d.kind)] = d.payload["version"]

    def teardown(self):
        # Drain: every window takes whatever it has to an end, then calls until empty.
        for _ in range(10 * len(self.q.tickets) + 10):
            progressed = False
            for n, w in self.q.windows.items():
                if w.mode == "paused":
                    self.send(n, "resume")
                if w.mode == "called":
                    self.send(n, "noshow" if self.n % 2 else "start")
                if w.mode == "serving":
                    self.send(n, "finish")
                if w.mode == "idle":
                    progressed |= self.send(n, "call").ok
                else:
                    progressed = True
            if not progressed:
                break
        assert all(t.state in ("served", "noshow") for t in self.q.tickets.values())


TestQueueMachine = QueueMachine.TestCase
TestQueueMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
