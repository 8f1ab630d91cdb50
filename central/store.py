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
What a save writes (`save_rows`, `WRITES`) and how a state is read back (`StoreBase`) are
shared with the city's PostgreSQL store (central/pgstore.py), which keys every row by site
too; each store only says how its SQL is spelled.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .queue import Dirty, Queue, QueueState, SessionRecord, Ticket, VoteRecord, Window

__all__ = ["WRITES", "Store", "StoreBase", "save_rows"]

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

# What a save writes, table by table: (table, columns, key, on a row whose key exists).
# "replace": the new row wins; "ignore": the first row stays; "append": no key, every row
# is new. `window` is quoted: a reserved word in PostgreSQL.
WRITES: tuple[tuple[str, tuple[str, ...], tuple[str, ...], str], ...] = (
    ("tickets", ("tid", "day", "state", "data"), ("tid",), "replace"),
    ("windows", ("n", "data"), ("n",), "replace"),
    ("votes", ("id", "day", "data"), (), "append"),
    ("seen", ("id", "day"), ("id",), "replace"),
    ("counters", ("day", "service", "n"), ("day", "service"), "replace"),
    ("desired", ('"window"', "kind", "version", "payload"), ('"window"', "kind"), "replace"),
    ("issued", ("request_id", "tid"), ("request_id",), "ignore"),
    ("sessions", ("sid", "day", "open", "data"), ("sid",), "replace"),
    ("meta", ("key", "value"), ("key",), "replace"),
    ("bad_events", ("id", "gateway", "at", "topic", "reason", "payload"), ("gateway", "id"),
     "ignore"),
    ("journal", ("id", "gateway", '"window"', "type", "at", "outcome", "data"), (), "append"),
)


def _record(obj: Any) -> str:
    """A dataclass of plain fields (str, numbers, None, lists of them) as JSON: what
    dataclasses.asdict gives, at a fraction of its cost (it deep-copies field by field;
    this is the hot path of a group commit)."""
    return json.dumps(obj.__dict__)


def save_rows(queue: Queue, d: Dirty, bad: list[tuple], journal: list[tuple]
              ) -> list[list[tuple]]:
    """The rows one save writes, a list per table of `WRITES` (same order and columns)."""
    s = queue.state
    return [
        [(t.tid, t.day, t.state, _record(t))
         for t in (s.tickets[tid] for tid in d.tickets if tid in s.tickets)],
        [(n, _record(s.windows[n])) for n in d.windows if n in s.windows],
        [(v.id, v.day, _record(v)) for v in d.votes],
        list(d.seen.items()),
        [(day, svc, s.counters[(day, svc)]) for day, svc in d.counters],
        [(n, k, s.desired[(n, k)]["version"], json.dumps(s.desired[(n, k)]))
         for n, k in d.desired],
        list(d.issued.items()),
        [(r.sid, r.day, r.end is None, _record(r))
         for r in (s.sessions[sid] for sid in d.sessions if sid in s.sessions)],
        [("seq", str(s.seq)), ("session_seq", str(s.session_seq))],
        list(bad),
        list(journal),
    ]


