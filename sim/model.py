"""A day's plan run through the real central queue alone: no firmware, no bus, no broker.

Design note
-----------
Operations: `run_model(visitors, breaks, config, db)` plays the plan (sim/dayplan.py) in a
discrete-event loop against `Central` (queue, SQLite store, statistics) on a `FakeClock`,
and returns a `Ledger`: what the people of the hall did, counted on their side, beside
the central's day report. `Ledger.check()` says where the two disagree.
Goals: the same decisions an operator of the full simulation (sim/people.py) makes from
the panel (call when the panel shows a queue, recall after a minute, a no-show after the
last recall, the visitor walks to the window, a redirect once, service, a vote), so a day
can be replayed through the central in seconds and balanced to the ticket; and the
central's own rules are what decide, since its real code runs.
Plan: each window's operator is a generator that yields the simulated seconds it sleeps
or a key it presses (the queue's answer is sent back in); a heap of (time, rank, actor)
runs them and the kiosk in time order. Time moves only from one planned action to the
next, so nothing but the plan and the queue's rules shapes the waits.
"""

from __future__ import annotations

import heapq
import random
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hallgate.central.clock import FakeClock, local_day
from hallgate.central.queue import FINAL, KEYS, QueueConfig, Refused
from hallgate.central.service import Central

from .dayplan import Break, Visitor

__all__ = ["Ledger", "may_take_break", "model_day", "run_model"]

WALK_S = (20, 90)  # as sim/people.py: call to the visitor at the window
RECALL_AFTER_S = 60
LOOK_AGAIN_S = 30  # nothing to call: look at the panel again
LIMIT_S = 3 * 86400  # a day that has not ended by then is a bug, not a long day
BREAK_WAIT_S = 600  # no break while the panel shows a visitor waiting this long (the
# central's warning, 10 minutes: the 15-minute norm is near)
MAX_BREAK_DELAY_S = 3600  # a break put off this long is taken anyway (staff rest)


def may_take_break(panel: dict, late_s: float) -> bool:
    """An operator due a break (`late_s` past its planned start) takes it when the panel
    shows nobody waiting, or nobody waiting near the norm; a break put off an hour is
    taken whatever the queue. The full simulation's operators (sim/people.py) and the
    model's follow this one rule.

    >>> long, short = {"queue": 3, "wait_s": 900}, {"queue": 3, "wait_s": 120}
    >>> may_take_break({"queue": 0}, 0), may_take_break(long, 60)
    (True, False)
    >>> may_take_break(short, 0), may_take_break(long, 3600)
    (True, True)
    """
    return (not panel.get("queue") or (panel.get("wait_s") or 0) < BREAK_WAIT_S
            or late_s >= MAX_BREAK_DELAY_S)


@dataclass
class Ledger:
    """The hall's side of the day, and the central's report of it."""

    issued: int = 0
    refused: Counter = field(default_factory=Counter)  # by code
    served: int = 0
    noshow: int = 0
    redirected: int = 0
    votes: int = 0  # the first press of each voter
    presses_again: int = 0  # the later ones (misuse, never counted)
    keys_rejected: list = field(default_factory=list)  # (t, window, key, reason)
    by_service: Counter = field(default_factory=Counter)  # issued, by service
    report: dict = field(default_factory=dict)
    tickets: dict = field(default_factory=dict)  # tid -> final state, from the store
    ended_s: float = 0.0  # simulated seconds from the start to the last action

    def check(self) -> list[str]:
        """Where the hall's count and the central's report differ (empty: they balance to
        the ticket)."""
        a = self.report["all"]
        out = []
        for name, mine, theirs in (
                ("issued", self.issued, a["issued"]), ("served", self.served, a["served"]),
                ("noshow", self.noshow, a["noshow"]), ("open", 0, a["open"]),
                ("redirects", self.redirected, a["redirected_out"]),
                ("counted votes", self.votes, a["votes"]),
                ("misuse presses", self.presses_again, a["misuse"]),
                ("tickets in the store", self.issued, len(self.tickets))):
            if mine != theirs:
                out.append(f"{name}: the hall counted {mine}, the central {theirs}")
        for service, n in self.by_service.items():
            if self.report["by_service"].get(service, {}).get("issued") != n:
                out.append(f"service {service}: {n} issued, the central says "
                           f"{self.report['by_service'].get(service, {}).get('issued')}")
        unended = [tid for tid, state in self.tickets.items() if state not in FINAL]
        if unended:
            out.append(f"{len(unended)} ticket(s) never ended: {unended[:5]}")
        return out


