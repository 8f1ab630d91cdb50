"""Statistics on a small day computed by hand."""

import json

from hallgate.central.stats import day_stats, live_stats, p95
from hypothesis import given, settings
from hypothesis import strategies as st
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


COLUMNS = ("issued", "served", "noshow", "closed", "open", "redirected_out", "redirected_in")


def check_balances(s):
    """The sums of MQTT.md's central/stats: what every day's figures must satisfy."""
    a = s["all"]
    for col in COLUMNS:
        assert sum(g[col] for g in s["by_service"].values()) == a[col], col
    for col in ("served", "noshow", "redirected_out"):
        assert sum(g[col] for g in s["by_window"].values()) == a[col], col
    assert sum(g["issued"] for g in s["by_hour"].values()) == a["issued"]
    assert a["redirected_out"] == a["redirected_in"]
    assert a["open"] == a["waiting"] + a["called"] + a["serving"]
    for name, g in s["by_service"].items():
        assert (g["issued"] + g["redirected_in"]
                == g["served"] + g["noshow"] + g["closed"] + g["redirected_out"] + g["open"]
                ), name
    assert sum(g["waits"] for g in s["by_window"].values()) == a["waits"]
    assert sum(g["waits"] for g in s["by_service"].values()) == a["waits"]


def test_a_day_with_redirects_adds_up_per_service_window_and_hour():
    h = Hall()
    t0 = h.clock.now()
    a1, a2 = h.issue("A"), h.issue("A")
    h.clock.set(t0 + 60)
    assert h.key(1, "call").ticket is a1       # wait 60 at window 1
    h.key(1, "start")
    h.clock.set(t0 + 300)
    assert h.key(1, "redirect").ok              # A -> B (window 1's redirect_to)
    h.clock.set(t0 + 400)
    assert h.key(3, "call").ticket is a1       # B at window 3: waited 60 + 100
    h.key(3, "start")
    h.clock.set(t0 + 700)
    assert h.key(3, "redirect", service="C").ok  # B -> C
    h.clock.set(t0 + 3700)                      # an hour later
    h.issue("C")
    assert h.key(3, "call").ticket is a1       # C: waited 60 + 100 + 3000
    assert a1.wait_s == 3160 and a1.tea      # past the norm across the redirects
    h.key(3, "start")
    h.clock.set(t0 + 3760)
    h.key(3, "finish")                          # served in C: service time 60
    assert h.key(2, "call").ticket is a2       # wait 3760
    h.key(2, "noshow")
    s = day_stats(h.q.tickets.values(), h.q.state.votes, day="2026-11-23", tz="UTC")
    check_balances(s)
    a, sa, sb, sc = s["all"], s["by_service"]["A"], s["by_service"]["B"], s["by_service"]["C"]
    assert (a["issued"], a["served"], a["noshow"], a["open"]) == (3, 1, 1, 1)
    assert (a["redirected_out"], a["redirected_in"]) == (2, 2)
    assert (sa["issued"], sa["redirected_out"], sa["redirected_in"], sa["noshow"]) == (2, 1, 0, 1)
    assert (sb["issued"], sb["redirected_in"], sb["redirected_out"], sb["served"]) == (0, 1, 1, 0)
    assert (sc["issued"], sc["redirected_in"], sc["served"], sc["open"]) == (1, 1, 1, 1)
    assert sc["service_time_avg_s"] == 60 and a["service_time_p95_s"] == 60
    assert s["by_window"]["1"]["redirected_out"] == 1 and s["by_window"]["3"]["redirected_out"] == 1
    assert s["by_window"]["1"]["waits"] == 1 and s["by_window"]["2"]["waits"] == 1
    assert (a["wait_p50_s"], a["wait_p95_s"]) == (3160, 3760)
    assert {k: g["issued"] for k, g in s["by_hour"].items()} == {"08": 2, "09": 1}


DAYS = st.lists(st.one_of(
    st.tuples(st.just("issue"), st.sampled_from("ABC")),
    st.tuples(st.sampled_from(["call", "start", "finish", "noshow", "redirect", "recall"]),
              st.integers(1, 3)),
    st.tuples(st.just("redirect-to"), st.tuples(st.integers(1, 3), st.sampled_from("ABC"))),
    st.tuples(st.just("wait"), st.integers(1, 2000)),
), max_size=80)


@settings(max_examples=200, deadline=None)
@given(DAYS)
def test_any_day_adds_up(day):
    """Random arrivals and key presses at random windows: the sums always hold."""
    h = Hall()
    for op, arg in day:
        if op == "issue":
            h.issue(arg)
        elif op == "wait":
            h.clock.advance(arg)
        elif op == "redirect-to":
            h.key(arg[0], "redirect", service=arg[1])
        else:
            h.key(arg, op)
    s = day_stats(h.q.tickets.values(), h.q.state.votes, tz="UTC")
    check_balances(s)
    assert s["all"]["issued"] == len(h.q.tickets)
