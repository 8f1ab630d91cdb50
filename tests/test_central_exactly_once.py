"""Exactly once in effect, at the central: events applied in any order, again and again,
with group commits that succeed or fail (a full disk) and restarts (a crash loses what was
applied and not committed). Checked against a model, over random sequences (hypothesis):

- an event is a duplicate exactly when it was applied before and not lost since (lost: by
  a failed commit or a crash before its commit);
- the journal in the database holds every committed event once, and nothing else.

This is the central's half of the receipt guarantee: a receipt is sent for what `commit`
stored, and whatever a gateway sends again is applied only if the store does not have it.
"""

import sqlite3

from hallgate.central.clock import FakeClock
from hallgate.central.queue import QueueConfig
from hallgate.central.service import Central
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

CONFIG = {"services": {"A": "Passports"}, "windows": [{"n": 1, "services": ["A"]},
                                                      {"n": 2, "services": ["A"]}],
          "tz": "UTC"}
EVENTS = 8

ops = st.lists(st.one_of(
    st.tuples(st.just("apply"), st.integers(0, EVENTS - 1)),
    st.tuples(st.just("commit"), st.booleans()),  # True: the disk is full this time
    st.tuples(st.just("restart"), st.just(None)),
), max_size=40)


def event(i):
    """A vote with voting closed: applied whatever the queue's state (and journaled)."""
    return {"id": f"gw-1-e-{i}", "gateway": "gw-1", "window": 1 + i % 2, "type": "vote",
            "vote": "like", "ticket": None, "misuse": True, "misuse_reason": "voting closed"}


class DiskFull(sqlite3.OperationalError):
    pass


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops)
def test_every_event_is_applied_once_whatever_fails_and_restarts(tmp_path_factory, steps):
    db = tmp_path_factory.mktemp("central") / "central.db"
    config, clock = QueueConfig.from_dict(CONFIG), FakeClock()
    central = Central(config, db, clock)
    committed, pending = set(), set()  # the model
    try:
        for op, arg in steps:
            clock.advance(1)
            if op == "apply":
                out = central.apply_event(event(arg))
                assert out.duplicate == (arg in committed | pending), (arg, out)
                pending.add(arg)
            elif op == "commit" and arg:
                real = central.store.save

                def full(*a, **kw):
                    raise DiskFull("database or disk is full")

                central.store.save = full
                try:
                    central.commit()
                    raise AssertionError("the failed commit did not raise")
                except DiskFull:
                    pass
                finally:
                    central.store.save = real
                pending.clear()  # forgotten: their gateways send them again
            elif op == "commit":
                central.commit()
                committed |= pending
                pending.clear()
            else:  # a crash: what was applied and not committed is gone
                central.close()
                central = Central(config, db, clock)
                pending.clear()
        central.commit()
        committed |= pending
    finally:
        central.close()
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT id, COUNT(*) FROM journal GROUP BY id").fetchall()
    assert dict(rows) == {event(i)["id"]: 1 for i in committed}