class _Hall:
    def __init__(self, visitors: list[Visitor], breaks: Iterable[Break], config: QueueConfig,
                 db: str | Path, *, seed: int, start: float,
                 logins: dict[int, str]) -> None:
        self.clock = FakeClock(start)
        self.start = start
        self.central = Central(config, db, self.clock)
        self.q = self.central.queue
        self.visitors = visitors
        self.ledger = Ledger()
        self.by_tid: dict[str, Visitor] = {}
        self.redirected: set[str] = set()
        self.arrived = 0
        self.seed = seed
        self.logins = logins
        self.n = 0
        self.breaks = {w.n: sorted((b for b in breaks if b.window == w.n),
                                   key=lambda b: b.start_s) for w in config.windows}

    def now_s(self) -> float:
        return self.clock.now() - self.start

    def press(self, window: int, key: str, **extra) -> bool:
        self.n += 1
        event = {"id": f"model-{self.n}", "window": window, "type": "key", "key": key,
                 **extra}
        out, _ = self.central.handle_event(event)
        if not out.ok:
            self.ledger.keys_rejected.append((round(self.now_s()), window, key, out.reason))
        return out.ok

    def vote(self, window: int, ticket: str, vote: str, misuse: bool) -> None:
        self.n += 1
        self.central.handle_event({"id": f"model-{self.n}", "window": window, "type": "vote",
                                   "vote": vote, "ticket": ticket, "misuse": misuse})

    def kiosk(self) -> Iterator[float]:
        for v in self.visitors:
            yield max(0.0, v.arrive_s - self.now_s())
            self.n += 1
            try:
                t, _ = self.central.issue(v.service, appointment=v.appointment,
                                          priority=v.priority, request_id=f"kiosk-{v.n}")
            except Refused as e:
                self.ledger.refused[e.code] += 1
                continue
            self.by_tid[t.tid] = v
            self.ledger.issued += 1
            self.ledger.by_service[v.service] += 1
        self.arrived = len(self.visitors)

    def day_over(self) -> bool:
        return (self.arrived == len(self.visitors) and not self.q.waiting()
                and all(w.mode in ("idle", "paused", "closed") for w in self.q.windows.values()))

    def operator(self, window: int) -> Iterator[float]:
        rng = random.Random(self.seed * 1000 + window)
        w = self.q.windows[window]
        breaks = self.breaks[window]
        if w.mode == "closed":  # log in: the PIN of the window's operator on the keys
            pin = self.q.config.operators[self.logins[window]].pin or ""
            for digit in pin:
                self.press(window, KEYS[int(digit) - 1])
                yield 1.0
        while not self.day_over() or w.mode == "paused":
            panel = self.q.desired(window, "panel")
            if (w.mode == "idle" and breaks and self.now_s() >= breaks[0].start_s
                    and may_take_break(panel, self.now_s() - breaks[0].start_s)):
                brk = breaks.pop(0)
                if self.press(window, "pause"):
                    yield brk.duration_s
                    self.press(window, "resume")
            elif w.mode == "paused":
                self.press(window, "resume")
            elif (w.mode == "idle" and panel["queue"]
                  and self.press(window, "call")):  # the panel shows someone waiting
                yield from self.serve(window, rng)
            else:
                yield LOOK_AGAIN_S
        if self.q.config.sessions and w.operator is not None:  # leave: pause twice
            self.press(window, "pause")
            self.press(window, "pause")

    def serve(self, window: int, rng: random.Random) -> Iterator[float]:
        t = self.q.tickets[self.q.windows[window].ticket]
        v = self.by_tid[t.tid]
        for _ in range(v.recalls if v.shows_up else max(1, v.recalls)):
            yield RECALL_AFTER_S
            self.press(window, "recall")
        if not v.shows_up:
            yield RECALL_AFTER_S
            if self.press(window, "noshow"):
                self.ledger.noshow += 1
            return
        yield rng.uniform(*WALK_S)
        self.press(window, "start")
        cfg = self.q.config
        redirect_to = next(wc.redirect_to for wc in cfg.windows if wc.n == window)
        if v.redirect and redirect_to not in (None, t.service) and t.tid not in self.redirected:
            self.redirected.add(t.tid)
            yield v.service_s / 3
            if self.press(window, "redirect"):
                self.ledger.redirected += 1
            return
        yield v.service_s
        if not self.press(window, "finish"):
            return
        self.ledger.served += 1
        if v.vote is not None:
            for i in range(v.presses):
                self.vote(window, t.number, v.vote, misuse=i > 0)  # the gateway flags
            self.ledger.votes += 1  # the later presses of a voter as misuse
            self.ledger.presses_again += v.presses - 1

    def run(self) -> Ledger:
        # (time, rank, actor): actors due at the same time go in a fixed order, the kiosk
        # first, then the windows: the hall clock's order (sim/hallclock.py).
        actors: list[tuple[float, int, Iterator[float]]] = []
        for rank, actor in enumerate((self.kiosk(),
                                      *(self.operator(w) for w in sorted(self.breaks)))):
            heapq.heappush(actors, (self.clock.now(), rank, actor))
        while actors:
            at, rank, actor = heapq.heappop(actors)
            if at - self.start > LIMIT_S:
                raise RuntimeError(f"the day did not end within {LIMIT_S / 3600:.0f} h")
            if at > self.clock.now():
                self.clock.set(at)
                self.central.tick()
            try:
                delay = next(actor)
            except StopIteration:
                continue
            heapq.heappush(actors, (self.clock.now() + delay, rank, actor))
        self.central.tick()
        ledger = self.ledger
        ledger.ended_s = self.now_s()
        day = local_day(self.start, self.q.config.tz)
        ledger.report = self.central.day_report(day)
        ledger.tickets = {tid: t.state for tid, t in self.q.tickets.items() if t.day == day}
        self.central.close()
        return ledger


