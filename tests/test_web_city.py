"""The city page (hallgate/web/citypage.py) in a real browser (Debian's chromium, headless,
driven by Playwright) beside a real mosquitto: a test publishes the centres' stats and
status as their centrals would, the overview service (central/overview.py) makes the
city's topic of them, and the page shows it: every centre worst first with its figures,
the city's totals, the colours, the links to each centre's manager's view, live. Then
`hallgate central overview --http` as a command, and the page's bad requests.
The screenshot goes to the test's folder (and to $HALLGATE_SCREENSHOTS if set: the
README's come from there)."""

import json
import random
import signal
import sys

import browsing
import paho.mqtt.client as paho
import pytest
from browsing import launched, request, screenshot
from conftest import wait_for
from hallgate.central.overview import OverviewService
from hallgate.sim.broker import Mosquitto, free_port, port_accepts
from harness import Child
from paho.mqtt.enums import CallbackAPIVersion

from hallgate.cli import main
from hallgate.web.citypage import CityPages

SCREEN = {"width": 1920, "height": 1080}
CITY = "moscow"
SITES = [f"msk-{n:02d}" for n in range(1, 13)]
MANAGER = "http://{site}.halls.example:8080/"

# Every figure of the page, as the raw values its elements carry.
FIGURES = """() => {
  const v = (e) => JSON.parse(e.dataset.value);
  const row = (tr) => {
    const out = {};
    tr.querySelectorAll("[data-key]").forEach((td) => { out[td.dataset.key] = v(td); });
    return out;
  };
  const kpis = {};
  document.querySelectorAll("[data-kpi]").forEach((e) => { kpis[e.dataset.kpi] = v(e); });
  const total = document.getElementById("city-total");
  return {order: Array.from(document.querySelectorAll("#centres tbody tr")).map(
            (tr) => tr.dataset.site),
          rows: Object.fromEntries(Array.from(document.querySelectorAll("#centres tbody tr"))
            .map((tr) => [tr.dataset.site, row(tr)])),
          total: total ? row(total) : null, kpis: kpis};
}"""
SHOWN = ("waiting", "longest_wait_s", "windows_open", "issued", "served", "wait_avg_s",
         "over_norm_share", "satisfaction")


