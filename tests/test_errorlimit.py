"""gateway/errorlimit.py: bursts pass, floods are counted and summarised, nothing is lost."""

import pytest
from hallgate.gateway.errorlimit import MAX_REASON, OTHER_KINDS, ErrorLimiter
from hypothesis import given, settings
from hypothesis import strategies as st


def test_a_burst_of_3000_is_20_reports_and_one_summary():
    limiter = ErrorLimiter(burst=20, per_second=5, summary_every_s=5)
    published = [limiter.offer("bad-command", f"bad {i}", now=0.0) for i in range(3000)]
    assert sum(published) == 20 and published[:20] == [True] * 20
    assert limiter.suppressed_total == limiter.pending == 2980
    assert limiter.take_summaries(now=4.9) == []
    assert limiter.take_summaries(now=5.0) == [
        {
            "kind": "bad-command",
            "reason": "2980 more like this in the last 5 s (suppressed: rate limit)",
            "suppressed": 2980,
            "first_reason": "bad 20",
            "last_reason": "bad 2999",
        }
    ]
    assert limiter.pending == 0 and limiter.take_summaries(now=100.0) == []


def test_the_bucket_refills_at_the_rate_and_never_past_the_burst():
    limiter = ErrorLimiter(burst=3, per_second=2, summary_every_s=5)
    assert [limiter.offer("k", "r", 0.0) for _ in range(4)] == [True, True, True, False]
    assert limiter.offer("k", "r", 0.25) is False  # half a token
    assert limiter.offer("k", "r", 0.5) is True  # one token after 0.5 s at 2/s
    assert limiter.offer("k", "r", 0.5) is False
    assert [limiter.offer("k", "r", 1000.0) for _ in range(4)] == [True, True, True, False]


def test_a_steady_flood_gives_one_summary_per_interval():
    limiter = ErrorLimiter(burst=1, per_second=1, summary_every_s=5)
    summaries = []
    for i in range(320):  # 8 a second for 40 s (exact binary times); 1 a second passes
        now = i / 8
        limiter.offer("device-nak", f"nak {i}", now)
        summaries += limiter.take_summaries(now)
    # from the first suppressed (0.125 s) to 5 s later: 41 offers, 5 of them published
    assert [s["suppressed"] for s in summaries] == [36] * 7
    assert limiter.published_total == 40 and limiter.pending == 28
    summaries += limiter.take_summaries(now, force=True)
    assert sum(s["suppressed"] for s in summaries) == limiter.suppressed_total == 280


def test_kinds_are_limited_apart():
    limiter = ErrorLimiter(burst=1, per_second=1, summary_every_s=5)
    assert limiter.offer("bad-command", "a", 0.0) and limiter.offer("device-nak", "b", 0.0)
    assert not limiter.offer("bad-command", "c", 0.0)
    assert [s["kind"] for s in limiter.take_summaries(9.0)] == ["bad-command"]


def test_force_hands_back_what_is_not_due_yet():
    limiter = ErrorLimiter(burst=1, per_second=1, summary_every_s=5)
    limiter.offer("k", "a", 0.0)
    limiter.offer("k", "b", 1.0)
    limiter.offer("k", "c", 1.0)  # suppressed
    assert limiter.take_summaries(2.25) == []
    [summary] = limiter.take_summaries(2.25, force=True)
    assert summary["reason"] == "1 more like this in the last 1.2 s (suppressed: rate limit)"


def test_memory_is_bounded_and_extra_kinds_are_still_counted():
    limiter = ErrorLimiter(burst=1, per_second=0.001, summary_every_s=5, max_kinds=4)
    for i in range(1000):
        limiter.offer(f"kind-{i}", "x" * 1000, 0.0)
        limiter.offer(f"kind-{i}", "x" * 1000, 0.0)
    assert len(limiter._kinds) <= 4 + 1
    summaries = limiter.take_summaries(5.0)
    assert sum(s["suppressed"] for s in summaries) == limiter.suppressed_total
    assert limiter.published_total + limiter.suppressed_total == 2000
    other = next(s for s in summaries if s["kind"] == OTHER_KINDS)
    assert other["last_reason"].startswith("kind-999: xxx")
    assert all(len(s["first_reason"]) <= MAX_REASON for s in summaries)


def test_an_idle_kind_makes_room_for_a_new_one():
    limiter = ErrorLimiter(burst=2, per_second=1, summary_every_s=5, max_kinds=2)
    limiter.offer("a", "r", 0.0)
    limiter.offer("b", "r", 0.0)
    assert limiter.offer("c", "r", 10.0)  # a and b are idle again by then
    assert OTHER_KINDS not in limiter._kinds and "c" in limiter._kinds


def test_a_clock_that_goes_back_refills_nothing():
    limiter = ErrorLimiter(burst=1, per_second=1, summary_every_s=5)
    assert limiter.offer("k", "r", 100.0)
    assert not limiter.offer("k", "r", 50.0)
    assert not limiter.offer("k", "r", 100.5)
    assert limiter.take_summaries(40.0, force=True)[0]["suppressed"] == 2


@pytest.mark.parametrize(
    "args", [dict(burst=0), dict(per_second=0), dict(summary_every_s=-1), dict(max_kinds=0)]
)
def test_nonsense_settings_are_refused(args):
    with pytest.raises(ValueError):
        ErrorLimiter(**args)


offers = st.lists(
    st.tuples(
        st.sampled_from(["bad-command", "device-nak", "outbox-error", "k1", "k2", "k3"]),
        st.floats(0, 3, allow_nan=False),  # time since the previous offer
        st.booleans(),  # take summaries after it
    ),
    max_size=300,
)


@settings(max_examples=300, deadline=None)
@given(
    offers,
    st.integers(1, 5),
    st.floats(0.5, 10),
    st.floats(0.5, 10),
    st.integers(1, 4),
)
def test_every_report_is_published_or_in_exactly_one_summary(
    steps, burst, per_second, every, max_kinds
):
    limiter = ErrorLimiter(burst, per_second, every, max_kinds)
    now, published, suppressed, summarised = 0.0, 0, [], 0
    for i, (kind, dt, take) in enumerate(steps):
        now += dt
        if limiter.offer(kind, f"report {i}", now):
            published += 1
        else:
            suppressed.append(i)
        if take:
            summarised += sum(s["suppressed"] for s in limiter.take_summaries(now))
        assert len(limiter._kinds) <= max_kinds + 1
    assert published + len(suppressed) == len(steps) == limiter.offered_total
    assert (limiter.published_total, limiter.suppressed_total) == (published, len(suppressed))
    assert summarised + limiter.pending == len(suppressed)
    final = limiter.take_summaries(now, force=True)
    assert summarised + sum(s["suppressed"] for s in final) == len(suppressed)
    assert limiter.pending == 0 and limiter.take_summaries(now + 1000, force=True) == []
    for s in final:
        assert s["reason"].startswith(f"{s['suppressed']} more like this in the last ")
