"""The queue of a service hall as a pure state machine: commands in, what changed out.

Design note
-----------
Operations: `Queue.issue` hands out a ticket; `Queue.handle_event` applies one event from
a gateway (a key press or a vote, the MQTT contract's event payload, deduped by `id`);
`Queue.tick` closes voting that timed out. After any of them `take_desired` returns the
desired-state payloads (`display`, `panel`, `vote` per window) that changed, each with a
version that only grows; `take_dirty` returns what the store must write.
Goals: no I/O and no clock in here (every command takes `now`, epoch seconds, from
`central.clock`), so the same inputs give the same state, in tests, in the simulator and
after a restart; a redelivered or repeated press never changes anything twice; two
windows never hold the same ticket; every ticket ends once: served, no-show or closed.
Plan: tickets and windows are small dataclasses; a window's current ticket is the only
link between them (`Window.ticket` <-> `Ticket.window`), set and cleared together.

Tickets and numbering
---------------------
A ticket's number is its service's prefix and a counter per prefix per local day
(``A001``, ``P1.07``: `central.queueconfig`); past the largest the counter wraps, skipping
numbers still held by open tickets. Internally every ticket keeps an unwrapped id,
``"2026-11-23/A/1000"``, so a wrapped number never mixes up two visitors. A ticket issued
yesterday and still waiting stays callable (a hall open past midnight).

Who is called next
------------------
`central.selection`: the highest score, the whole wait plus a head start for priority,
the window's main services, appointments and redirects; no ticket is passed by one that
waited more than the largest head start less. Redirect keeps the ticket and its number.

Appointments
------------
A booked visitor's ticket carries its slot (`issue(..., slot=)`): it is called from the
slot, not before, and its wait counts from the slot (or from arrival, if later). Arriving
later than slot + `grace_s`, the visitor gets a walk-in ticket (``late = "walk-in"``, the
ticket marked `late`) or is refused (``"refuse"``, code "late-for-slot"). A slot not on
today's local date is refused ("slot-not-today"). A booked visitor still waiting
`grace_s` past the slot makes a "slot-overdue" alert.

Operator sessions
-----------------
With operators configured, each window is worked by whoever is logged in; a window
with nobody is "closed" and calls nobody. An operator logs in on the panel with a
4-digit PIN on its eight keys (call=1 ... redirect=8; `central.sessions`) or through a
staff app (`session`); pause twice (pause, then pause again while paused) logs out.
Waits are the operator's who called, service times, no-shows and votes the operator's
who ended the visit; each session is kept for the statistics.

Keys, by window mode (anything else is rejected with a reason and changes nothing)
-----------------------------------------------------------------------------------
==========  ===========================  ===============================================
key         valid in                     effect
==========  ===========================  ===============================================
call        idle                         next ticket (central.selection) -> called;
                                         closes voting here.
                                         In called/serving: rejected, so a double click
                                         never invites a second visitor. Empty queue:
                                         rejected ("nothing waiting").
recall      called, < 5 recalls so far   announces the same ticket again (display
                                         blinks, panel beeps); the 6th is rejected: the
                                         operator chooses start or no-show.
start       called                       -> serving (the display stops blinking)
finish      serving                      -> served; window idle; voting opens for it
noshow      called                       -> no-show; window idle
pause       idle                         -> paused (never gets a call)
            paused (operators configured) logs the operator out: -> closed
resume      paused                       -> idle
redirect    called, serving              ticket -> waiting in the target service with
                                         its whole wait and a head start (event field
                                         ``service``, else the window's configured
                                         ``redirect_to``); idle
any key     closed                       a digit of the login PIN (central.sessions)
==========  ===========================  ===============================================

Votes
-----
Every vote event is recorded (`VoteRecord`), tied to the ticket, window, service and the
operator who ended that visit (else the window's operator; None when nobody). It counts
as a rating only if the event is not flagged `misuse`, voting is open at that window for
the ticket it names, and that ticket has no counted vote yet; a counted vote closes
voting. Anything else is recorded with ``counted=False, misuse=True`` and a reason.
Voting opens on ``finish`` and closes on the next ``call`` at that window, on the counted
vote, or `vote_timeout_s` later (`tick`).

Timing
------
Waits use the central clock at the time a command is applied, not the gateway's `ts`
(kept in the vote record only): a gateway's clock may be off, and in a simulation the
hall runs in simulated time. The wait of a ticket is the visitor's whole wait
(`Ticket.wait_s`): issue (a booked visitor: the slot, if later) to first call, plus,
after each redirect, redirect to the next call. The panel's `wait_s` is that figure for
the called visitor, and, on an idle or paused window, the longest wait in its queues when
the payload was made; its `tea` is owed once that whole wait passed `norm_s` at a call,
and stays owed for the visit. `tick` watches the waiting: a visitor whose whole wait
reaches `warn_s` (10 min), and then passes `norm_s`, makes an alert each (`take_alerts`),
so the hall can open a window before the norm is broken; so does a booked visitor still
waiting `grace_s` past the slot.

Dedupe
------
Event ids (and ticket and session request ids) are kept with the local day they were seen on; the
caller forgets old ones (`forget_seen_before`; `Central` keeps them `dedupe_days`, 14 by
default, so a gateway's late resend is still a duplicate), so the set stays bounded.
A rejected event is remembered too: its redelivery must not succeed later.

Worst case: `call` scans the waiting tickets of the window's services, O(waiting).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from .clock import local_day, utc_ts
from .queueconfig import (
    AT_CLOSE,
    KEYS,
    Operator,
    QueueConfig,
    QueueError,
    Refused,
    Service,
    WindowConfig,
    minutes,
)
from .selection import best, order_key
from .sessions import OperatorSessions, PinPad
from .state import (
    CALLED,
    CLOSED,
    FINAL,
    NOSHOW,
    SERVED,
    SERVING,
    WAITING,
    Desired,
    Dirty,
    Outcome,
    QueueState,
    SessionRecord,
    Ticket,
    VoteRecord,
    Window,
)

__all__ = [
    "KEYS",
    "KINDS",
    "MAX_RECALLS",
    "AT_CLOSE",
    "Operator",
    "Desired",
    "Outcome",
    "Queue",
    "QueueConfig",
    "QueueError",
    "QueueState",
    "Refused",
    "Service",
    "SessionRecord",
    "Ticket",
    "VoteRecord",
    "Window",
    "WindowConfig",
]

MAX_RECALLS = 5
KINDS = ("display", "panel", "vote", "session")


def local_minutes(ts: float, tz: str | None) -> int:
    """Minutes since local midnight of `ts` in `tz` (None: the machine's zone)."""
    dt = datetime.fromtimestamp(ts, ZoneInfo(tz)) if tz else datetime.fromtimestamp(ts)
    return dt.hour * 60 + dt.minute


def _text_for(number: str, n: int) -> str:
    for text in (f"{number} > {n}", f"{number}>{n}"):
        if len(text) <= 8:
            return text
    return number


# -- the machine ----------------------------------------------------------------------------


class Queue(OperatorSessions):
    """The hall's queue. Example:

    >>> cfg = QueueConfig(services={"A": "Passports"}, windows=(WindowConfig(5, ("A",)),),
    ...                   tz="UTC")
    >>> q = Queue(cfg)
    >>> q.issue("A", now=0.0).number
    'A001'
    >>> q.handle_event({"id": "e1", "window": 5, "type": "key", "key": "call"}, now=60.0).ok
    True
    >>> [d.payload["text"] for d in q.take_desired() if d.kind == "display"][-1]
    'A001 > 5'
    >>> q.handle_event({"id": "e2", "window": 5, "type": "key", "key": "call"}, now=61.0).reason
    'window 5 already has A001 (called): start, no-show or redirect first'
    """

    def __init__(self, config: QueueConfig, state: QueueState | None = None, *,
                 now: float | None = None) -> None:
        """`now`: when the queue starts, for the sessions of operators a new window's
        config logs in (without it they are logged in with no session record)."""
        self.config = config
        self.state = state if state is not None else QueueState()
        self._dirty = Dirty()
        self._out: dict[tuple[int, str], dict] = {}
        self._alerts: list[dict] = []  # wait alerts since take_alerts
        self._by_config = {w.n: w for w in config.windows}
        self._pinpad = PinPad(dict(config.operators))
        for n in list(self.state.windows):
            if n not in self._by_config:  # dropped from the config
                self._logout(self.state.windows[n], now, "config")
                del self.state.windows[n]
        for wc in config.windows:
            w = self.state.windows.get(wc.n)
            if w is None:
                w = self.state.windows[wc.n] = Window(n=wc.n)
                self._dirty.windows.add(wc.n)
                if wc.operator is not None:
                    self._login(w, wc.operator, now, "config")
            if config.sessions and w.operator is None and w.mode == "idle":
                w.mode = "closed"  # nobody logged in: calls nobody
                self._dirty.windows.add(wc.n)
            elif not config.sessions and w.mode == "closed":
                w.mode = "idle"  # operators no longer configured
                self._dirty.windows.add(wc.n)
        self._refresh(self.state.windows, now=now)

    # -- reading ------------------------------------------------------------------------

    @property
    def tickets(self) -> dict[str, Ticket]:
        return self.state.tickets

    @property
    def windows(self) -> dict[int, Window]:
        return self.state.windows

    def waiting(self, services: Iterable[str] | None = None, now: float | None = None
                ) -> list[Ticket]:
        """Waiting tickets (of `services`, default all) in the order people see them
        (`selection.order_key`: a window's own order adds its skills)."""
        wanted = set(services) if services is not None else None
        out = [t for t in self.state.tickets.values()
               if t.state == WAITING and (wanted is None or t.service in wanted)]
        return sorted(out, key=lambda t: order_key(self.config, t, now))

    def desired(self, window: int, kind: str) -> dict:
        """The current payload (with its version) for `window` and `kind`."""
        return dict(self.state.desired[(window, kind)])

    def all_desired(self) -> list[Desired]:
        """Every window's current payloads: what to publish (retained) on start."""
        return [Desired(n, k, dict(p)) for (n, k), p in sorted(self.state.desired.items())]

    def take_desired(self) -> list[Desired]:
        """The payloads that changed since the last call, one per window and kind."""
        out = [Desired(n, k, p) for (n, k), p in self._out.items()]
        self._out = {}
        return out

    def take_dirty(self) -> Dirty:
        """What changed since the last call, for the store."""
        d, self._dirty = self._dirty, Dirty()
        return d

    def snapshot(self) -> dict:
        """The whole state as plain data (for tests and debugging)."""
        s = self.state
        return {
            "tickets": {k: asdict(t) for k, t in sorted(s.tickets.items())},
            "windows": {n: asdict(w) for n, w in sorted(s.windows.items())},
            "votes": [asdict(v) for v in s.votes],
            "seen": dict(sorted(s.seen.items())),
            "counters": dict(sorted(s.counters.items())),
            "seq": s.seq,
            "desired": dict(sorted(s.desired.items())),
            "issued_ids": dict(sorted(s.issued_ids.items())),
        }

    # -- commands -----------------------------------------------------------------------

    def issue(self, service: str, *, appointment: bool = False, priority: int = 0,
              now: float, request_id: str | None = None, slot: float | None = None
              ) -> Ticket:
        """A new ticket for `service` (its code). `slot`: a booked visitor's slot time
        (implies `appointment`; an appointment without one is due now). `request_id`,
        when given, dedupes: the same request again returns the ticket it got the first
        time. Refused (with a code) for the time of day, a late or foreign slot, or when
        every number of the service's prefix is held by an open ticket."""
        cfg = self.config
        if service not in cfg.services:
            raise QueueError(f"unknown service {service!r}; known: "
                             f"{', '.join(sorted(cfg.services))}")
        if isinstance(priority, bool) or not isinstance(priority, int) \
                or not 0 <= priority <= 9:
            raise QueueError(f"priority {priority!r}: an integer 0-9")
        s = self.state
        if request_id is not None and request_id in s.issued_ids:
            tid = s.issued_ids[request_id]
            if tid not in s.tickets:  # an earlier day's, no longer loaded
                raise QueueError(f"request {request_id!r} was answered with ticket {tid} "
                                 "on an earlier day; a new request needs a new id")
            return s.tickets[tid]
        self._check_hours(now)
        day = local_day(now, cfg.tz)
        late = False
        if slot is not None or appointment:
            slot = now if slot is None else float(slot)
            if local_day(slot, cfg.tz) != day:
                raise Refused("slot-not-today", f"the slot {local_day(slot, cfg.tz)} "
                                                f"is not today ({day})")
            if now > slot + cfg.grace_s:
                if cfg.late == "refuse":
                    raise Refused("late-for-slot", f"{int((now - slot) // 60)} min late for "
                                  f"the slot; appointments wait {cfg.grace_s // 60} min")
                slot, late = None, True
        svc = cfg.service(service)
        prefix = svc.prefix
        n, number = self._next_number(day, svc)
        s.counters[(day, prefix)] = n
        s.seq += 1
        t = Ticket(
            tid=f"{day}/{prefix}/{n}", number=number, day=day, seq=s.seq,
            issued_service=service, service=service, issued_at=now,
            appointment=bool(appointment or slot is not None or late),
            priority=priority, slot=slot, late=late,
        )
        s.tickets[t.tid] = t
        self._dirty.tickets.add(t.tid)
        self._dirty.counters.add((day, prefix))
        if request_id is not None:
            s.issued_ids[request_id] = t.tid
            self._dirty.issued[request_id] = t.tid
            self._mark_seen(request_id, day)
        self._refresh(self._windows_serving({service}), now=now)
        return t

    def _next_number(self, day: str, svc: Service) -> tuple[int, str]:
        """The next counter value of the prefix today and its printed number, skipping
        numbers an open ticket holds (after a wrap)."""
        held = {t.number for t in self.state.tickets.values() if t.state not in FINAL}
        n = self.state.counters.get((day, svc.prefix), 0)
        for _ in range(svc.largest):
            n += 1
            number = svc.number((n - 1) % svc.largest + 1)
            if number not in held:
                return n, number
        raise Refused("numbers-exhausted", f"all {svc.largest} numbers of {svc.prefix} are "
                                           "held by visitors in the hall")

    def handle_event(self, event: Mapping[str, Any], *, now: float) -> Outcome:
        """Apply one event payload (``type`` key or vote). Deduped by ``id``."""
        seen = self._first_sight(event.get("id"), "event", now)
        if seen is not None:
            return seen
        n = event.get("window")
        if not isinstance(n, int) or n not in self.state.windows:
            return Outcome(False, f"window {n!r} is not configured")
        kind = event.get("type")
        if kind == "key":
            key = event.get("key")
            if key not in KEYS:
                return Outcome(False, f"unknown key {key!r}")
            w = self.state.windows[n]
            if w.mode == "closed":
                return self._pin_key(w, key, now)
            return getattr(self, f"_key_{key}")(w, event, now)
        if kind == "vote":
            return self._vote(self.state.windows[n], event, now)
        return Outcome(False, f"unknown event type {kind!r}")

    def _check_hours(self, now: float) -> None:
        cfg = self.config
        at = local_minutes(now, cfg.tz)
        last = cfg.last_ticket or cfg.closes
        if cfg.opens is not None and at < minutes(cfg.opens):
            raise Refused("before-opening", f"the hall opens at {cfg.opens}; tickets from "
                                            f"then until {last or 'closing'}")
        if last is not None and at >= minutes(last):
            raise Refused("after-last-ticket",
                          f"no more tickets today: the last one is issued before {last}"
                          + (f" (the hall closes at {cfg.closes})" if cfg.closes else ""))

    def _close_the_day(self, now: float) -> None:
        """at_close "end": at closing time a ticket still waiting ends "closed", with
        the reason; called and served visitors are finished as usual."""
        cfg = self.config
        if cfg.at_close != "end" or cfg.closes is None:
            return
        if local_minutes(now, cfg.tz) < minutes(cfg.closes):
            return
        ended = [t for t in self.state.tickets.values() if t.state == WAITING]
        for t in ended:
            t.state, t.ended_at, t.head_since = CLOSED, now, None
            self._dirty.tickets.add(t.tid)
        if ended:
            self._refresh(self._windows_serving({t.service for t in ended}), now=now)

    def tick(self, *, now: float) -> list[int]:
        """Close voting that has been open `vote_timeout_s` or longer, watch the waits
        (`take_alerts`), close the day; the windows whose voting closed."""
        closed = []
        for w in self.state.windows.values():
            if (w.vote_tid is not None and w.vote_opened_at is not None
                    and now - w.vote_opened_at >= self.config.vote_timeout_s):
                self._close_vote(w)
                closed.append(w.n)
        for w in self.state.windows.values():
            if w.pin_locked_until is not None and now >= w.pin_locked_until:
                w.pin_locked_until, w.pin_error = None, False  # "PIn" again
                self._dirty.windows.add(w.n)
                self._refresh([w.n], now=now)
        self._watch_waits(now)
        self._close_the_day(now)
        return closed

    def _watch_waits(self, now: float) -> None:
        """An alert when a waiting visitor's whole wait passes `warn_s`, another past
        `norm_s`, and for a booked visitor one when `grace_s` past the slot: once each per
        ticket (kept with it, so a restart does not repeat them)."""
        cfg = self.config
        for t in self.state.tickets.values():
            if t.state != WAITING:
                continue
            if (t.slot is not None and not t.slot_alerted and t.head_since is None
                    and now >= t.slot + cfg.grace_s):
                t.slot_alerted = True
                self._alert(t, "slot-overdue", now)
            if t.alerts >= 2:
                continue
            waited = t.waiting_now(now)
            level = 2 if waited > cfg.norm_s else 1 if waited >= cfg.warn_s else 0
            if level > t.alerts:
                t.alerts = level
                self._alert(t, "over-norm" if level == 2 else "wait-warn", now)

    def _alert(self, t: Ticket, kind: str, now: float) -> None:
        cfg = self.config
        self._dirty.tickets.add(t.tid)
        waiting = self.waiting([t.service])
        alert = {
            "kind": kind, "ticket": t.number, "service": t.service,
            "waited_s": round(t.waiting_now(now), 1), "warn_s": cfg.warn_s, "norm_s": cfg.norm_s,
            "position": next(i for i, q in enumerate(waiting, 1) if q.tid == t.tid),
            "waiting": len(waiting),
            "windows_open": self.windows_serving(t.service),
        }
        if t.slot is not None:
            alert["slot_ts"] = utc_ts(t.slot)
        self._alerts.append(alert)

    def take_alerts(self) -> list[dict]:
        """The wait alerts since the last call (central/alerts in the MQTT contract)."""
        out, self._alerts = self._alerts, []
        return out

    def forget_seen_before(self, day: str) -> int:
        """Forget event ids seen before `day` (``YYYY-MM-DD``); how many were dropped."""
        old = [i for i, d in self.state.seen.items() if d < day]
        for i in old:
            del self.state.seen[i]
        return len(old)

    # -- keys -----------------------------------------------------------------------------

    def _busy(self, w: Window) -> str:
        t = self.state.tickets[w.ticket] if w.ticket else None
        return f"window {w.n} already has {t.number if t else '?'} ({w.mode})"

    def _key_call(self, w: Window, event: Mapping, now: float) -> Outcome:
        if w.mode == "paused":
            return Outcome(False, f"window {w.n} is paused: resume first")
        if w.mode in (CALLED, SERVING):
            return Outcome(False, self._busy(w) + ": start, no-show or redirect first"
                           if w.mode == CALLED else self._busy(w) + ": finish first")
        if w.mode != "idle":
            return Outcome(False, f"window {w.n} is {w.mode}")
        wc = self._by_config[w.n]
        queue = [t for t in self.state.tickets.values()
                 if t.state == WAITING and t.service in wc.services]
        t = best(self.config, wc, queue, now)
        if t is None:
            due = min((q.slot for q in queue if q.slot is not None), default=None)
            return Outcome(False, f"nothing waiting for window {w.n}" + (
                f" (the next appointment is due in {math.ceil((due - now) / 60)} min)"
                if due is not None else ""))
        if w.vote_tid is not None:
            self._close_vote(w)
        t.waited_s = t.waiting_now(now)
        t.tea = t.tea or t.waited_s > self.config.norm_s
        t.state, t.window, t.called_at, t.head_since, t.recalls = CALLED, w.n, now, None, 0
        if t.first_called_at is None:
            t.first_called_at, t.first_window, t.first_operator = now, w.n, w.operator
        w.mode, w.ticket = CALLED, t.tid
        self._touch(w, t)
        self._refresh([x for x in self._windows_serving({t.service}) if x != w.n], now=now)
        self._refresh([w.n], now=now, announce=True)
        return Outcome(True, ticket=t)

    def _key_recall(self, w: Window, event: Mapping, now: float) -> Outcome:
        if w.mode != CALLED:
            return Outcome(False, f"window {w.n} has no called ticket ({w.mode})")
        t = self.state.tickets[w.ticket]
        if t.recalls >= MAX_RECALLS:
            return Outcome(False, f"{t.number} recalled {MAX_RECALLS} times already: "
                                  "start or no-show")
        t.recalls += 1
        self._touch(w, t)
        self._refresh([w.n], now=now, announce=True)
        return Outcome(True, ticket=t)

    def _key_start(self, w: Window, event: Mapping, now: float) -> Outcome:
        if w.mode != CALLED:
            return Outcome(False, f"window {w.n} has no called ticket to start ({w.mode})")
        t = self.state.tickets[w.ticket]
        t.state, t.started_at = SERVING, now
        w.mode = SERVING
        self._touch(w, t)
        self._refresh([w.n], now=now)
        return Outcome(True, ticket=t)

    def _end(self, w: Window, t: Ticket, state: str, now: float) -> None:
        t.state, t.window, t.ended_at = state, None, now
        t.ended_window, t.ended_operator = w.n, w.operator
        w.mode, w.ticket = "idle", None
        self._touch(w, t)

    def _key_finish(self, w: Window, event: Mapping, now: float) -> Outcome:
        if w.mode != SERVING:
            return Outcome(False, f"window {w.n} is not serving anyone ({w.mode})"
                           + (": start or no-show" if w.mode == CALLED else ""))
        t = self.state.tickets[w.ticket]
        self._end(w, t, SERVED, now)
        w.vote_tid, w.vote_opened_at = t.tid, now
        self._refresh([w.n], now=now)
        return Outcome(True, ticket=t)

    def _key_noshow(self, w: Window, event: Mapping, now: float) -> Outcome:
        if w.mode != CALLED:
            return Outcome(False, f"window {w.n} has no called ticket ({w.mode})"
                           + (": finish" if w.mode == SERVING else ""))
        t = self.state.tickets[w.ticket]
        self._end(w, t, NOSHOW, now)
        self._refresh([w.n], now=now)
        return Outcome(True, ticket=t)

    def _key_pause(self, w: Window, event: Mapping, now: float) -> Outcome:
        if w.mode == "paused" and self.config.sessions:  # pause twice: log out
            self._logout(w, now, "panel")
            self._refresh([w.n], now=now)
            return Outcome(True)
        if w.mode != "idle":
            return Outcome(False, f"window {w.n} is {w.mode}: pause only when idle")
        w.mode = "paused"
        self._dirty.windows.add(w.n)
        self._refresh([w.n], now=now)
        return Outcome(True)

    def _key_resume(self, w: Window, event: Mapping, now: float) -> Outcome:
        if w.mode != "paused":
            return Outcome(False, f"window {w.n} is not paused ({w.mode})")
        w.mode = "idle"
        self._dirty.windows.add(w.n)
        self._refresh([w.n], now=now)
        return Outcome(True)

    def _key_redirect(self, w: Window, event: Mapping, now: float) -> Outcome:
        if w.mode not in (CALLED, SERVING):
            return Outcome(False, f"window {w.n} has nobody to redirect ({w.mode})")
        target = event.get("service") or self._by_config[w.n].redirect_to
        if target is None:
            return Outcome(False, f"redirect: no target service in the event and none "
                                  f"configured for window {w.n}")
        if target not in self.config.services:
            return Outcome(False, f"redirect: unknown service {target!r}")
        t = self.state.tickets[w.ticket]
        if target == t.service:
            return Outcome(False, f"redirect: {t.number} is already in service {target}")
        t.hops.append([t.service, target, w.n])
        t.state, t.window, t.service, t.head_since = WAITING, None, target, now
        t.called_at, t.started_at, t.recalls = None, None, 0
        t.redirects += 1
        w.mode, w.ticket = "idle", None
        self._touch(w, t)
        self._refresh([w.n, *self._windows_serving({target})], now=now)
        return Outcome(True, ticket=t)

    # -- votes ----------------------------------------------------------------------------

    def _vote(self, w: Window, event: Mapping, now: float) -> Outcome:
        value = event.get("vote")
        if value not in ("like", "dislike"):
            return Outcome(False, f"unknown vote {value!r}")
        named = event.get("ticket")
        open_t = self.state.tickets.get(w.vote_tid) if w.vote_tid else None
        # The ticket the vote is about: the one open here if it names it, else the last
        # ticket that ended at this window with that number (for the misuse record).
        tid = None
        if open_t is not None and named == open_t.number:
            tid = open_t.tid
        elif named is not None:
            for t in sorted(self.state.tickets.values(), key=lambda t: -t.seq):
                if t.number == named and t.ended_window == w.n:
                    tid = t.tid
                    break
        t = self.state.tickets.get(tid) if tid else None
        reason = None
        if event.get("misuse"):
            reason = str(event.get("misuse_reason") or "flagged misuse by the gateway")
        elif open_t is None:
            reason = f"voting closed at window {w.n}"
        elif named != open_t.number:
            reason = f"ticket {named!r} is not the one voting is open for ({open_t.number})"
        counted = reason is None
        rec = VoteRecord(
            id=str(event["id"]), day=local_day(now, self.config.tz), at=now,
            ts=event.get("ts"), window=w.n, vote=value, ticket=named, tid=tid,
            service=t.service if t else None, counted=counted,
            operator=t.ended_operator if t is not None else w.operator,
            misuse=not counted, reason=reason,
        )
        self.state.votes.append(rec)
        self._dirty.votes.append(rec)
        if counted:
            self._close_vote(w)
        return Outcome(True, reason, vote=rec)

    def _close_vote(self, w: Window) -> None:
        w.vote_tid, w.vote_opened_at = None, None
        self._dirty.windows.add(w.n)
        self._refresh([w.n])

    # -- desired state --------------------------------------------------------------------

    def _touch(self, w: Window, t: Ticket) -> None:
        self._dirty.windows.add(w.n)
        self._dirty.tickets.add(t.tid)

    def _first_sight(self, eid: Any, what: str, now: float) -> Outcome | None:
        """None for an id seen for the first time (now remembered); else the refusal."""
        if not isinstance(eid, str) or not eid:
            return Outcome(False, f"{what} without an id")
        if eid in self.state.seen:
            return Outcome(False, f"duplicate {what} {eid}", duplicate=True)
        self._mark_seen(eid, local_day(now, self.config.tz))
        return None

    def _mark_seen(self, eid: str, day: str) -> None:
        self.state.seen[eid] = day
        self._dirty.seen[eid] = day

    def windows_serving(self, service: str) -> list[int]:
        """The windows that serve `service`, open (someone there, not paused)."""
        return [n for n in self._windows_serving({service})
                if self.state.windows[n].mode not in ("paused", "closed")]

    def _windows_serving(self, services: set[str]) -> list[int]:
        return [w.n for w in self.config.windows if services & set(w.services)]

    def _payloads(self, n: int, now: float | None, announce: bool) -> dict[str, dict]:
        cfg = self.config
        w = self.state.windows[n]
        t = self.state.tickets.get(w.ticket) if w.ticket else None
        queue = self.waiting(self._by_config[n].services)
        if t is not None:
            wait = max(0, int(t.wait_s or 0))
            text = t.number
        else:
            longest = 0.0
            if queue and now is not None:
                longest = max(q.waiting_now(now) for q in queue)
            wait, text = max(0, int(longest)), ""
        display = {
            "text": _text_for(t.number, n) if t is not None else "",
            "blink_s": cfg.blink_s if (t is not None and w.mode == CALLED) else 0,
            "brightness": cfg.brightness,
        }
        if w.mode == "closed":
            text, wait, queue = PinPad.text(w, now), 0, []
        panel = {
            "text": text, "mode": w.mode, "queue": len(queue), "wait_s": wait,
            "tea": t is not None and t.tea, "beep": announce,
        }
        vt = self.state.tickets.get(w.vote_tid) if w.vote_tid else None
        vote = ({"open": True, "ticket": vt.number, "timeout_s": cfg.vote_timeout_s}
                if vt is not None else {"open": False})
        rec = self.state.sessions.get(w.session) if w.session is not None else None
        op = self.config.operators.get(w.operator) if w.operator else None
        session = {"operator": w.operator, "name": op.name if op else None,
                   "since": utc_ts(rec.start) if rec else None, "via": rec.via if rec else None}
        return {"display": display, "panel": panel, "vote": vote, "session": session}

    def _refresh(self, windows: Iterable[int], *, now: float | None = None,
                 announce: bool = False) -> None:
        """Recompute the payloads of `windows`; a payload gets a new version when its
        content changed, or always when `announce` (a call or recall: blink and beep again).
        Without `now` the panel's idle wait figure is kept as it was."""
        for n in dict.fromkeys(windows):
            for kind, body in self._payloads(n, now, announce).items():
                old = self.state.desired.get((n, kind))
                if old is not None and now is None and kind == "panel" and not body["text"]:
                    body["wait_s"] = old.get("wait_s", 0)
                # beep is a one-off: dropping it alone is no new state (no new version).
                skip = ("version",) if announce else ("version", "beep")
                same = old is not None and all(
                    old.get(k) == v for k, v in body.items() if k not in skip)
                if same and not (announce and kind in ("display", "panel")):
                    continue
                version = (old["version"] if old else 0) + 1
                payload = {"version": version, **body}
                self.state.desired[(n, kind)] = payload
                self._out[(n, kind)] = payload
                self._dirty.desired.add((n, kind))
