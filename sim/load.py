"""Offered load of a day's plan against the hall's capacity, before the day runs.

Erlangs offered to a service in an hour: the service time of the visitors arriving for it
in that hour, divided by the hour. Against it, the windows that serve the service: the
most that service can get (a window serving several services shares itself out), so a
service whose load reaches its windows' count is over capacity for sure, and the hall as
a whole when the sum reaches the count of windows. A plan over capacity makes long waits
whatever the queue's rules; a simulator should say so before blaming them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from .dayplan import Visitor

__all__ = ["load_text", "offered_load"]

HOUR = 3600.0


def offered_load(visitors: Iterable[Visitor], windows: Iterable[tuple[int, Iterable[str]]],
                 ) -> dict:
    """{"hours": [{"hour", "by_service": {code: erlangs}, "total"}], "windows": {code:
    windows serving it}, "total_windows", "over": [(hour, code or "all", erlangs, windows)]}
    for `visitors` (arrival seconds since opening) and `windows` ((n, services))."""
    serving: dict[str, int] = defaultdict(int)
    total_windows = 0
    for _, services in windows:
        total_windows += 1
        for code in set(services):
            serving[code] += 1
    work: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for v in visitors:
        work[int(v.arrive_s // HOUR)][v.service] += v.service_s / HOUR
    hours, over = [], []
    for h in range(max(work, default=-1) + 1):
        by = {code: round(e, 2) for code, e in sorted(work[h].items())}
        total = round(sum(by.values()), 2)
        hours.append({"hour": h, "by_service": by, "total": total})
        over += [(h, code, e, serving.get(code, 0)) for code, e in by.items()
                 if e >= serving.get(code, 0)]
        if total >= total_windows:
            over.append((h, "all", total, total_windows))
    return {"hours": hours, "windows": dict(sorted(serving.items())),
            "total_windows": total_windows, "over": over}


def load_text(load: dict, opening_hour: int = 8) -> str:
    """The table the simulator prints before the day: erlangs per service and hour."""
    codes = list(load["windows"])
    head = "hour   " + " ".join(f"{c:>6}" for c in codes) + "   total"
    lines = ["Offered load (erlangs: service hours arriving per hour) against windows "
             "serving it:", head,
             "windows" + " ".join(f"{load['windows'][c]:>6}" for c in codes)
             + f"   {load['total_windows']:>5}"]
    for row in load["hours"]:
        cells = []
        for c in codes:
            e = row["by_service"].get(c, 0.0)
            cells.append(f"{e:>5.1f}{'!' if e >= load['windows'][c] else ' '}")
        mark = "!" if row["total"] >= load["total_windows"] else " "
        lines.append(f"{opening_hour + row['hour']:02d}:00  " + " ".join(cells)
                     + f"   {row['total']:>5.1f}{mark}")
    if load["over"]:
        lines.append(f"! over capacity in {len(load['over'])} service-hour(s): expect long "
                     "waits whatever the queue's rules (more windows, or fewer visitors)")
    return "\n".join(lines)
