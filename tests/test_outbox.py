"""The durable outbox: roundtrip, seq and ids across reopen, dedupe by source, the cap and its
reports, a full disk, SIGKILL at random moments, and random interleavings (Hypothesis)."""

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

import pytest
from hallgate.gateway import outbox as outbox_module
from hallgate.gateway.outbox import (
    BusyError,
    CorruptError,
    DiskFullError,
    DiskIOError,
    DropReport,
    InUseError,
    Outbox,
    OutboxError,
    ReadOnlyError,
    read_stats,
)
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

KEY = {"type": "key", "key": "call", "ts": "2024-05-01T10:00:00.000Z"}


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "outbox.db")


def balanced(stats):
    """The 'difference is zero' check: every event added is delivered, pending or dropped."""
    return stats["added"] - stats["delivered"] - stats["depth"] - stats["dropped_overflow"]


# ---- roundtrip, seq, ids --------------------------------------------------------------


def test_add_pending_delete_roundtrip(path):
    with Outbox(path, "gw1") as ob:
        a = ob.add(3, dict(KEY, ticket="A017"))
        b = ob.add(4, {"type": "vote", "vote": "like", "ticket": "A017", "misuse": False})
        assert (a.seq, b.seq) == (1, 2)
        assert a.id == f"gw1-{ob.epoch}-1" and b.id != a.id
        assert [e.seq for e in ob.pending()] == [1, 2]
        got = ob.pending()[0]
        assert got == a
        body = json.loads(got.payload)
        assert body == {
            "id": a.id,
            "gateway": "gw1",
            "seq": 1,
            "window": 3,
            **KEY,
            "ticket": "A017",
        }
        assert ob.depth() == 2

        assert ob.delete(1) == 1
        assert ob.delete(1) == 0  # idempotent
        assert ob.delete(99) == 0
        assert [e.seq for e in ob.pending()] == [2]
        assert ob.delete() == 0
        stats = ob.stats()
        assert (stats["added"], stats["delivered"], stats["depth"]) == (2, 1, 1)
        assert balanced(stats) == 0
        assert ob.check() == []


def test_pending_limit_and_after_seq(path):
    with Outbox(path, "gw1") as ob:
        for n in range(10):
            ob.add(n % 3, dict(KEY, n=n))
        ob.delete(4)
        assert [e.seq for e in ob.pending(limit=3)] == [1, 2, 3]
        assert [e.seq for e in ob.pending(limit=3, after_seq=3)] == [5, 6, 7]
        assert ob.pending(after_seq=10) == []


def test_seq_and_ids_survive_reopen_even_when_all_was_deleted(path):
    with Outbox(path, "gw1") as ob:
        first = [ob.add(1, dict(KEY, n=n)) for n in range(3)]
        epoch = ob.epoch
    with Outbox(path, "gw1") as ob:
        assert ob.epoch == epoch
        assert ob.pending() == first  # same seq, id, payload, created
        ob.delete(*(e.seq for e in first))
        assert ob.depth() == 0
    with Outbox(path, "gw1") as ob:
        e = ob.add(1, KEY)
        assert e.seq == 4 and e.id == f"gw1-{epoch}-4"
        assert ob.stats()["last_seq"] == 4
        assert ob.check() == []


def test_a_new_file_gets_a_new_epoch_so_ids_never_repeat(tmp_path):
    with Outbox(tmp_path / "a.db", "gw1") as a, Outbox(tmp_path / "b.db", "gw1") as b:
        assert a.add(1, KEY).seq == b.add(1, KEY).seq == 1
        assert a.pending()[0].id != b.pending()[0].id


def test_attempts_are_counted_and_kept(path):
    with Outbox(path, "gw1") as ob:
        e = ob.add(1, KEY)
        ob.mark_sent(e.seq)
        ob.mark_sent(e.seq, 77)
    with Outbox(path, "gw1") as ob:
        assert ob.pending()[0].attempts == 2


