"""Simulated sites beyond one gateway's GPIO: a site whose windows pass the 12 like /
dislike pairs votes on feedback pads on the bus, a site over two gateways (each its own
bus and devices), several sites on one broker side by side; each site's day balances to
the ticket against an independent subscriber, as a single hall's does
(tests/test_sim_hall.py). All real parts."""

import collections
import dataclasses
import json
import subprocess
import sys

import pytest
from hallgate.central.store import Store
from hallgate.sim.hall import Options
from hallgate.sim.hallconfig import gateway_plans
from hallgate.sim.town import Town
from harness import Witness
from test_sim_hall import SEED, assert_day_balances

pytestmark = pytest.mark.micropython


def test_two_sites_one_voting_on_pads_one_over_two_gateways_each_balance(tmp_path):
    base = Options(speed=None, seed=SEED, hours=2)
    sites = [dict(options=dataclasses.replace(base, site="north", windows=14, visitors=40)),
             dict(options=dataclasses.replace(base, site="south", windows=4, gateways=2,
                                              visitors=24, seed=SEED + 1))]
    town = Town(sites, tmp_path / "town")
    witness = None
    try:
        town.start()
        witness = Witness(town.broker.port, topics=["hall/v1/#"], client_id="town-witness")
        report = town.run_day()
        with witness.lock:
            messages = list(witness.messages)
    finally:
        town.close()
        if witness is not None:
            witness.close()
    assert report["finished"], report["problems"]
    north, south = town.halls
    assert sorted(north.pads) == [13, 14] and len(north.gateways) == 1
    assert len(south.gateways) == 2 and not south.pads
    for hall in town.halls:
        prefix = f"hall/v1/{hall.site}/"
        log = collections.defaultdict(list)
        for topic, payload, _ in messages:
            if topic.startswith(prefix):
                log[topic.removeprefix(prefix)].append(payload)
        with Store(hall.db) as store:
            tickets, votes = store.day(hall.day)
        assert_day_balances(hall, report["sites"][hall.site], log, tickets, votes)
        assert report["sites"][hall.site]["rejected"] == []
    # The visitors at windows 13 and 14 voted on the pads, and those votes were counted.
    pad_voters = {j["ticket"] for j in north.journal
                  if j["what"] == "vote" and j["window"] in north.pads}
    with Store(north.db) as store:
        _, votes = store.day(north.day)
    assert pad_voters and pad_voters <= {v.ticket for v in votes if v.counted}
    assert report["all"]["issued"] == 64
    # Each gateway polled only its own line: south's windows 1-2 and 3-4.
    assert [g.windows for g in south.layout] == [(1, 2), (3, 4)]


def test_a_gateway_holds_47_windows_and_more_need_another():
    assert [len(g.windows) for g in gateway_plans(94, 2)] == [47, 47]
    with pytest.raises(ValueError, match="at most 47 windows per gateway"):
        gateway_plans(95, 2)
    with pytest.raises(ValueError, match="more windows need --gateways"):
        Options(windows=48)


def test_the_syzran_profile_runs_through_the_model_site_by_site():
    out = subprocess.run([sys.executable, "-m", "hallgate.cli", "sim", "--profile", "syzran",
                          "--model-only", "--json"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    sites = json.loads(out.stdout)["sites"]
    assert {s: r["options"]["windows"] for s, r in sites.items()} == {
        "main": 26, "branch": 8, "remote": 2}
    assert all(r["problems"] == [] and r["finished"] for r in sites.values())
    assert sum(r["central"]["all"]["issued"] for r in sites.values()) == sum(
        r["options"]["visitors"] for r in sites.values())
    bad = subprocess.run([sys.executable, "-m", "hallgate.cli", "sim", "--profile", "syzran",
                          "--windows", "3"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--profile sets the sites" in bad.stderr
