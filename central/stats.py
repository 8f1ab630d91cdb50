"""Statistics of a day, live or after it: a JSON-ready dict.

Definitions (the report says them too, under ``"definitions"``):

- wait: a ticket's first call time minus its issue time (central clock), for every ticket
  called at least once (served, no-show, or at a window now). A redirected visitor's
  second call does not count again.
- p95: nearest rank: the smallest wait with at least 95% of waits at or below it.
- over_norm_share: waits strictly over the norm (900 s) / waits.
- served / noshow: by the window, service (at the end: after a redirect, the target) and
  operator where the ticket ended. Waits by the window of the first call and the service
  the ticket was issued for; an operator's waits are those of the tickets they ended.
- satisfaction: likes / counted votes (None without votes); misuse presses counted apart,
  never in satisfaction. A vote belongs to the window it was pressed at, the service of
  the ticket it names (None when none) and the window's operator then.

>>> day_stats([], [])["all"]["served"]
0
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from .queue import NOSHOW, SERVED, WAITING, Ticket, VoteRecord

__all__ = ["day_stats", "live_stats", "p95"]


def p95(values: list[float]) -> float | None:
    """Nearest-rank 95th percentile; None for no values.

    >>> p95([float(i) for i in range(1, 21)])
    19.0
    """
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


class _Group:
    def __init__(self) -> None:
        self.issued = self.served = self.noshow = 0
        self.waits: list[float] = []
        self.likes = self.dislikes = self.misuse = 0

    def as_dict(self, norm_s: float) -> dict:
        votes = self.likes + self.dislikes
        w = self.waits
        return {
            "issued": self.issued,
            "served": self.served,
            "noshow": self.noshow,
            "waits": len(w),
            "wait_avg_s": round(sum(w) / len(w), 1) if w else None,
            "wait_p95_s": round(p95(w), 1) if w else None,
            "over_norm": sum(x > norm_s for x in w),
            "over_norm_share": round(sum(x > norm_s for x in w) / len(w), 4) if w else None,
            "likes": self.likes,
            "dislikes": self.dislikes,
            "votes": votes,
            "satisfaction": round(self.likes / votes, 4) if votes else None,
            "misuse": self.misuse,
        }


def day_stats(tickets: Iterable[Ticket], votes: Iterable[VoteRecord], *,
              norm_s: float = 900, day: str | None = None) -> dict:
    """Figures for `tickets` and `votes` (of one day: pass only that day's, or `day` to
    filter), overall and per window, service and operator."""
    groups: dict[str, dict] = {"window": {}, "service": {}, "operator": {}}
    total = _Group()

    def g(kind: str, key) -> _Group:
        return groups[kind].setdefault(str(key), _Group())

    states = {"waiting": 0, "called": 0, "serving": 0}
    for t in tickets:
        if day is not None and t.day != day:
            continue
        total.issued += 1
        g("service", t.issued_service).issued += 1
        if t.state in states:
            states[t.state] += 1
        wait = t.wait_s
        if wait is not None:
            total.waits.append(wait)
            g("window", t.first_window).waits.append(wait)
            g("service", t.issued_service).waits.append(wait)
            if t.state in (SERVED, NOSHOW) and t.ended_operator is not None:
                g("operator", t.ended_operator).waits.append(wait)
        if t.state in (SERVED, NOSHOW):
            attr = "served" if t.state == SERVED else "noshow"
            targets = [total, g("window", t.ended_window), g("service", t.service)]
            if t.ended_operator is not None:
                targets.append(g("operator", t.ended_operator))
            for grp in targets:
                setattr(grp, attr, getattr(grp, attr) + 1)
    for v in votes:
        if day is not None and v.day != day:
            continue
        targets = [total, g("window", v.window)]
        if v.service is not None:
            targets.append(g("service", v.service))
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
            "wait": "first call time - issue time, over tickets called at least once",
            "p95": "nearest rank",
            "satisfaction": "likes / counted votes; misuse presses apart",
        },
    }
    for kind, by in groups.items():
        out[f"by_{kind}"] = {k: grp.as_dict(norm_s) for k, grp in sorted(by.items())}
    return out


def live_stats(queue, *, now: float, day: str | None = None) -> dict:
    """Today's figures from a running `Queue`, plus what is happening now."""
    from .clock import local_day

    today = day or local_day(now, queue.config.tz)
    out = day_stats(queue.tickets.values(), queue.state.votes,
                    norm_s=queue.config.norm_s, day=today)
    waiting = [t for t in queue.tickets.values() if t.state == WAITING]
    out["now"] = {
        "at": now,
        "waiting": len(waiting),
        "longest_wait_s": round(max((now - t.issued_at for t in waiting), default=0.0), 1),
        "windows": {str(n): {"mode": w.mode,
                             "ticket": queue.tickets[w.ticket].number if w.ticket else None,
                             "operator": w.operator, "vote_open": w.vote_tid is not None}
                    for n, w in sorted(queue.windows.items())},
    }
    return out
