"""The central service's state in PostgreSQL: one database holds a whole city's sites.

Design note
-----------
Operations: `PgStore(dsn_or_connection, site)` has the face of central/store.py's `Store`
(save, journal_event, discard, keep_bad_event, bad_events, forget_seen_before, load, day,
day_sessions, close), so `Central(config, None, store=PgStore(...))` runs a site on it.
`ensure_schema(conn)` makes the tables when missing.
Goals: the same state after a restart as the SQLite store gives (the same rows, written by
the same `save_rows`), for many sites in one database; a commit is on disk when `save`
returns (synchronous_commit on, forced for our connection); a store whose connection holds a
site's advisory lock (central/city.py) commits only while it holds it, because the lock
lives exactly as long as that connection.
Plan:
- Every table of the SQLite schema, with ``site`` first in its key: one database, many
  sites, each site's rows apart. Rows hold the same JSON text the SQLite store writes.
- A save is one transaction sent as one pipeline (psycopg 3): every table's rows go out in
  one round trip, then the COMMIT (one WAL flush; PostgreSQL flushes the commits of many
  connections together, so 32 sites' group commits cost about one fsync).
- The connection is in autocommit mode outside of `save` (no transaction left open between
  commits, so no snapshot held and no lock kept by an idle site).
- The schema is made under a transaction-level advisory lock, so two workers starting at
  once do not race on ``CREATE TABLE IF NOT EXISTS`` (it is not safe concurrently).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .store import WRITES, StoreBase

__all__ = ["PgStore", "ensure_schema", "connect"]

SCHEMA_LOCK = 0x68616c6c  # pg_advisory_xact_lock key while the schema is made ("hall")

SCHEMA = """
CREATE TABLE IF NOT EXISTS tickets (site TEXT NOT NULL, tid TEXT NOT NULL,
    day TEXT NOT NULL, state TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (site, tid));
CREATE INDEX IF NOT EXISTS tickets_day ON tickets(site, day);
CREATE INDEX IF NOT EXISTS tickets_state ON tickets(site, state);
CREATE TABLE IF NOT EXISTS windows (site TEXT NOT NULL, n INTEGER NOT NULL,
    data TEXT NOT NULL, PRIMARY KEY (site, n));
CREATE TABLE IF NOT EXISTS votes (rowid BIGSERIAL PRIMARY KEY, site TEXT NOT NULL,
    id TEXT NOT NULL, day TEXT NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS votes_day ON votes(site, day);
CREATE TABLE IF NOT EXISTS seen (site TEXT NOT NULL, id TEXT NOT NULL, day TEXT NOT NULL,
    PRIMARY KEY (site, id));
CREATE TABLE IF NOT EXISTS counters (site TEXT NOT NULL, day TEXT NOT NULL,
    service TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (site, day, service));
CREATE TABLE IF NOT EXISTS desired (site TEXT NOT NULL, "window" INTEGER NOT NULL,
    kind TEXT NOT NULL, version INTEGER NOT NULL, payload TEXT NOT NULL,
    PRIMARY KEY (site, "window", kind));
CREATE TABLE IF NOT EXISTS issued (site TEXT NOT NULL, request_id TEXT NOT NULL,
    tid TEXT NOT NULL, PRIMARY KEY (site, request_id));
CREATE TABLE IF NOT EXISTS sessions (site TEXT NOT NULL, sid INTEGER NOT NULL,
    day TEXT NOT NULL, open BOOLEAN NOT NULL, data TEXT NOT NULL, PRIMARY KEY (site, sid));
CREATE INDEX IF NOT EXISTS sessions_day ON sessions(site, day);
CREATE TABLE IF NOT EXISTS meta (site TEXT NOT NULL, key TEXT NOT NULL,
    value TEXT NOT NULL, PRIMARY KEY (site, key));
CREATE TABLE IF NOT EXISTS journal (rowid BIGSERIAL PRIMARY KEY, site TEXT NOT NULL,
    id TEXT NOT NULL, gateway TEXT, "window" INTEGER, type TEXT, at DOUBLE PRECISION NOT NULL,
    outcome TEXT NOT NULL, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS journal_id ON journal(site, id);
CREATE TABLE IF NOT EXISTS bad_events (site TEXT NOT NULL, id TEXT NOT NULL,
    gateway TEXT NOT NULL, at DOUBLE PRECISION NOT NULL, topic TEXT NOT NULL,
    reason TEXT NOT NULL, payload BYTEA NOT NULL, PRIMARY KEY (site, gateway, id));
"""


def _pg_insert(table: str, cols: tuple[str, ...], key: tuple[str, ...], rule: str) -> str:
    sql = (f"INSERT INTO {table} (site, {', '.join(cols)}) "
           f"VALUES (%s, {', '.join(['%s'] * len(cols))})")
    if rule == "ignore":
        sql += f" ON CONFLICT (site, {', '.join(key)}) DO NOTHING"
    elif rule == "replace":
        rest = [c for c in cols if c not in key]
        sql += (f" ON CONFLICT (site, {', '.join(key)}) DO UPDATE SET "
                + ", ".join(f"{c} = EXCLUDED.{c}" for c in rest))
    return sql


_PG_INSERTS = [_pg_insert(*w) for w in WRITES]


def connect(dsn: str, **kw: Any):
    """A psycopg connection as the stores want it: autocommit, synchronous commits."""
    import psycopg

    conn = psycopg.connect(dsn, autocommit=True, **kw)
    conn.execute("SET synchronous_commit = on")
    return conn


def ensure_schema(conn) -> None:
    """The city's tables, made if missing (safe when several workers start at once)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        conn.execute(SCHEMA)


class PgStore(StoreBase):
    """One site's state in a PostgreSQL database shared by many sites. `target`: a DSN
    (``postgresql://...``; the store opens and closes its own connection) or an open
    psycopg connection in autocommit mode (the caller's: left open by `close`, as a city
    worker keeps its site's lock on it). Used by one thread at a time, as `Store`.
    `schema=False`: the tables are known to exist (a worker made them once)."""

    def __init__(self, target: Any, site: str, *, schema: bool = True) -> None:
        super().__init__()
        self.site = site
        self._owns = isinstance(target, str)
        self.conn = connect(target) if self._owns else target
        if not self.conn.autocommit:
            raise ValueError("PgStore: the connection must be in autocommit mode")
        if schema:
            ensure_schema(self.conn)

    def close(self) -> None:
        if self._owns:
            self.conn.close()

    def __enter__(self) -> PgStore:
        return self

    def _write(self, rows: list[list[tuple]]) -> None:
        site = self.site
        conn = self.conn
        with conn.pipeline(), conn.transaction(), conn.cursor() as cur:
            for sql, table_rows in zip(_PG_INSERTS, rows, strict=True):
                if table_rows:
                    cur.executemany(sql, [(site, *r) for r in table_rows])

    def _select(self, cols: str, table: str, where: str = "", args: tuple = (),
                order: str = "") -> Iterable[tuple]:
        sql = f"SELECT {cols} FROM {table} WHERE site = %s"
        if where:
            sql += f" AND ({where.replace('?', '%s')})"
        if order:
            sql += f" ORDER BY {order}"
        return self.conn.execute(sql, (self.site, *args)).fetchall()

    def _delete_seen_before(self, day: str) -> None:
        self.conn.execute("DELETE FROM seen WHERE site = %s AND day < %s", (self.site, day))
