"""The daemon's update history file (gateway/updates.py History): appended per result, read
back by device, a torn last line skipped, trimmed to what it keeps, a full disk survived."""

import logging

from hallgate.gateway.updates import History


def rec(n, address=5, outcome="updated"):
    return {"ended": f"2026-12-05T10:00:{n:02d}.000Z", "bus": "hall", "address": address,
            "outcome": outcome, "n": n}


def test_results_come_back_oldest_first_by_device_and_limited(tmp_path):
    h = History(tmp_path / "ota-history.jsonl")
    assert h.read() == []
    for n in range(6):
        h.add(rec(n, address=5 + n % 2))
    assert [r["n"] for r in h.read()] == [0, 1, 2, 3, 4, 5]
    assert [r["n"] for r in h.read(address=6)] == [1, 3, 5]
    assert [r["n"] for r in h.read(limit=2)] == [4, 5]
    assert h.read(bus="other") == []
    assert [r["n"] for r in History(h.path).read()] == [0, 1, 2, 3, 4, 5]  # a new daemon run


def test_a_line_torn_by_a_power_cut_is_skipped_with_a_warning(tmp_path, caplog):
    h = History(tmp_path / "ota-history.jsonl")
    h.add(rec(1))
    with open(h.path, "a") as f:
        f.write('{"ended": "2026-12-05T10:0')  # the write a power cut stopped
    h.add(rec(2))
    with caplog.at_level(logging.WARNING):
        assert [r["n"] for r in h.read()] == [1, 2]
    assert "line 2 is not JSON" in caplog.text


def test_the_file_is_trimmed_to_what_it_keeps(tmp_path):
    h = History(tmp_path / "ota-history.jsonl", keep=3)
    for n in range(7):
        h.add(rec(n))
    assert [r["n"] for r in h.read()] == [4, 5, 6]  # trimmed at 7 > 2 * 3
    assert len(h.path.read_text().splitlines()) == 3


def test_a_history_that_cannot_be_written_is_logged_not_raised(tmp_path, caplog):
    h = History(tmp_path / "missing-dir" / "ota-history.jsonl")
    with caplog.at_level(logging.ERROR):
        h.add(rec(1))
    assert "this result is in the log only" in caplog.text
    assert h.read() == []
