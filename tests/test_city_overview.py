"""The city overview (central/overview.py): its figures from given stats, exactly; its
topic's example and schema; and the service on a real mosquitto, reading two real
central services (SQLite, a fake clock): the overview has both centres with their own
figures, is republished only when they change, and shows a centre that stops offline."""

import json
import re
import threading
import uuid
from pathlib import Path

import jsonschema
import paho.mqtt.client as paho
import pytest
from conftest import wait_for
from hallgate.central.clock import FakeClock
from hallgate.central.mqtt import CentralService
from hallgate.central.overview import (
    MAX_CENTRES,
    CityOverview,
    OverviewService,
    changed_key,
    overview_topic,
)
from hallgate.central.queue import QueueConfig
from hallgate.central.service import Central
from hallgate.sim.broker import Mosquitto, free_port
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "protocols/schemas/city/overview.schema.json").read_text())
VALIDATOR = jsonschema.Draft7Validator(SCHEMA)
DAY = "2026-11-23"  # FakeClock's


def valid(payload):
    errors = sorted(VALIDATOR.iter_errors(payload), key=str)
    assert not errors, [e.message for e in errors]


def stats(served, waits, wait_avg_s, over_norm, likes, dislikes, *, issued=None, waiting=0,
          longest=0.0, day=DAY, modes=("serving",)):
    """A central/stats payload with the fields the overview takes (and a few it does not)."""
    return {"day": day, "norm_s": 900, "warn_s": 600, "tz": "UTC",
            "all": {"issued": served + waiting if issued is None else issued,
                    "served": served, "noshow": 0, "waits": waits, "wait_avg_s": wait_avg_s,
                    "wait_p95_s": wait_avg_s and wait_avg_s * 2, "over_norm": over_norm,
                    "over_norm_share": round(over_norm / waits, 4) if waits else None,
                    "likes": likes, "dislikes": dislikes, "votes": likes + dislikes,
                    "misuse": 3},
            "by_window": {}, "by_service": {}, "by_operator": {},
            "now": {"at": 1795420800.0, "waiting": waiting, "longest_wait_s": longest,
                    "windows": {str(n): {"mode": m} for n, m in enumerate(modes, 1)}}}


# -- the pure part ---------------------------------------------------------------------

def test_figures_per_centre_and_for_the_city():
    o = CityOverview("moscow")
    assert o.take("msk-01", stats(40, 50, 300.0, 5, 30, 10, waiting=4, longest=650.0,
                                  modes=("serving", "idle", "closed", "paused")), now=100.0)
    assert o.take("msk-02", json.dumps(stats(10, 10, 1200.0, 8, 1, 3, waiting=9,
                                             longest=1300.5)).encode(), now=110.0)
    assert o.take_status("msk-01", b'{"state": "online", "ts": "x"}')
    assert o.take_status("msk-02", {"state": "offline", "reason": "connection-lost"})
    p = o.payload(now=120.0)
    valid(p)
    one, two = p["centres"]["msk-01"], p["centres"]["msk-02"]
    assert one == {"online": True, "stale": False, "stats_age_s": 20.0, "day": DAY,
                   "norm_s": 900, "warn_s": 600, "issued": 44, "served": 40, "noshow": 0,
                   "waiting": 4, "waits": 50, "wait_avg_s": 300.0, "wait_p95_s": 600.0,
                   "over_norm": 5, "over_norm_share": 0.1, "likes": 30, "dislikes": 10,
                   "votes": 40, "satisfaction": 0.75, "longest_wait_s": 650.0,
                   "windows_open": 2}
    assert (two["online"], two["over_norm_share"], two["satisfaction"]) == (False, 0.8, 0.25)
    assert p["all"] == {
        "centres": 2, "online": 1, "offline": 1, "stale": 0, "counted": 2,
        "issued": 63, "served": 50, "noshow": 0, "waiting": 13, "waits": 60,
        # (300 * 50 + 1200 * 10) / 60 = 450: weighted by the waits each average is over
        "wait_avg_s": 450.0, "over_norm": 13, "over_norm_share": round(13 / 60, 4),
        "likes": 31, "dislikes": 13, "votes": 44, "satisfaction": round(31 / 44, 4),
        "longest_wait_s": 1300.5, "windows_open": 3}
    assert p["day"] == DAY and p["city"] == "moscow" and p["ts"] == "1970-01-01T00:02:00.000Z"
    assert p["worst_first"] == ["msk-02", "msk-01"]  # offline first


