"""The offered load the simulator prints before a day (sim/load.py), and the default day
below capacity in every service and hour (windows' skills shared out by load)."""

import pytest
from hallgate.sim import dayplan
from hallgate.sim.hall import Options, queue_config, skills
from hallgate.sim.load import load_text, offered_load


def load_of(windows, visitors, hours, seed):
    plan = dayplan.plan_visitors(visitors, hours, seed=seed)
    config = queue_config(Options(windows=windows, visitors=visitors, hours=hours, seed=seed),
                          dayplan.DEFAULT_SERVICES)
    return offered_load(plan, [(w["n"], w["services"]) for w in config["windows"]])


@pytest.mark.parametrize("seed", range(1, 9))
def test_the_default_day_is_below_capacity_in_every_service_and_hour(seed):
    o = Options()
    load = load_of(o.windows, o.visitors, o.hours, seed)
    assert load["over"] == [], load_text(load)
    assert len(load["hours"]) == 10 and load["total_windows"] == 10


def test_an_overloaded_plan_is_said_before_the_day():
    load = load_of(4, 200, 6, 1)
    assert load["over"]
    text = load_text(load)
    assert "over capacity" in text and "!" in text.splitlines()[3 + load["over"][0][0]]
    hours = sum(v.service_s for v in dayplan.plan_visitors(200, 6, seed=1)) / 3600
    assert sum(h["total"] for h in load["hours"]) == pytest.approx(hours, abs=0.1)


def test_every_service_has_a_main_window_and_help_goes_where_the_load_is():
    for windows in range(1, 13):
        by_window = skills(windows, dayplan.DEFAULT_SERVICES)
        assert sorted(by_window) == list(range(1, windows + 1))
        served = {c for s in by_window.values() for c in s}
        assert served == {s.letter for s in dayplan.DEFAULT_SERVICES}
        if windows >= 4:
            mains = {c for s in by_window.values() for c, w in s.items() if w == 3}
            assert mains == served
