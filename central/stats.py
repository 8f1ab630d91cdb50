"""Statistics of a day, live or after it: a JSON-ready dict.

Definitions (the report says them too, under ``"definitions"``):

- wait: the visitor's whole wait (`Ticket.wait_s`, central clock): issue to first call,
  plus, after each redirect, redirect to the next call; for every ticket called at least
  once (served, no-show, or at a window now), counted once per ticket. The panel's
  `wait_s` and the tea flag (owed once the whole wait passes the norm at a call) use the
  same figure.
- p50, p95: nearest rank: the smallest value with at least 50% (95%) of values at or
  below it.
- over_norm_share: waits strictly over the norm (900 s) / waits.
- service time: end (finish) minus start of the visit that ended a served ticket, where
  it ended.
- served / noshow: by the window, service (at the end: after a redirect, the target) and
  operator where the ticket ended. Waits by the window of the first call and the service
  the ticket was issued for; an operator's waits are those of the tickets they called
  first (whoever was logged in at the call).
- redirected_out / redirected_in: each redirect counts out of the service the ticket was
  in and into its target; out also at the window that redirected. So, per service,
  issued + redirected_in = served + noshow + redirected_out + open (still waiting,
  called or being served), and every column sums over the services to the day's total
  (redirects out and in both to the number of redirects).
- by_hour: by the local hour (``"09"``) a ticket was issued, and a vote was taken.
- satisfaction: likes / counted votes (None without votes); misuse presses counted apart,
  never in satisfaction. A vote belongs to the window it was pressed at, the service of
  the ticket it names (None when none) and the operator who ended that visit (else the
  window's operator then).
- by_group: as by_service, by the catalogue's group of each service (a redirect inside a
  group counts out and in). by_operator also has their `sessions` of the day and
  `logged_in_s` (an open session until now).

Live only (`live_stats`, the retained ``central/stats``; the pages of hallgate/web read
them, so a board or a manager's view needs nothing but the MQTT topics):

- now.by_service: per service, the visitors `waiting` now, the `longest_wait_s` of them
  (the whole wait so far, as the panels and alerts count it) and the `windows_open`
  serving it; with `norm_s` and `warn_s` at the top, a page colours the oldest wait.
- now.calls: the last `CALLS_KEPT` calls, newest first (ticket, window, service, `at` on
  the central's clock): a hall board that (re)starts shows them at once. A ticket is
  listed once, at its latest call; a recall is the same call.
- queue_by_time: visitors waiting through the day, every `QUEUE_STEP_S` on the local
  clock, and now: a ticket waits from its issue to its first call (a redirected one
  also from its redirect, while it waits now; earlier stretches after a redirect are not
  kept, so they are not counted).

>>> day_stats([], [])["all"]["served"]
0
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_right
from collections.abc import Iterable, Mapping
from datetime import datetime
from zoneinfo import ZoneInfo

from .queue import (
    CLOSED,
    NOSHOW,
    SERVED,
    WAITING,
    Service,
    SessionRecord,
    Ticket,
    VoteRecord,
    minutes,
)

__all__ = ["day_stats", "live_stats", "p95", "percentile", "queue_by_time"]

CALLS_KEPT = 12  # now.calls: more than a hall board lists
QUEUE_STEP_S = 300  # queue_by_time: a point every 5 minutes (divides every zone's offset)


def percentile(values: list[float], share: float) -> float | None:
    """Nearest rank: the smallest value with at least `share` of the values at or below
    it; None for no values.

    >>> percentile([float(i) for i in range(1, 21)], 0.5)
    10.0
    """
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def p95(values: list[float]) -> float | None:
    """Nearest-rank 95th percentile; None for no values.

    >>> p95([float(i) for i in range(1, 21)])
    19.0
    """
    return percentile(values, 0.95)


def _r(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


class _Group:
    def __init__(self) -> None:
        self.issued = self.served = self.noshow = self.closed = self.open = 0
        self.redirected_out = self.redirected_in = 0
        self.waits: list[float] = []
        self.service_times: list[float] = []
        self.likes = self.dislikes = self.misuse = 0

    def as_dict(self, norm_s: float) -> dict:
        votes = self.likes + self.dislikes
        w, st = self.waits, self.service_times
        return {
            "issued": self.issued,
            "served": self.served,
            "noshow": self.noshow,
            "closed": self.closed,
            "open": self.open,
            "redirected_out": self.redirected_out,
            "redirected_in": self.redirected_in,
            "waits": len(w),
            "wait_avg_s": round(sum(w) / len(w), 1) if w else None,
            "wait_p50_s": _r(percentile(w, 0.5)),
            "wait_p95_s": _r(p95(w)),
            "over_norm": sum(x > norm_s for x in w),
            "over_norm_share": round(sum(x > norm_s for x in w) / len(w), 4) if w else None,
            "service_time_avg_s": round(sum(st) / len(st), 1) if st else None,
            "service_time_p95_s": _r(p95(st)),
            "likes": self.likes,
            "dislikes": self.dislikes,
            "votes": votes,
            "satisfaction": round(self.likes / votes, 4) if votes else None,
            "misuse": self.misuse,
        }


def day_stats(tickets: Iterable[Ticket], votes: Iterable[VoteRecord], *,
              norm_s: float = 900, day: str | None = None, tz: str | None = None,
              closes: str | None = None, sessions: Iterable[SessionRecord] = (),
              services: Mapping[str, Service] | None = None, now: float | None = None
              ) -> dict:
    """Figures for `tickets` and `votes` (of one day: pass only that day's, or `day` to
    filter), overall and per window, service, service group (with `services`, the
    catalogue), operator and local hour (`tz`: the zone, None for the machine's); with
    `closes` ("20:00") and `day`, how long past closing the last visit ended (`close`);
    per operator, their `sessions` (a session still open counts until `now`)."""
    tickets = list(tickets)
    groups: dict[str, dict] = {"window": {}, "service": {}, "group": {}, "operator": {},
                               "hour": {}}
    total = _Group()
    catalogue = services or {}

    def g(kind: str, key) -> _Group:
        return groups[kind].setdefault(str(key), _Group())

    def svc(code: str | None) -> list[_Group]:
        """The rows of a service: its own and its group's."""
        if code is None:
            return []
        entry = catalogue.get(code)
        return [g("service", code)] + ([g("group", entry.group)] if entry and entry.group
                                       else [])

    def hour(at: float) -> str:
        dt = datetime.fromtimestamp(at, ZoneInfo(tz)) if tz else datetime.fromtimestamp(at)
        return f"{dt.hour:02d}"

    states = {"waiting": 0, "called": 0, "serving": 0}
    for t in tickets:
        if day is not None and t.day != day:
            continue
        by_hour = g("hour", hour(t.issued_at))
        for grp in (total, *svc(t.issued_service), by_hour):
            grp.issued += 1
        for from_service, to_service, window in t.hops:
            for grp in (total, *svc(from_service), g("window", window)):
                grp.redirected_out += 1
            for grp in (total, *svc(to_service)):
                grp.redirected_in += 1
        if t.state in states:
            states[t.state] += 1
            for grp in (total, *svc(t.service)):
                grp.open += 1
        wait = t.wait_s
        if wait is not None:
            targets = [total, g("window", t.first_window), *svc(t.issued_service), by_hour]
            if t.first_operator is not None:
                targets.append(g("operator", t.first_operator))
            for grp in targets:
                grp.waits.append(wait)
        if t.state == CLOSED:  # ended by the day's close, at no window
            for grp in (total, *svc(t.service), by_hour):
                grp.closed += 1
        if t.state in (SERVED, NOSHOW):
            attr = "served" if t.state == SERVED else "noshow"
            targets = [total, g("window", t.ended_window), *svc(t.service), by_hour]
            if t.ended_operator is not None:
                targets.append(g("operator", t.ended_operator))
            for grp in targets:
                setattr(grp, attr, getattr(grp, attr) + 1)
                if t.state == SERVED and t.started_at is not None and t.ended_at is not None:
                    grp.service_times.append(t.ended_at - t.started_at)
    for v in votes:
        if day is not None and v.day != day:
            continue
        targets = [total, g("window", v.window), g("hour", hour(v.at))]
        targets += svc(v.service)
        if v.operator is not None:
            targets.append(g("operator", v.operator))
        for grp in targets:
            if not v.counted:
                grp.misuse += 1
            elif v.vote == "like":
                grp.likes += 1
            else:
                grp.dislikes += 1
    out = {
        "day": day,
        "norm_s": norm_s,
        "all": {**total.as_dict(norm_s), **states},
        "definitions": {
            "wait": "whole wait: issue (a booked visitor's slot, if later) to first call, "
                    "plus each redirect to the next call; over tickets called at least once; "
                    "an operator's waits are those of the tickets they called first",
            "p50, p95": "nearest rank",
            "service_time": "finish - start of the visit that ended a served ticket",
            "balance": "per service: issued + redirected_in = served + noshow + closed + "
                       "redirected_out + open",
            "satisfaction": "likes / counted votes; misuse presses apart",
        },
    }
    worked: dict[str, list[float]] = {}
    for r in sessions:
        end = r.end if r.end is not None else now
        if end is not None:
            worked.setdefault(r.operator, []).append(max(0.0, end - r.start))
            g("operator", r.operator)
    for kind, by in groups.items():
        out[f"by_{kind}"] = {k: grp.as_dict(norm_s) for k, grp in sorted(by.items())}
    for op, row in out["by_operator"].items():
        row["sessions"] = len(worked.get(op, []))
        row["logged_in_s"] = round(sum(worked.get(op, [])), 1)
    if catalogue:
        out["services"] = {c: {"name": e.name, "group": e.group, "expected_s": e.expected_s,
                               "prefix": e.prefix} for c, e in sorted(catalogue.items())}
    if closes is not None and day is not None:
        out["close"] = _overrun(tickets, day, tz, closes)
    return out


def _overrun(tickets: list[Ticket], day: str, tz: str | None, closes: str) -> dict:
    """When the day's last visit ended against the closing time: flagged if after it."""
    zone = ZoneInfo(tz) if tz else None
    m = minutes(closes)
    at = datetime.fromisoformat(day).replace(hour=m // 60, minute=m % 60, tzinfo=zone)
    closing = at.timestamp() if zone else at.astimezone().timestamp()
    ends = [t.ended_at for t in tickets if t.day == day and t.ended_at is not None]
    last = max(ends, default=None)
    over = max(0.0, last - closing) if last is not None else 0.0
    return {"closes": closes, "last_end_s_after_close": None if last is None
            else round(last - closing, 1), "overrun_s": round(over, 1), "overrun": over > 0,
            "unfinished": sum(1 for t in tickets if t.day == day and t.state not in
                                 (SERVED, NOSHOW, CLOSED))}


def live_stats(queue, *, now: float, day: str | None = None) -> dict:
    """Today's figures from a running `Queue`, plus what is happening now."""
    from .clock import local_day

    today = day or local_day(now, queue.config.tz)
    out = day_stats(queue.tickets.values(), queue.state.votes,
                    norm_s=queue.config.norm_s, day=today, tz=queue.config.tz,
                    closes=queue.config.closes, services=queue.config.services, now=now,
                    sessions=[r for r in queue.state.sessions.values() if r.day == today])
    waiting = [t for t in queue.tickets.values() if t.state == WAITING]
    out["warn_s"] = queue.config.warn_s
    out["tz"] = queue.config.tz
    out["now"] = {
        "at": now,
        "waiting": len(waiting),
        "longest_wait_s": round(max((t.waiting_now(now) for t in waiting), default=0.0), 1),
        "windows": {str(n): {"mode": w.mode,
                             "ticket": queue.tickets[w.ticket].number if w.ticket else None,
                             "operator": w.operator, "vote_open": w.vote_tid is not None}
                    for n, w in sorted(queue.windows.items())},
        "by_service": _services_now(queue, waiting, now),
        "calls": _recent_calls(queue.tickets.values()),
    }
    out["queue_by_time"] = queue_by_time(
        [t for t in queue.tickets.values() if t.day == today], now, queue.config.tz)
    return out


def _services_now(queue, waiting: list[Ticket], now: float) -> dict:
    """Per service: how many wait now, the longest whole wait, the windows open for it."""
    rows = {code: {"waiting": 0, "longest_wait_s": 0.0,
                   "windows_open": queue.windows_serving(code)}
            for code in sorted(queue.config.services)}
    for t in waiting:
        row = rows.setdefault(t.service, {"waiting": 0, "longest_wait_s": 0.0,
                                          "windows_open": []})
        row["waiting"] += 1
        row["longest_wait_s"] = max(row["longest_wait_s"], round(t.waiting_now(now), 1))
    return rows


def _recent_calls(tickets: Iterable[Ticket]) -> list[dict]:
    """The last CALLS_KEPT calls, newest first: the tickets called and where."""
    called = [t for t in tickets if t.called_at is not None and t.state != WAITING]
    newest = heapq.nlargest(CALLS_KEPT, called, key=lambda t: (t.called_at, t.seq))
    return [{"ticket": t.number, "window": t.window if t.window is not None
             else t.ended_window, "service": t.service, "at": t.called_at} for t in newest]


def queue_by_time(tickets: Iterable[Ticket], now: float, tz: str | None,
                  step_s: int = QUEUE_STEP_S) -> dict:
    """Visitors waiting at every `step_s` of the local clock from the first issue, and
    now: ``{"step_s", "points": [["08:05", 3], ...]}``. O(n log n) in the tickets.

    >>> from hallgate.central.state import Ticket
    >>> t = Ticket("d/A/1", "A001", "d", 1, "A", "A", issued_at=600.0, first_called_at=1000.0)
    >>> queue_by_time([t], 1300.0, "UTC")["points"]
    [['00:10', 1], ['00:15', 1], ['00:20', 0], ['00:21', 0]]
    """
    starts: list[float] = []
    ends: list[float] = []
    for t in tickets:
        first_end = t.first_called_at
        if first_end is None and t.state == CLOSED:
            first_end = t.ended_at
        starts.append(t.issued_at)
        ends.append(first_end if first_end is not None else math.inf)
        if t.state == WAITING and t.head_since is not None and t.first_called_at is not None:
            starts.append(t.head_since)  # waiting again, after a redirect
            ends.append(math.inf)
    if not starts:
        return {"step_s": step_s, "points": []}
    starts.sort()
    ends.sort()
    zone = ZoneInfo(tz) if tz else None

    def point(at: float) -> list:
        label = datetime.fromtimestamp(at, zone).strftime("%H:%M")
        return [label, bisect_right(starts, at) - bisect_right(ends, at)]

    at = math.floor(starts[0] / step_s) * step_s
    points = []
    while at <= now:
        points.append(point(at))
        at += step_s
    if not points or at - step_s < now:
        points.append(point(now))
    return {"step_s": step_s, "points": points}
