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
and wakes whoever sleeps until then. With no actor left, time stands still.
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
        self._actors: set[str] = set()
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
            self._actors.add(name)

    def leave(self, name: str) -> None:
        with self._cond:
            self._actors.discard(name)
            self._sleeping.pop(name, None)
            self._cond.notify_all()

    def sleep(self, name: str, seconds: float) -> bool:
        """Sleep `seconds` of hall time; False if the clock was stopped meanwhile."""
        with self._cond:
            if name not in self._actors:
                raise ValueError(f"actor {name!r} sleeps without having joined")
            wake = self._t + max(0.0, seconds)
            self._sleeping[name] = wake
            self._cond.notify_all()
            while self._t < wake and not self._stopped:
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
        return bool(self._actors) and set(self._sleeping) >= self._actors

    def _run(self) -> None:
        with self._cond:
            while not self._stopped:
                if not self._all_asleep():
                    self._cond.wait()
                    continue
                target = min(self._sleeping[a] for a in self._actors)
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
                    target = min(self._sleeping[a] for a in self._actors)
                self._t = max(self._t, target)
                self.jumps += 1
                self._cond.notify_all()
                # Let the woken actors mark themselves awake before looking again.
                while not self._stopped and self._all_asleep() and min(
                        self._sleeping[a] for a in self._actors) <= self._t:
                    self._cond.wait(0.01)
