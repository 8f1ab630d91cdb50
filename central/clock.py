"""The one place the central service takes time from.

Every wait, the 15-minute norm and the vote timeouts are computed from a `Clock`, so a
simulated hall (its hall clock, sim/hallclock.py) sees its waits in hall time and a real
hall in real time. The queue state machine itself never reads a clock: its commands take `now`
(epoch seconds, float), which the caller takes from here.

>>> clock = FakeClock(1_000.0)
>>> clock.advance(90)
>>> clock.now()
1090.0
>>> local_day(0.0, "UTC")
'1970-01-01'
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol
from zoneinfo import ZoneInfo

__all__ = ["Clock", "FakeClock", "ScaledClock", "SystemClock", "local_day", "utc_ts"]


class Clock(Protocol):
    """Anything with ``now() -> float``: epoch seconds (UTC based, like `time.time`)."""

    def now(self) -> float: ...


class SystemClock:
    """Real time: `time.time`."""

    def now(self) -> float:
        return time.time()


class ScaledClock:
    """Hall time running `speed` times real time, from `start` at the real moment `real0`
    (epoch seconds): ``start + (time.time() - real0) * speed``. Processes given the same
    three numbers (a simulated city's central workers) share one hall clock without talking.

    >>> c = ScaledClock(start=1_000.0, speed=60.0, real0=time.time())
    >>> 1_000.0 <= c.now() < 1_000.0 + 60.0
    True
    """

    def __init__(self, start: float, speed: float = 1.0, real0: float | None = None) -> None:
        if speed <= 0:
            raise ValueError(f"speed {speed}: must be > 0")
        self.start = float(start)
        self.speed = float(speed)
        self.real0 = time.time() if real0 is None else float(real0)

    def now(self) -> float:
        return self.start + (time.time() - self.real0) * self.speed


class FakeClock:
    """Manual time for tests: it moves only when told."""

    def __init__(self, start: float = 1_795_420_800.0) -> None:  # 2026-11-23 08:00 UTC
        self.t = float(start)

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a FakeClock never goes back")
        self.t += seconds

    def set(self, t: float) -> None:
        if t < self.t:
            raise ValueError("a FakeClock never goes back")
        self.t = float(t)


def local_day(ts: float, tz: str | None = None) -> str:
    """The local calendar date of `ts` as ``YYYY-MM-DD``: the day tickets are numbered in.
    `tz` is an IANA zone name ("Europe/Moscow"); None means the machine's local zone."""
    if tz is None:
        return datetime.fromtimestamp(ts).astimezone().date().isoformat()
    return datetime.fromtimestamp(ts, ZoneInfo(tz)).date().isoformat()


def utc_ts(t: float | None = None) -> str:
    """``2026-11-23T10:15:02.123Z`` (the contract's timestamps).

    >>> utc_ts(0.5)
    '1970-01-01T00:00:00.500Z'
    """
    dt = datetime.fromtimestamp(time.time() if t is None else t, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
