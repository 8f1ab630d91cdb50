"""The central service's core without I/O to the broker: queue + store + clock in one step.

Each command is applied to the queue with the clock's time, saved to the store in one
transaction, and only then are its changed desired-state payloads returned for
publishing (retained, QoS 1), so nothing is published that a restart could take back.
The MQTT wiring calls `Central.handle_event` for each message on ``window/+/event`` and
`Central.issue` for each ticket request, `Central.tick` every second or so, and publishes
`Central.all_desired` once on start.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .clock import Clock, SystemClock, local_day
from .queue import Desired, Outcome, Queue, QueueConfig, Ticket
from .stats import day_stats, live_stats
from .store import Store

__all__ = ["Central"]


class Central:
    def __init__(self, config: QueueConfig, db: str | Path, clock: Clock | None = None) -> None:
        self.clock = clock or SystemClock()
        self.store = Store(db)
        now = self.clock.now()
        yesterday = local_day(now - 86400, config.tz)
        self.store.forget_seen_before(yesterday)
        self.queue = Queue(config, self.store.load(since_day=yesterday))
        self.queue.forget_seen_before(yesterday)
        self.store.save(self.queue)
        self.queue.take_desired()

    def close(self) -> None:
        self.store.close()

    def _commit(self) -> list[Desired]:
        self.store.save(self.queue)
        return self.queue.take_desired()

    def issue(self, service: str, *, appointment: bool = False, priority: int = 0,
              request_id: str | None = None) -> tuple[Ticket, list[Desired]]:
        t = self.queue.issue(service, appointment=appointment, priority=priority,
                             now=self.clock.now(), request_id=request_id)
        return t, self._commit()

    def handle_event(self, event: Mapping[str, Any]) -> tuple[Outcome, list[Desired]]:
        out = self.queue.handle_event(event, now=self.clock.now())
        return out, self._commit()

    def tick(self) -> list[Desired]:
        self.queue.tick(now=self.clock.now())
        return self._commit()

    def all_desired(self) -> list[Desired]:
        return self.queue.all_desired()

    def stats(self) -> dict:
        return live_stats(self.queue, now=self.clock.now())

    def day_report(self, day: str) -> dict:
        tickets, votes = self.store.day(day)
        return day_stats(tickets, votes, norm_s=self.queue.config.norm_s, day=day)
