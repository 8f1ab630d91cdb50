"""The central service's core without I/O to the broker: queue + store + clock in one step.

Each command is applied to the queue with the clock's time, saved to the store in one
transaction, and only then are its changed desired-state payloads returned for
publishing (retained, QoS 1), so nothing is published that a restart could take back.
One step: `handle_event` and `issue` (apply, then commit). Group commits, as the MQTT
wiring (central/mqtt.py) does them: `apply_event` / `apply_issue` for each message of a
batch, then one `commit` for all of them; `tick` every second or so; `all_desired` on
every connection.
The store is SQLite (central/store.py) unless one is given: the city's workers pass a
`PgStore` (central/pgstore.py) on the connection that holds the site's lock, and
`open_store` picks one by its name (a ``postgresql://`` URL or a file).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .clock import Clock, SystemClock, local_day
from .queue import Desired, Outcome, Queue, QueueConfig, Ticket
from .stats import day_stats, live_stats
from .store import Store, StoreBase

__all__ = ["Central", "open_store"]


def open_store(db: str | Path, site: str | None = None) -> StoreBase:
    """A SQLite `Store` for a path; a `PgStore` (the city's) for a ``postgresql://`` or
    ``postgres://`` URL, which needs the `site` its rows are keyed by."""
    if isinstance(db, str) and db.startswith(("postgresql://", "postgres://")):
        if not site:
            raise ValueError("a PostgreSQL store needs the site its rows belong to")
        from .pgstore import PgStore  # psycopg: only for the city

        return PgStore(db, site)
    return Store(db)


class Central:
    """`dedupe_days`: how many days event ids are remembered, so that an event sent again
    that long after it was committed (its receipt lost, its gateway away) is still taken
    for a duplicate. A gateway re-sends on every reconnect, so days cover any outage a
    hall would not notice.
    `db`: a SQLite file or a ``postgresql://`` URL (`open_store`, with `site`); or None
    with `store` given (a city worker's `PgStore` on its locked connection). `close` closes
    the store (a `PgStore` given a connection leaves that connection to its owner)."""

    def __init__(self, config: QueueConfig, db: str | Path | None, clock: Clock | None = None,
                 dedupe_days: int = 14, *, store: StoreBase | None = None,
                 site: str | None = None) -> None:
        self.clock = clock or SystemClock()
        self.config = config
        self.dedupe_days = dedupe_days
        if store is None:
            if db is None:
                raise ValueError("Central: give a database (db) or a store")
            store = open_store(db, site)
        elif db is not None:
            raise ValueError("Central: give a database (db) or a store, not both")
        self.store = store
        self._load()
        self.store.save(self.queue)
        self.queue.take_desired()

    def _load(self) -> None:
        """The queue as the store has it (forgetting ids past `dedupe_days`)."""
        now = self.clock.now()
        yesterday = local_day(now - 86400, self.config.tz)
        forget = local_day(now - 86400 * max(1, self.dedupe_days), self.config.tz)
        self.store.forget_seen_before(forget)
        self.queue = Queue(self.config, self.store.load(since_day=yesterday), now=now)
        self.queue.forget_seen_before(forget)

    def close(self) -> None:
        self.store.close()

    def issue(self, service: str, *, appointment: bool = False, priority: int = 0,
              request_id: str | None = None, slot: float | None = None
              ) -> tuple[Ticket, list[Desired]]:
        t = self.apply_issue(service, appointment=appointment, priority=priority,
                             request_id=request_id, slot=slot)
        return t, self.commit()

    def handle_event(self, event: Mapping[str, Any]) -> tuple[Outcome, list[Desired]]:
        out = self.apply_event(event)
        return out, self.commit()

    # Group commits (central/mqtt.py): apply several, then one commit for them all.
    def apply_event(self, event: Mapping[str, Any], raw: str | None = None) -> Outcome:
        """One event applied to the queue, not yet committed; `raw`: its payload as
        received, for the journal."""
        now = self.clock.now()
        out = self.queue.handle_event(event, now=now)
        if not out.duplicate and isinstance(event.get("id"), str):
            self.store.journal_event(event, now, "ok" if out.ok else f"rejected: {out.reason}",
                                     raw)
        return out

    def apply_issue(self, service: str, *, appointment: bool = False, priority: int = 0,
                    request_id: str | None = None, slot: float | None = None) -> Ticket:
        return self.queue.issue(service, appointment=appointment, priority=priority,
                                now=self.clock.now(), request_id=request_id, slot=slot)

    def apply_session(self, request: Mapping[str, Any]) -> Outcome:
        """A staff app's login or logout (`Queue.session`), not yet committed."""
        return self.queue.session(request, now=self.clock.now())

    def keep_bad_event(self, event_id: str, gateway: str, topic: str, reason: str,
                       payload: bytes) -> None:
        """A malformed event, kept (with the next commit) for a person to look at."""
        self.store.keep_bad_event(event_id, gateway, topic, reason, payload,
                                  self.clock.now())

    def commit(self) -> list[Desired]:
        """Everything applied since the last commit, in one transaction (fsynced); the
        desired state it changed, to publish now that a restart cannot take it back.
        If the commit fails (a full or failing disk), the queue goes back to what the store
        holds and the error is raised: the events applied since are forgotten, ids too, so
        when they come again (their gateways resend them: no receipt) they are applied
        afresh, not taken for duplicates of something the store never got."""
        try:
            self.store.save(self.queue)
        except BaseException:
            self.store.discard()
            self._load()
            raise
        return self.queue.take_desired()

    def tick(self) -> tuple[list[Desired], list[dict]]:
        """Voting timeouts and the wait watch, committed: (desired state, wait alerts)."""
        self.queue.tick(now=self.clock.now())
        desired = self.commit()
        return desired, self.queue.take_alerts()

    def all_desired(self) -> list[Desired]:
        return self.queue.all_desired()

    def stats(self) -> dict:
        return live_stats(self.queue, now=self.clock.now())

    def day_report(self, day: str) -> dict:
        tickets, votes = self.store.day(day)
        cfg = self.queue.config
        return day_stats(tickets, votes, norm_s=cfg.norm_s, day=day, tz=cfg.tz,
                         closes=cfg.closes, sessions=self.store.day_sessions(day),
                         services=cfg.services, now=self.clock.now())
