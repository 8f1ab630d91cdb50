"""The central store: a queue reopened from SQLite is the same queue, versions keep growing."""



from hallgate.central.queue import Queue, QueueConfig
from hallgate.central.store import Store
from test_central_queue import CONFIG, Hall  # noqa: E402


def busy_day(h, store):
    def step(fn, *a, **kw):
        out = fn(*a, **kw)
        store.save(h.q)
        h.clock.advance(30)
        return out

    for s in "AABBCA":
        step(h.issue, s)
    step(h.issue, "A", appointment=True, request_id="kiosk-1")
    step(h.key, 1, "call")
    step(h.key, 2, "call")
    step(h.key, 3, "call")
    step(h.key, 1, "recall")
    step(h.key, 1, "start")
    step(h.key, 1, "finish")
    step(h.vote, 1, "like", "A001")
    step(h.vote, 1, "like", "A001", misuse=True, reason="second press for the same ticket")
    step(h.key, 2, "noshow")
    step(h.key, 3, "start")
    step(h.key, 3, "redirect", service="A")
    step(h.key, 2, "pause")


def test_reopen_gives_the_same_state(tmp_path):
    db = tmp_path / "central.db"
    h = Hall()
    with Store(db) as store:
        store.save(h.q)
        busy_day(h, store)
        before = h.q.snapshot()
    with Store(db) as store:
        q2 = Queue(QueueConfig.from_dict(CONFIG), store.load())
        assert q2.snapshot() == before
        assert q2.take_desired() == []  # nothing new to publish after a restart


def test_reopened_queue_continues_numbering_dedupe_and_versions(tmp_path):
    db = tmp_path / "central.db"
    h = Hall()
    with Store(db) as store:
        store.save(h.q)
        busy_day(h, store)
        versions = {(d.window, d.kind): d.payload["version"] for d in h.q.all_desired()}
        last_event = f"e{h.n}"
    h.q = Queue(QueueConfig.from_dict(CONFIG), Store(db).load())
    with Store(db) as store:
        dup = h.q.handle_event({"id": last_event, "window": 2, "type": "key", "key": "resume"},
                               now=h.clock.now())
        assert dup.duplicate
        again = h.issue("A", request_id="kiosk-1")
        assert again.number == "A004"  # the ticket the kiosk got before the restart
        assert h.issue("A").number == "A005"
        assert h.key(2, "resume").ok
        assert h.key(2, "call").ok
        store.save(h.q)
        for d in h.q.take_desired():
            assert d.payload["version"] > versions[(d.window, d.kind)]
        after = h.q.snapshot()
    with Store(db) as store:
        assert Queue(QueueConfig.from_dict(CONFIG), store.load()).snapshot() == after


def test_day_report_reads_tickets_and_votes(tmp_path):
    h = Hall()
    with Store(tmp_path / "c.db") as store:
        store.save(h.q)
        busy_day(h, store)
        tickets, votes = store.day("2026-11-23")
        assert len(tickets) == 7 and len(votes) == 2
        assert store.day("2026-11-22") == ([], [])
