"""A fleet of the city: several centres' gateways at contract level, and their people, in one
process (`python -m hallgate.sim.cityfleet SPEC.json`, started by sim/city.py).

Design note
-----------
Operations: the parent writes a spec (broker URLs, the centres); the fleet brings up one
gateway per centre, prints `{"ready": true}` on stdout once every link is connected, waits
for `{"go": clock}` on stdin, plays the day on that shared clock (sim/cityplan.py
`ScaledClock`), prints a progress line every PROGRESS_S, and when every visitor has ended
(or "stop" arrives on stdin) drains the outboxes and writes its report to the spec's
`report` path: each event id it took, what is still held, the press -> receipt latencies,
the links' connection log.
Gateway, at contract level: the real `Outbox` (one SQLite file each) and the real
`MqttLink` (delivery by receipt, every broker URL, MQTT 3.1.1), fed by the daemon's own
code: `_store`, `_feed`, `_send_loop` and `_delivered` are gateway/daemon.py's functions,
borrowed, so a press is committed before it is taken and leaves only on the central's
receipt, in seq order. Desired state goes through the daemon's `Reconciler` to the people,
who see what a panel would show. No firmware, no bus: that is the real hall's job
(sim/city.py runs one beside the fleets).
People, at contract level (sim/people.py's rules, kept small): kiosks that publish
`ticket/request` at each planned arrival (a few MQTT clients per fleet, each for its share
of the centres; an unanswered request goes again, same id, a minute later, a few at a
time); per window an operator who, a moment after the panel shows a queue, presses call,
waits for the panel to name the ticket, recalls, marks a no-show or waits for the visitor's
walk, presses start, serves (hall time), redirects once where the plan says so, finishes,
and the visitor votes while the vote state is open (fields of a GPIO vote; extra presses
flagged `misuse`). Breaks are left out. Patience is part of the model: measured, an
operator who pressed again whenever the chain was slow (call on a stale queue, start
again after 20 s) and a kiosk that resent every late request multiplied the load of an
overloaded city until it stalled; these people press again only when the panel shows
something new, or after minutes.
Plan: one scheduler thread runs every person as a generator (`("sleep", hall_s)` or
`("until", predicate, real_s)`), woken by timers and by the links' callbacks, which only
post to it: thousands of people in one thread, no locks around their state.
"""

from __future__ import annotations

import collections
import heapq
import json
import logging
import random
import sys
import threading
import time
import uuid
from pathlib import Path

from hallgate.gateway.commands import utc_ts
from hallgate.gateway.daemon import Gateway, Reconciler
from hallgate.gateway.mqtt import MqttLink
from hallgate.gateway.outbox import Outbox
from hallgate.sim import dayplan
from hallgate.sim.citymqtt import FailoverClient
from hallgate.sim.cityplan import ScaledClock
from hallgate.sim.hallconfig import redirect_of

log = logging.getLogger("hallgate.sim.cityfleet")

PROGRESS_S = 2.0
ANSWER_S = 20.0  # real seconds for the central to answer a key (a take-over included)
PATIENT_S = 120.0  # real seconds an operator waits for start/finish to show before pressing
# it again: pressing again on a slow chain only queues more keys behind the first
CALL_WAIT_S = 3.0  # real seconds for a call's answer before taking it for rejected
LOOK_S = 5.0  # real seconds an idle operator waits for the panel before looking again
VISITOR_WAIT_S = 120.0  # real seconds for the kiosk's answer naming a called ticket
VOTE_WAIT_S = 20.0  # real seconds the visitor waits for the buttons to invite
KIOSK_RESEND_S = 60.0  # real seconds before an unanswered ticket request goes again
KIOSK_RESEND_MAX = 50  # requests sent again per 5 s, at most
KIOSK_CLIENTS = 4  # MQTT connections of a fleet's kiosks
RECALL_AFTER_S = 60  # hall seconds before a recall (sim/people.py)
WALK_S = (20, 90)  # hall seconds from the call to the visitor at the window
REACT_S = (5, 30)  # hall seconds from a visitor on the idle panel to the call
DRAIN_S = 60.0  # real seconds to empty the outboxes at the end
PINS = {"call": 20, "recall": 21, "start": 22, "finish": 23, "noshow": 24, "redirect": 25,
        "pause": 26, "resume": 27}  # a GPIO call panel's keys (source of the key events)