class StoreBase:
    """What the SQLite and the PostgreSQL stores share: the rows waiting for the next save
    (journal, malformed events) and reading a state back. A store says how it selects
    (`_select`), writes (`_write`) and deletes (`_delete_seen_before`)."""

    def __init__(self) -> None:
        self._bad: list[tuple] = []  # malformed events for the next save's transaction
        self._journal: list[tuple] = []  # events applied, for the next save's transaction

    def _select(self, cols: str, table: str, where: str = "", args: tuple = (),
                order: str = "") -> Iterable[tuple]:
        """Rows of ``SELECT cols FROM table [WHERE where] [ORDER BY order]``; `where`
        uses ``?`` placeholders."""
        raise NotImplementedError

    def _write(self, rows: list[list[tuple]]) -> None:
        """`save_rows` output in one durable transaction."""
        raise NotImplementedError

    def _delete_seen_before(self, day: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- writing ------------------------------------------------------------------------

    def save(self, queue: Queue, dirty: Dirty | None = None) -> None:
        """Write what `queue` changed since the last save, in one transaction."""
        d = dirty if dirty is not None else queue.take_dirty()
        self._write(save_rows(queue, d, self._bad, self._journal))
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
        return [{"id": i, "gateway": g, "at": a, "topic": t, "reason": r, "payload": bytes(p)}
                for i, g, a, t, r, p in self._select(
                    "id, gateway, at, topic, reason, payload", "bad_events", order="at")]

    def forget_seen_before(self, day: str) -> None:
        self._delete_seen_before(day)

    # -- reading ------------------------------------------------------------------------

    def load(self, *, since_day: str | None = None) -> QueueState:
        """The state to continue from: every ticket not yet ended, and the ended ones of
        `since_day` and later (all when None); every vote of those days."""
        s = QueueState()
        sel = self._select
        if since_day is None:
            rows = sel("data", "tickets")
        else:
            rows = sel("data", "tickets",
                       "state NOT IN ('served', 'noshow', 'closed') OR day >= ?", (since_day,))
        for (data,) in rows:
            t = Ticket(**json.loads(data))
            s.tickets[t.tid] = t
        for (data,) in sel("data", "windows"):
            w = Window(**json.loads(data))
            s.windows[w.n] = w
        votes = sel("data", "votes", order="rowid") if since_day is None else \
            sel("data", "votes", "day >= ?", (since_day,), order="rowid")
        s.votes = [VoteRecord(**json.loads(data)) for (data,) in votes]
        s.seen = dict(sel("id, day", "seen"))
        s.counters = {(day, svc): n for day, svc, n in sel("day, service, n", "counters")}
        s.desired = {(n, k): json.loads(p) for n, k, p in
                     sel('"window", kind, payload', "desired")}
        s.issued_ids = dict(sel("request_id, tid", "issued"))
        meta = dict(sel("key, value", "meta"))
        s.seq = int(meta.get("seq", 0))
        s.session_seq = int(meta.get("session_seq", 0))
        sessions = sel("data", "sessions") if since_day is None else \
            sel("data", "sessions", "open OR day >= ?", (since_day,))
        for (data,) in sessions:
            r = SessionRecord(**json.loads(data))
            s.sessions[r.sid] = r
        # Keep tickets that windows or voting still point at, whatever their day.
        for w in s.windows.values():
            for tid in (w.ticket, w.vote_tid):
                if tid and tid not in s.tickets:
                    for (data,) in sel("data", "tickets", "tid = ?", (tid,)):
                        s.tickets[tid] = Ticket(**json.loads(data))
        return s

    def day(self, day: str) -> tuple[list[Ticket], list[VoteRecord]]:
        """The tickets issued on `day` and the votes taken on it (for a day report)."""
        tickets = [Ticket(**json.loads(d)) for (d,) in
                   self._select("data", "tickets", "day = ?", (day,))]
        votes = [VoteRecord(**json.loads(d)) for (d,) in
                 self._select("data", "votes", "day = ?", (day,), order="rowid")]
        return tickets, votes

    def day_sessions(self, day: str) -> list[SessionRecord]:
        """The operator sessions begun on `day`."""
        return [SessionRecord(**json.loads(d)) for (d,) in
                self._select("data", "sessions", "day = ?", (day,), order="sid")]


def _sqlite_insert(table: str, cols: tuple[str, ...], rule: str) -> str:
    verb = {"replace": "INSERT OR REPLACE", "ignore": "INSERT OR IGNORE"}.get(rule, "INSERT")
    return f"{verb} INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"


_SQLITE_INSERTS = [_sqlite_insert(table, cols, rule) for table, cols, _, rule in WRITES]


class Store(StoreBase):
    """SQLite state of one central service (one writer). The connection may be used from
    several threads (the MQTT thread, the ticker) as long as the caller serialises them."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = str(path)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def _write(self, rows: list[list[tuple]]) -> None:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            for sql, table_rows in zip(_SQLITE_INSERTS, rows, strict=True):
                if table_rows:
                    db.executemany(sql, table_rows)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _select(self, cols: str, table: str, where: str = "", args: tuple = (),
                order: str = "") -> Iterable[tuple]:
        sql = f"SELECT {cols} FROM {table}"
        if where:
            sql += f" WHERE {where}"
        if order:
            sql += f" ORDER BY {order}"
        return self.db.execute(sql, args)

    def _delete_seen_before(self, day: str) -> None:
        self.db.execute("DELETE FROM seen WHERE day < ?", (day,))
