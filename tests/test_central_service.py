"""The central core: queue, store and clock together, restarted mid-day."""



from hallgate.central.clock import FakeClock
from hallgate.central.queue import QueueConfig, QueueError
from hallgate.central.service import Central
from test_central_queue import CONFIG  # noqa: E402


def ev(i, window, key):
    return {"id": f"gw-1.{i}", "window": window, "type": "key", "key": key, "action": "press"}


def test_restart_mid_day_loses_nothing(tmp_path):
    cfg, clock, db = QueueConfig.from_dict(CONFIG), FakeClock(), tmp_path / "c.db"
    c = Central(cfg, db, clock)
    assert {(d.window, d.kind) for d in c.all_desired()} == {
        (n, k) for n in (1, 2, 3) for k in ("display", "panel", "vote", "session")}
    t, desired = c.issue("A", request_id="kiosk-1")
    assert t.number == "A001" and any(d.kind == "panel" for d in desired)
    clock.advance(1000)
    out, desired = c.handle_event(ev(1, 1, "call"))
    assert out.ok and desired
    c.handle_event(ev(2, 1, "start"))
    c.handle_event(ev(3, 1, "finish"))
    versions = {(d.window, d.kind): d.payload["version"] for d in c.all_desired()}
    c.close()

    clock.advance(10)
    c = Central(cfg, db, clock)
    assert {(d.window, d.kind): d.payload["version"] for d in c.all_desired()} == versions
    assert c.handle_event(ev(3, 1, "finish"))[0].duplicate
    out, _ = c.handle_event({"id": "gw-1.4", "window": 1, "type": "vote", "vote": "like",
                             "ticket": "A001", "misuse": False})
    assert out.vote.counted
    clock.advance(100)
    c.tick()
    stats = c.stats()
    assert stats["all"]["served"] == 1 and stats["all"]["likes"] == 1
    assert stats["all"]["over_norm"] == 1
    assert c.day_report("2026-11-23")["all"] == stats["all"]
    c.close()


def test_a_request_resent_days_later_gets_a_clear_refusal_not_a_crash(tmp_path):
    cfg, clock, db = QueueConfig.from_dict(CONFIG), FakeClock(), tmp_path / "c.db"
    c = Central(cfg, db, clock)
    t, _ = c.issue("A", request_id="kiosk-1")
    for i, key in enumerate(("call", "start", "finish")):
        assert c.handle_event(ev(10 + i, 1, key))[0].ok
    assert c.handle_event({"id": "gw-1.13", "window": 1, "type": "vote", "vote": "like",
                           "ticket": "A001", "misuse": False})[0].vote.counted  # closes voting
    c.close()
    clock.advance(3 * 86400)  # the old day's tickets are no longer loaded at start
    c = Central(cfg, db, clock)
    try:
        c.issue("A", request_id="kiosk-1")
    except QueueError as e:
        assert "kiosk-1" in str(e) and t.tid in str(e) and "new id" in str(e)
    else:
        raise AssertionError("a stale request id must be refused")
    assert c.issue("A", request_id="kiosk-2")[0].number == "A001"  # a new day, a new count
    c.close()


def test_a_failed_commit_forgets_what_it_did_not_store(tmp_path, monkeypatch):
    """Disk full at the commit: the events are not acked or receipted, and their gateways
    send them again; they must then be applied, not taken for duplicates."""
    import sqlite3

    import pytest

    cfg, clock = QueueConfig.from_dict(CONFIG), FakeClock()
    c = Central(cfg, tmp_path / "c.db", clock)
    c.issue("A", request_id="kiosk-1")
    real_save = c.store.save

    def full(*args, **kw):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(c.store, "save", full)
    assert c.apply_event(ev(1, 1, "call")).ok
    with pytest.raises(sqlite3.OperationalError):
        c.commit()
    monkeypatch.setattr(c.store, "save", real_save)
    again = c.apply_event(ev(1, 1, "call"))  # the resend
    assert again.ok and not again.duplicate, again
    c.commit()
    c.close()
    c = Central(cfg, tmp_path / "c.db", clock)  # and it is in the store
    assert c.apply_event(ev(1, 1, "call")).duplicate
    assert c.queue.state.windows[1].ticket is not None
