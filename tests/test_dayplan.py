"""The plan of a simulated day (sim/dayplan.py): exact, seeded, and shaped like a real hall.

The statistical checks use a fixed seed and a bound of 5 standard deviations of a binomial
count, so they would pass at almost any seed (p < 1e-6 per check) and never flake at this one.
"""

import json
import math
import re
from itertools import pairwise

import pytest
from hallgate.sim.dayplan import (
    DEFAULT_SERVICES,
    LUNCH_S,
    P_APPOINTMENT,
    P_LIKE,
    P_MULTI_PRESS,
    P_NO_SHOW,
    P_NO_VOTE,
    P_PRIORITY,
    P_REDIRECT,
    SHORT_S,
    Break,
    Mix,
    Service,
    issue_until_s,
    plan_breaks,
    plan_visitors,
    rate,
    summary,
)

HOUR = 3600.0
SEED = 20261123
BIG = 5000


@pytest.fixture(scope="module")
def big_day():
    return plan_visitors(BIG, 10, seed=SEED)


def near(k, n, p, sigmas=5.0):
    """`k` successes of `n` is within `sigmas` binomial standard deviations of `p`."""
    return abs(k - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


# ---- visitors -----------------------------------------------------------------------------


@pytest.mark.parametrize("count", [0, 1, 2, 37, 800])
@pytest.mark.parametrize("hours", [0.25, 1, 10, 12])
def test_exactly_count_visitors_numbered_in_arrival_order(count, hours):
    day = plan_visitors(count, hours, seed=SEED)
    assert len(day) == count
    assert [v.n for v in day] == list(range(count))


def test_same_seed_same_day_other_seed_other_day():
    assert plan_visitors(300, 10, seed=1) == plan_visitors(300, 10, seed=1)
    assert plan_visitors(300, 10, seed=1) != plan_visitors(300, 10, seed=2)
    times = [v.arrive_s for v in plan_visitors(300, 10, seed=2)]
    assert times != [v.arrive_s for v in plan_visitors(300, 10, seed=3)]


@pytest.mark.parametrize("hours", [0.5, 2, 3, 10])
def test_arrivals_sorted_and_inside_the_issuing_window(hours):
    day = plan_visitors(2000, hours, seed=SEED)
    times = [v.arrive_s for v in day]
    assert times == sorted(times)
    assert 0 <= times[0] and times[-1] < issue_until_s(hours)
    assert times[-1] > 0.9 * issue_until_s(hours)  # the whole window is used


def test_tickets_stop_half_an_hour_before_closing_but_not_before_80_percent_of_the_day():
    assert issue_until_s(10) == 9.5 * HOUR
    assert issue_until_s(3) == 2.5 * HOUR
    assert issue_until_s(2) == pytest.approx(1.6 * HOUR)  # 1.5 h would be < 80 %
    assert issue_until_s(0.5) == pytest.approx(0.4 * HOUR)
    with pytest.raises(ValueError):
        issue_until_s(0)


def test_the_rate_has_a_morning_peak_a_lunch_dip_an_afternoon_rise_and_a_taper():
    grid = [i / 1000 for i in range(1001)]
    peak = max(grid, key=rate)
    assert 0.1 <= peak <= 0.2  # 1-2 hours after opening in a 10-hour day
    assert min(rate(t) for t in grid) > 0
    lunch = min((t for t in grid if 0.3 <= t <= 0.7), key=rate)
    assert 0.45 <= lunch <= 0.55
    afternoon = max((t for t in grid if t >= lunch), key=rate)
    assert rate(lunch) < rate(afternoon) < rate(peak)
    assert rate(1.0) < rate(afternoon) / 2


def test_the_morning_peak_hour_is_busier_than_the_lunch_hour(big_day):
    def in_hour(start_h):
        return sum(start_h * HOUR <= v.arrive_s < (start_h + 1) * HOUR for v in big_day)

    peak, lunch = in_hour(1), in_hour(4.5)
    assert peak > 2 * lunch  # the profile gives about 3.4 times
    hourly = [in_hour(h) for h in range(10)]
    assert hourly.index(max(hourly)) == 1  # the busiest hour: 1-2 hours after opening
    assert hourly[9] < hourly[7]  # quieter before closing than in the afternoon


def test_service_mix_close_to_the_shares(big_day):
    total = sum(s.share for s in DEFAULT_SERVICES)
    counts = summary(big_day)["services"]
    assert set(counts) == {s.letter for s in DEFAULT_SERVICES}
    for s in DEFAULT_SERVICES:
        assert near(counts[s.letter], BIG, s.share / total), (s.letter, counts)


def test_custom_services_and_shares():
    services = (Service("P", "Pensions", 3, 600, 120), Service("T", "Taxes", 1, 300, 60))
    day = plan_visitors(4000, 8, seed=SEED, services=services)
    assert {v.service for v in day} == {"P", "T"}
    assert near(sum(v.service == "P" for v in day), 4000, 0.75)


def test_visitor_probabilities(big_day):
    came = [v for v in big_day if v.shows_up]
    voters = [v for v in came if v.vote is not None]
    assert near(sum(v.appointment for v in big_day), BIG, P_APPOINTMENT)
    assert near(sum(v.priority == 1 for v in big_day), BIG, P_PRIORITY)
    assert near(BIG - len(came), BIG, P_NO_SHOW)
    assert near(sum(v.redirect for v in came), len(came), P_REDIRECT)
    assert near(len(came) - len(voters), len(came), P_NO_VOTE)
    assert near(sum(v.vote == "like" for v in voters), len(voters), P_LIKE)
    assert near(sum(v.presses > 1 for v in voters), len(voters), P_MULTI_PRESS)
    assert {v.priority for v in big_day} == {0, 1}
    assert {v.recalls for v in came} == {0, 1, 2}
    assert sum(v.recalls == 0 for v in came) > 0.7 * len(came)  # most come at once


def test_service_times_are_clipped_and_keep_about_their_mean(big_day):
    mean = {s.letter: s.mean_s for s in DEFAULT_SERVICES}
    assert all(60 <= v.service_s <= 4 * mean[v.service] for v in big_day)
    for s in DEFAULT_SERVICES:
        times = [v.service_s for v in big_day if v.service == s.letter]
        assert abs(sum(times) / len(times) - s.mean_s) < 0.1 * s.mean_s


def test_a_wide_service_time_is_clipped_at_both_ends():
    wild = (Service("W", "Wild", 1, 300, 900),)
    times = [v.service_s for v in plan_visitors(2000, 10, seed=SEED, services=wild)]
    assert min(times) == 60 and max(times) == 4 * 300
    assert 60 < sorted(times)[1000] < 1200  # the clip is at the ends only


def test_votes_presses_no_shows_and_redirects_are_consistent(big_day):
    for v in big_day:
        assert v.vote in ("like", "dislike", None)
        assert (v.presses == 0) == (v.vote is None)
        assert 0 <= v.presses <= 4
        if not v.shows_up:
            assert v.vote is None and not v.redirect
            assert 1 <= v.recalls <= 3
        else:
            assert 0 <= v.recalls <= 2
    presses = {v.presses for v in big_day}
    assert presses == {0, 1, 2, 3, 4}
    no_shows = [v for v in big_day if not v.shows_up]
    assert {v.recalls for v in no_shows} == {1, 2, 3}


def test_summary_equals_a_recount_and_is_json(big_day):
    s = summary(big_day)
    assert json.loads(json.dumps(s)) == s
    assert s["visitors"] == len(big_day) == sum(s["services"].values())
    assert s["no_shows"] == sum(not v.shows_up for v in big_day)
    assert s["redirects"] == sum(v.redirect for v in big_day)
    assert s["voters"] == sum(v.vote is not None for v in big_day)
    assert s["likes"] == sum(v.vote == "like" for v in big_day)
    assert s["dislikes"] == sum(v.vote == "dislike" for v in big_day)
    assert s["likes"] + s["dislikes"] == s["voters"]
    assert s["multi_press"] == sum(v.presses >= 2 for v in big_day)
    assert s["appointments"] == sum(v.appointment for v in big_day)
    assert s["priority"] == sum(v.priority > 0 for v in big_day)
    for letter, n in s["services"].items():
        assert n == sum(v.service == letter for v in big_day)
    assert all(s[k] > 0 for k in s if k != "services")  # a big day has some of each


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        plan_visitors(-1, 10, seed=1)
    with pytest.raises(ValueError):
        plan_visitors(10, 0, seed=1)
    with pytest.raises(ValueError):
        plan_visitors(10, 10, seed=1, services=())
    with pytest.raises(ValueError):
        plan_visitors(10, 10, seed=1, services=DEFAULT_SERVICES + DEFAULT_SERVICES[:1])
    with pytest.raises(ValueError):
        Service("AB", "Two letters", 1, 600, 60)
    with pytest.raises(ValueError):
        Service("A", "No share", 0, 600, 60)
    with pytest.raises(ValueError):
        plan_breaks([1, 1], 10, seed=1)


# ---- the defaults, pinned ----------------------------------------------------------------

# Drawn before `arrivals` and `mix` existed: the options left out must give these, draw for
# draw (other tests and the simulator's reports compare against the built-in day).
PINNED = [
    (0, 2389.1, "D", False, 0, True, 0, 506.6, False, "like", 1),
    (1, 4234.0, "A", True, 0, True, 0, 488.5, False, "like", 1),
    (2, 11075.1, "A", False, 0, True, 0, 423.5, False, None, 0),
    (3, 22262.0, "B", True, 0, True, 0, 1199.7, False, "like", 1),
    (4, 33387.9, "C", False, 0, True, 0, 1089.2, False, "like", 1),
]
PINNED_SUMMARY = {"visitors": 500, "services": {"A": 163, "B": 144, "C": 126, "D": 67},
                  "no_shows": 19, "redirects": 20, "voters": 380, "likes": 294,
                  "dislikes": 86, "multi_press": 20, "appointments": 57, "priority": 19}


def pinned(day):
    return [(v.n, round(v.arrive_s, 1), v.service, v.appointment, v.priority, v.shows_up,
             v.recalls, round(v.service_s, 1), v.redirect, v.vote, v.presses) for v in day]


def test_the_built_in_day_is_unchanged():
    assert pinned(plan_visitors(5, 10, seed=7)) == PINNED
    assert summary(plan_visitors(500, 10, seed=1)) == PINNED_SUMMARY
    assert [round(v.arrive_s) for v in plan_visitors(6, 3, seed=3)] == [
        2142, 2334, 5631, 5752, 6043, 7528]


@pytest.mark.parametrize("seed", [1, 7, SEED])
def test_the_default_options_are_the_built_in_day(seed):
    day = plan_visitors(300, 10, seed=seed)
    assert plan_visitors(300, 10, seed=seed, arrivals=None, mix=None) == day
    assert plan_visitors(300, 10, seed=seed, mix=Mix()) == day
    assert Mix() == Mix(P_APPOINTMENT, P_PRIORITY, P_NO_SHOW, P_REDIRECT, P_NO_VOTE, P_LIKE,
                        P_MULTI_PRESS)


# ---- arrivals by hour ---------------------------------------------------------------------


def hour_counts(day, hours):
    counts = [0] * math.ceil(hours)
    for v in day:
        counts[int(v.arrive_s // HOUR)] += 1
    return counts


def test_all_the_weight_in_one_hour_puts_every_arrival_in_it():
    day = plan_visitors(400, 10, seed=SEED, arrivals=[0, 0, 0, 1, 0, 0, 0, 0, 0, 0])
    assert len(day) == 400 and [v.n for v in day] == list(range(400))
    assert all(3 * HOUR <= v.arrive_s < 4 * HOUR for v in day)
    times = [v.arrive_s for v in day]
    assert times == sorted(times)
    # uniform inside the hour: a quarter of them in each quarter of it
    quarters = [sum(3 * HOUR + q * 900 <= t < 3 * HOUR + (q + 1) * 900 for t in times)
                for q in range(4)]
    assert all(near(k, 400, 0.25) for k in quarters), quarters


def test_the_hours_get_visitors_in_proportion_to_their_weights():
    weights = [1, 4, 2, 0, 1, 3, 1, 1, 2, 1]  # 10 h: tickets until 9.5 h
    counts = hour_counts(plan_visitors(BIG, 10, seed=SEED, arrivals=weights), 10)
    mass = [*weights[:9], weights[9] / 2]  # the last hour: half of it before the last ticket
    assert counts[3] == 0
    for h, m in enumerate(mass):
        assert near(counts[h], BIG, m / sum(mass)), (h, counts)
    last = max(v.arrive_s for v in plan_visitors(BIG, 10, seed=SEED, arrivals=weights))
    assert 9 * HOUR < last < issue_until_s(10)


def test_a_partial_last_hour_and_the_end_of_issuing():
    # 1.5 h: tickets until 1.2 h (80 % of the day), so the last hour is 0.2 h long
    day = plan_visitors(300, 1.5, seed=SEED, arrivals=[0, 1])
    assert all(HOUR <= v.arrive_s < issue_until_s(1.5) for v in day)
    day = plan_visitors(3000, 1.5, seed=SEED, arrivals=[1, 1])
    assert near(sum(v.arrive_s >= HOUR for v in day), 3000, 0.2 / 1.2)


def test_arrivals_by_hour_are_seeded_and_leave_the_rest_of_the_day_alone():
    weights = [5, 8, 9, 9, 8, 7, 7, 7, 8, 9, 8, 5]
    day = plan_visitors(500, 12, seed=3, arrivals=weights)
    assert day == plan_visitors(500, 12, seed=3, arrivals=tuple(weights))
    assert day != plan_visitors(500, 12, seed=4, arrivals=weights)
    assert [v.arrive_s for v in day] != [v.arrive_s for v in plan_visitors(500, 12, seed=3)]
    counts = summary(day)["services"]
    assert all(near(counts[s.letter], 500, s.share) for s in DEFAULT_SERVICES)


@pytest.mark.parametrize(("hours", "arrivals", "says"), [
    (10, [1] * 9, "10 weights expected"),
    (10, [1] * 11, "10 weights expected"),
    (8.5, [1] * 8, "9 weights expected"),
    (3, [1, -1, 1], "arrivals[1]"),
    (3, [1, math.nan, 1], "arrivals[1]"),
    (3, [1, math.inf, 1], "arrivals[1]"),
    (3, [1, True, 1], "arrivals[1]"),
    (3, [1, "2", 1], "arrivals[1]"),
    (3, [0, 0, 0], "weight 0"),
    (3.5, [0, 0, 0, 1], "weight 0"),  # the last half hour is after the last ticket
])
def test_bad_arrivals_are_refused(hours, arrivals, says):
    with pytest.raises(ValueError, match=re.escape(says)):
        plan_visitors(10, hours, seed=1, arrivals=arrivals)
    with pytest.raises(ValueError, match=re.escape(says)):  # whatever the count
        plan_visitors(0, hours, seed=1, arrivals=arrivals)


# ---- the mix ------------------------------------------------------------------------------


def test_the_mix_is_honoured():
    def day(**mix):
        return plan_visitors(400, 10, seed=SEED, mix=Mix(**mix))

    assert all(not v.shows_up and v.vote is None for v in day(no_show=1.0))
    assert all(v.shows_up for v in day(no_show=0.0))
    assert all(v.vote is None and v.presses == 0 for v in day(no_vote=1.0))
    assert all(v.vote is not None for v in day(no_vote=0.0, no_show=0.0))
    assert {v.vote for v in day(no_vote=0.0, like=0.0)} == {"dislike", None}
    assert {v.vote for v in day(no_vote=0.0, like=1.0)} == {"like", None}
    assert all(v.presses >= 2 for v in day(multi_press=1.0) if v.vote)
    assert all(v.appointment for v in day(appointments=1.0))
    assert not any(v.priority for v in day(priority=0.0))
    assert all(v.redirect for v in day(redirect=1.0) if v.shows_up)
    # the arrivals come first and never depend on the mix
    times = [v.arrive_s for v in day()]
    assert [v.arrive_s for v in day(no_show=1.0, like=0.0)] == times


@pytest.mark.parametrize("field", ["appointments", "priority", "no_show", "redirect",
                                   "no_vote", "like", "multi_press"])
@pytest.mark.parametrize("bad", [-0.01, 1.01, math.nan, True, "0.5", None])
def test_a_bad_probability_is_refused_naming_it(field, bad):
    with pytest.raises(ValueError, match=rf"Mix\.{field}: a probability from 0 to 1"):
        Mix(**{field: bad})


def test_the_mix_is_frozen_and_takes_the_edges():
    mix = Mix(no_show=0, like=1)
    with pytest.raises(AttributeError):
        mix.no_show = 0.5  # type: ignore[misc]
    with pytest.raises(ValueError, match="mix"):
        plan_visitors(3, 10, seed=1, mix={"no_show": 0.5})  # type: ignore[arg-type]


# ---- breaks -------------------------------------------------------------------------------


def away_at(breaks, t):
    return {b.window for b in breaks if b.start_s <= t < b.start_s + b.duration_s}


@pytest.mark.parametrize("windows", [1, 2, 3, 5, 12, 36])
@pytest.mark.parametrize("hours", [0.5, 1, 2, 4, 6, 10, 12])
def test_breaks(windows, hours):
    day_s, scale = hours * HOUR, min(1.0, hours / 2)
    ids = range(1, windows + 1)
    breaks = plan_breaks(ids, hours, seed=SEED)
    assert breaks == sorted(breaks, key=lambda b: (b.start_s, b.window))
    assert all(0 <= b.start_s and b.start_s + b.duration_s <= day_s for b in breaks)
    lunches = [b for b in breaks if b.duration_s >= LUNCH_S[0] * scale]
    shorts = [b for b in breaks if b.duration_s < LUNCH_S[0] * scale]
    # every window one lunch of 30-45 min (scaled), at most one short break of 10-15 min
    assert sorted(b.window for b in lunches) == list(ids)
    assert all(LUNCH_S[0] * scale <= b.duration_s <= LUNCH_S[1] * scale for b in lunches)
    assert all(SHORT_S[0] * scale <= b.duration_s <= SHORT_S[1] * scale for b in shorts)
    assert len({b.window for b in shorts}) == len(shorts)
    # lunches around the middle of the day, never two starting together
    margin = 0.2 if hours >= 4 else 0.05
    assert all(margin * day_s <= b.start_s and b.end_s <= (1 - margin) * day_s for b in lunches)
    assert len({b.start_s for b in lunches}) == windows
    # a window's own breaks do not overlap, and the hall never closes entirely
    for w in ids:
        mine = [b for b in breaks if b.window == w]
        assert all(a.end_s <= b.start_s for a, b in pairwise(mine))
    if windows > 1:
        assert all(len(away_at(breaks, b.start_s)) < windows for b in breaks)


def test_lunches_are_staggered_in_groups_around_mid_day():
    breaks = plan_breaks(range(1, 9), 10, seed=SEED)
    lunches = [b for b in breaks if b.duration_s >= LUNCH_S[0]]
    at_lunch = max(len(away_at(lunches, b.start_s)) for b in lunches)
    assert 2 <= at_lunch <= 4  # 8 windows in 4 groups: a group of two at a time
    assert 4 * HOUR <= sum(b.start_s for b in lunches) / len(lunches) <= 6 * HOUR


def test_long_days_have_short_breaks_short_days_scale_down():
    long_day = plan_breaks(range(1, 13), 10, seed=SEED)
    assert any(b.duration_s <= SHORT_S[1] for b in long_day)
    tiny = plan_breaks(range(1, 13), 0.5, seed=SEED)
    assert max(b.duration_s for b in tiny) <= LUNCH_S[1] / 4  # a quarter of a 2-hour day


def test_breaks_are_seeded():
    assert plan_breaks([1, 2, 3], 10, seed=1) == plan_breaks([1, 2, 3], 10, seed=1)
    assert plan_breaks([1, 2, 3], 10, seed=1) != plan_breaks([1, 2, 3], 10, seed=2)
    assert plan_breaks([], 10, seed=1) == []
    assert {b.window for b in plan_breaks([7], 10, seed=1)} == {7}
    assert Break(7, 600.0, 120.0).end_s == 720.0
