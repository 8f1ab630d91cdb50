"""The durable outbox: every event the gateway takes is kept on disk until it is delivered
(by default: until the central service's receipt says its database holds it).

Design note
-----------
Operations: the input side calls `add` for each key press or vote and acks the bus device
(or takes the GPIO press) only after it returned; the sender reads `pending` oldest first,
publishes each entry's `payload` with QoS 1 and calls `delete` once it is confirmed (the
central's receipt, or the PUBACK with delivery = "puback"). The daemon
publishes `take_drop_reports` on the errors topic and shows `stats` in its status.
Goals: a SIGKILL or a power cut at any moment loses no event that `add` returned; after a
restart the backlog goes out again with the same `id`; the file stays bounded; a full disk
is an error the caller can retry, not a crash or a half-written row.
Plan: one SQLite file in WAL mode, one connection guarded by a lock, one writer process
(an flock on ``PATH.lock`` refuses a second one; `read_stats` reads beside it). Each
`add` is one transaction committed with `synchronous=FULL`, so the commit has been
fsynced when `add` returns. Counters live in the same file and change in the same
transactions as the rows they count, so

    added == delivered + pending + dropped_overflow

holds after any crash (`check` verifies it). The bookkeeping writes whose loss costs
only a repetition (`delete`, `mark_sent`, `take_drop_reports`) commit with
`synchronous=NORMAL`: still atomic and consistent, and safe against SIGKILL, but a power
cut may undo the last of them, so an event goes out once more (the receiver dedupes by
id) or a drop report is repeated. The next `add`'s fsync makes them durable too.

Ids and sequence numbers
------------------------
`seq` is one counter per outbox (= per gateway), kept in the file and never reused, not
even after every event was delivered and deleted: it increases across restarts, as the
MQTT contract asks. `id` is ``"{gateway}-{epoch}-{seq}"``, e.g. ``"gw1-3fa9c2d4-42"``,
where `epoch` is 8 random hex digits drawn once when the file is created. The gateway
name makes ids unique across a site's gateways; the epoch keeps them unique if the file
is ever lost or replaced (a new SD card): seq then starts again at 1, and without the
epoch the new events would reuse ids the central service has already seen and be
dropped there as duplicates. The id is stored with the event, so a redelivery after any
crash carries the same id.

Ordering
--------
After a restart the backlog is sent BEFORE any new event, and a new event goes in behind
it: the sender takes `pending` in seq order. Seq is assigned under the lock in the one
writer, so seq order is commit order, and every event left over from before the restart
has a lower seq than any event taken after it. Sending by seq therefore keeps each
window's events in the order they happened, which the central service's state machine
needs (call before start before finish: a new `finish` must never overtake the `start`
still in the backlog). Interleaving backlog and new events would let them pass each other;
the cost of the rule is that after a long outage new events wait behind the backlog
(about 20 s for 100,000 events at the broker's ~5k acks/s). The sender must keep the
order too: publish in seq order and, after a reconnect, start again from the oldest
pending event.

Dedupe by source, and how long sources are kept
-----------------------------------------------
A producer that may deliver the same event twice passes a `source` key: the bus master
forgets what it took when the gateway restarts, so a device whose ack was lost sends its
last event again. `add` with a source already kept returns the first Entry (same seq and
id, `duplicate=True`) and stores nothing. Sources are kept by count, never by age: a
gateway may stay down for weeks while the device holds the unacked event, and that event
must still be recognised when it comes. Two bounds:

- per `stream` (the producer of the key, e.g. ``"bus:hall:5"`` for device 5 on bus
  "hall"), only the newest `SOURCES_PER_STREAM` (1) keys. A device resends only the event
  it is still waiting to have acked, which is always the last one taken from it (the
  master's own in-memory dedupe uses the same rule). Keeping more would be harmful: a
  device's key ``b{boot}:s{seq}`` legitimately comes back after 256 reboots (the boot byte
  wraps; a device in a brown-out loop gets there fast) or when a technician swaps in a
  device whose boot byte happens to match, and such a real new event must not be taken
  for a copy.
- at most `MAX_SOURCES` (10,000) keys in all, the oldest forgotten first. A source given
  without a stream is its own stream, so for such callers this is the only bound.

Bounded size
------------
Past `max_events` pending events, each `add` drops the oldest pending events (whatever
their window) to stay at the cap. Drops are counted (`dropped_overflow`, persisted) and
summed per window in the file until `take_drop_reports` hands them over, so a crash does
not lose the report either. Taking removes them: should the daemon die before its report
message reaches the broker, that message is gone, but every report carries the running
total (`dropped_total`), so the next one shows the jump. An event dropped while in
flight may still be acked by the broker: `delete` then finds nothing, and it stays
counted as dropped (over-reported, never under-reported).

Errors
------
A failing disk raises an `OutboxError` subclass naming the cause (`DiskFullError`,
`DiskIOError`, `ReadOnlyError`, `CorruptError`, `BusyError`); the transaction is rolled
back, so nothing is half-written and the outbox works again once the cause is gone. The
caller does not ack the device then: it keeps the event and sends it again.

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "outbox.db")
    >>> with Outbox(path, "gw1") as outbox:
    ...     entry = outbox.add(3, {"type": "key", "key": "call"}, source="bus:hall:5:b3:s17",
    ...                        stream="bus:hall:5")
    ...     again = outbox.add(3, {"type": "key", "key": "call"}, source="bus:hall:5:b3:s17",
    ...                        stream="bus:hall:5")
    ...     [e.seq for e in outbox.pending()], again.id == entry.id, again.duplicate
    ...     outbox.delete(entry.seq)
    ...     outbox.depth()
    ([1], True, True)
    1
    0
"""

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import secrets
import sqlite3
import threading
import time

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value NOT NULL) WITHOUT ROWID;
CREATE TABLE events (
    seq INTEGER PRIMARY KEY,          -- per gateway, from meta.last_seq, never reused
    id TEXT NOT NULL,
    window INTEGER NOT NULL,
    payload TEXT NOT NULL,            -- JSON, ready to publish
    created REAL NOT NULL,            -- unix time of the add
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE sources (
    seq INTEGER PRIMARY KEY,          -- the event this source became
    source TEXT NOT NULL UNIQUE,
    stream TEXT NOT NULL,
    id TEXT NOT NULL,
    window INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX sources_by_stream ON sources (stream, seq);
CREATE TABLE drops (                  -- dropped by the cap and not yet reported, per window
    window INTEGER PRIMARY KEY,
    count INTEGER NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL
);
"""

# Persisted counters (meta table), changed in the transactions that change what they count.
_COUNTERS = ("last_seq", "added", "delivered", "dropped_overflow", "dedup_hits")

# Names the outbox puts into every payload; `fields` may not carry them.
_RESERVED = ("id", "gateway", "seq", "window")

# SQLite primary result codes (the low byte of the extended code).
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY = 5, 6, 8
_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_NOTADB = 10, 11, 13, 26


class OutboxError(Exception):
    """The outbox could not do what was asked; nothing was half-done. `cause` names why."""

    cause = "error"


class DiskFullError(OutboxError):
    cause = "disk full"


class DiskIOError(OutboxError):
    cause = "disk I/O error"


class ReadOnlyError(OutboxError):
    cause = "read-only"


class CorruptError(OutboxError):
    cause = "corrupt"


class BusyError(OutboxError):
    cause = "busy"


class InUseError(OutboxError):
    """Another process has this outbox open."""

    cause = "in use"


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    """One event in the outbox. `payload` is the JSON to publish (UTF-8 bytes); it is None
    only in a duplicate's Entry when the first copy is no longer pending (delivered or
    dropped). `created` is the unix time of the add, `attempts` how often `mark_sent` was
    called for it."""

    seq: int
    id: str
    window: int
    payload: bytes | None
    created: float
    attempts: int = 0
    duplicate: bool = False  # add() found its source: this is the first copy's entry


@dataclasses.dataclass(frozen=True, slots=True)
class DropReport:
    """Events of one window dropped by the cap since the last report: `count` of them,
    seq `first_seq`..`last_seq` (not all in between: other windows' events interleave).
    `dropped_total` is the gateway's running total at the time of the report, so a lost
    report message shows as a jump in the next one."""

    window: int
    count: int
    first_seq: int
    last_seq: int
    dropped_total: int

    def asdict(self):
        return dataclasses.asdict(self)


def _error(exc, doing):
    """The OutboxError subclass for a sqlite3 error, with a message saying what failed."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    text = str(exc).lower()
    if primary == _SQLITE_FULL or "full" in text:
        cls = DiskFullError
    elif primary == _SQLITE_IOERR or "i/o" in text:
        cls = DiskIOError
    elif primary == _SQLITE_READONLY or "readonly" in text or "read-only" in text:
        cls = ReadOnlyError
    elif primary in (_SQLITE_CORRUPT, _SQLITE_NOTADB) or "malformed" in text:
        cls = CorruptError
    elif primary in (_SQLITE_BUSY, _SQLITE_LOCKED) or "locked" in text or "busy" in text:
        cls = BusyError
    else:
        cls = OutboxError
    return cls(f"outbox: {doing} failed ({cls.cause}): {exc}")


class _Tx:
    """What a write transaction changes: the connection and a copy of the counters."""

    __slots__ = ("db", "counts")

    def __init__(self, db, counts):
        self.db = db
        self.counts = counts


class Outbox:
    """A durable FIFO of events for one gateway, in a SQLite file at `path`.

    Thread-safe within the process; one process at a time (a second one gets InUseError).
    `max_events` caps the pending events (see the module note: the oldest go, reported).
    `busy_timeout` is how long a statement waits for a lock held by a reader.
    """

    SOURCES_PER_STREAM = 1  # dedupe keys kept per stream (why 1: module note)
    MAX_SOURCES = 10_000  # dedupe keys kept in all
    WAL_SIZE_LIMIT = 4 << 20  # bytes the WAL file is cut back to after a checkpoint
    # An emptied outbox cuts its WAL to nothing once it is past this: every add and delete
    # appends ~30 KB of frames, and SQLite's own checkpoint waits for ~4 MB of them,
    # which a small or nearly full disk may not have (the WAL alone would fill it).
    WAL_EMPTY_TRUNCATE = 256 << 10
    DROP_LOG_INTERVAL = 60.0  # seconds between log lines about drops at the cap

    def __init__(self, path, gateway, max_events=100_000, busy_timeout=5.0):
        if not isinstance(gateway, str) or not gateway:
            raise ValueError(f"gateway must be a non-empty string, not {gateway!r}")
        if not isinstance(max_events, int) or max_events < 1:
            raise ValueError(f"max_events must be an integer >= 1, not {max_events!r}")
        self.path = os.fspath(path)
        self.gateway = gateway
        self.max_events = max_events
        self._lock = threading.Lock()
        self._db = None
        self._durable = True  # the connection's synchronous setting: FULL (True) or NORMAL
        self._disk_errors = 0
        self._unlogged_drops = 0  # dropped since the last log line about it
        self._drops_logged_at = None
        self._lockfile = self._take_lock()
        try:
            self._open(busy_timeout)
        except BaseException:
            self.close()
            raise

    # ---- opening and closing ---------------------------------------------------------

    def _take_lock(self):
        try:
            f = open(self.path + ".lock", "a")  # held open until close()
        except OSError as e:
            raise OutboxError(f"outbox {self.path}: cannot create its lock file: {e}") from e
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise InUseError(f"outbox {self.path} is open in another process") from None
        return f

    def _open(self, busy_timeout):
        try:
            db = self._db = sqlite3.connect(
                self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise OutboxError(f"outbox {self.path}: cannot use WAL mode (got {mode!r})")
            db.execute("PRAGMA synchronous=FULL")
            db.execute(f"PRAGMA journal_size_limit={int(self.WAL_SIZE_LIMIT)}")
            db.execute("BEGIN IMMEDIATE")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                self._create(db)
            elif version != SCHEMA_VERSION:
                raise OutboxError(
                    f"outbox {self.path}: schema version {version}, this hallgate knows "
                    f"{SCHEMA_VERSION} (written by another hallgate version?)"
                )
            meta = dict(db.execute("SELECT key, value FROM meta"))
            depth = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
            db.execute("COMMIT")
        except sqlite3.Error as e:
            self._rollback()
            raise _error(e, f"opening {self.path}") from e
        except BaseException:
            self._rollback()
            raise
        if meta.get("gateway") != self.gateway:
            raise OutboxError(
                f"outbox {self.path} belongs to gateway {meta.get('gateway')!r}, "
                f"not {self.gateway!r}: give each gateway its own outbox file"
            )
        self.epoch = meta["epoch"]
        self._counts = {name: int(meta[name]) for name in _COUNTERS}
        self._counts["depth"] = depth
        expected = self._counts["added"] - self._counts["delivered"]
        expected -= self._counts["dropped_overflow"]
        if depth != expected:
            log.error(
                "outbox %s: %d events pending, but the counters say %d "
                "(added %d - delivered %d - dropped %d): was the file changed by hand?",
                self.path,
                depth,
                expected,
                self._counts["added"],
                self._counts["delivered"],
                self._counts["dropped_overflow"],
            )
        log.info("outbox %s: %d pending, last seq %d", self.path, depth, self._counts["last_seq"])

    def _create(self, db):
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        meta = {"gateway": self.gateway, "epoch": secrets.token_hex(4)}
        meta.update((name, 0) for name in _COUNTERS)
        db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", meta.items())
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self):
        """Closes the file (a clean close checkpoints the WAL). Idempotent."""
        with self._lock:
            if self._db is not None:
                try:
                    self._db.close()
                except sqlite3.Error as e:
                    log.warning("outbox %s: close: %s", self.path, e)
                self._db = None
            if self._lockfile is not None:
                self._lockfile.close()  # releases the flock
                self._lockfile = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        state = "closed" if self._db is None else f"depth={self._counts['depth']}"
        return f"Outbox({self.path!r}, {self.gateway!r}, {state})"

    # ---- transactions ----------------------------------------------------------------

    @contextlib.contextmanager
    def _write(self, doing, durable=True):
        """One write transaction, under the lock. Yields a _Tx whose `counts` (a copy)
        the body changes; the changed counters are written in the same transaction, and
        the in-memory ones replaced only after COMMIT. Any error rolls everything back;
        sqlite3 errors come out as OutboxError. `durable`: fsync at commit."""
        with self._lock:
            db = self._connection()
            tx = _Tx(db, dict(self._counts))
            try:
                if durable != self._durable:
                    db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
                    self._durable = durable
                db.execute("BEGIN IMMEDIATE")
                yield tx
                changed = [
                    (tx.counts[name], name)
                    for name in _COUNTERS
                    if tx.counts[name] != self._counts[name]
                ]
                db.executemany("UPDATE meta SET value = ? WHERE key = ?", changed)
                db.execute("COMMIT")
            except sqlite3.Error as e:
                self._rollback()
                self._disk_errors += 1
                err = _error(e, doing)
                log.error("%s", err)
                if isinstance(err, DiskFullError):
                    self._truncate_wal()  # its frames may be what filled the disk
                raise err from e
            except BaseException:
                self._rollback()
                raise
            self._counts = tx.counts

    @contextlib.contextmanager
    def _read(self, doing):
        with self._lock:
            db = self._connection()
            try:
                yield db
            except sqlite3.Error as e:
                self._disk_errors += 1
                raise _error(e, doing) from e

    def _connection(self):
        if self._db is None:
            raise OutboxError(f"outbox {self.path} is closed")
        return self._db

    def _rollback(self):
        db = self._db
        if db is not None and db.in_transaction:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error as e:  # SQLite may have rolled back already
                log.warning("outbox %s: rollback: %s", self.path, e)

    # ---- the producer's side ---------------------------------------------------------

    def add(self, window, fields, source=None, stream=None):
        """Stores an event for `window` and returns its Entry once it is committed (fsynced).

        The payload is `fields` plus id, gateway, seq and window, as JSON (`fields` must
        not hold those four names, and must hold the contract's other fields: ts, type...).
        `source`: an optional dedupe key from the producer, e.g. "bus:hall:5:b3:s17";
        `stream`: the producer it belongs to, e.g. "bus:hall:5" (default: the source
        itself). An add whose source is still kept returns the first copy's Entry, with
        `duplicate=True`, and stores nothing. Raises OutboxError (nothing stored) if the
        disk fails, ValueError for bad arguments.
        """
        if not isinstance(window, int) or isinstance(window, bool) or window < 0:
            raise ValueError(f"window must be an integer >= 0, not {window!r}")
        if not isinstance(fields, dict):
            raise ValueError(f"fields must be a dict, not {type(fields).__name__}")
        clash = [name for name in _RESERVED if name in fields]
        if clash:
            raise ValueError(f"fields may not set {', '.join(clash)}: the outbox sets them")
        if source is not None and not isinstance(source, str):
            raise ValueError(f"source must be a string, not {source!r}")
        if stream is not None and source is None:
            raise ValueError("stream without a source")
        with self._write("add") as tx:
            db, counts = tx.db, tx.counts
            if source is not None:
                first = db.execute(
                    "SELECT seq, id, window, created FROM sources WHERE source = ?", (source,)
                ).fetchone()
                if first is not None:
                    counts["dedup_hits"] += 1
                    return self._duplicate(db, *first)
            now = time.time()
            seq = counts["last_seq"] + 1
            event_id = f"{self.gateway}-{self.epoch}-{seq}"
            head = {"id": event_id, "gateway": self.gateway, "seq": seq, "window": window}
            try:
                text = json.dumps(
                    {**head, **fields},
                    ensure_ascii=False,
                    allow_nan=False,
                    separators=(",", ":"),
                )
            except (TypeError, ValueError) as e:
                raise ValueError(f"fields cannot be sent as JSON: {e}") from e
            db.execute(
                "INSERT INTO events (seq, id, window, payload, created) VALUES (?, ?, ?, ?, ?)",
                (seq, event_id, window, text, now),
            )
            counts["last_seq"] = seq
            counts["added"] += 1
            counts["depth"] += 1
            if source is not None:
                self._keep_source(db, seq, source, stream, event_id, window, now)
            if counts["depth"] > self.max_events:
                self._drop_oldest(db, counts, counts["depth"] - self.max_events)
        return Entry(seq, event_id, window, text.encode(), now)

    @staticmethod
    def _duplicate(db, seq, event_id, window, created):
        row = db.execute("SELECT payload, attempts FROM events WHERE seq = ?", (seq,)).fetchone()
        payload, attempts = (row[0].encode(), row[1]) if row else (None, 0)
        return Entry(seq, event_id, window, payload, created, attempts, duplicate=True)

    def _keep_source(self, db, seq, source, stream, event_id, window, now):
        stream = source if stream is None else stream
        db.execute(
            "INSERT INTO sources (seq, source, stream, id, window, created) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (seq, source, stream, event_id, window, now),
        )
        # Both deletes find their bound through an index: O(log n + forgotten rows).
        db.execute(
            "DELETE FROM sources WHERE stream = ?1 AND seq <= (SELECT seq FROM sources "
            "WHERE stream = ?1 ORDER BY seq DESC LIMIT 1 OFFSET ?2)",
            (stream, self.SOURCES_PER_STREAM),
        )
        db.execute(
            "DELETE FROM sources WHERE seq <= "
            "(SELECT seq FROM sources ORDER BY seq DESC LIMIT 1 OFFSET ?)",
            (self.MAX_SOURCES,),
        )

    def _drop_oldest(self, db, counts, n):
        rows = db.execute("SELECT seq, window FROM events ORDER BY seq LIMIT ?", (n,)).fetchall()
        db.execute("DELETE FROM events WHERE seq <= ?", (rows[-1][0],))
        per_window = {}
        for seq, window in rows:
            count, first, _ = per_window.get(window, (0, seq, seq))
            per_window[window] = (count + 1, first, seq)
        db.executemany(
            "INSERT INTO drops (window, count, first_seq, last_seq) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (window) DO UPDATE SET count = count + excluded.count, "
            "last_seq = excluded.last_seq",
            [(window, *v) for window, v in per_window.items()],
        )
        counts["dropped_overflow"] += len(rows)
        counts["depth"] -= len(rows)
        self._log_drops(len(rows), rows[0][0], rows[-1][0])

    def _log_drops(self, n, first, last):
        # At the cap every add drops one: a line per event would flood the log (and the
        # SD card), so one line per DROP_LOG_INTERVAL. The reports carry every drop.
        self._unlogged_drops += n
        now = time.monotonic()
        if self._drops_logged_at is None or now - self._drops_logged_at >= self.DROP_LOG_INTERVAL:
            log.warning(
                "outbox %s: over the cap of %d events: dropped the oldest %d since the last "
                "such message (latest seq %d-%d)",
                self.path,
                self.max_events,
                self._unlogged_drops,
                first,
                last,
            )
            self._unlogged_drops = 0
            self._drops_logged_at = now

    # ---- the sender's side -----------------------------------------------------------

    def pending(self, limit=100, after_seq=None):
        """Up to `limit` pending entries, oldest (lowest seq) first; only those with a seq
        above `after_seq` if given (to page past the ones already in flight)."""
        with self._read("reading pending events") as db:
            rows = db.execute(
                "SELECT seq, id, window, payload, created, attempts FROM events "
                "WHERE seq > ? ORDER BY seq LIMIT ?",
                (-1 if after_seq is None else after_seq, limit),
            ).fetchall()
        return [Entry(s, i, w, p.encode(), c, a) for s, i, w, p, c, a in rows]

    def delete(self, *seqs):
        """Forgets delivered events (call on PUBACK); returns how many were still there.
        Idempotent: a seq already deleted, or dropped by the cap, is skipped. Several seqs
        in one call share one transaction."""
        if not seqs:
            return 0
        with self._write("deleting delivered events", durable=False) as tx:
            n = sum(
                tx.db.execute("DELETE FROM events WHERE seq = ?", (seq,)).rowcount for seq in seqs
            )
            tx.counts["delivered"] += n
            tx.counts["depth"] -= n
        if self._counts["depth"] == 0:
            try:
                wal = os.path.getsize(self.path + "-wal")
            except OSError:
                wal = 0
            if wal > self.WAL_EMPTY_TRUNCATE:
                with self._lock:
                    self._truncate_wal()
        return n

    def _truncate_wal(self):
        """Checkpoint the WAL into the database file and cut it to zero bytes (under the
        lock, outside a transaction). A failure is logged only: it is a way to free disk
        space, and the next write says whether there is any."""
        try:
            self._connection().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except (sqlite3.Error, OutboxError) as e:
            log.warning("outbox %s: WAL checkpoint failed: %s", self.path, e)

    def mark_sent(self, *seqs):
        """Counts a publish attempt for each event (shown as Entry.attempts), so an event
        the broker keeps refusing, or one that crashes the sender, can be found."""
        if not seqs:
            return
        with self._write("counting attempts", durable=False) as tx:
            tx.db.executemany(
                "UPDATE events SET attempts = attempts + 1 WHERE seq = ?",
                [(seq,) for seq in seqs],
            )

    def take_drop_reports(self):
        """What the cap dropped since the last call, one DropReport per window (lowest seq
        first); each drop is reported once. Kept in the file until taken."""
        with self._read("reading drop reports") as db:
            if db.execute("SELECT 1 FROM drops LIMIT 1").fetchone() is None:
                return []  # the usual case: no write transaction
        with self._write("taking drop reports", durable=False) as tx:
            rows = tx.db.execute(
                "SELECT window, count, first_seq, last_seq FROM drops ORDER BY first_seq"
            ).fetchall()
            tx.db.execute("DELETE FROM drops")
            total = tx.counts["dropped_overflow"]
        return [DropReport(*row, dropped_total=total) for row in rows]

    # ---- state -----------------------------------------------------------------------

    def depth(self):
        """How many events are pending."""
        with self._lock:
            return self._counts["depth"]

    def stats(self):
        """Counters: added, delivered, dropped_overflow, dedup_hits and last_seq (kept in
        the file: totals over the outbox's life), depth, and disk_errors (since open).
        Always added == delivered + depth + dropped_overflow."""
        with self._lock:
            counts = dict(self._counts)
            counts["disk_errors"] = self._disk_errors
        return counts

    def check(self):
        """Problems found in the file: SQLite's integrity check and the outbox's own
        invariants. An empty list means all is well. Reads the whole file: O(size)."""
        problems = []
        with self._read("checking") as db:
            for (line,) in db.execute("PRAGMA integrity_check"):
                if line != "ok":
                    problems.append(f"sqlite: {line}")
            meta = dict(db.execute("SELECT key, value FROM meta"))
            count, top = db.execute("SELECT COUNT(*), MAX(seq) FROM events").fetchone()
            unreported = db.execute("SELECT COALESCE(SUM(count), 0) FROM drops").fetchone()[0]
        added, delivered, dropped = (int(meta[k]) for k in _COUNTERS[1:4])
        if added != delivered + count + dropped:
            problems.append(
                f"added {added} != delivered {delivered} + pending {count} + dropped {dropped}"
            )
        if top is not None and top > int(meta["last_seq"]):
            problems.append(f"an event has seq {top}, above last_seq {meta['last_seq']}")
        if unreported > dropped:
            problems.append(f"{unreported} drops to report, but only {dropped} dropped")
        return problems


def read_stats(path):
    """The counters of an outbox file that another process may have open (for `hallgate
    status`): read-only, without taking the writer's lock. Like Outbox.stats, without
    disk_errors."""
    uri = "file:" + os.path.abspath(os.fspath(path)) + "?mode=ro"
    try:
        db = sqlite3.connect(uri, uri=True, timeout=5.0)
        try:
            meta = dict(db.execute("SELECT key, value FROM meta"))
            depth = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error as e:
        raise _error(e, f"reading {path}") from e
    stats = {name: int(meta[name]) for name in _COUNTERS}
    stats["depth"] = depth
    return stats