class Scheduler:
    """Timers and posted callbacks, run in one thread."""

    def __init__(self):
        self._heap = []
        self._n = 0
        self._inbox = collections.deque()
        self._cond = threading.Condition()

    def post(self, fn):  # any thread
        with self._cond:
            self._inbox.append(fn)
            self._cond.notify()

    def at(self, t, fn):  # the scheduler's thread
        self._n += 1
        heapq.heappush(self._heap, (t, self._n, fn))

    def run(self, done):
        while not done():
            with self._cond:
                if not self._inbox:
                    wait = self._heap[0][0] - time.time() if self._heap else 0.5
                    self._cond.wait(max(0.0, min(wait, 0.5)))
                items = list(self._inbox)
                self._inbox.clear()
            for fn in items:
                self._call(fn)
            now = time.time()
            while self._heap and self._heap[0][0] <= now:
                self._call(heapq.heappop(self._heap)[2])

    @staticmethod
    def _call(fn):
        try:
            fn()
        except Exception:
            log.exception("fleet: a person's step failed")


class Actor:
    """A person as a generator driven by the scheduler."""

    def __init__(self, fleet, gen):
        self.fleet, self.sched, self.gen = fleet, fleet.sched, gen
        self.token = 0
        self.pred = None
        self.done = False

    def start(self):
        self.sched.post(lambda: self.resume(None))

    def resume(self, value):
        while True:
            self.token += 1
            self.pred = None
            try:
                cmd = self.gen.send(value)
            except StopIteration:
                self.done = True
                return
            tok = self.token
            if cmd[0] == "sleep":
                self.sched.at(time.time() + max(0.0, cmd[1]) / self.fleet.clock.speed,
                              lambda tok=tok: tok == self.token and self.resume(True))
                return
            _, pred, real_s = cmd
            if pred():
                value = True
                continue
            self.pred = pred
            self.sched.at(time.time() + real_s,
                          lambda tok=tok: tok == self.token and self.resume(False))
            return

    def poke(self):
        if self.pred is not None and self.pred():
            self.resume(True)


def sleep(hall_s):
    return ("sleep", hall_s)


def until(pred, real_s):
    return ("until", pred, real_s)


# ---- the gateway ---------------------------------------------------------------------------