def test_stale_other_days_worst_first_and_what_is_not_taken():
    o = CityOverview("moscow", stale_s=30)
    o.take("a", stats(10, 10, 100.0, 0, 0, 0), now=0.0)
    o.take("b", stats(10, 10, 100.0, 2, 0, 0, longest=50.0), now=0.0)
    o.take("c", stats(10, 10, 100.0, 2, 0, 0, longest=80.0), now=0.0)
    o.take("d", stats(99, 99, 999.0, 99, 0, 0, day="2026-11-22"), now=0.0)  # yesterday's
    p = o.payload(now=30.0)
    assert p["all"]["stale"] == 0 and p["all"]["counted"] == 3 and p["all"]["served"] == 30
    assert p["all"]["satisfaction"] is None and p["centres"]["a"]["satisfaction"] is None
    assert p["worst_first"] == ["d", "c", "b", "a"]  # d: share 1.0; c, b: 0.2, longest wait
    o.take("a", stats(11, 11, 100.0, 0, 0, 0), now=20.0)
    p = o.payload(now=31.0)  # b, c, d said nothing for 31 s
    assert [s for s in p["worst_first"] if p["centres"][s]["stale"]] == ["d", "c", "b"]
    assert p["all"]["stale"] == 3 and p["worst_first"][-1] == "a"
    assert p["centres"]["b"]["stats_age_s"] == 31.0 and p["centres"]["a"]["online"] is None
    valid(p)

    # Malformed or foreign input is counted and ignored, never raised.
    for junk in (b"{not json", b"[1]", {"all": 5}, {"day": DAY}, "null"):
        assert o.take("a", junk, now=40.0) is False
    assert o.take_status("a", {"state": "asleep"}) is False
    assert o.take_status("a", {"ts": "x"}) is False
    assert o.counters["malformed"] == 7
    assert o.take("bad/site", stats(1, 1, 1.0, 0, 0, 0), now=40.0) is False
    assert o.payload(now=40.0)["centres"]["a"]["served"] == 11
    # An empty retained payload clears: the centre is listed without figures.
    assert o.take("a", b"", now=41.0) and o.take_status("a", b"")
    a = o.payload(now=41.0)["centres"]["a"]
    assert a["stale"] and a["served"] == 0 and a["stats_age_s"] is None
    valid(o.payload(now=41.0))


def test_listed_sites_and_the_bound():
    o = CityOverview("spb", sites=["spb-01", "spb-02"])
    assert not o.take("msk-01", stats(1, 1, 1.0, 0, 0, 0), now=0.0)  # not the city's
    p = o.payload(now=0.0)
    assert list(p["centres"]) == ["spb-01", "spb-02"] and p["all"]["stale"] == 2
    assert p["day"] is None and p["all"]["wait_avg_s"] is None
    valid(p)
    many = CityOverview("big")
    for n in range(MAX_CENTRES + 5):
        many.take(f"s{n}", stats(1, 1, 1.0, 0, 0, 0), now=0.0)
    assert len(many.payload(now=0.0)["centres"]) == MAX_CENTRES
    with pytest.raises(ValueError, match="city"):
        CityOverview("a/b")
    with pytest.raises(ValueError, match="site"):
        CityOverview("ok", sites=["#"])


def test_a_change_is_the_figures_not_the_clock():
    o = CityOverview("moscow")
    o.take("a", stats(1, 1, 1.0, 0, 0, 0), now=0.0)
    first = o.payload(now=1.0)
    assert changed_key(first) == changed_key(o.payload(now=2.0))  # only ts and ages moved
    assert changed_key(first) != changed_key(o.payload(now=40.0))  # stale now
    o.take("a", stats(2, 2, 1.0, 0, 0, 0), now=3.0)
    assert changed_key(first) != changed_key(o.payload(now=3.0))


