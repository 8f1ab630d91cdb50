"""Statistics on a small day computed by hand."""

import json

from hallgate.central.stats import day_stats, live_stats, p95
from test_central_queue import Hall  # noqa: E402


def test_p95_nearest_rank():
    assert p95([]) is None
    assert p95([5.0]) == 5.0
    assert p95([float(i) for i in range(1, 101)]) == 95.0


def test_small_day_by_hand():
    h = Hall()
    t0 = h.clock.now()
    a1 = h.issue("A")               # t0
    a2 = h.issue("A")               # t0
    h.clock.set(t0 + 60)
    b1 = h.issue("B")               # t0+60
    h.clock.set(t0 + 120)           # a1 called at 120 s: wait 120
    assert h.key(1, "call").ticket is a1
    h.key(1, "start")
    h.clock.set(t0 + 600)
    h.key(1, "finish")
    h.vote(1, "like", a1.number)
    h.vote(1, "dislike", a1.number, misuse=True, reason="second press for the same ticket")
    h.clock.set(t0 + 1000)          # a2 called at 1000 s: wait 1000 (over the norm)
    assert h.key(2, "call").ticket is a2
    h.key(2, "noshow")
    h.clock.set(t0 + 1060)          # b1 called at 1060: wait 1000 (over the norm)
    assert h.key(3, "call").ticket is b1
    h.key(3, "start")
    h.key(3, "finish")
    h.vote(3, "dislike", b1.number)
    h.issue("C")                    # still waiting
    s = day_stats(h.q.tickets.values(), h.q.state.votes, day="2026-11-23")
    json.dumps(s)
    a = s["all"]
    assert (a["issued"], a["served"], a["noshow"], a["waiting"]) == (4, 2, 1, 1)
    assert a["waits"] == 3
    assert a["wait_avg_s"] == round((120 + 1000 + 1000) / 3, 1)
    assert a["wait_p95_s"] == 1000
    assert a["over_norm"] == 2 and a["over_norm_share"] == round(2 / 3, 4)
    assert (a["likes"], a["dislikes"], a["votes"], a["misuse"]) == (1, 1, 2, 1)
    assert a["satisfaction"] == 0.5
    w1, w3 = s["by_window"]["1"], s["by_window"]["3"]
    assert (w1["served"], w1["satisfaction"], w1["misuse"], w1["wait_avg_s"]) == (1, 1.0, 1, 120)
    assert (w3["served"], w3["satisfaction"]) == (1, 0.0)
    assert s["by_window"]["2"]["noshow"] == 1
    sa = s["by_service"]["A"]
    assert (sa["issued"], sa["served"], sa["noshow"], sa["wait_avg_s"]) == (2, 1, 1, 560)
    assert s["by_service"]["B"]["satisfaction"] == 0.0
    assert s["by_operator"]["ivanova"]["likes"] == 1
    assert s["by_operator"]["petrov"]["noshow"] == 1
    assert "None" not in s["by_operator"]  # window 3 has nobody logged in
    live = live_stats(h.q, now=t0 + 1200)
    assert live["all"] == a
    assert live["now"]["waiting"] == 1 and live["now"]["longest_wait_s"] == 140
    assert live["now"]["windows"]["3"]["vote_open"] is False
    json.dumps(live)
    other = day_stats(h.q.tickets.values(), h.q.state.votes, day="2026-11-24")
    assert other["all"]["issued"] == 0 and other["all"]["wait_avg_s"] is None
