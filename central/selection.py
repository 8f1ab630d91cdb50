"""Who is called next: one rule, a score in seconds, so no ticket waits without bound.

The rule
--------
When window `w` presses call, it takes, among the tickets it may call, the one with the
highest

    score = waited + credit

and, between equal scores, the one issued first. `waited` is the visitor's whole wait so
far (`Ticket.waiting_now`: since issue, or since the slot for an appointment; a redirected
visitor keeps the wait they had). `credit` is a head start in seconds, the sum of (an
appointment's and a redirect's not both: a booked visitor sent on has the redirect's):

- priority: `priority_credit_s` (600) per level of the ticket's priority (0-9);
- skill: `skill_credit_s` (300) per step of the window's weight for the service above 1
  (a window serves its main services first);
- appointment: `appointment_credit_s` (the norm, 900) for a booked visitor from the slot;
- redirect: `redirect_credit_s` (the norm, 900) for a visitor sent on from another window.

A window may call a ticket of the services it serves; an appointment only from its slot
time (an early visitor waits for it).

The bound
---------
A credit is at most C = 9 x priority_credit_s + 8 x skill_credit_s + the larger of
appointment_credit_s and redirect_credit_s (`max_credit`). A window calls U while T waits
there only if U's score is at least T's, so T's wait is at most U's wait plus C: **no
ticket is passed at a window by one that has waited more than C less**. Every ticket that
arrives more than C after T comes after T; the tickets that can go first are finite, so
each ticket is called in bounded time while its windows keep calling. With the defaults,
an ordinary walk-in is passed only by visitors with a head start: a booked visitor from
the slot (900 s), a redirected visitor (900 s), a priority visitor (600 s per level), or
the window's main service (300 s per step). A walk-in past the norm goes before an appointment
that has just come due: walk-ins do not starve behind appointments, and an appointment is
called at its slot unless walk-ins are already over the norm.

The default credits follow MFC practice: priority groups (veterans, the disabled) go
ahead of ordinary walk-ins; a booked visitor is called at the slot; a redirected visitor
already waited once.
"""

from __future__ import annotations

from collections.abc import Iterable

from .queueconfig import QueueConfig, WindowConfig

__all__ = ["best", "credit", "eligible", "max_credit", "order_key", "score"]


def credit(cfg: QueueConfig, w: WindowConfig | None, t) -> float:
    """The head start in seconds of ticket `t` at window `w` (None: at no window, the
    skill left out)."""
    c = t.priority * cfg.priority_credit_s
    if w is not None:
        c += (w.weight(t.service) - 1) * cfg.skill_credit_s
    if t.head_since is not None:
        c += cfg.redirect_credit_s or 0
    elif t.slot is not None:
        c += cfg.appointment_credit_s or 0
    return float(c)


def max_credit(cfg: QueueConfig) -> float:
    """The bound C of the rule: no ticket is passed by one that waited more than C less."""
    return float(9 * cfg.priority_credit_s + 8 * cfg.skill_credit_s
                 + max(cfg.appointment_credit_s or 0, cfg.redirect_credit_s or 0))


def eligible(w: WindowConfig, t, now: float) -> bool:
    """May window `w` call `t` (waiting) now: its service, and for an appointment its slot."""
    return t.service in w.services and _slot_reached(t, now)


def score(cfg: QueueConfig, w: WindowConfig, t, now: float) -> float:
    return t.waiting_now(now) + credit(cfg, w, t)


def order_key(cfg: QueueConfig, t, now: float | None) -> tuple:
    """The order of a service's queue as people see it (positions on ``ticket/issued``,
    the panel's count): by score without the windows' skills, the same at any `now`;
    appointments before their slot (at `now`) last, by slot."""
    if now is not None and not _slot_reached(t, now):
        return (1, t.slot, t.seq)
    return (0, t.since - (t.waited_s or 0.0) - credit(cfg, None, t), t.seq)


def _slot_reached(t, now: float) -> bool:
    return t.slot is None or t.head_since is not None or t.slot <= now


def best(cfg: QueueConfig, w: WindowConfig, waiting: Iterable, now: float):
    """The ticket window `w` calls now among `waiting` (None: none it may call)."""
    top, top_key = None, None
    for t in waiting:
        if not eligible(w, t, now):
            continue
        key = (-score(cfg, w, t, now), t.seq)
        if top_key is None or key < top_key:
            top, top_key = t, key
    return top
