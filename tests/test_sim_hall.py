"""A whole simulated day (`hallgate sim`) balances: every ticket ends served or no-show,
every call was shown on the right window's display (read back from the firmware), every vote
is recorded exactly once against the right ticket, and the central's report agrees with an
independent MQTT subscriber that logged the whole day. Also with the central service
restarted and the gateway SIGKILLed mid-day.

All real parts: mosquitto, the central service, the gateway daemon (a child process on
gpiozero mock pins), the firmware on MicroPython behind ptys.
"""

import collections
import os

import pytest
from hallgate.central.store import Store
from hallgate.sim.broker import Mosquitto
from hallgate.sim.hall import SITE, Hall, Options
from hallgate.sim.model import run_model
from harness import Witness

pytestmark = pytest.mark.micropython

SEED = int(os.environ.get("HALLGATE_TEST_SEED", "3"))


def play(tmp_path, options, faults=(), port=None):
    """Run a day with a witness subscribed to the whole site (on the hall's broker, or on
    `port`); (hall, report, witness messages by topic, central tickets, central votes)."""
    hall = Hall(options, tmp_path / "hall")
    witness = None
    try:
        hall.start()
        witness = Witness(port or hall.broker.port, topics=[f"hall/v1/{SITE}/#"],
                          client_id="test-witness")
        report = hall.run_day(faults=[(at, getattr(hall, name)) for at, name in faults])
        log = collections.defaultdict(list)
        with witness.lock:
            messages = list(witness.messages)
        for topic, payload, _ in messages:
            log[topic.removeprefix(f"hall/v1/{SITE}/")].append(payload)
    finally:
        hall.close()
        if witness is not None:
            witness.close()
    with Store(hall.db) as store:
        tickets, votes = store.day(hall.day)
    return hall, report, log, tickets, votes


def assert_day_balances(hall, report, log, tickets, votes):
    assert report["finished"], report["problems"]
    assert report["problems"] == []
    central = report["central"]["all"]

    # Every visitor got a ticket, and every ticket ended served or no-show.
    assert len(tickets) == report["plan"]["visitors"] == central["issued"]
    assert {t.state for t in tickets} <= {"served", "noshow"}
    assert central["served"] + central["noshow"] == central["issued"]
    assert central["waiting"] == central["called"] == central["serving"] == 0

    # Every call was shown on the display of the window that called it, and each ticket's
    # last call was at the window where it ended.
    calls = [j for j in hall.journal if j["what"] == "call"]
    assert calls and all(c["shown"] for c in calls)
    last_call = {c["ticket"]: c["window"] for c in calls}
    assert {t.number: t.ended_window for t in tickets} == last_call

    # Every vote event the gateway sent is recorded once, on the ticket it names; every
    # visitor who voted has exactly one counted vote, theirs, on their ticket and window.
    events = {}
    for topic, payloads in log.items():
        if topic.startswith("window/") and topic.endswith("/event"):
            for e in payloads:
                events.setdefault(e["id"], e)
    vote_events = {i: e for i, e in events.items() if e["type"] == "vote"}
    assert sorted(v.id for v in votes) == sorted(vote_events)
    for v in votes:
        e = vote_events[v.id]
        assert (v.window, v.vote, v.ticket) == (e["window"], e["vote"], e["ticket"])
    counted = collections.Counter((v.ticket, v.window, v.vote) for v in votes if v.counted)
    voters = [j for j in hall.journal if j["what"] == "vote"]
    assert voters
    assert counted == collections.Counter((j["ticket"], j["window"], j["vote"])
                                          for j in voters)

    # The report's counts equal the witness's: tickets issued, finishes, no-shows, votes.
    issued = {m["ticket"] for m in log["ticket/issued"]}
    keys = collections.Counter(e["key"] for e in events.values() if e["type"] == "key")
    assert central["issued"] == len(issued)
    assert central["served"] == keys["finish"]
    assert central["noshow"] == keys["noshow"]
    good = [e for e in vote_events.values() if not e["misuse"]]
    assert central["likes"] == sum(e["vote"] == "like" for e in good)
    assert central["dislikes"] == sum(e["vote"] == "dislike" for e in good)
    assert central["misuse"] == len(vote_events) - len(good)
    assert report["observer"]["central_errors"] == len(log["central/errors"])