def test_bad_arguments_are_refused_before_anything_is_stored(path):
    with Outbox(path, "gw1") as ob:
        with pytest.raises(ValueError, match="fields may not set id, seq"):
            ob.add(1, {"id": "x", "seq": 5})
        with pytest.raises(ValueError, match="window"):
            ob.add("3", KEY)
        with pytest.raises(ValueError, match="window"):
            ob.add(True, KEY)
        with pytest.raises(ValueError, match="JSON"):
            ob.add(1, {"ts": object()})
        with pytest.raises(ValueError, match="JSON"):
            ob.add(1, {"x": float("nan")})
        with pytest.raises(ValueError, match="stream without a source"):
            ob.add(1, KEY, stream="bus:hall:5")
        assert ob.depth() == 0 and ob.stats()["last_seq"] == 0
        assert ob.add(1, KEY).seq == 1
    with pytest.raises(ValueError, match="max_events"):
        Outbox(path, "gw1", max_events=0)
    with pytest.raises(ValueError, match="gateway"):
        Outbox(path, "")


def test_the_file_belongs_to_one_gateway(path):
    Outbox(path, "gw1").close()
    with pytest.raises(OutboxError, match="belongs to gateway 'gw1', not 'gw2'"):
        Outbox(path, "gw2")
    Outbox(path, "gw1").close()  # and the failed open left no lock behind


def test_one_process_at_a_time(path):
    with Outbox(path, "gw1"):
        with pytest.raises(InUseError, match="open in another process"):
            Outbox(path, "gw1")
        code = (
            "import sys\nfrom hallgate.gateway.outbox import Outbox, InUseError\n"
            "try:\n    Outbox(sys.argv[1], 'gw1')\nexcept InUseError:\n    sys.exit(3)\n"
        )
        assert subprocess.run([sys.executable, "-c", code, path], timeout=30).returncode == 3
    Outbox(path, "gw1").close()


def test_closed_outbox_says_so(path):
    ob = Outbox(path, "gw1")
    ob.close()
    ob.close()
    with pytest.raises(OutboxError, match="closed"):
        ob.add(1, KEY)


def test_read_stats_while_the_writer_has_it_open(path):
    with Outbox(path, "gw1") as ob:
        ob.add(1, KEY)
        ob.add(2, KEY)
        ob.delete(1)
        stats = read_stats(path)
        assert stats == {k: v for k, v in ob.stats().items() if k != "disk_errors"}
        assert stats["depth"] == 1 and stats["delivered"] == 1