def test_the_docs_example_is_valid_and_adds_up():
    doc = (ROOT / "protocols" / "MQTT.md").read_text()
    found = re.findall(r"<!-- city-example: overview -->\n```json city\n(.*?)\n```", doc, re.S)
    assert len(found) == 1 and doc.count("```json city\n") == 1
    example = json.loads(found[0])
    valid(example)
    rows = example["centres"].values()
    a = example["all"]
    assert a["served"] == sum(r["served"] for r in rows)
    assert a["wait_avg_s"] == round(sum(r["wait_avg_s"] * r["waits"] for r in rows)
                                    / a["waits"], 1)
    assert a["satisfaction"] == round(a["likes"] / a["votes"], 4)
    assert "`city/v1/{city}/overview`" in doc and overview_topic("x") == "city/v1/x/overview"


# -- on a real broker, beside two real central services ----------------------------------

QCFG = {"services": {"A": "Passports"}, "tz": "UTC",
        "windows": [{"n": 1, "services": ["A"], "operator": "ivanova"},
                    {"n": 2, "services": ["A"]}]}


def press(central, seq, window, key=None, vote=None, ticket=None):
    e = {"id": f"gw-1.{seq:012d}", "gateway": "gw-1", "seq": seq,
         "ts": "2026-11-23T08:00:00.000Z", "window": window}
    if key:
        e.update(type="key", key=key, action="press")
    else:
        e.update(type="vote", vote=vote, ticket=ticket, misuse=False)
    out, _ = central.handle_event(e)
    assert out.ok, out.reason


def a_day(central, clock, waits, likes):
    """Tickets called after `waits` seconds each at window 1, served, voted on; one left
    waiting."""
    seq = 0
    for wait, like in zip(waits, likes, strict=True):
        t, _ = central.issue("A")
        clock.advance(wait)
        for key in ("call", "start", "finish"):
            seq += 1
            press(central, seq, 1, key)
        if like is not None:
            seq += 1
            press(central, seq, 1, vote="like" if like else "dislike", ticket=t.number)
        clock.advance(30)
    central.issue("A")
    clock.advance(120)


class Watcher:
    """A client keeping every overview published (3.1.1, as the overview service)."""

    def __init__(self, port, topic):
        self.got = []
        self.lock = threading.Lock()
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:8]}",
                        protocol=paho.MQTTv311)
        c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(topic, qos=1)
        c.on_message = self._msg
        c.connect("127.0.0.1", port)
        c.loop_start()
        self.c = c

    def _msg(self, client, userdata, m):
        with self.lock:
            self.got.append(json.loads(m.payload))

    def last(self):
        with self.lock:
            return self.got[-1] if self.got else None

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


TAKEN = ("issued", "served", "noshow", "waits", "wait_avg_s", "wait_p95_s", "over_norm",
         "over_norm_share", "likes", "dislikes", "votes", "satisfaction")


