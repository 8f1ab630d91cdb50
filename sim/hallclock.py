"""Hall time for the simulator: a conservative discrete-event clock.

Design note
-----------
Operations: the hall's actors (the kiosk, each window's operator) `join` the clock, then
`sleep(name, seconds)` for the hall time they would spend (a visitor walking up, a service,
a break); `leave` when they are done. `now()` is the hall's time, epoch seconds, for the
central service (it has the `Clock` interface of central/clock.py).
Goals: the chain's real latency (firmware, bus, gateway, broker, central, display) never
counts as hall time, so a simulated day's waits are the hall's and not the machine's;
and the day runs as fast as the chain answers, never ahead of `max_speed` times real time
since the start (a live view people can follow), at any speed.
Plan: hall time stands still while any actor is awake: an actor is awake while it presses
a key and waits for the panel's answer, publishes a ticket request and waits for the
ticket, or waits for a vote to reach the broker, so whatever the hall did is through the
chain before time moves on. When every actor sleeps, one thread moves time to the
earliest wake-up (once the real time since the start allows it at `max_speed`, if capped)
and wakes one actor due then: actors due at the same time take turns in the order they
joined, so a day runs in the same order every time (and in the model run's order,
sim/model.py). With no actor left, time stands still.
"""

from __future__ import annotations

import threading
import time

__all__ = ["HallClock"]


class HallClock:
    """>>> clock = HallClock(100.0)
    >>> clock.join("a")
    >>> clock.sleep("a", 60)
    True
    >>> clock.now()
    160.0
    >>> clock.leave("a"); clock.stop()
    """

    def __init__(self, start: float, *, max_speed: float | None = None) -> None:
        if max_speed is not None and max_speed <= 0:
            raise ValueError(f"max_speed must be > 0, got {max_speed}")
        self._t = self._start = float(start)
        self._real0 = time.monotonic()
        self.max_speed = max_speed
        self._cond = threading.Condition()
        self._actors: dict[str, int] = {}  # actor -> its rank (join order)
        self._joined = 0
        self._turn: str | None = None  # the one actor woken at the current time
        self._sleeping: dict[str, float] = {}  # actor -> hall time it wakes at
        self._stopped = False
        self.jumps = 0  # how many times time moved (for tests and reports)
        self._thread = threading.Thread(target=self._run, name="hall-clock", daemon=True)
        self._thread.start()

    def now(self) -> float:
        return self._t

    def join(self, name: str) -> None:
        with self._cond:
            if name in self._actors:
                raise ValueError(f"actor {name!r} has joined already")
            self._actors[name] = self._joined
            self._joined += 1

    def leave(self, name: str) -> None:
        with self._cond:
            self._actors.pop(name, None)
            self._sleeping.pop(name, None)
            if self._turn == name:
                self._turn = None
            self._cond.notify_all()

    def sleep(self, name: str, seconds: float) -> bool:
        """Sleep `seconds` of hall time; False if the clock was stopped meanwhile."""
        with self._cond:
            if name not in self._actors:
                raise ValueError(f"actor {name!r} sleeps without having joined")
            wake = self._t + max(0.0, seconds)
            self._sleeping[name] = wake
            if self._turn == name:
                self._turn = None
            self._cond.notify_all()
            while self._turn != name and not self._stopped:
                self._cond.wait()
            self._sleeping.pop(name, None)
            return not self._stopped

    def stop(self) -> None:
        """Wake every sleeper (their `sleep` returns False); time no longer moves."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._thread.join(5)

    def _all_asleep(self) -> bool:
        return (bool(self._actors) and self._turn is None
                and set(self._sleeping) >= set(self._actors))

    def _next(self) -> tuple[float, str]:
        """The earliest wake-up, and who wakes then first (by join order)."""
        return min((self._sleeping[a], self._actors[a], a) for a in self._actors)[::2]

    def _run(self) -> None:
        with self._cond:
            while not self._stopped:
                if not self._all_asleep():
                    self._cond.wait()
                    continue
                target, _ = self._next()
                if self.max_speed is not None and target > self._t:
                    # Not ahead of max_speed over the whole run: time the chain held the
                    # clock counts, so a day at 600x takes its hours / 600 when the chain
                    # is faster than that, not that plus the chain's time.
                    deadline = self._real0 + (target - self._start) / self.max_speed
                    while not self._stopped and time.monotonic() < deadline:
                        self._cond.wait(deadline - time.monotonic())
                        if not self._all_asleep():
                            break
                    if self._stopped or not self._all_asleep():
                        continue
                target, first = self._next()
                if target > self._t:
                    self._t = target
                    self.jumps += 1
                self._turn = first  # one at a time: the same order every run
                self._cond.notify_all()
