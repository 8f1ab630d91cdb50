"""The city's PostgreSQL store passes the SQLite store's round trips; sites stay apart in one
database; a commit on a lost connection fails (nothing half-written); Central runs on it."""

import itertools
import os
import threading

import pytest
from hallgate.central.clock import FakeClock
from hallgate.central.queue import Queue, QueueConfig
from hallgate.central.store import Store
from test_central_queue import CONFIG, Hall  # noqa: E402
from test_central_store import busy_day  # noqa: E402

_sites = itertools.count(1)


def postgres_or_skip():
    """A started throwaway PostgreSQL (sim/pgserver.py); where none can run: fails under
    CI (make installs it) and skips elsewhere, saying why."""
    from hallgate.sim.pgserver import postgres_missing, start_postgres

    why = postgres_missing()
    if why:
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    return start_postgres()


@pytest.fixture(scope="module")
def pg():
    with postgres_or_skip() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def open_store(request, tmp_path):
    """A function opening the same store again each time it is called."""
    if request.param == "sqlite":
        db = tmp_path / "central.db"
        return lambda: Store(db)
    from hallgate.central.pgstore import PgStore

    dsn = request.getfixturevalue("pg").dsn
    site = f"site{next(_sites)}"
    return lambda: PgStore(dsn, site)


def test_reopen_gives_the_same_state(open_store):
    h = Hall()
    with open_store() as store:
        store.save(h.q)
        busy_day(h, store)
        before = h.q.snapshot()
    with open_store() as store:
        q2 = Queue(QueueConfig.from_dict(CONFIG), store.load())
        assert q2.snapshot() == before
        assert q2.take_desired() == []
        since = Queue(QueueConfig.from_dict(CONFIG), store.load(since_day="2026-11-23"))
        assert since.snapshot() == before


def test_numbering_dedupe_and_versions_continue(open_store):
    h = Hall()
    with open_store() as store:
        store.save(h.q)
        busy_day(h, store)
        versions = {(d.window, d.kind): d.payload["version"] for d in h.q.all_desired()}
        last_event = f"e{h.n}"
    with open_store() as store:
        h.q = Queue(QueueConfig.from_dict(CONFIG), store.load())
        dup = h.q.handle_event({"id": last_event, "window": 2, "type": "key", "key": "resume"},
                               now=h.clock.now())
        assert dup.duplicate
        assert h.issue("A", request_id="kiosk-1").number == "A004"
        assert h.issue("A").number == "A005"
        assert h.key(2, "resume").ok
        store.save(h.q)
        for d in h.q.take_desired():
            assert d.payload["version"] > versions[(d.window, d.kind)]
        after = h.q.snapshot()
    with open_store() as store:
        assert Queue(QueueConfig.from_dict(CONFIG), store.load()).snapshot() == after


def test_day_report_journal_bad_events_and_forgetting(open_store):
    h = Hall()
    with open_store() as store:
        store.save(h.q)
        busy_day(h, store)
        tickets, votes = store.day("2026-11-23")
        assert len(tickets) == 7 and len(votes) == 2
        assert store.day("2026-11-22") == ([], [])
        assert store.day_sessions("2026-11-23") == []
        store.journal_event({"id": "j1", "gateway": "gw1", "window": 1, "type": "key"},
                            1.5, "ok")
        store.keep_bad_event("b1", "gw1", "hall/v1/x/window/1/event", "no key", b"\x00{",
                             2.0)
        store.keep_bad_event("b2", "gw1", "t", "dropped", b"x", 3.0)
        store.discard()  # a failed save's rows are forgotten
        store.keep_bad_event("b1", "gw1", "hall/v1/x/window/1/event", "no key", b"\x00{",
                             2.0)
        store.save(h.q)
        store.keep_bad_event("b1", "gw1", "t", "again", b"y", 4.0)  # the first one stays
        store.save(h.q)
        assert store.bad_events() == [{"id": "b1", "gateway": "gw1", "at": 2.0,
                                       "topic": "hall/v1/x/window/1/event",
                                       "reason": "no key", "payload": b"\x00{"}]
        assert len(store.load().seen) > 0
        store.forget_seen_before("2026-11-24")
        assert store.load().seen == {}


def test_sites_are_apart_in_one_database(pg):
    from hallgate.central.pgstore import PgStore

    a, b = Hall(), Hall()
    with PgStore(pg.dsn, "apart-a") as sa, PgStore(pg.dsn, "apart-b") as sb:
        sa.save(a.q)
        sb.save(b.q)
        busy_day(a, sa)
        assert b.issue("B").number == "B001"
        sb.save(b.q)
        qa = Queue(QueueConfig.from_dict(CONFIG), sa.load())
        qb = Queue(QueueConfig.from_dict(CONFIG), sb.load())
    assert qa.snapshot() == a.q.snapshot()
    assert qb.snapshot() == b.q.snapshot()
    assert qa.snapshot() != qb.snapshot()


def test_schema_made_by_many_at_once(pg):
    """Workers starting together: no error from concurrent CREATE TABLE IF NOT EXISTS."""
    from hallgate.central.pgstore import connect, ensure_schema

    errors = []

    def make():
        try:
            with connect(pg.dsn) as c:
                ensure_schema(c)
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=make) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []


def test_a_lost_connection_commits_nothing_and_central_runs_on_it(pg):
    from hallgate.central.pgstore import PgStore, connect
    from hallgate.central.service import Central

    conn = connect(pg.dsn)
    clock = FakeClock()
    central = Central(QueueConfig.from_dict(CONFIG), None, clock,
                      store=PgStore(conn, "lost-conn"))
    t, _ = central.issue("A")
    assert t.number == "A001"
    # The connection is cut from the server's side (as when the lock holder is fenced off).
    with connect(pg.dsn) as admin:
        pid = conn.info.backend_pid
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(Exception):  # noqa: B017 (psycopg.OperationalError)
        central.issue("A")
    conn.close()
    again = Central(QueueConfig.from_dict(CONFIG), pg.dsn, clock, site="lost-conn")
    try:
        assert [x.number for x in again.queue.state.tickets.values()] == ["A001"]
        assert again.issue("A")[0].number == "A002"
    finally:
        again.close()