def test_threads_share_one_outbox(path):
    with Outbox(path, "gw1") as ob:
        seqs = []

        def producer(n):
            for i in range(50):
                seqs.append(ob.add(n, dict(KEY, i=i)).seq)

        threads = [threading.Thread(target=producer, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(seqs) == list(range(1, 201))
        assert [e.seq for e in ob.pending(limit=1000)] == list(range(1, 201))


# ---- dedupe by source -----------------------------------------------------------------


def test_the_same_source_is_stored_once(path):
    with Outbox(path, "gw1") as ob:
        first = ob.add(5, KEY, source="bus:hall:5:b3:s17", stream="bus:hall:5")
        again = ob.add(5, KEY, source="bus:hall:5:b3:s17", stream="bus:hall:5")
        assert again.duplicate and not first.duplicate
        assert (again.seq, again.id, again.payload) == (first.seq, first.id, first.payload)
        assert ob.depth() == 1 and ob.stats()["dedup_hits"] == 1
    with Outbox(path, "gw1") as ob:  # the gateway restarted: the device sends it again
        again = ob.add(5, KEY, source="bus:hall:5:b3:s17", stream="bus:hall:5")
        assert again.duplicate and again.id == first.id
        ob.delete(first.seq)
        # Delivered meanwhile: still recognised, nothing new to send.
        late = ob.add(5, KEY, source="bus:hall:5:b3:s17", stream="bus:hall:5")
        assert late.duplicate and late.id == first.id and late.payload is None
        stats = ob.stats()
        assert stats["dedup_hits"] == 3 and stats["added"] == 1 and balanced(stats) == 0


def test_a_stream_keeps_only_its_last_source(path):
    """A device resends only its last unacked event, and its keys come back legitimately
    (the boot byte wraps), so only the newest key per stream is kept."""
    with Outbox(path, "gw1") as ob:
        s5, s6 = "bus:hall:5", "bus:hall:6"
        a = ob.add(5, KEY, source=f"{s5}:b3:s17", stream=s5)
        ob.add(6, KEY, source=f"{s6}:b3:s17", stream=s6)  # another device: its own stream
        assert ob.add(5, KEY, source=f"{s5}:b3:s17", stream=s5).seq == a.seq
        ob.add(5, KEY, source=f"{s5}:b3:s18", stream=s5)
        # 256 reboots later the device's key b3:s17 is a new event again.
        b = ob.add(5, KEY, source=f"{s5}:b3:s17", stream=s5)
        assert not b.duplicate and b.seq > a.seq
        assert ob.add(6, KEY, source=f"{s6}:b3:s17", stream=s6).duplicate
        assert ob.depth() == 4


def test_sources_without_a_stream_are_bounded_by_count_not_age(path, monkeypatch):
    def kept(ob):
        return [r[0] for r in ob._db.execute("SELECT source FROM sources ORDER BY seq")]

    monkeypatch.setattr(Outbox, "MAX_SOURCES", 5)
    with Outbox(path, "gw1") as ob:
        for n in range(8):
            ob.add(1, KEY, source=f"gpio:{n}")
        assert kept(ob) == [f"gpio:{n}" for n in range(3, 8)]  # the newest 5
        assert ob.add(1, KEY, source="gpio:3").duplicate
        assert not ob.add(1, KEY, source="gpio:0").duplicate  # forgotten: new again
        # Age plays no part: a source from long ago is still recognised.
        ob._db.execute("UPDATE sources SET created = 0")
        assert ob.add(1, KEY, source="gpio:7").duplicate
    monkeypatch.setattr(Outbox, "MAX_SOURCES", 3)
    with Outbox(path, "gw1") as ob:  # a lower bound applies at the next add
        ob.add(1, KEY, source="gpio:new")
        assert kept(ob) == ["gpio:7", "gpio:0", "gpio:new"]


# ---- the cap --------------------------------------------------------------------------


def test_past_the_cap_the_oldest_go_counted_and_reported_once(path):
    with Outbox(path, "gw1", max_events=5) as ob:
        for n in range(9):
            ob.add(1 + n % 2, dict(KEY, n=n))
        assert [e.seq for e in ob.pending()] == [5, 6, 7, 8, 9]
        stats = ob.stats()
        assert stats["dropped_overflow"] == 4 and balanced(stats) == 0
        reports = ob.take_drop_reports()
        assert reports == [
            DropReport(window=1, count=2, first_seq=1, last_seq=3, dropped_total=4),
            DropReport(window=2, count=2, first_seq=2, last_seq=4, dropped_total=4),
        ]
        assert reports[0].asdict()["count"] == 2
        assert ob.take_drop_reports() == []
        ob.add(2, KEY)  # seq 10 pushes out seq 5 (window 1)
    with Outbox(path, "gw1", max_events=5) as ob:
        assert ob.stats()["dropped_overflow"] == 5  # the count survives a restart
        # ... and so does the report not yet taken
        assert ob.take_drop_reports() == [DropReport(1, 1, 5, 5, dropped_total=5)]
        assert ob.check() == []


def test_steady_overflow_does_not_flood_the_log(path, caplog):
    with Outbox(path, "gw1", max_events=2) as ob:
        with caplog.at_level("WARNING", logger="hallgate.gateway.outbox"):
            for _ in range(50):
                ob.add(1, KEY)
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 1 and "over the cap of 2 events" in lines[0]
        assert ob.take_drop_reports() == [DropReport(1, 48, 1, 48, dropped_total=48)]


def test_a_lower_cap_after_restart_trims_at_the_next_add(path):
    with Outbox(path, "gw1", max_events=10) as ob:
        for _ in range(10):
            ob.add(1, KEY)
    with Outbox(path, "gw1", max_events=3) as ob:
        assert ob.depth() == 10  # nothing goes before it must
        new = ob.add(1, KEY)
        assert [e.seq for e in ob.pending()] == [9, 10, new.seq]
        assert ob.take_drop_reports() == [DropReport(1, 8, 1, 8, dropped_total=8)]


def test_an_event_dropped_in_flight_stays_counted_as_dropped(path):
    with Outbox(path, "gw1", max_events=2) as ob:
        in_flight = ob.add(1, KEY)
        ob.add(1, KEY)
        ob.add(1, KEY)  # drops in_flight
        assert ob.delete(in_flight.seq) == 0  # its PUBACK comes late
        stats = ob.stats()
        assert (stats["delivered"], stats["dropped_overflow"]) == (0, 1)
        assert balanced(stats) == 0


# ---- a full disk ----------------------------------------------------------------------


def fill_up(ob):
    """Lets the file grow by a page at most, as a nearly full disk would (SQLITE_FULL)."""
    pages = ob._db.execute("PRAGMA page_count").fetchone()[0]
    ob._db.execute(f"PRAGMA max_page_count={pages + 1}")


def test_a_full_disk_is_a_clear_error_and_the_outbox_works_again_afterwards(path):
    with Outbox(path, "gw1") as ob:
        kept = [ob.add(1, dict(KEY, n=n)) for n in range(5)]
        ob.delete(kept[0].seq)
        before = ob.stats()
        fill_up(ob)
        big = dict(KEY, note="x" * 3000)  # more than a page: each add needs a new one
        with pytest.raises(DiskFullError, match=r"add failed \(disk full\)"):
            for _ in range(10):
                ob.add(2, big)
        added_before_full = ob.stats()["added"] - before["added"]
        # Nothing half-written: no row, no seq used, counters consistent.
        assert ob.depth() == len(kept) - 1 + added_before_full
        assert ob.stats()["last_seq"] == before["last_seq"] + added_before_full
        assert ob.stats()["disk_errors"] == 1
        with pytest.raises(DiskFullError):
            ob.add(2, big)  # still full: still an error, not a crash
        assert ob.check() == []

        ob._db.execute("PRAGMA max_page_count=1073741823")  # space is back
        after = ob.add(2, big)
        assert after.seq == ob.stats()["last_seq"]
        assert [e.seq for e in ob.pending(limit=100)][: len(kept) - 1] == [e.seq for e in kept[1:]]
        assert ob.pending(limit=100)[0] == kept[1]
        assert balanced(ob.stats()) == 0 and ob.check() == []
    with Outbox(path, "gw1") as ob:  # and all of it is in the file
        assert ob.pending(limit=100)[-1] == after
        assert ob.check() == []


class FailingDisk:
    """Stands in for the connection and fails the `fail_at`-th statement matching `sql`,
    as a disk I/O error would (max_page_count cannot make a delete fail: it frees pages)."""

    def __init__(self, db, sql, fail_at):
        self.db, self.sql, self.left = db, sql, fail_at

    def execute(self, sql, *args):
        if sql.startswith(self.sql):
            self.left -= 1
            if self.left == 0:
                exc = sqlite3.OperationalError("disk I/O error")
                exc.sqlite_errorcode = 10
                raise exc
        return self.db.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self.db, name)


def test_an_io_error_in_a_delete_undoes_the_whole_delete(path):
    with Outbox(path, "gw1") as ob:
        entries = [ob.add(1, KEY) for _ in range(5)]
        real = ob._db
        ob._db = FailingDisk(real, "DELETE FROM events", fail_at=3)
        with pytest.raises(DiskIOError, match=r"deleting delivered events failed \(disk I/O"):
            ob.delete(*(e.seq for e in entries))  # the first two deletes ran, then the error
        ob._db = real
        assert ob.pending() == entries  # all or nothing
        assert ob.stats()["delivered"] == 0 and balanced(ob.stats()) == 0
        assert ob.delete(*(e.seq for e in entries)) == 5
        assert ob.depth() == 0 and ob.check() == []


@pytest.mark.parametrize(
    "code, message, cls",
    [
        (13, "database or disk is full", DiskFullError),
        (10 | (4 << 8), "disk I/O error", DiskIOError),  # SQLITE_IOERR_SHORT_READ
        (8, "attempt to write a readonly database", ReadOnlyError),
        (11, "database disk image is malformed", CorruptError),
        (26, "file is not a database", CorruptError),
        (5, "database is locked", BusyError),
        (None, "database or disk is full", DiskFullError),  # no code: the message decides
        (1, "something else", OutboxError),
    ],
)
def test_sqlite_errors_are_named(code, message, cls):
    exc = sqlite3.OperationalError(message)
    if code is not None:
        exc.sqlite_errorcode = code
    err = outbox_module._error(exc, "add")
    assert type(err) is cls and isinstance(err, OutboxError)
    assert f"add failed ({cls.cause})" in str(err) and message in str(err)


def test_a_file_that_is_not_a_database_is_named_corrupt(path):
    with open(path, "wb") as f:
        f.write(b"this is not sqlite" * 100)
    with pytest.raises(CorruptError, match="opening"):
        Outbox(path, "gw1")


def test_a_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(OutboxError, match="lock file"):
        Outbox(tmp_path / "nowhere" / "outbox.db", "gw1")


# ---- SIGKILL at random moments --------------------------------------------------------

# The child prints "open", then for each event "A seq" once add() has returned (committed);
# with "mix" it also deletes the oldest event now and then: "d seq" before, "D seq" after.
CHILD = r"""
import sys
from hallgate.gateway.outbox import Outbox
path, mode = sys.argv[1], sys.argv[2]
ob = Outbox(path, "gw1")
print("open", flush=True)
n = 0
while True:
    n += 1
    e = ob.add(n % 4, {"type": "key", "key": "call", "n": n}, source="%s:%d" % (sys.argv[3], n))
    print("A", e.seq, flush=True)
    if mode == "mix" and ob.depth() > 5:
        for old in ob.pending(limit=n % 3 + 1):
            print("d", old.seq, flush=True)
            ob.delete(old.seq)
            print("D", old.seq, flush=True)
"""


def run_and_kill(path, mode, tag, rng, wait_open):
    """Starts the child, SIGKILLs it at a random moment, returns the complete lines it
    printed (a line cut by the kill is not a report)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, path, mode, tag],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    opened = threading.Event()

    def reader():
        for line in proc.stdout:
            if line.endswith("\n"):
                lines.append(line.split())
                if line == "open\n":
                    opened.set()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    if wait_open:
        assert opened.wait(20), f"child did not open: {proc.stderr.read() if proc.poll() else ''}"
    time.sleep(rng.uniform(0.0, 0.25))
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    t.join(10)
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, f"child ended by itself: {err}"
    return lines


@pytest.mark.parametrize("mode", ["add", "mix"])
def test_sigkill_at_random_moments_loses_nothing_committed(tmp_path, mode):
    path = str(tmp_path / "outbox.db")
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    committed, deleted = set(), set()
    reported = 0
    for round_ in range(7):
        # Most rounds kill while events stream; some at any moment, opening included.
        lines = run_and_kill(path, mode, f"r{round_}", rng, wait_open=round_ % 3 != 2)
        adds = {int(w[1]) for w in lines if w[0] == "A"}
        deletes = {int(w[1]) for w in lines if w[0] == "D"}
        # A delete cut by the kill may or may not have committed: the reopen tells.
        in_flight = {int(w[1]) for w in lines if w[0] == "d"} - deletes
        assert len(in_flight) <= 1
        committed |= adds
        deleted |= deletes
        reported += len(adds)

        with Outbox(path, "gw1") as ob:
            where = f"seed {seed}, round {round_}"
            assert ob.check() == [], where
            present = {e.seq for e in ob.pending(limit=1_000_000)}
            deleted |= in_flight - present
            must = committed - deleted
            assert must <= present, f"{where}: lost {sorted(must - present)[:10]}"
            assert not (deleted & present), f"{where}: deleted came back"
            stats = ob.stats()
            assert balanced(stats) == 0, where
            top = max(committed | present, default=0)
            assert stats["last_seq"] >= top
            new = ob.add(0, KEY)
            assert new.seq > top, where
            assert new.id == f"gw1-{ob.epoch}-{new.seq}"
            committed.add(new.seq)
            # The ids of what is left are the ones the child got.
            for e in ob.pending(limit=5):
                assert json.loads(e.payload)["id"] == e.id == f"gw1-{ob.epoch}-{e.seq}"
    assert reported > 50, f"the child hardly ran (seed {seed}): the test proved little"


# ---- random interleavings (Hypothesis) ------------------------------------------------


class OutboxMachine(RuleBasedStateMachine):
    """A model of the outbox (dicts and lists) against the real one, through reopens."""

    def __init__(self):
        super().__init__()
        # Logic, not durability, is under test here: RAM-backed when there is /dev/shm, so
        # fsync costs nothing and the run time does not depend on the disk's load.
        ram = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self.dir = tempfile.mkdtemp(prefix="outbox-", dir=ram)
        self.path = os.path.join(self.dir, "outbox.db")
        self.max_events = 3
        self.ob = Outbox(self.path, "gw1", max_events=self.max_events)
        self.pending = {}  # seq -> window
        self.last_seq = 0
        self.added = self.delivered = self.dropped = self.dedup_hits = 0
        self.streams = {}  # stream -> its kept sources, newest last
        self.source_seq = {}  # kept source -> seq
        self.unreported = {}  # window -> [count, first, last]

    def teardown(self):
        self.ob.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(
        window=st.integers(0, 2),
        source=st.none() | st.sampled_from(["k1", "k2", "k3"]),
        stream=st.none() | st.sampled_from(["s1", "s2"]),
    )
    def add(self, window, source, stream):
        if source is None:
            stream = None
        entry = self.ob.add(window, {"type": "key", "key": "call"}, source, stream)
        if source in self.source_seq:
            assert entry.duplicate and entry.seq == self.source_seq[source]
            self.dedup_hits += 1
            return
        assert not entry.duplicate
        self.last_seq += 1
        assert entry.seq == self.last_seq
        self.added += 1
        self.pending[entry.seq] = window
        if source is not None:
            kept = self.streams.setdefault(source if stream is None else stream, [])
            kept.append(source)
            self.source_seq[source] = entry.seq
            while len(kept) > Outbox.SOURCES_PER_STREAM:
                del self.source_seq[kept.pop(0)]
        while len(self.pending) > self.max_events:
            seq = min(self.pending)
            w = self.pending.pop(seq)
            self.dropped += 1
            report = self.unreported.setdefault(w, [0, seq, seq])
            report[0] += 1
            report[2] = seq

    @precondition(lambda self: self.pending)
    @rule(data=st.data())
    def deliver(self, data):
        seqs = data.draw(st.lists(st.sampled_from(sorted(self.pending)), min_size=1, max_size=3))
        assert self.ob.delete(*seqs) == len(set(seqs))
        for seq in set(seqs):
            del self.pending[seq]
            self.delivered += 1

    @rule(seq=st.integers(0, 40))
    def late_or_repeated_ack(self, seq):
        if seq not in self.pending:
            assert self.ob.delete(seq) == 0

    @rule(max_events=st.integers(2, 5))
    def reopen(self, max_events):
        self.ob.close()
        self.max_events = max_events
        self.ob = Outbox(self.path, "gw1", max_events=max_events)

    @rule()
    def take_reports(self):
        got = {r.window: [r.count, r.first_seq, r.last_seq] for r in self.ob.take_drop_reports()}
        assert got == self.unreported
        self.unreported = {}

    @invariant()
    def pending_is_added_minus_delivered_minus_dropped(self):
        assert [(e.seq, e.window) for e in self.ob.pending(limit=100)] == sorted(
            self.pending.items()
        )

    @invariant()
    def counters_balance(self):
        stats = self.ob.stats()
        assert balanced(stats) == 0
        assert (stats["added"], stats["delivered"], stats["dropped_overflow"]) == (
            self.added,
            self.delivered,
            self.dropped,
        )
        assert stats["dedup_hits"] == self.dedup_hits
        assert stats["last_seq"] == self.last_seq


OutboxMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
test_random_interleavings = OutboxMachine.TestCase
