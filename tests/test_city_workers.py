"""The city's central workers (central/city.py) on a real PostgreSQL and real brokers: sites
split between workers, a SIGKILLed worker's sites taken over within seconds with every event
committed exactly once, a fenced site (its connection cut) stopped and served again, the
central service failing over between brokers, and clear errors for a bad city file."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from conftest import wait_for
from hallgate.central.city import CityConfigError, CityWorker, load_city
from hallgate.central.mqtt import CentralService
from hallgate.central.queue import QueueConfig
from hallgate.central.service import Central
from hallgate.gateway.mqtt import MqttLink
from hallgate.sim.broker import Mosquitto
from paho.mqtt.enums import CallbackAPIVersion
from test_pgstore import postgres_or_skip

QUEUE = ('services = { A = "Passports" }\n'
         '[[windows]]\nn = 1\nservices = ["A"]\n[[windows]]\nn = 2\nservices = ["A"]\n')
GW = "gw-1"


@pytest.fixture(scope="module")
def pg():
    with postgres_or_skip() as server:
        yield server


def need_nats():
    """nats-server: fails under CI (make installs it), skips elsewhere, saying why."""
    import shutil

    if not shutil.which("nats-server"):
        why = "nats-server is missing (make test installs it)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


def write_city(folder: Path, brokers, dsn, sites, name="t"):
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["[city]", f'name = "{name}"',
             "brokers = [" + ", ".join(f'"{b}"' for b in brokers) + "]",
             'protocol = "3.1.1"', f'database = "{dsn}"']
    for s in sites:
        (folder / f"{s}.toml").write_text(QUEUE)
        lines += ["", "[[sites]]", f'name = "{s}"', f'queue = "{s}.toml"']
    path = folder / "city.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def event(site, i, window):
    """A vote with voting closed: journaled by the central whatever its state."""
    eid = f"{site}-{i}"
    return eid, json.dumps({
        "id": eid, "gateway": GW, "seq": i, "ts": "2026-12-05T10:00:00.000Z",
        "window": window, "type": "vote", "vote": "like", "ticket": None, "misuse": True,
        "misuse_reason": "voting closed"}).encode()


def journal(dsn, sites):
    """{(site, event id): times committed} from the city's database."""
    import psycopg

    with psycopg.connect(dsn) as c:
        return {(s, i): n for s, i, n in c.execute(
            "SELECT site, id, count(*) FROM journal WHERE site = ANY(%s) GROUP BY site, id",
            (list(sites),))}


class Worker:
    """`hallgate central worker` as a process; its JSON lines collected as they come."""

    def __init__(self, city, name, poll=0.3):
        self.name = name
        self.lines = []
        self.log = open(Path(city).parent / f"{name}.log", "w")  # its stderr, for a failure
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hallgate.cli", "central", "worker", "--city", str(city),
             "--name", name, "--poll", str(poll)],
            stdout=subprocess.PIPE, stderr=self.log, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(json.loads(line))

    def owned(self):
        now = set()
        for e in list(self.lines):
            if "site" in e:
                (now.add if e["owned"] else now.discard)(e["site"])
        return now

    def leads(self):
        """Whether it runs the city overview now (its last overview line says so)."""
        said = [e["reason"] for e in list(self.lines)
                if "site" not in e and e["reason"].startswith("overview-")]
        return bool(said) and said[-1] == "overview-lead"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


