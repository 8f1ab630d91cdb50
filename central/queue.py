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
windows never hold the same ticket; every ticket ends served or no-show.
Plan: tickets and windows are small dataclasses; a window's current ticket is the only
link between them (`Window.ticket` <-> `Ticket.window`), set and cleared together.

Tickets and numbering
---------------------
A ticket's number is the service's letter and a 3-digit counter per service per local day
(``A001``, ``A002``...; the day from `local_day` in the configured zone). Past ``A999``
the printed number wraps to ``A001`` again; internally every ticket keeps an unwrapped
id, ``"2026-11-23/A/1000"``, so a wrapped number never mixes up two visitors. A ticket
issued yesterday and still waiting stays callable (a hall open past midnight).

Who is called next
------------------
A window serves a set of services, all alike (no preference between them): ``call``
takes, across them, a redirected visitor first (oldest redirect first), then the highest
`priority`, then appointments, then the longest waiting (issue time), then issue order.
Redirect keeps the ticket and its number: the visitor goes to the head of the target
service's queue (ahead of priority groups: they already waited once).

Keys, by window mode (anything else is rejected with a reason and changes nothing)
-----------------------------------------------------------------------------------
==========  ===========================  ===============================================
key         valid in                     effect
==========  ===========================  ===============================================
call        idle                         next ticket -> called; closes voting here.
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
resume      paused                       -> idle
redirect    called, serving              ticket -> waiting at the head of the target
                                         service (event field ``service``, else the
                                         window's configured ``redirect_to``); idle
==========  ===========================  ===============================================

Votes
-----
Every vote event is recorded (`VoteRecord`), tied to the ticket, window, service and the
window's operator (None when nobody logged in). It counts as a rating only if the event
is not flagged `misuse`, voting is open at that window for the ticket it names, and that
ticket has no counted vote yet; a counted vote closes voting. Anything else is recorded
with ``counted=False, misuse=True`` and a reason. Voting opens on ``finish`` and closes
on the next ``call`` at that window, on the counted vote, or `vote_timeout_s` later
(`tick`).

Timing
------
Waits use the central clock at the time a command is applied, not the gateway's `ts`
(kept in the vote record only): a gateway's clock may be off, and in a simulation the
hall runs in simulated time. The wait of a ticket is the visitor's whole wait
(`Ticket.wait_s`): issue to first call, plus, after each redirect, redirect to the next
call. The panel's `wait_s` is that figure for the called visitor, and, on an idle or
paused window, the longest wait in its queues when the payload was made; its `tea` is
owed once that whole wait passed `norm_s` at a call, and stays owed for the visit.
`tick` watches the waiting: a visitor whose whole wait reaches `warn_s` (10 min), and
then passes `norm_s`, makes an alert each (`take_alerts`), so the hall can open a window
before the norm is broken.

Dedupe
------
Event ids (and issue request ids) are kept with the local day they were seen on; the
caller forgets old ones (`forget_seen_before`; `Central` keeps them `dedupe_days`, 14 by
default, so a gateway's late resend is still a duplicate), so the set stays bounded.
A rejected event is remembered too: its redelivery must not succeed later.

Worst case: `call` scans the waiting tickets of the window's services, O(waiting).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from .clock import local_day

__all__ = [
    "KEYS",
    "KINDS",
    "MAX_RECALLS",
    "Desired",
    "Outcome",
    "Queue",
    "QueueConfig",
    "QueueError",
    "QueueState",
    "Refused",
    "Ticket",
    "VoteRecord",
    "Window",
    "WindowConfig",
]

MAX_RECALLS = 5
KEYS = ("call", "recall", "start", "finish", "noshow", "pause", "resume", "redirect")
KINDS = ("display", "panel", "vote")
WAITING, CALLED, SERVING, SERVED, NOSHOW = "waiting", "called", "serving", "served", "noshow"
CLOSED = "closed"  # still waiting when the hall closed (at_close = "end")
FINAL = (SERVED, NOSHOW, CLOSED)
AT_CLOSE = ("serve", "end")


class QueueError(ValueError):
    """A command the queue cannot take at all (bad config, unknown service)."""


class Refused(QueueError):
    """A ticket request refused for the time of day; `code` for a kiosk to act on:
    "before-opening" or "after-last-ticket"."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def minutes(hhmm: str) -> int:
    """``"19:30"`` -> minutes since midnight; QueueError for anything else.

    >>> minutes("08:05")
    485
    """
    try:
        h, m = hhmm.split(":")
        if len(h) == 2 and len(m) == 2 and 0 <= int(h) <= 23 and 0 <= int(m) <= 59:
            return int(h) * 60 + int(m)
    except (AttributeError, ValueError):
        pass
    raise QueueError(f"{hhmm!r}: a local time HH:MM expected (e.g. 08:00)")


def local_minutes(ts: float, tz: str | None) -> int:
    """Minutes since local midnight of `ts` in `tz` (None: the machine's zone)."""
    dt = datetime.fromtimestamp(ts, ZoneInfo(tz)) if tz else datetime.fromtimestamp(ts)
    return dt.hour * 60 + dt.minute


# -- configuration ----------------------------------------------------------------------


@dataclass(frozen=True)
class WindowConfig:
    n: int
    services: tuple[str, ...]
    redirect_to: str | None = None
    operator: str | None = None


@dataclass(frozen=True)
class QueueConfig:
    """`services`: letter prefix -> name, e.g. ``{"A": "Passports"}``."""

    services: Mapping[str, str]
    windows: tuple[WindowConfig, ...]
    tz: str | None = None  # IANA zone for the ticket day; None = the machine's zone
    norm_s: int = 900  # the waiting-time norm (15 min): past it, tea
    warn_s: int = 600  # a waiting visitor's wait past this: an alert (open a window)
    blink_s: int = 10  # display blinks this long when a ticket is called or recalled
    brightness: int = 8
    vote_timeout_s: int = 60
    # The day (local times "HH:MM"; None: no limit): tickets from `opens` until
    # `last_ticket` (default: `closes`); at `closes`, visitors still waiting are served
    # (at_close "serve": the overrun is in the day's report) or their tickets end
    # "closed" ("end").
    opens: str | None = None
    last_ticket: str | None = None
    closes: str | None = None
    at_close: str = "serve"

    def __post_init__(self) -> None:
        if self.at_close not in AT_CLOSE:
            raise QueueError(f"at_close {self.at_close!r}: one of {', '.join(AT_CLOSE)}")
        times = [(k, minutes(v)) for k in ("opens", "last_ticket", "closes")
                 if (v := getattr(self, k)) is not None]
        if [m for _, m in times] != sorted(m for _, m in times):
            raise QueueError("opens <= last_ticket <= closes expected, not "
                             + ", ".join(f"{k} {getattr(self, k)}" for k, _ in times))
        for letter in self.services:
            if not (len(letter) == 1 and letter.isascii() and letter.isupper()):
                raise QueueError(f"service prefix {letter!r}: one letter A-Z expected")
        seen: set[int] = set()
        for w in self.windows:
            if w.n in seen:
                raise QueueError(f"window {w.n} configured twice")
            seen.add(w.n)
            if not 1 <= w.n <= 999999:
                raise QueueError(f"window {w.n}: 1-999999 expected")
            if not w.services:
                raise QueueError(f"window {w.n}: serves no service")
            for s in (*w.services, *([w.redirect_to] if w.redirect_to else [])):
                if s not in self.services:
                    raise QueueError(f"window {w.n}: unknown service {s!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> QueueConfig:
        """``{"services": {"A": "Passports"}, "windows": [{"n": 1, "services": ["A"],
        "redirect_to": "B", "operator": "ivanova"}], "tz": "Europe/Moscow", ...}``"""
        windows = tuple(
            WindowConfig(
                n=int(w["n"]),
                services=tuple(w["services"]),
                redirect_to=w.get("redirect_to"),
                operator=w.get("operator"),
            )
            for w in d["windows"]
        )
        extra = {k: d[k] for k in ("tz", "norm_s", "warn_s", "blink_s", "brightness",
                                   "vote_timeout_s", "opens", "last_ticket", "closes",
                                   "at_close") if k in d}
        return cls(services=dict(d["services"]), windows=windows, **extra)


# -- state --------------------------------------------------------------------------------


@dataclass
class Ticket:
    tid: str  # unwrapped, unique: "2026-11-23/A/42"
    number: str  # printed: "A042"
    day: str
    seq: int  # issue order over the whole queue, ties broken by it
    issued_service: str
    service: str  # current (differs from issued_service after a redirect)
    issued_at: float
    appointment: bool = False
    priority: int = 0
    state: str = WAITING
    window: int | None = None
    head_since: float | None = None  # set by redirect: goes to the head of `service`
    called_at: float | None = None  # the current call
    first_called_at: float | None = None
    first_window: int | None = None
    started_at: float | None = None
    ended_at: float | None = None
    ended_window: int | None = None
    ended_operator: str | None = None
    recalls: int = 0
    redirects: int = 0
    # Each redirect: [from service, to service, window], in order (statistics: redirected
    # out of one service and into another, so every service's rows balance).
    hops: list = field(default_factory=list)
    # The visitor's whole wait (see `wait_s`), summed at each call; None in tickets
    # stored before it was kept (their wait: first call - issue).
    waited_s: float | None = 0.0
    tea: bool = False  # the whole wait passed the norm at a call: owed for the visit
    alerts: int = 0  # wait alerts sent while waiting: 1 warn, 2 over the norm too

    @property
    def wait_s(self) -> float | None:
        """The visitor's whole wait until their last call: issue to first call, plus, after
        each redirect, redirect to the next call (time at windows is not waiting); None
        while never called. The panel's figure, the tea flag and the statistics all use it."""
        if self.first_called_at is None:
            return None
        if self.waited_s is None:  # stored before the whole wait was kept
            return self.first_called_at - self.issued_at
        return self.waited_s

    def waiting_now(self, now: float) -> float:
        """The whole wait so far of a ticket in the queue (its wait_s plus this stretch)."""
        since = self.head_since if self.head_since is not None else self.issued_at
        return (self.waited_s or 0.0) + max(0.0, now - since)

    def order_key(self) -> tuple:
        if self.head_since is not None:
            return (0, self.head_since, 0, 0.0, self.seq)
        return (1, -self.priority, 0 if self.appointment else 1, self.issued_at, self.seq)


@dataclass
class Window:
    n: int
    mode: str = "idle"  # idle | called | serving | paused | closed
    ticket: str | None = None  # tid
    operator: str | None = None
    vote_tid: str | None = None  # voting open for this ticket
    vote_opened_at: float | None = None


@dataclass
class VoteRecord:
    id: str
    day: str
    at: float  # central clock
    ts: str | None  # the gateway's ts
    window: int
    vote: str  # like | dislike
    ticket: str | None  # as the gateway sent it
    tid: str | None  # the ticket it was resolved to, if any
    service: str | None
    operator: str | None
    counted: bool
    misuse: bool
    reason: str | None = None


@dataclass(frozen=True)
class Desired:
    window: int
    kind: str  # display | panel | vote
    payload: dict


@dataclass
class Outcome:
    ok: bool
    reason: str | None = None
    duplicate: bool = False
    ticket: Ticket | None = None
    vote: VoteRecord | None = None


@dataclass
class QueueState:
    """Everything the queue needs to continue after a restart (what the store keeps)."""

    tickets: dict[str, Ticket] = field(default_factory=dict)
    windows: dict[int, Window] = field(default_factory=dict)
    votes: list[VoteRecord] = field(default_factory=list)
    seen: dict[str, str] = field(default_factory=dict)  # id -> day
    counters: dict[tuple[str, str], int] = field(default_factory=dict)  # (day, service) -> n
    seq: int = 0
    desired: dict[tuple[int, str], dict] = field(default_factory=dict)  # with versions
    issued_ids: dict[str, str] = field(default_factory=dict)  # request id -> tid


@dataclass
class Dirty:
    tickets: set[str] = field(default_factory=set)
    windows: set[int] = field(default_factory=set)
    votes: list[VoteRecord] = field(default_factory=list)
    seen: dict[str, str] = field(default_factory=dict)
    counters: set[tuple[str, str]] = field(default_factory=set)
    desired: set[tuple[int, str]] = field(default_factory=set)
    issued: dict[str, str] = field(default_factory=dict)  # request id -> tid


def _text_for(number: str, n: int) -> str:
    for text in (f"{number} > {n}", f"{number}>{n}"):
        if len(text) <= 8:
            return text
    return number


# -- the machine ----------------------------------------------------------------------------


class Queue:
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

    def __init__(self, config: QueueConfig, state: QueueState | None = None) -> None:
        self.config = config
        self.state = state if state is not None else QueueState()
        self._dirty = Dirty()
        self._out: dict[tuple[int, str], dict] = {}
        self._alerts: list[dict] = []  # wait alerts since take_alerts
        self._by_config = {w.n: w for w in config.windows}
        for w in config.windows:
            if w.n not in self.state.windows:
                self.state.windows[w.n] = Window(n=w.n, operator=w.operator)
                self._dirty.windows.add(w.n)
        for n in list(self.state.windows):
            if n not in self._by_config:  # dropped from the config
                del self.state.windows[n]
        self._refresh(self.state.windows)

    # -- reading ------------------------------------------------------------------------

    @property
    def tickets(self) -> dict[str, Ticket]:
        return self.state.tickets

    @property
    def windows(self) -> dict[int, Window]:
        return self.state.windows

    def waiting(self, services: Iterable[str] | None = None) -> list[Ticket]:
        """Waiting tickets (of `services`, default all) in call order."""
        wanted = set(services) if services is not None else None
        out = [t for t in self.state.tickets.values()
               if t.state == WAITING and (wanted is None or t.service in wanted)]
        return sorted(out, key=Ticket.order_key)

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
              now: float, request_id: str | None = None) -> Ticket:
        """A new ticket for `service` (its letter). `request_id`, when given, dedupes: the
        same request again returns the ticket it got the first time."""
        if service not in self.config.services:
            raise QueueError(f"unknown service {service!r}; known: "
                             f"{', '.join(sorted(self.config.services))}")
        s = self.state
        if request_id is not None and request_id in s.issued_ids:
            tid = s.issued_ids[request_id]
            if tid not in s.tickets:  # an earlier day's, no longer loaded
                raise QueueError(f"request {request_id!r} was answered with ticket {tid} "
                                 "on an earlier day; a new request needs a new id")
            return s.tickets[tid]
        self._check_hours(now)
        day = local_day(now, self.config.tz)
        n = s.counters.get((day, service), 0) + 1
        s.counters[(day, service)] = n
        s.seq += 1
        t = Ticket(
            tid=f"{day}/{service}/{n}", number=f"{service}{(n - 1) % 999 + 1:03d}", day=day,
            seq=s.seq, issued_service=service, service=service, issued_at=now,
            appointment=bool(appointment), priority=int(priority),
        )
        s.tickets[t.tid] = t
        self._dirty.tickets.add(t.tid)
        self._dirty.counters.add((day, service))
        if request_id is not None:
            s.issued_ids[request_id] = t.tid
            self._dirty.issued[request_id] = t.tid
            self._mark_seen(request_id, day)
        self._refresh(self._windows_serving({service}), now=now)
        return t

    def handle_event(self, event: Mapping[str, Any], *, now: float) -> Outcome:
        """Apply one event payload (``type`` key or vote). Deduped by ``id``."""
        eid = event.get("id")
        if not isinstance(eid, str) or not eid:
            return Outcome(False, "event without an id")
        if eid in self.state.seen:
            return Outcome(False, f"duplicate event {eid}", duplicate=True)
        self._mark_seen(eid, local_day(now, self.config.tz))
        n = event.get("window")
        if not isinstance(n, int) or n not in self.state.windows:
            return Outcome(False, f"window {n!r} is not configured")
        kind = event.get("type")
        if kind == "key":
            key = event.get("key")
            if key not in KEYS:
                return Outcome(False, f"unknown key {key!r}")
            return getattr(self, f"_key_{key}")(self.state.windows[n], event, now)
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
        self._watch_waits(now)
        self._close_the_day(now)
        return closed

    def _watch_waits(self, now: float) -> None:
        """An alert when a waiting visitor's whole wait passes `warn_s`, and another past
        `norm_s`: once each per ticket (kept with it, so a restart does not repeat them)."""
        cfg = self.config
        for t in self.state.tickets.values():
            if t.state != WAITING or t.alerts >= 2:
                continue
            waited = t.waiting_now(now)
            level = 2 if waited > cfg.norm_s else 1 if waited >= cfg.warn_s else 0
            if level <= t.alerts:
                continue
            t.alerts = level
            self._dirty.tickets.add(t.tid)
            waiting = self.waiting([t.service])
            self._alerts.append({
                "kind": "over-norm" if level == 2 else "wait-warn",
                "ticket": t.number, "service": t.service, "waited_s": round(waited, 1),
                "warn_s": cfg.warn_s, "norm_s": cfg.norm_s,
                "position": next(i for i, q in enumerate(waiting, 1) if q.tid == t.tid),
                "waiting": len(waiting),
                "windows_open": sorted(
                    n for n in self._windows_serving({t.service})
                    if self.state.windows[n].mode != "paused"),
            })

    def take_alerts(self) -> list[dict]:
        """The wait alerts since the last call (central/alerts in the MQTT contract)."""
        out, self._alerts = self._alerts, []
        return out

    def login(self, window: int, operator: str | None) -> None:
        """Who works at `window` now (their votes and figures are theirs)."""
        w = self.state.windows[window]
        w.operator = operator
        self._dirty.windows.add(window)

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
        queue = self.waiting(self._by_config[w.n].services)
        if not queue:
            return Outcome(False, f"nothing waiting for window {w.n}")
        t = queue[0]
        if w.vote_tid is not None:
            self._close_vote(w)
        t.waited_s = t.waiting_now(now)
        t.tea = t.tea or t.waited_s > self.config.norm_s
        t.state, t.window, t.called_at, t.head_since, t.recalls = CALLED, w.n, now, None, 0
        if t.first_called_at is None:
            t.first_called_at, t.first_window = now, w.n
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
            service=t.service if t else None, operator=w.operator, counted=counted,
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

    def _mark_seen(self, eid: str, day: str) -> None:
        self.state.seen[eid] = day
        self._dirty.seen[eid] = day

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
        panel = {
            "text": text, "mode": w.mode, "queue": len(queue), "wait_s": wait,
            "tea": t is not None and t.tea, "beep": announce,
        }
        vt = self.state.tickets.get(w.vote_tid) if w.vote_tid else None
        vote = ({"open": True, "ticket": vt.number, "timeout_s": cfg.vote_timeout_s}
                if vt is not None else {"open": False})
        return {"display": display, "panel": panel, "vote": vote}

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