def close_enough(full, model):
    """Within 10% of the model run's figure, or 30 s."""
    return abs(full - model) <= max(30.0, 0.1 * abs(model))


# The same load per window and hour (2 visitors) in make test and, twice the size, in soak.
@pytest.mark.parametrize("windows, visitors, hours", [
    (6, 72, 6), pytest.param(10, 160, 8, marks=pytest.mark.soak)])
def test_a_day_balances_and_its_waits_are_the_model_runs(tmp_path, windows, visitors, hours):
    options = Options(windows=windows, visitors=visitors, hours=hours, speed=None, seed=SEED)
    hall, report, log, tickets, votes = play(tmp_path, options)
    assert_day_balances(hall, report, log, tickets, votes)
    assert report["pressed_again"] == 0  # without faults no press is lost
    # An operator reads the panel once it shows what the central decided, so no press
    # meets a stale panel: the central rejects none.
    assert report["rejected"] == []
    plan = report["plan"]
    assert report["central"]["all"]["noshow"] == plan["no_shows"]
    chain = report["chain_ms"]
    assert chain["press_to_central"]["n"] >= report["calls"] and chain["call_to_display"]["n"]
    assert chain["press_to_panel"]["n"] and chain["press_to_broker"]["n"]
    # The same plan through the central alone (sim/model.py): hall time is the hall's, not
    # the chain's, so the waits agree.
    ledger = run_model(hall.plan, hall.breaks, hall.queue_config, tmp_path / "model.db",
                       seed=SEED, start=hall.opening)
    assert ledger.check() == []
    full, model = report["central"]["all"], ledger.report["all"]
    for figure in ("wait_avg_s", "wait_p95_s"):
        assert close_enough(full[figure], model[figure]), (figure, full, model)
    assert abs(full["over_norm_share"] - model["over_norm_share"]) <= max(
        0.1 * model["over_norm_share"], 0.02)
    print(f"{len(tickets)} tickets, {report['calls']} calls, {len(votes)} vote records, "
          f"{report['real_s']} s real; chain {chain}; waits full {full['wait_avg_s']} "
          f"{full['wait_p95_s']}, model {model['wait_avg_s']} {model['wait_p95_s']}")


def test_a_central_restart_and_a_gateway_kill_mid_day_still_balance(tmp_path):
    options = Options(windows=4, visitors=80, hours=6, speed=None, seed=SEED + 1)
    hall, report, log, tickets, votes = play(
        tmp_path, options, faults=[(2 * 3600, "restart_central"), (4 * 3600, "kill_gateway")])
    assert report["central_starts"] == 2 and report["gateway_starts"] == 2
    assert_day_balances(hall, report, log, tickets, votes)
    # A press the gateway had not yet taken when it was killed is pressed again, and only
    # a lost one: every voter still has exactly one counted vote (checked above).
    print(f"pressed again: {[j for j in hall.journal if j['what'] == 'pressed-again']}")


def test_without_mosquitto_the_day_runs_on_the_embedded_amqtt_broker(tmp_path):
    options = Options(windows=3, visitors=40, hours=3, speed=None, seed=SEED,
                      broker_kind="amqtt")
    hall, report, log, tickets, votes = play(tmp_path, options)
    assert report["broker"]["protocol"] == "3.1.1"
    assert_day_balances(hall, report, log, tickets, votes)
    assert report["pressed_again"] == 0


def test_with_broker_url_the_day_runs_on_an_existing_broker(tmp_path):
    with Mosquitto(tmp_path / "theirs") as broker:
        # 3600x: the highest speed is a cap on hall time, it costs the hall nothing
        options = Options(windows=2, visitors=12, hours=2, speed=3600, seed=SEED,
                          broker=broker.url)
        hall, report, log, tickets, votes = play(tmp_path, options, port=broker.port)
        assert hall.broker is None and report["broker"]["url"] == broker.url
        assert_day_balances(hall, report, log, tickets, votes)