class RecordingOutbox(Outbox):
    """The real outbox, noting each new event's id and when it was taken (for `lost` and
    the press -> receipt latency)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.ids = []
        self.taken = {}  # seq -> time.monotonic() of the add

    def add(self, window, fields, source=None, stream=None):
        entry = super().add(window, fields, source=source, stream=stream)
        if not entry.duplicate:
            self.ids.append(entry.id)
            self.taken[entry.seq] = time.monotonic()
        return entry


class ContractGateway:
    """A gateway without devices: outbox + link, fed by the daemon's own functions."""

    # gateway/daemon.py's feeding, as is: store, feed in seq order, delete on receipt.
    _store = Gateway._store
    _feed = Gateway._feed
    _send_loop = Gateway._send_loop
    _gw_delivered = Gateway._delivered

    def __init__(self, site, name, windows, urls, protocol, outbox_path, on_state, *,
                 link_options=None):
        self.site, self.name = site, name
        self.outbox = RecordingOutbox(outbox_path, name)
        self.outbox_errors = 0
        self._refused = 0
        self._outbox_reported_at = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._last_fed = 0
        self._devices_due = True
        self._drops_taken_at = 0.0
        self.on_state = on_state
        self.reconciler = Reconciler(on_state)
        self.latency_ms = []
        self.delivered_at = collections.Counter()  # int(time.time() / 10) -> events
        self.connections = []  # (time.time(), "connected"|"lost", url)
        self.link = MqttLink(site, name, urls, protocol=protocol, windows=windows,
                             on_command=self.reconciler.offer, on_delivered=self._delivered,
                             on_connection=self._connection, delivery="receipt",
                             **(link_options or {}))
        self._sender = threading.Thread(target=self._send_loop, name=f"sender-{site}",
                                        daemon=True)

    def device_table(self):
        return []

    def _delivered(self, seqs):
        now = time.monotonic()
        for seq in seqs:
            t = self.outbox.taken.pop(seq, None)
            if t is not None:
                self.latency_ms.append(round((now - t) * 1000, 1))
        self.delivered_at[int(time.time() // 10)] += len(seqs)
        self._gw_delivered(seqs)

    def _connection(self, connected, url):
        self.connections.append((time.time(), "connected" if connected else "lost", url))
        self._wake.set()

    def press(self, window, fields):
        self._store(window, fields)

    def start(self):
        self.link.start()
        self._sender.start()

    def stop(self):
        self._stop.set()
        self._wake.set()
        self._sender.join(2)
        self.link.stop()
        self.outbox.close()

    def held(self):
        """Ids still in the outbox (not receipted yet): durable, sent at the next start."""
        return [e.id for e in self.outbox.pending(limit=1_000_000)]


# ---- the people ----------------------------------------------------------------------------


class Centre:
    """One centre's gateway, kiosk answers and people."""

    def __init__(self, fleet, spec):
        self.fleet = fleet
        self.site = spec["site"]
        self.plan = dayplan.plan_visitors(spec["visitors"], fleet.hours, seed=spec["seed"])
        self.skills = {int(n): s for n, s in spec["skills"].items()}
        self.rng = random.Random(spec["seed"])
        self.windows = {n: Window(self, n) for n in sorted(self.skills)}
        path = fleet.workdir / f"{self.site}.outbox.sqlite"
        self.gateway = ContractGateway(
            self.site, f"gw-{self.site}", sorted(self.windows), spec.get("urls", fleet.urls),
            fleet.protocol,
            path, lambda w, kind, cmd: fleet.sched.post(lambda: self.state(w, kind, cmd)),
            link_options=fleet.link_options)
        self.by_number = {}  # ticket number -> visitor
        self.outcome = {}  # visitor n -> "served" | "noshow" | "refused:<code>"
        self.redirected = set()
        self.ended_unknown = {}  # ticket -> how, ended before the kiosk's answer came
        self.issued = 0
        self.asked = 0
        self.votes = 0
        self.votes_missed = 0  # visitors who left before the buttons invited them
        self.problems = []

    def state(self, window, kind, command):
        w = self.windows.get(window)
        if w is None:
            return
        if kind == "panel":
            w.panel = command
        elif kind == "vote":
            w.vote = command
        w.actor.poke()

    def answered(self, visitor, ticket, code):
        if ticket is not None:
            self.issued += 1
            self.by_number[ticket] = visitor
            if ticket in self.ended_unknown:
                self.outcome.setdefault(visitor.n, self.ended_unknown.pop(ticket))
            for w in self.windows.values():
                w.actor.poke()
        else:
            self.outcome[visitor.n] = f"refused:{code}"

    def ended(self, ticket, how):
        v = self.by_number.get(ticket)
        if v is not None:
            self.outcome.setdefault(v.n, how)
        else:  # its holder's answer is late: ended when it comes
            self.ended_unknown[ticket] = how

    def all_ended(self):
        return len(self.outcome) >= len(self.plan)

    def counts(self):
        c = collections.Counter(o.split(":")[0] for o in self.outcome.values())
        return {"visitors": len(self.plan), "asked": self.asked, "issued": self.issued,
                "served": c["served"], "noshow": c["noshow"], "refused": c["refused"],
                "unended": len(self.plan) - len(self.outcome), "vote_presses": self.votes,
                "votes_missed": self.votes_missed,
                "problems": self.problems[:20]}


class Window:
    """A window's operator and the visitors at it, looking at the panel as the gateway
    would show it."""

    def __init__(self, centre, n):
        self.centre = centre
        self.n = n
        self.panel = None  # PanelCommand, as reconciled
        self.vote = None  # VoteCommand
        self.started = set()  # tickets started here (a re-look does not recall again)
        self.redirect_to = redirect_of(centre.skills[n])
        fleet = centre.fleet
        self.actor = Actor(fleet, self.run())

    def mode(self):
        return self.panel.mode if self.panel is not None else None

    def version(self):
        return self.panel.version if self.panel is not None else 0

    def press(self, key, long=False):
        self.centre.gateway.press(self.n, {
            "type": "key", "key": key, "action": "long" if long else "press", "ts": utc_ts(),
            "source": {"gpio": PINS[key]}})

    def changed(self, v0, also=lambda: True):
        return lambda: self.version() != v0 and also()

    def newcomer(self):
        """A predicate: the window is no longer idle, or its queue grew from the lowest it
        has shown since (a new visitor, not the stale count of one already taken)."""
        low = [self.panel.queue if self.panel is not None else 0]

        def pred():
            if self.mode() != "idle":
                return True
            low[0] = min(low[0], self.panel.queue)
            return self.panel.queue > low[0]
        return pred

    def run(self):
        fleet = self.centre.fleet
        while not fleet.stopping:
            mode = self.mode()
            if mode == "called":
                yield from self.serve(self.panel.text)
            elif mode == "serving":
                yield from self.finish(self.panel.text, None)
            elif mode == "paused":
                self.press("resume")
                yield until(lambda: self.mode() != "paused", ANSWER_S)
            elif mode == "idle" and self.panel.queue > 0:
                # A person looks up from the desk first; the panel may have changed by then
                # (another window took the visitor: no call, no rejection).
                yield sleep(self.centre.rng.uniform(*REACT_S))
                if self.mode() != "idle" or self.panel.queue == 0:
                    continue
                self.press("call")
                if not (yield until(self.changed(self.version(), lambda: (
                        self.mode() != "idle" or self.panel.queue == 0)), CALL_WAIT_S)):
                    # Rejected (another window called the last one first: the central
                    # says so on central/errors, this panel does not change) or slow:
                    # call again once the panel shows a newcomer, as a person would.
                    yield until(self.newcomer(), ANSWER_S)
            else:
                yield until(self.changed(self.version()), LOOK_S)

    def visitor(self, ticket):
        """The visitor holding `ticket`: the kiosk's answer may still be on its way."""
        c = self.centre
        yield until(lambda: ticket in c.by_number, VISITOR_WAIT_S)
        return c.by_number.get(ticket)

    def serve(self, ticket):
        c = self.centre
        v = yield from self.visitor(ticket)
        if v is None:
            c.problems.append(f"window {self.n}: called {ticket}, which no kiosk holds")
            self.press("noshow", long=True)
            if (yield until(lambda: self.mode() != "called", ANSWER_S)):
                c.ended(ticket, "noshow")
            return
        if ticket not in self.started:
            for _ in range(v.recalls if v.shows_up else max(1, v.recalls)):
                yield sleep(RECALL_AFTER_S)
                self.press("recall")
                yield until(self.changed(self.version()), ANSWER_S)
            if not v.shows_up:
                yield sleep(RECALL_AFTER_S)
                self.press("noshow", long=True)
                if (yield until(lambda: self.mode() != "called", PATIENT_S)):
                    c.ended(ticket, "noshow")
                return
            yield sleep(c.rng.uniform(*WALK_S))
            self.started.add(ticket)
        self.press("start")
        if not (yield until(lambda: self.mode() != "called", PATIENT_S)):
            return
        if self.mode() != "serving":
            return
        if v.redirect and self.redirect_to not in (None, v.service) and (
                ticket not in c.redirected):
            c.redirected.add(ticket)
            yield sleep(v.service_s / 3)
            self.press("redirect")
            yield until(lambda: self.mode() != "serving", PATIENT_S)
            return
        yield sleep(v.service_s)
        yield from self.finish(ticket, v)

    def finish(self, ticket, v):
        c = self.centre
        self.press("finish")
        if not (yield until(lambda: self.mode() != "serving", PATIENT_S)):
            return
        c.ended(ticket, "served")
        if v is None or v.vote is None:
            return
        ok = yield until(lambda: self.vote is not None and self.vote.open and (
            self.vote.ticket == ticket), VOTE_WAIT_S)
        if not ok:  # the visitor leaves without voting (the chain was slow: a kill)
            c.votes_missed += 1
            return
        pin = 2 * self.n if v.vote == "like" else 2 * self.n + 1
        for i in range(v.presses):  # a GPIO vote's fields (gateway/feedback.py)
            fields = {"type": "vote", "vote": v.vote, "ticket": ticket, "misuse": i > 0,
                      "ts": utc_ts(), "source": {"gpio": pin}}
            if i:
                fields["misuse_reason"] = "already-voted"
            self.centre.gateway.press(self.n, fields)
            c.votes += 1


class Kiosk:
    """The fleet's kiosks: KIOSK_CLIENTS MQTT clients ask for the centres' tickets, each for
    its share of the centres and subscribed to their answers only (one connection for all
    would be one NATS connection's serial JetStream stores; a wildcard would bring every
    client every centre's answers)."""

    def __init__(self, fleet):
        self.fleet = fleet
        self.waiting = {}  # request id -> (centre, visitor, body, sent at)
        self.clients = []
        self.client_of = {}
        n = min(KIOSK_CLIENTS, len(fleet.centres))
        for k in range(n):
            mine = fleet.centres[k::n]
            topics = [f"hall/v1/{c.site}/ticket/{a}" for c in mine for a in ("issued",
                                                                               "refused")]
            client = FailoverClient(
                fleet.urls[k % len(fleet.urls):] + fleet.urls[:k % len(fleet.urls)],
                f"hallgate-city-kiosk-{fleet.name}-{k + 1}", protocol=fleet.protocol,
                topics=topics,
                on_message=lambda t, p: fleet.sched.post(lambda: self._answer(t, p)))
            self.clients.append(client)
            for c in mine:
                self.client_of[c.site] = client

    @property
    def connections(self):
        return [x for c in self.clients for x in c.connections]

    def publish(self, centre, body):
        self.client_of[centre.site].publish(f"hall/v1/{centre.site}/ticket/request", body)

    def start(self):
        for client in self.clients:
            client.start()
        for c in self.fleet.centres:
            for v in c.plan:
                at = self.fleet.clock.real_at(self.fleet.clock.start + v.arrive_s)
                self.fleet.sched.at(at, lambda c=c, v=v: self.ask(c, v))
        self.fleet.sched.at(time.time() + KIOSK_RESEND_S, self._resend)

    def ask(self, centre, v):
        rid = str(uuid.uuid4())
        body = json.dumps({"id": rid, "service": v.service, "appointment": v.appointment,
                           "priority": v.priority, "ts": utc_ts()})
        self.waiting[rid] = (centre, v, body, time.time())
        centre.asked += 1
        self.publish(centre, body)

    def _resend(self):
        """A request still unanswered after KIOSK_RESEND_S goes again (same id: the same
        ticket). Rarely needed: QoS 1 and the persistent sessions carry it through a node's
        death; but a kiosk that resent everything on a slow central would flood it
        (measured: that alone stalled a whole city), so a few at a time, oldest first."""
        now = time.time()
        late = [(at, rid) for rid, (_, _, _, at) in self.waiting.items()
                if now - at > KIOSK_RESEND_S]
        for _, rid in sorted(late)[:KIOSK_RESEND_MAX]:
            c, v, body, _ = self.waiting[rid]
            self.waiting[rid] = (c, v, body, now)
            self.publish(c, body)
        if not self.fleet.stopping:
            self.fleet.sched.at(now + 5.0, self._resend)

    def _answer(self, topic, payload):
        try:
            body = json.loads(payload)
        except ValueError:
            return
        found = self.waiting.pop(body.get("request_id"), None)
        if found is None:
            return  # another fleet's, or answered already
        centre, v = found[0], found[1]
        centre.answered(v, body.get("ticket"), body.get("code"))


class Fleet:
    def __init__(self, spec):
        self.spec = spec
        self.name = spec["fleet"]
        self.urls = spec["urls"]
        self.protocol = spec.get("protocol", "3.1.1")
        self.link_options = spec.get("link_options") or {}
        self.hours = spec["hours"]
        self.clock = None  # the city's, given with "go" once every fleet is ready
        self.workdir = Path(spec["workdir"])
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.sched = Scheduler()
        self.stopping = False
        self.stop_asked = threading.Event()
        self.centres = [Centre(self, c) for c in spec["centres"]]
        self.kiosk = Kiosk(self)

    def emit(self, **line):
        print(json.dumps({"fleet": self.name, **line}), flush=True)

    def run(self):
        for c in self.centres:
            c.gateway.start()
        deadline = time.monotonic() + 60
        while not all(c.gateway.link.connected for c in self.centres):
            if time.monotonic() > deadline:
                raise SystemExit(f"fleet {self.name}: links not connected within 60 s")
            time.sleep(0.05)
        self.emit(ready=True)
        go = json.loads(sys.stdin.readline() or "{}").get("go")
        if go is None:
            raise SystemExit(f"fleet {self.name}: stopped before the day")
        self.clock = ScaledClock(**go)
        self.kiosk.start()
        threading.Thread(target=self._stdin, daemon=True).start()
        for c in self.centres:
            for w in c.windows.values():
                w.actor.start()
        self.sched.at(time.time() + PROGRESS_S, self._progress)
        self.sched.run(lambda: self.stop_asked.is_set() or all(
            c.all_ended() for c in self.centres))
        self.stopping = True
        self.emit(**self.progress(), all_ended=all(c.all_ended() for c in self.centres))
        drained = self._drain()
        # The report first (what each outbox still holds is durable: not lost), then the
        # links stop, side by side (each says offline and waits for its PUBACK).
        report = self.report(drained)
        Path(self.spec["report"]).write_text(json.dumps(report))
        self.emit(done=True)
        stops = [threading.Thread(target=c.gateway.stop) for c in self.centres]
        for t in stops:
            t.start()
        for t in stops:
            t.join(10)
        for client in self.kiosk.clients:
            client.stop()

    def _stdin(self):
        for line in sys.stdin:
            if line.strip() == "stop":
                break
        self.stop_asked.set()
        self.sched.post(lambda: None)

    def _drain(self):
        deadline = time.monotonic() + DRAIN_S
        while time.monotonic() < deadline:
            if all(c.gateway.outbox.depth() == 0 for c in self.centres):
                return True
            time.sleep(0.2)
        return False

    def progress(self):
        if self.clock is None:
            return {}
        counts = [c.counts() for c in self.centres]
        return {"hall_s": round(self.clock.hall_s()),
                "visitors": sum(c["visitors"] for c in counts),
                "issued": sum(c["issued"] for c in counts),
                "ended": sum(c["visitors"] - c["unended"] for c in counts),
                "events": sum(len(c.gateway.outbox.ids) for c in self.centres),
                "waiting": sum(c.gateway.outbox.depth() for c in self.centres),
                "connected": sum(c.gateway.link.connected for c in self.centres)}

    def _progress(self):
        self.emit(**self.progress())
        if not self.stopping:
            self.sched.at(time.time() + PROGRESS_S, self._progress)

    def report(self, drained):
        per_10s = collections.Counter()
        for c in self.centres:
            per_10s.update(c.gateway.delivered_at)
        return {
            "fleet": self.name, "drained": drained,
            "centres": {c.site: {**c.counts(), "outbox": c.gateway.outbox.stats(),
                                 "link": c.gateway.link.stats.asdict()}
                        for c in self.centres},
            "ids": {c.site: c.gateway.outbox.ids for c in self.centres},
            "held": {c.site: held for c in self.centres if (held := c.gateway.held())},
            "latency_ms": [x for c in self.centres for x in c.gateway.latency_ms],
            "delivered_per_10s": {str(k): n for k, n in per_10s.items()},
            "connections": [(c.gateway.name, *x) for c in self.centres
                            for x in c.gateway.connections],
            "kiosk_connections": self.kiosk.connections,
        }


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = json.loads(Path(argv[0]).read_text())
    Fleet(spec).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
