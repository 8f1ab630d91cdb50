"""The queue's state: tickets, windows, votes, sessions, and what a command changed.

Plain dataclasses, stored as JSON rows by `central.store` and changed only by
`central.queue.Queue`; new fields get defaults, so rows written before them still load.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["CALLED", "CLOSED", "FINAL", "NOSHOW", "SERVED", "SERVING", "WAITING", "Desired",
           "Dirty", "Outcome", "QueueState", "SessionRecord", "Ticket", "VoteRecord", "Window"]

WAITING, CALLED, SERVING, SERVED, NOSHOW = "waiting", "called", "serving", "served", "noshow"
CLOSED = "closed"  # still waiting when the hall closed (at_close = "end")
FINAL = (SERVED, NOSHOW, CLOSED)


@dataclass
class SessionRecord:
    """One operator's time at one window: `end` None while logged in."""

    sid: int
    day: str  # local day it began
    operator: str
    window: int
    start: float
    via: str  # panel | app | config
    end: float | None = None
    end_via: str | None = None  # panel | app | login-elsewhere | config


@dataclass
class Ticket:
    tid: str  # unwrapped, unique: "2026-11-23/A/42"
    number: str  # printed: "A042"
    day: str
    seq: int  # issue order over the whole queue, ties broken by it
    issued_service: str
    service: str  # current (differs from issued_service after a redirect)
    issued_at: float
    appointment: bool = False  # booked (see `slot` and `late`)
    priority: int = 0
    slot: float | None = None  # a booked visitor's slot: called from then, waits from then
    late: bool = False  # booked, came past the grace: issued as a walk-in
    state: str = WAITING
    window: int | None = None
    head_since: float | None = None  # set by redirect: goes to the head of `service`
    called_at: float | None = None  # the current call
    first_called_at: float | None = None
    first_window: int | None = None
    first_operator: str | None = None  # who made the first call (the wait is theirs)
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
    slot_alerted: bool = False  # a "slot-overdue" alert was sent

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

    @property
    def since(self) -> float:
        """When this stretch of waiting began: issue, the slot if later, or the redirect."""
        if self.head_since is not None:
            return self.head_since
        return self.issued_at if self.slot is None else max(self.issued_at, self.slot)

    def waiting_now(self, now: float) -> float:
        """The whole wait so far of a ticket in the queue (its wait_s plus this stretch)."""
        return (self.waited_s or 0.0) + max(0.0, now - self.since)


@dataclass
class Window:
    n: int
    mode: str = "idle"  # idle | called | serving | paused | closed
    ticket: str | None = None  # tid
    operator: str | None = None
    vote_tid: str | None = None  # voting open for this ticket
    vote_opened_at: float | None = None
    session: int | None = None  # the operator's SessionRecord.sid
    # PIN entry while closed (central.sessions)
    pin: str = ""
    pin_failures: int = 0
    pin_locked_until: float | None = None
    pin_error: bool = False


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
    sessions: dict[int, SessionRecord] = field(default_factory=dict)  # today's and open
    session_seq: int = 0


@dataclass
class Dirty:
    tickets: set[str] = field(default_factory=set)
    windows: set[int] = field(default_factory=set)
    votes: list[VoteRecord] = field(default_factory=list)
    seen: dict[str, str] = field(default_factory=dict)
    counters: set[tuple[str, str]] = field(default_factory=set)
    desired: set[tuple[int, str]] = field(default_factory=set)
    issued: dict[str, str] = field(default_factory=dict)  # request id -> tid
    sessions: set[int] = field(default_factory=set)