def centre_stats(rng, day="2026-11-23"):
    """A centre's central/stats at midday, as a central would publish them."""
    served = rng.randint(60, 320)
    waits = served + rng.randint(0, 12)
    over = int(waits * rng.choice([0, 0, 0.01, 0.03, 0.06, 0.12, 0.2]))
    votes = rng.randint(10, served // 2)
    likes = round(votes * rng.uniform(0.6, 0.98))
    waiting = rng.randint(0, 25)
    windows = {str(n): {"mode": rng.choice(["serving", "serving", "called", "idle", "closed"])}
               for n in range(1, rng.randint(4, 12))}
    return {"day": day, "norm_s": 900, "warn_s": 600, "tz": "Europe/Moscow",
            "all": {"issued": waits + waiting + rng.randint(0, 5), "served": served,
                    "noshow": waits - served, "waits": waits,
                    "wait_avg_s": round(rng.uniform(150, 620) + 1500 * over / waits, 1),
                    "wait_p95_s": 1100.0, "over_norm": over,
                    "over_norm_share": round(over / waits, 4), "likes": likes,
                    "dislikes": votes - likes, "votes": votes, "misuse": 1},
            "by_window": {}, "by_service": {}, "by_operator": {},
            "now": {"at": 1795425731.3, "waiting": waiting,
                    "longest_wait_s": round(rng.uniform(60, 1400), 1) if waiting else 0.0,
                    "windows": windows}}


class City:
    """A broker, a publisher playing the centres' centrals, the overview service and the
    city page, all in this process."""

    def __init__(self, folder):
        self.broker = Mosquitto(folder / "broker").start()
        self.rng = random.Random(14)
        self.stats = {s: centre_stats(self.rng) for s in SITES[:-1]}  # msk-12: never heard
        pub = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        pub.connect("127.0.0.1", self.broker.port)
        pub.loop_start()
        self.pub = pub
        for site, body in self.stats.items():
            self.publish(site, "stats", body)
            self.publish(site, "status", {"state": "offline" if site == "msk-07" else "online"})
        self.overview = OverviewService(CITY, self.broker.url, sites=SITES, period_s=0.2,
                                        settle_s=0.3).start()
        self.pages = CityPages(CITY, self.broker.url, "127.0.0.1", 0, manager=MANAGER).start()

    def publish(self, site, kind, body):
        self.pub.publish(f"hall/v1/{site}/central/{kind}", json.dumps(body), qos=1,
                         retain=True).wait_for_publish(5)

    def close(self):
        self.pages.stop()
        self.overview.stop()
        self.pub.disconnect()
        self.pub.loop_stop()
        self.broker.stop()


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    c = City(tmp_path_factory.mktemp("web-city"))
    try:
        yield c
    finally:
        c.close()


def banner(page):
    return page.evaluate("document.getElementById('banner').hidden ? null : "
                         "document.getElementById('banner').textContent")


def test_the_city_page_shows_every_centre_worst_first_live(city, tmp_path):
    with launched() as browser:
        page = browsing.open_page(browser, city.pages.url, SCREEN)

        def want(row):  # the oldest wait is shown while someone waits (as the manager's)
            return {**{k: row[k] for k in SHOWN},
                    "longest_wait_s": row["longest_wait_s"] if row["waiting"] else None}

        def shown_is_published():
            p = city.overview.last
            got = page.evaluate(FIGURES)
            return p is not None and got["order"] == p["worst_first"] and all(
                {k: got["rows"][s][k] for k in SHOWN} == want(p["centres"][s])
                for s in p["centres"]) and got["total"] is not None and {
                k: got["total"][k] for k in SHOWN} == want(p["all"])

        wait_for(lambda: len(page.evaluate(FIGURES)["order"]) == 12, 15, "twelve centres")
        wait_for(shown_is_published, 10, "the page = the overview")
        p = city.overview.last
        got = page.evaluate(FIGURES)
        # The silent ones first: the one never heard from, the one offline.
        assert set(got["order"][:2]) == {"msk-07", "msk-12"}
        assert got["rows"]["msk-07"]["state"] == "offline"
        assert got["rows"]["msk-12"]["state"] == "stale"
        shares = [p["centres"][s]["over_norm_share"] for s in got["order"][2:]]
        assert shares == sorted(shares, reverse=True)
        # Each centre's figures are its own stats'.
        for site, body in city.stats.items():
            assert got["rows"][site]["served"] == body["all"]["served"]
            assert got["rows"][site]["over_norm_share"] == body["all"]["over_norm_share"]
            assert got["rows"][site]["waiting"] == body["now"]["waiting"]
        assert got["kpis"]["served"] == sum(b["all"]["served"] for b in city.stats.values())
        assert got["kpis"]["online"] == 10
        # Colours: the share over the norm amber above 0, red from 10%.
        for site in city.stats:
            share = p["centres"][site]["over_norm_share"]
            colour = "wait-over" if share >= 0.1 else "wait-warn" if share > 0 else "wait-ok"
            cell = page.locator(f"tr[data-site='{site}'] td[data-key='over_norm_share']")
            assert cell.get_attribute("class") == f"num {colour}", (site, share)
        link = page.locator("tr[data-site='msk-03'] td.name a")
        assert link.get_attribute("href") == "http://msk-03.halls.example:8080/"
        assert banner(page) is None
        screenshot(page, tmp_path, "city", full_page=True, readme=True)

        # Live: a centre's next stats, and one going offline, without a reload.
        best = got["order"][-1]
        city.stats[best]["all"]["served"] += 7
        city.stats[best]["all"]["over_norm"] = city.stats[best]["all"]["waits"]  # all over
        city.publish(best, "stats", city.stats[best])
        wait_for(lambda: page.evaluate(FIGURES)["rows"][best]["served"] == (
            city.stats[best]["all"]["served"]), 5, "the new figures on the page")
        wait_for(lambda: page.evaluate(FIGURES)["order"][2] == best, 5, "moved up: 100% over")
        city.publish("msk-03", "status", {"state": "offline", "reason": "connection-lost"})
        wait_for(lambda: page.evaluate(FIGURES)["rows"]["msk-03"]["state"] == "offline", 5,
                 "msk-03 offline")
        assert "msk-03" in page.evaluate(FIGURES)["order"][:3]
        assert page.evaluate(FIGURES)["kpis"]["online"] == 9
        assert page.errors == []
        page.close()


@pytest.mark.parametrize("method,path,status", [
    ("GET", "/nope", 404),
    ("GET", "/city/", 404),
    ("GET", "/city?x=1", 400),
    ("GET", "/api/city?since=0", 400),
    ("GET", "/api/city/events?x", 400),
    ("GET", "/static/city.html", 404),
    ("POST", "/city", 405),
    ("DELETE", "/api/city", 405),
    ("OPTIONS", "/city", 405),
])
def test_bad_requests_get_a_4xx(city, method, path, status):
    got, headers, body = request(city.pages.server.port, method, path)
    assert got == status, body
    text = body.decode()
    assert text.strip() and "Traceback" not in text and len(text) < 300


def test_the_api_and_the_redirect(city):
    got, headers, _ = request(city.pages.server.port, "GET", "/")
    assert got == 302 and headers["location"] == "/city"
    wait_for(lambda: json.loads(request(city.pages.server.port, "GET", "/api/city")[2])[
        "overview"] is not None, 10, "the overview at the API")
    state = json.loads(request(city.pages.server.port, "GET", "/api/city")[2])
    assert state["city"] == CITY and state["manager_url"] == MANAGER
    assert state["status"]["broker"] is True and state["status"]["overview_age_s"] < 60
    assert len(state["overview"]["centres"]) == 12


def test_the_command(tmp_path, capsys):
    """`hallgate central overview --http`: the service and the page, over two broker URLs
    (the first not there); SIGTERM ends it cleanly. Bad arguments: exit 2, said why."""
    with Mosquitto(tmp_path / "broker") as broker:
        pub = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        pub.publish("hall/v1/c-1/central/stats", json.dumps(centre_stats(random.Random(1))),
                    qos=1, retain=True).wait_for_publish(5)
        port = free_port()
        cmd = Child([sys.executable, "-m", "hallgate.cli", "central", "overview", "--city",
                     "cli-city", "--broker", f"mqtt://127.0.0.1:{free_port()}", "--broker",
                     broker.url, "--period", "0.2", "--http", f"127.0.0.1:{port}"],
                    tmp_path / "overview.log").start()
        try:
            wait_for(lambda: port_accepts("127.0.0.1", port), 15, "the page's port")

            def overview():
                got = request(port, "GET", "/api/city")
                return json.loads(got[2])["overview"] if got[0] == 200 else None
            wait_for(lambda: (overview() or {}).get("centres", {}).get("c-1"), 10,
                     "c-1 on the city page")
            assert overview()["all"]["centres"] == 1
            cmd.proc.send_signal(signal.SIGTERM)
            assert cmd.proc.wait(10) == 0, cmd.log()
        finally:
            cmd.close()
            pub.disconnect()
            pub.loop_stop()
    for args, said in ((["--city", "a/b"], "city 'a/b'"),
                       (["--city", "c", "--http", "127.0.0.1:0", "--manager-url", "nope"],
                        "{site}"),
                       (["--city", "c", "--period", "0"], "period")):
        # in this process: refused before anything starts (as a child, Python's start-up
        # would be most of this test's time)
        assert main(["central", "overview", "--broker", "mqtt://127.0.0.1:1", *args]) == 2
        assert said in capsys.readouterr().err