class OverviewReader:
    """Every city overview published, with the (real) time it came."""

    def __init__(self, url, city, protocol):
        host, port = url.split("://", 1)[1].rsplit(":", 1)
        self.seen = []
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"overview-reader-{city}",
                        protocol=paho.MQTTv5 if protocol == "5" else paho.MQTTv311)
        c.on_connect = lambda c, *_: c.subscribe(f"city/v1/{city}/overview", 1)
        c.on_message = lambda c, u, m: self.seen.append((time.time(), json.loads(m.payload)))
        c.connect(host, int(port))
        c.loop_start()
        self.client = c

    def after(self, t, sites):
        return any(at > t and {s for s, f in o["centres"].items() if f.get("online")} == sites
                   for at, o in list(self.seen))

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def run_city_with_kills(tmp_path, pg, urls, *, n_sites, n_workers, per_site, kills,
                        protocol="5", settle_s=20):
    """Workers over `n_sites`, a gateway link per site feeding `per_site` events; at each
    fraction of the stream in `kills` the worker owning most sites is SIGKILLed. Checks the
    split, the take-over time, 0 lost and 0 counted twice in the database. Site names are
    the test's own: the module's tests share one database, and a store's rows are keyed by
    site (one city per database)."""
    prefix = "".join(c for c in tmp_path.name if c.isalnum())[-12:]
    sites = [f"{prefix}-{i:02d}" for i in range(n_sites)]
    city = write_city(tmp_path / "city", urls, pg.dsn, sites, name=tmp_path.name)
    workers = [Worker(city, f"w{k + 1}") for k in range(n_workers)]
    share = -(-n_sites // n_workers)
    links = []
    overviews = OverviewReader(urls[0], tmp_path.name, protocol)
    try:
        wait_for(lambda: sorted(len(w.owned()) for w in workers)[-1] <= share
                 and sum(len(w.owned()) for w in workers) == n_sites, settle_s,
                 "the sites split between the workers")
        delivered: dict[str, set] = {s: set() for s in sites}
        for s in sites:
            link = MqttLink(s, GW, urls, windows=[1, 2], protocol=protocol,
                            delivery="receipt", receipt_timeout=1.0, reconnect_max=0.5,
                            on_delivered=lambda toks, s=s: delivered[s].update(toks))
            links.append(link.start())
        sent, killed = [], []
        at = {int(per_site * f) for f in kills}
        for i in range(per_site):
            for k, s in enumerate(sites):
                eid, payload = event(s, i, 1 + (i + k) % 2)
                wait_for(lambda link=links[k]: link.room > 0, 20, "room in the link")
                links[k].publish_event(1 + (i + k) % 2, payload, token=eid, event_id=eid)
                sent.append((s, eid))
            if i in at:  # mid-stream: a worker dies with events in flight
                alive = [w for w in workers if w.proc.poll() is None]
                victim = max(alive, key=lambda w: len(w.owned()))
                killed.append((time.time(), victim, victim.owned()))
                victim.proc.send_signal(signal.SIGKILL)
            time.sleep(0.01)
        alive = [w for w in workers if w.proc.poll() is None]  # the dead's lines still
        for t, victim, lost in killed:  # name the sites they had
            wait_for(lambda lost=lost: lost <= set().union(*(w.owned() for w in alive)), 15,
                     f"{victim.name}'s sites taken over")
            others = [w for w in workers if w not in {v for tk, v, _ in killed if tk <= t}]
            timeline = sorted((e["ts"] - t, e["worker"], e["site"]) for w in others
                              for e in list(w.lines)
                              if e.get("owned") and e.get("site") in lost and e["ts"] > t)
            first = {}  # site -> seconds from the kill to its first new owner
            for dt, _, site in timeline:
                first.setdefault(site, dt)
            assert set(first) == lost and max(first.values()) < 5.0, timeline
        wait_for(lambda: sum(map(len, delivered.values())) == len(sent), 60,
                 "every event receipted")
        counts = journal(pg.dsn, sites)
        assert set(counts) == set(sent)  # 0 lost
        assert {n for n in counts.values()} == {1}  # 0 counted twice
        # One worker leads the city overview; after the kills it still comes, every centre
        # in it and online (from the leader that was killed, or a new one).
        alive = [w for w in workers if w.proc.poll() is None]
        assert sum(w.leads() for w in alive) == 1, [w.lines for w in workers]
        last_kill = killed[-1][0]
        wait_for(lambda: overviews.after(last_kill, set(sites)), 30,
                 "a city overview after the kills with every centre online")
    finally:
        overviews.close()
        for link in links:
            link.stop(timeout=2)
        for w in workers:
            w.stop()


def test_workers_split_the_sites_and_a_killed_one_loses_nothing(tmp_path, pg, broker):
    run_city_with_kills(tmp_path, pg, [broker.url], n_sites=6, n_workers=2, per_site=120,
                        kills=[1 / 3])


@pytest.mark.soak
def test_three_workers_two_killed_in_turn_lose_nothing(tmp_path, pg, broker):
    run_city_with_kills(tmp_path, pg, [broker.url], n_sites=24, n_workers=3, per_site=400,
                        kills=[0.25, 0.6])


@pytest.mark.soak
def test_workers_on_a_nats_cluster_a_killed_one_loses_nothing(tmp_path, pg):
    """The city's broker: the new owner resumes the site's session on the cluster."""
    from hallgate.sim.natscluster import start_cluster

    need_nats()
    with start_cluster(tmp_path / "nats") as cluster:
        run_city_with_kills(tmp_path, pg, cluster.urls, n_sites=6, n_workers=2, per_site=100,
                            kills=[0.3], protocol="3.1.1", settle_s=40)


class Lines:
    """A worker's `events` stream, kept as parsed lines."""

    def __init__(self):
        self.lines = []

    def write(self, s):
        self.lines.append(json.loads(s))

    def flush(self):
        pass


def in_process(city, name, **kw):
    out = Lines()
    w = CityWorker(city, name, poll_s=0.1, settle_s=0, events=out, **kw)
    w.lines = out.lines
    w.thread = threading.Thread(target=w.run, daemon=True)
    w.thread.start()
    return w


def test_a_joining_worker_gets_its_share_handed_over(tmp_path, pg, broker):
    sites = [f"j{i}" for i in range(6)]
    city = load_city(write_city(tmp_path / "city", [broker.url], pg.dsn, sites, name="join"))
    workers = [in_process(city, "j1")]
    try:
        wait_for(lambda: len(workers[0].owned) == 6, 10, "the first worker owning all 6")
        workers.append(in_process(city, "j2"))
        wait_for(lambda: [len(w.owned) for w in workers] == [3, 3], 10, "3 and 3")
        workers.append(in_process(city, "j3"))
        wait_for(lambda: [len(w.owned) for w in workers] == [2, 2, 2], 10, "2, 2 and 2")
        handed = [e for e in workers[0].lines if e.get("owned") is False]
        assert {e["reason"] for e in handed} == {"share"} and len(handed) == 4
        twin = CityWorker(city, "j2", events=Lines())  # a second worker of the same name
        with pytest.raises(RuntimeError, match="another worker named 'j2'"):
            twin.poll()
        twin.close()
    finally:
        for w in workers:
            w.stop()
        for w in workers:
            w.thread.join(10)


def test_a_site_whose_connection_is_cut_is_stopped_and_served_again(tmp_path, pg, broker):
    """Fencing: the lock lives with the site's connection; the worker notices it gone.
    Then the whole database restarts: every site is dropped and taken again."""
    import psycopg

    sites = ["f1", "f2"]
    city = load_city(write_city(tmp_path / "city", [broker.url], pg.dsn, sites, name="fence"))
    w = in_process(city, "solo")
    lines, t = w.lines, w.thread
    try:
        wait_for(lambda: set(w.owned) == set(sites), 10, "both sites owned")
        wait_for(lambda: all(o.service.connected for o in w.owned.values()), 10, "connected")
        victim = w.owned["f1"]
        with psycopg.connect(pg.dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (victim.conn.info.backend_pid,))
        wait_for(lambda: any(e.get("reason") == "lost-lock" for e in lines), 5,
                 "the site dropped")
        assert victim.service._stop.is_set()  # its service stopped, its connection gone
        wait_for(lambda: "f1" in w.owned and w.owned["f1"] is not victim, 5, "f1 taken again")
        svc = w.owned["f1"].service
        wait_for(lambda: svc.connected, 10, "f1 connected again")
        before = dict(w.owned)
        pg.restart(kill=True)
        wait_for(lambda: set(w.owned) == set(sites) and all(
            w.owned[s] is not before[s] for s in sites), 15, "both sites taken again")
        dropped = [e["site"] for e in lines if e.get("reason") == "lost-lock"]
        assert sorted(dropped) == ["f1", "f1", "f2"]
    finally:
        w.stop()
        t.join(10)
    assert w.owned == {}


def test_the_central_service_fails_over_to_the_next_broker(tmp_path):
    a = Mosquitto(tmp_path / "a").start()
    b = Mosquitto(tmp_path / "b").start()
    central = Central(QueueConfig.from_dict({"services": {"A": "P"},
                                             "windows": [{"n": 1, "services": ["A"]}]}),
                      tmp_path / "c.db")
    svc = CentralService(central, "fo", [a.url, b.url], protocol="3.1.1", tick_s=0.2,
                         reconnect_min=0.1, reconnect_max=0.3)
    pub = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
    try:
        svc.start()
        assert svc.wait_connected(10) and svc.url == a.url
        a.kill()
        wait_for(lambda: svc.connected and svc.url == b.url, 15, "connected to broker b")
        pub.connect("127.0.0.1", b.port)
        pub.loop_start()
        eid, payload = event("fo", 1, 1)
        pub.publish("hall/v1/fo/window/1/event", payload, qos=1).wait_for_publish(5)
        wait_for(lambda: svc.counters["events"] == 1, 10, "the event at the central")
        a.start()  # back: the service stays where it is until that connection is lost
        b.kill()
        wait_for(lambda: svc.connected and svc.url == a.url, 15, "back on broker a")
    finally:
        pub.loop_stop()
        svc.stop(timeout=2)
        central.close()
        a.stop()
        b.stop()


def test_the_central_service_fails_over_between_nats_nodes(tmp_path):
    """On the city's broker: a NATS cluster's node killed, the session found on another."""
    from hallgate.sim.natscluster import start_cluster

    need_nats()
    with start_cluster(tmp_path / "nats") as cluster:
        central = Central(QueueConfig.from_dict({"services": {"A": "P"},
                                                 "windows": [{"n": 1, "services": ["A"]}]}),
                          tmp_path / "c.db")
        svc = CentralService(central, "nf", cluster.urls, protocol="3.1.1",
                             reconnect_min=0.1, reconnect_max=0.5)
        pub = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
        try:
            svc.start()
            assert svc.wait_connected(20)
            first = svc.url
            cluster.kill(cluster.urls.index(first))
            wait_for(lambda: svc.connected and svc.url != first, 20, "on another node")
            other = next(u for u in cluster.urls if u not in (first, svc.url))
            pub.connect("127.0.0.1", int(other.rsplit(":", 1)[1]))
            pub.loop_start()
            _, payload = event("nf", 1, 1)
            pub.publish("hall/v1/nf/window/1/event", payload, qos=1).wait_for_publish(10)
            wait_for(lambda: svc.counters["events"] == 1, 15, "the event at the central")
        finally:
            pub.loop_stop()
            svc.stop(timeout=2)
            central.close()


def test_a_refused_subscription_is_asked_again_before_going_online(tmp_path, broker):
    """As a NATS node does right after another died: SUBACK 0x80. Online only once
    subscribed (gateways re-send on "online": into the void, were it not subscribed)."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    central = Central(QueueConfig.from_dict({"services": {"A": "P"},
                                             "windows": [{"n": 1, "services": ["A"]}]}),
                      tmp_path / "c.db")
    svc = CentralService(central, "rs", broker.url, protocol="3.1.1")
    try:
        svc.start()
        assert svc.wait_connected(10)
        svc._connected.clear()  # as on a new connection, before its SUBACK
        refusal = ReasonCode(PacketTypes.SUBACK, identifier=0x80)
        svc._on_subscribe(svc.client, None, svc._sub_mid, [refusal], None)
        assert svc.counters["subscriptions_refused"] == 1
        time.sleep(0.1)
        assert not svc.connected
        wait_for(lambda: svc.connected, 5, "subscribed again, then online")
    finally:
        svc.stop(timeout=2)
        central.close()


def test_the_central_service_refuses_a_bad_list_of_brokers(tmp_path):
    central = Central(QueueConfig.from_dict({"services": {"A": "P"},
                                             "windows": [{"n": 1, "services": ["A"]}]}),
                      tmp_path / "c.db")
    try:
        for urls, what in ((["mqtt://a:1", "mqtts://b:2"], "all mqtt:// or all mqtts://"),
                           (["mqtt://a:1", "tcp://b"], "'tcp://b'"), ([], "no broker url"),
                           (["mqtt://a:70000"], "'mqtt://a:70000'")):
            with pytest.raises(ValueError, match=what):
                CentralService(central, "x", urls)
        svc = CentralService(central, "x", ["mqtt://a", "mqtts://b:8884".replace("s", "")])
        assert (svc.url, svc.host, svc.port) == ("mqtt://a", "a", 1883)
    finally:
        central.close()


# -- the city file ----------------------------------------------------------------------------

GOOD = """[city]
name = "msk"
brokers = ["mqtt://127.0.0.1:4101", "mqtt://127.0.0.1:4102"]
database = "postgresql://postgres@127.0.0.1:5999/hallgate"

[[sites]]
name = "c001"
queue = "c001.toml"

[[sites]]
name = "c002"
queue = "c002.toml"
"""


@pytest.mark.parametrize("change, message", [
    (lambda t: t.replace('database', 'colour = "red"\ndatabase'),
     "city.toml:4: city.colour: unknown key"),
    (lambda t: t.replace('queue = "c002.toml"', 'queue = "c002.toml"\nsize = 3'),
     "city.toml:13: sites[1].size: unknown key"),
    (lambda t: t.replace('"c002"', '"c001"'), "city.toml:11: site 'c001': a second"),
    (lambda t: t.replace('c002.toml"', 'nowhere.toml"'), "city.toml:12: site 'c002': queue: "),
    (lambda t: t.replace('mqtt://127.0.0.1:4102', 'http://x'),
     "city.toml:3: city.brokers: 'http://x'"),
    (lambda t: t.replace('postgresql://', 'mysql://'), "city.toml:4: city.database"),
    (lambda t: t.replace('brokers', '#'), "city.brokers: missing"),
    (lambda t: t + "[extra]\nx = 1\n", "city.toml:13: extra: unknown key"),
    (lambda t: t.replace(':4102', ':99999'), "city.brokers: 'mqtt://127.0.0.1:99999'"),
    (lambda t: t.replace('database', 'desired = "all"\ndatabase'),
     "city.toml:4: city.desired: 'all' must be \"windows\""),
    (lambda t: t.replace('database', 'desired_batch_s = 99\ndatabase'),
     "city.toml:4: city.desired_batch_s: 99.0 must be 0-60 seconds"),
])
def test_a_bad_city_file_is_refused_naming_file_key_and_line(tmp_path, change, message):
    for s in ("c001", "c002"):
        (tmp_path / f"{s}.toml").write_text(QUEUE)
    (tmp_path / "city.toml").write_text(change(GOOD))
    with pytest.raises(CityConfigError) as e:
        load_city(tmp_path / "city.toml")
    assert message in str(e.value)
    assert str(tmp_path / "city.toml") in str(e.value)


def test_a_site_queue_file_error_names_the_site_and_the_cli_exits_2(tmp_path, capsys):
    from hallgate.cli import main

    (tmp_path / "c001.toml").write_text(QUEUE)
    (tmp_path / "c002.toml").write_text('site = "other"\n' + QUEUE)
    (tmp_path / "city.toml").write_text(GOOD)
    assert main(["central", "worker", "--city", str(tmp_path / "city.toml"),
                 "--name", "w1"]) == 2
    err = capsys.readouterr().err
    assert "site 'c002': queue:" in err and "site = 'other', not 'c002'" in err
    (tmp_path / "c002.toml").write_text(QUEUE.replace("[[windows]]\nn = 2\n", "[[windows]]\n"))
    with pytest.raises(CityConfigError, match=r"site 'c002'.*windows\[1\].n: missing"):
        load_city(tmp_path / "city.toml")
    (tmp_path / "c002.toml").write_text(QUEUE)
    city = load_city(tmp_path / "city.toml")
    assert [s.name for s in city.sites] == ["c001", "c002"] and city.protocol == "3.1.1"
    assert (city.desired, city.desired_batch_s) == ("windows", 0.25)
    (tmp_path / "city.toml").write_text(GOOD.replace("database", 'desired = "site"\ndatabase'))
    assert load_city(tmp_path / "city.toml").desired == "site"
    assert city.sites[0].config.queue.services
