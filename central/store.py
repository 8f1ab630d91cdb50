"""The central service's state in SQLite: a restart loses no ticket and no vote.

Design note
-----------
Operations: `Store.load` returns the `QueueState` to build a `Queue` from on start;
`Store.save` writes what the queue changed (`Queue.take_dirty`) in one transaction, after
every command and before its desired state is published; `Store.day` reads another day's
tickets and votes back for statistics.
Goals: after a restart the rebuilt queue equals the one before (same tickets, windows,
votes, seen ids, counters and desired-state versions), so versions keep growing and a
redelivered event is still recognised.
Plan: one file in WAL mode; one row per ticket, window, vote, seen id, counter and
(window, kind) desired payload; a row holds its record as JSON beside the columns it is
looked up by. Tickets of past days that have ended stay in the file (for reports) but are
not loaded. Commits use ``synchronous=FULL``: a vote is on disk when `save` returns.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .queue import Dirty, Queue, QueueState, SessionRecord, Ticket, VoteRecord, Window

__all__ = ["Store"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS tickets (tid TEXT PRIMARY KEY, day TEXT NOT NULL,
    state TEXT NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS tickets_day ON tickets(day);
CREATE INDEX IF NOT EXISTS tickets_state ON tickets(state);
CREATE TABLE IF NOT EXISTS windows (n INTEGER PRIMARY KEY, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS votes (rowid INTEGER PRIMARY KEY, id TEXT NOT NULL,
    day TEXT NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS votes_day ON votes(day);
CREATE TABLE IF NOT EXISTS seen (id TEXT PRIMARY KEY, day TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (day TEXT NOT NULL, service TEXT NOT NULL,
    n INTEGER NOT NULL, PRIMARY KEY (day, service));
CREATE TABLE IF NOT EXISTS desired (window INTEGER NOT NULL, kind TEXT NOT NULL,
    version INTEGER NOT NULL, payload TEXT NOT NULL, PRIMARY KEY (window, kind));
CREATE TABLE IF NOT EXISTS issued (request_id TEXT PRIMARY KEY, tid TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (sid INTEGER PRIMARY KEY, day TEXT NOT NULL,
    open INTEGER NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS sessions_day ON sessions(day);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS journal (rowid INTEGER PRIMARY KEY, id TEXT NOT NULL,
    gateway TEXT, window INTEGER, type TEXT, at REAL NOT NULL, outcome TEXT NOT NULL,
    data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS journal_id ON journal(id);
CREATE TABLE IF NOT EXISTS bad_events (id TEXT NOT NULL, gateway TEXT NOT NULL,
    at REAL NOT NULL, topic TEXT NOT NULL, reason TEXT NOT NULL, payload BLOB NOT NULL,
    PRIMARY KEY (gateway, id));
"""


def _record(obj: Any) -> str:
    """A dataclass of plain fields (str, numbers, None, lists of them) as JSON: what
    dataclasses.asdict gives, at a fraction of its cost (it deep-copies field by field;
    this is the hot path of a group commit)."""
    return json.dumps(obj.__dict__)