def run_model(visitors: list[Visitor], breaks: Iterable[Break], config: QueueConfig,
              db: str | Path, *, seed: int = 1, start: float = 1_795_420_800.0,
              logins: dict[int, str] | None = None) -> Ledger:
    """The day of `visitors` (arrival seconds from `start`, an epoch time: 08:00 UTC on
    2026-11-23 by default) and the windows' `breaks` through the central queue of
    `config`, stored in `db`; the hall's ledger with the central's report. `logins`:
    window -> operator, who logs in with their PIN on the panel's keys where the window
    starts closed, and out with pause twice at the end of the day."""
    return _Hall(list(visitors), breaks, config, db, seed=seed, start=start,
                 logins=logins or {}).run()


def model_day(options, workdir: str | Path, *, services=None, plan=None,
              by_window=None) -> dict:
    """`hallgate sim --model-only`: the plan `options` (sim.hall.Options) gives the full
    run (or `plan`, `services` and `by_window` from a profile, as sim.hall.Hall takes
    them), through the central alone; the report (the central's figures, the hall's
    ledger, where they disagree)."""
    from hallgate.sim import dayplan
    from hallgate.sim.hallconfig import queue_config
    from hallgate.sim.load import offered_load

    real0 = time.monotonic()
    services = services or dayplan.DEFAULT_SERVICES
    if plan is None:
        plan = dayplan.plan_visitors(options.visitors, options.hours, seed=options.seed,
                                     services=services)
    breaks = dayplan.plan_breaks(range(1, options.windows + 1), options.hours,
                                 seed=options.seed)
    qc = queue_config(options, services, by_window)
    config = QueueConfig.from_dict(qc)
    ledger = run_model(plan, breaks, config, Path(workdir) / "model.sqlite",
                       seed=options.seed)
    problems = ledger.check() + [f"window {w}: {key} rejected at {t} s: {why}"
                                 for t, w, key, why in ledger.keys_rejected]
    return {"model": True, "site": options.site,
            "options": {"windows": options.windows, "visitors": options.visitors,
                        "hours": options.hours, "seed": options.seed},
            "real_s": round(time.monotonic() - real0, 2),
            "sim_hours": round(ledger.ended_s / 3600, 2),
            "plan": dayplan.summary(plan),
            "offered_load": offered_load(plan, [(w["n"], w["services"])
                                                for w in qc["windows"]]),
            "ledger": {"issued": ledger.issued, "served": ledger.served,
                       "noshow": ledger.noshow, "redirected": ledger.redirected,
                       "votes": ledger.votes, "presses_again": ledger.presses_again},
            "problems": problems, "finished": not problems, "central": ledger.report}