def test_the_service_beside_two_centrals(tmp_path):
    qcfg = QueueConfig.from_dict(QCFG)
    plans = {"t-north": ([60, 200, 1000], [True, True, False]),  # one wait past the norm
             "t-south": ([30, 950, 1200, 100], [True, None, False, False])}
    services, overview, watcher = {}, None, None
    broker = Mosquitto(tmp_path / "broker").start()
    try:
        for site, (waits, likes) in plans.items():
            clock = FakeClock()
            central = Central(qcfg, tmp_path / f"{site}.db", clock)
            a_day(central, clock, waits, likes)
            services[site] = CentralService(central, site, broker.url, stats_s=0.2,
                                            tick_s=0.2).start()
        watcher = Watcher(broker.port, overview_topic("t-city"))
        # The first broker in the list is not there: the service goes on to the next.
        dead = f"mqtt://127.0.0.1:{free_port()}"
        overview = OverviewService("t-city", [dead, broker.url], period_s=0.2, settle_s=0.3,
                                   stale_s=1.5, reconnect_min=0.05).start()
        assert overview.wait_connected(5) and overview.url == broker.url

        def both():
            p = watcher.last()
            return p is not None and all(
                p["centres"].get(s, {}).get("online") is True and
                not p["centres"][s]["stale"] for s in plans)
        wait_for(both, 10, "both centres in the overview")
        p = watcher.last()
        valid(p)
        for site, svc in services.items():  # the centre's own figures, field for field
            with svc.lock:
                own = svc.central.stats()
            row = p["centres"][site]
            assert {k: row[k] for k in TAKEN} == {k: own["all"][k] for k in TAKEN}, site
            assert (row["waiting"], row["longest_wait_s"]) == (
                own["now"]["waiting"], own["now"]["longest_wait_s"]) == (1, 120.0)
            assert row["day"] == DAY and row["windows_open"] == 2
        north, south = p["centres"]["t-north"], p["centres"]["t-south"]
        assert (north["served"], north["over_norm"], north["satisfaction"]) == (3, 1, 0.6667)
        assert (south["served"], south["over_norm"], south["satisfaction"]) == (4, 2, 0.3333)
        a = p["all"]
        assert (a["served"], a["waits"], a["over_norm"], a["votes"]) == (7, 7, 3, 6)
        assert a["over_norm_share"] == round(3 / 7, 4) and a["satisfaction"] == 0.5
        assert a["wait_avg_s"] == round((north["wait_avg_s"] * 3 + south["wait_avg_s"] * 4)
                                        / 7, 1)
        assert p["worst_first"] == ["t-south", "t-north"]  # 2 of 4 over the norm

        # Nothing changes (the centres' clocks stand still): nothing is published again.
        sent = overview.counters["published"]
        with watcher.lock:
            seen = len(watcher.got)
        threading.Event().wait(1.0)  # five periods
        assert overview.counters["published"] == sent
        with watcher.lock:
            assert len(watcher.got) == seen

        # A centre stops: offline at once (its status), stale once its stats stop coming.
        assert services["t-north"].stop() is True
        wait_for(lambda: watcher.last()["centres"]["t-north"]["online"] is False, 5,
                 "t-north offline")
        assert watcher.last()["worst_first"][0] == "t-north"
        wait_for(lambda: watcher.last()["centres"]["t-north"]["stale"], 5, "t-north stale")
        last = watcher.last()
        valid(last)
        assert last["all"]["offline"] == 1 and last["all"]["stale"] == 1
        assert last["centres"]["t-north"]["served"] == 3  # its figures as it left them
        assert not last["centres"]["t-south"]["stale"]

        # The broker restarts: the service finds it again (past the dead URL), and says
        # the overview there again at once, even unchanged.
        sent = overview.counters["published"]
        broker.restart()
        wait_for(lambda: overview.counters["connects"] == 2, 10, "the service reconnected")
        wait_for(lambda: overview.counters["published"] > sent, 5, "published again")
        assert overview.counters["failed_connects"] >= 2  # the dead URL, twice at least

        # Stopped and started again (a worker losing the city's lock, then getting it).
        overview.stop()
        assert not overview.connected
        sent = overview.counters["published"]
        overview.start()
        wait_for(lambda: overview.counters["published"] > sent, 10, "published after a start")
        assert overview.counters["connects"] == 3
    finally:
        if overview is not None:
            overview.stop()
        if watcher is not None:
            watcher.close()
        for svc in services.values():
            svc.stop(timeout=2)
            svc.central.close()
        broker.stop()


def test_bad_parameters():
    for kwargs in ({"period_s": 0}, {"period_s": 10, "refresh_s": 5}):
        with pytest.raises(ValueError, match="period"):
            OverviewService("c", "mqtt://127.0.0.1:1", **kwargs)
    for url in ("http://x", "mqtt://", "mqtt://h:99999", "mqtt://h/path"):
        with pytest.raises(ValueError, match="broker url"):
            OverviewService("c", url)
    with pytest.raises(ValueError, match="no broker"):
        OverviewService("c", [])
    with pytest.raises(ValueError, match="ca_file /nowhere/ca.pem: no such file"):
        OverviewService("c", "mqtts://127.0.0.1", ca_file="/nowhere/ca.pem")