class Store:
    """SQLite state of one central service (one writer). The connection may be used from
    several threads (the MQTT thread, the ticker) as long as the caller serialises them."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        self._bad: list[tuple] = []  # malformed events for the next save's transaction
        self._journal: list[tuple] = []  # events applied, for the next save's transaction

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- writing ------------------------------------------------------------------------

    def save(self, queue: Queue, dirty: Dirty | None = None) -> None:
        """Write what `queue` changed since the last save, in one transaction."""
        d = dirty if dirty is not None else queue.take_dirty()
        s = queue.state
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT OR REPLACE INTO tickets (tid, day, state, data) VALUES (?, ?, ?, ?)",
                [(t.tid, t.day, t.state, _record(t))
                 for t in (s.tickets[tid] for tid in d.tickets if tid in s.tickets)])
            db.executemany(
                "INSERT OR REPLACE INTO windows (n, data) VALUES (?, ?)",
                [(n, _record(s.windows[n])) for n in d.windows if n in s.windows])
            db.executemany("INSERT INTO votes (id, day, data) VALUES (?, ?, ?)",
                           [(v.id, v.day, _record(v)) for v in d.votes])
            db.executemany("INSERT OR REPLACE INTO seen (id, day) VALUES (?, ?)",
                           list(d.seen.items()))
            db.executemany(
                "INSERT OR REPLACE INTO counters (day, service, n) VALUES (?, ?, ?)",
                [(day, svc, s.counters[(day, svc)]) for day, svc in d.counters])
            db.executemany(
                "INSERT OR REPLACE INTO desired (window, kind, version, payload) "
                "VALUES (?, ?, ?, ?)",
                [(n, k, s.desired[(n, k)]["version"], json.dumps(s.desired[(n, k)]))
                 for n, k in d.desired])
            db.executemany("INSERT OR IGNORE INTO issued (request_id, tid) VALUES (?, ?)",
                           list(d.issued.items()))
            db.executemany(
                "INSERT OR REPLACE INTO sessions (sid, day, open, data) VALUES (?, ?, ?, ?)",
                [(r.sid, r.day, r.end is None, _record(r))
                 for r in (s.sessions[sid] for sid in d.sessions if sid in s.sessions)])
            db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                           [("seq", str(s.seq)), ("session_seq", str(s.session_seq))])
            db.executemany("INSERT OR IGNORE INTO bad_events VALUES (?, ?, ?, ?, ?, ?)",
                           self._bad)
            db.executemany("INSERT INTO journal (id, gateway, window, type, at, outcome, data) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)", self._journal)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._bad.clear()
        self._journal.clear()

    def journal_event(self, event: Mapping[str, Any], at: float, outcome: str,
                      raw: str | None = None) -> None:
        """An event applied (not a duplicate), in the journal with the next `save`: what
        the central took, in order, and proof that none was applied twice. `raw`: the
        payload as received (else the event is written out again)."""
        def kept(name, kind):
            value = event.get(name)
            return value if isinstance(value, kind) and not isinstance(value, bool) else None

        self._journal.append((event["id"], kept("gateway", str), kept("window", int),
                              kept("type", str), at, outcome,
                              raw if raw is not None else json.dumps(event, ensure_ascii=False)))

    def discard(self) -> None:
        """Forget the rows waiting for the next save (after a failed one)."""
        self._bad.clear()
        self._journal.clear()

    def keep_bad_event(self, event_id: str, gateway: str, topic: str, reason: str,
                       payload: bytes, at: float) -> None:
        """A malformed event to keep; written by the next `save`, in its transaction."""
        self._bad.append((event_id, gateway, at, topic, reason, payload))

    def bad_events(self) -> list[dict]:
        return [{"id": i, "gateway": g, "at": a, "topic": t, "reason": r, "payload": p}
                for i, g, a, t, r, p in self.db.execute(
                    "SELECT id, gateway, at, topic, reason, payload FROM bad_events "
                    "ORDER BY at")]

    def forget_seen_before(self, day: str) -> None:
        self.db.execute("DELETE FROM seen WHERE day < ?", (day,))

    # -- reading ------------------------------------------------------------------------

    def load(self, *, since_day: str | None = None) -> QueueState:
        """The state to continue from: every ticket not yet ended, and the ended ones of
        `since_day` and later (all when None); every vote of those days."""
        s = QueueState()
        q = "SELECT data FROM tickets WHERE state NOT IN ('served', 'noshow', 'closed')"
        args: tuple = ()
        if since_day is None:
            q = "SELECT data FROM tickets"
        else:
            q += " OR day >= ?"
            args = (since_day,)
        for (data,) in self.db.execute(q, args):
            t = Ticket(**json.loads(data))
            s.tickets[t.tid] = t
        for (data,) in self.db.execute("SELECT data FROM windows"):
            w = Window(**json.loads(data))
            s.windows[w.n] = w
        vq, vargs = ("SELECT data FROM votes ORDER BY rowid", ())
        if since_day is not None:
            vq, vargs = ("SELECT data FROM votes WHERE day >= ? ORDER BY rowid", (since_day,))
        s.votes = [VoteRecord(**json.loads(data)) for (data,) in self.db.execute(vq, vargs)]
        s.seen = dict(self.db.execute("SELECT id, day FROM seen"))
        s.counters = {(day, svc): n for day, svc, n in
                      self.db.execute("SELECT day, service, n FROM counters")}
        s.desired = {(n, k): json.loads(p) for n, k, p in
                     self.db.execute("SELECT window, kind, payload FROM desired")}
        s.issued_ids = dict(self.db.execute("SELECT request_id, tid FROM issued"))
        meta = dict(self.db.execute("SELECT key, value FROM meta"))
        s.seq = int(meta.get("seq", 0))
        s.session_seq = int(meta.get("session_seq", 0))
        sq, sargs = ("SELECT data FROM sessions", ())
        if since_day is not None:
            sq, sargs = ("SELECT data FROM sessions WHERE open OR day >= ?", (since_day,))
        for (data,) in self.db.execute(sq, sargs):
            r = SessionRecord(**json.loads(data))
            s.sessions[r.sid] = r
        # Keep tickets that windows or voting still point at, whatever their day.
        for w in s.windows.values():
            for tid in (w.ticket, w.vote_tid):
                if tid and tid not in s.tickets:
                    row = self.db.execute("SELECT data FROM tickets WHERE tid = ?",
                                          (tid,)).fetchone()
                    if row:
                        s.tickets[tid] = Ticket(**json.loads(row[0]))
        return s

    def day(self, day: str) -> tuple[list[Ticket], list[VoteRecord]]:
        """The tickets issued on `day` and the votes taken on it (for a day report)."""
        tickets = [Ticket(**json.loads(d)) for (d,) in
                   self.db.execute("SELECT data FROM tickets WHERE day = ?", (day,))]
        votes = [VoteRecord(**json.loads(d)) for (d,) in self.db.execute(
            "SELECT data FROM votes WHERE day = ? ORDER BY rowid", (day,))]
        return tickets, votes

    def day_sessions(self, day: str) -> list[SessionRecord]:
        """The operator sessions begun on `day`."""
        return [SessionRecord(**json.loads(d)) for (d,) in self.db.execute(
            "SELECT data FROM sessions WHERE day = ? ORDER BY sid", (day,))]
