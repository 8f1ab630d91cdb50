"""A whole day replayed through the central service alone (sim/model.py: the real queue,
store and statistics, no hardware, no broker) balances to the ticket: what the hall's
people did, counted on their side, is what the central's day report says."""

import json
import subprocess
import sys

import pytest
from hallgate.central.queue import QueueConfig
from hallgate.sim import dayplan
from hallgate.sim.hall import queue_config
from hallgate.sim.model import run_model


class Options:
    def __init__(self, windows, hours=10):
        self.windows, self.hours = windows, hours


@pytest.mark.parametrize("seed, windows, visitors", [(1, 8, 300), (7, 4, 120)])
def test_a_day_replayed_balances_to_the_ticket(tmp_path, seed, windows, visitors):
    plan = dayplan.plan_visitors(visitors, 10, seed=seed)
    breaks = dayplan.plan_breaks(range(1, windows + 1), 10, seed=seed)
    cfg = QueueConfig.from_dict(queue_config(Options(windows), dayplan.DEFAULT_SERVICES))
    ledger = run_model(plan, breaks, cfg, tmp_path / "central.db", seed=seed)
    assert ledger.check() == []
    assert ledger.issued == visitors and not ledger.refused
    assert ledger.served + ledger.noshow == visitors  # a redirected visitor is served later
    assert ledger.noshow == sum(not v.shows_up for v in plan)
    assert ledger.redirected > 0 or not any(v.redirect for v in plan)
    report = ledger.report
    for row in report["by_service"].values():
        assert row["issued"] + row["redirected_in"] == (
            row["served"] + row["noshow"] + row["closed"] + row["redirected_out"] + row["open"])
    assert report["all"]["waits"] == visitors
    assert not ledger.keys_rejected, ledger.keys_rejected[:5]


def test_the_ledger_says_where_a_day_does_not_balance(tmp_path):
    plan = dayplan.plan_visitors(20, 10, seed=3)
    cfg = QueueConfig.from_dict(queue_config(Options(2), dayplan.DEFAULT_SERVICES))
    ledger = run_model(plan, [], cfg, tmp_path / "central.db", seed=3)
    assert ledger.check() == []
    ledger.served += 1  # a visit the central never heard of
    assert ledger.check() == [f"served: the hall counted {ledger.served}, "
                              f"the central {ledger.served - 1}"]


def test_operators_log_in_with_their_pins_and_the_figures_are_theirs(tmp_path):
    windows = 4
    qc = queue_config(Options(windows), dayplan.DEFAULT_SERVICES)
    pins = {n: "".join(str((n + i) % 8 + 1) for i in range(4)) for n in range(1, 5)}
    qc["operators"] = {f"op-{n}": {"name": f"Operator {n}", "pin": pins[n]} for n in pins}
    for w in qc["windows"]:
        del w["operator"]  # everyone starts closed
    plan = dayplan.plan_visitors(120, 10, seed=5)
    breaks = dayplan.plan_breaks(range(1, windows + 1), 10, seed=5)
    ledger = run_model(plan, breaks, QueueConfig.from_dict(qc), tmp_path / "c.db", seed=5,
                       logins={n: f"op-{n}" for n in pins})
    assert ledger.check() == [] and not ledger.keys_rejected
    ops = ledger.report["by_operator"]
    assert set(ops) == {f"op-{n}" for n in pins}
    assert sum(o["served"] for o in ops.values()) == ledger.served
    assert sum(o["waits"] for o in ops.values()) == ledger.issued  # waits: who called
    assert sum(o["votes"] + o["misuse"] for o in ops.values()) == (
        ledger.votes + ledger.presses_again)
    for o in ops.values():
        assert o["sessions"] == 1 and 0 < o["logged_in_s"] <= ledger.ended_s


def test_hallgate_sim_model_only_answers_what_if_in_seconds():
    def run(*args):
        out = subprocess.run([sys.executable, "-m", "hallgate.cli", "sim", "--model-only",
                              "--visitors", "150", "--duration", "6h", "--json", *args],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    four, five = run("--windows", "4"), run("--windows", "5")
    assert four["finished"] and four["central"]["all"]["issued"] == 150
    assert five["central"]["all"]["wait_avg_s"] < four["central"]["all"]["wait_avg_s"]
    many = run("--windows", "60")  # past one gateway's 47: the model has no hardware
    assert many["problems"] == [] and many["options"]["windows"] == 60
    full = subprocess.run([sys.executable, "-m", "hallgate.cli", "sim", "--windows", "60"],
                          capture_output=True, text=True, timeout=60)
    assert full.returncode == 2 and "more windows need --gateways" in full.stderr
