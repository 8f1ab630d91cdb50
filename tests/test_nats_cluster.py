"""The city's broker: a real 3-node nats-server JetStream cluster with MQTT listeners
(sim/natscluster.py) running the permissions hardware/make_nats.py writes, and the real
gateway MqttLink on it with `subscribe="kinds"` and MQTT 3.1.1.

- A cluster starts ready: a meta leader, every MQTT port takes a CONNECT.
- Permissions (the generated ones): a gateway reads its desired state, drops its site's other
  windows' commands silently, and an event it publishes for another gateway's window reaches
  no one (NATS still PUBACKs it).
- Events go through a node's SIGKILL with 0 lost (the link fails over to the next URL; the
  witness, an independent monitor-user subscriber, sits on a node that is not killed).
- TLS with client certificates (make_test_ca.py): the certificate's subject is the user.
- The same "kinds" link on mosquitto (which the mosquitto ACL would not allow for a gateway,
  but a broker without ACL does).
One cluster per module: a start is ~3 s, a node's restart ~9 s (its streams elect leaders).
"""

import json
import os
import sys
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from conftest import ROOT, wait_for
from hallgate.gateway.mqtt import MqttLink
from hallgate.sim import natscluster
from hallgate.sim.broker import Mosquitto
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, str(ROOT / "hardware"))
import make_nats  # noqa: E402  (hardware/ scripts, imported for their functions)
import make_test_ca  # noqa: E402
from make_acl import GatewayEntry  # noqa: E402

SITE = "city-1"
GATEWAYS = [GatewayEntry(SITE, "gw-1", (1, 2, 3), "test"),
            GatewayEntry(SITE, "gw-2", (4, 5, 6), "test")]
MONITOR = "witness"
PASSWORD = "secret-of-the-test"


def need_nats():
    """nats-server's path; fails under CI (make installs it), skips elsewhere, saying why."""
    try:
        return natscluster.nats_binary()
    except natscluster.ClusterError as e:
        if os.environ.get("CI"):
            pytest.fail(str(e))
        pytest.skip(str(e))


def password_users():
    """make_nats's users for GATEWAYS, a central and a monitor, logging in by password."""
    users = make_nats.nats_users(GATEWAYS, monitors=[(SITE, MONITOR)], user_name=lambda cn: cn)
    return [{**u, "password": PASSWORD} for u in make_nats.strip_comments(users)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    need_nats()
    c = natscluster.start_cluster(tmp_path_factory.mktemp("nats"), users=password_users())
    print(f"cluster ready in {c.start_seconds:.2f} s")
    yield c
    c.stop()


def port_of(url):
    return int(url.rsplit(":", 1)[1])


class Witness:
    """A QoS 1 subscriber with a persistent session (MQTT 3.1.1), as a central would be."""

    def __init__(self, url, topic_filter, username, client_id):
        self.messages = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                        protocol=mqtt.MQTTv311, clean_session=False)
        c.username_pw_set(username, PASSWORD)
        c.reconnect_delay_set(0.1, 1.0)
        c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(topic_filter, qos=1)
        c.on_subscribe = lambda *a: self.subscribed.set()
        c.on_message = self._on_message
        c.connect("127.0.0.1", port_of(url))
        c.loop_start()
        self.client = c
        assert self.subscribed.wait(10), "witness could not subscribe"

    def _on_message(self, client, userdata, msg):
        with self.lock:
            self.messages.append((msg.topic, msg.payload))

    def topics(self):
        with self.lock:
            return [t for t, _ in self.messages]

    def ids(self):
        with self.lock:
            return [json.loads(p)["id"] for _, p in self.messages]

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def client_as(url, username, client_id):
    """A connected paho client (3.1.1, clean session) logged in as `username`."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    c.username_pw_set(username, PASSWORD)
    c.connect("127.0.0.1", port_of(url))
    c.loop_start()
    return c


class Recorder:
    def __init__(self):
        self.commands, self.delivered = [], []
        self.lock = threading.Lock()

    def on_command(self, window, kind, command):
        with self.lock:
            self.commands.append((window, kind, command))

    def on_delivered(self, tokens):
        with self.lock:
            self.delivered.extend(tokens)


def gateway_link(urls, gateway="gw-1", windows=(1, 2, 3), **kw):
    rec = Recorder()
    kw.setdefault("username", make_test_ca.gateway_cn(SITE, gateway))
    kw.setdefault("password", PASSWORD)
    kw.setdefault("subscribe", "kinds")
    link = MqttLink(SITE, gateway, urls, protocol="3.1.1",
                    windows=windows, delivery="puback", on_command=rec.on_command,
                    on_delivered=rec.on_delivered, reconnect_max=1.0, **kw)
    link.rec = rec
    return link


def event(i, window):
    return json.dumps({"id": f"ev-{i}", "window": window, "n": i}).encode()


# -- the cluster -----------------------------------------------------------------------------


def test_cluster_is_ready_on_three_nodes(cluster):
    assert cluster.protocol == "3.1.1"
    assert len(cluster.urls) == 3 and all(u.startswith("mqtt://127.0.0.1:") for u in cluster.urls)
    assert all(cluster.alive(i) for i in range(3))
    leaders = {cluster.meta_leader(i) for i in range(3)}
    assert len(leaders) == 1 and None not in leaders, leaders
    assert cluster.start_seconds < 30


def test_bad_arguments_say_what():
    with pytest.raises(ValueError, match="nodes"):
        natscluster.NatsCluster("/tmp/unused", nodes=0)
    with pytest.raises(ValueError, match=r"users\[0\]"):
        natscluster.NatsCluster("/tmp/unused", users=[{"name": "x"}])
    with pytest.raises(ValueError, match="tls: missing key_file"):
        natscluster.NatsCluster("/tmp/unused", tls={"cert_file": "c"})


# -- permissions, as make_nats.py writes them ------------------------------------------------


def test_gateway_reads_its_desired_state_and_drops_other_windows(cluster):
    central = client_as(cluster.urls[1], make_test_ca.central_cn(SITE), "central-perm")
    try:
        for window, text in ((2, "A001"), (5, "B002")):  # 5 is gw-2's
            central.publish(f"hall/v1/{SITE}/window/{window}/display",
                            json.dumps({"version": 1, "text": text}), qos=1,
                            retain=True).wait_for_publish(5)
        link = gateway_link(cluster.urls).start()
        try:
            wait_for(lambda: link.rec.commands, timeout=15, what="gw-1's display command")
            wait_for(lambda: link.stats.foreign, timeout=5, what="window 5's, dropped")
            time.sleep(0.2)
            assert [(w, k, c.text) for w, k, c in link.rec.commands] == [(2, "display", "A001")]
            assert link.stats.rejected == 0 and link.stats.errors_published == 0
            assert link.stats.foreign == 1
        finally:
            link.stop(timeout=3)
    finally:
        central.disconnect()
        central.loop_stop()


def test_the_central_writes_the_site_snapshot_and_a_gateway_reads_its_windows_of_it(cluster):
    central = client_as(cluster.urls[0], make_test_ca.central_cn(SITE), "central-site")
    try:
        snapshot = {"windows": {"2": {"display": {"version": 1, "text": "C003"}},
                                "5": {"display": {"version": 1, "text": "D004"}}}}
        central.publish(f"hall/v1/{SITE}/desired", json.dumps(snapshot), qos=1,
                        retain=True).wait_for_publish(5)
        link = gateway_link(cluster.urls[2:], subscribe="site").start()
        try:
            wait_for(lambda: link.rec.commands, timeout=15, what="gw-1's part of the snapshot")
            time.sleep(0.2)
            assert [(w, k, c.text) for w, k, c in link.rec.commands] == [(2, "display", "C003")]
            assert link.stats.rejected == 0 and link.stats.foreign == 1
        finally:
            link.stop(timeout=3)
    finally:
        central.disconnect()
        central.loop_stop()


def test_gateway_cannot_publish_another_gateways_window(cluster):
    witness = Witness(cluster.urls[2], f"hall/v1/{SITE}/window/+/event",
                      make_test_ca.monitor_cn(SITE, MONITOR), "witness-perm")
    gw = client_as(cluster.urls[0], make_test_ca.gateway_cn(SITE, "gw-1"), "gw-1-raw")
    try:
        forged = gw.publish(f"hall/v1/{SITE}/window/4/event", json.dumps({"id": "forged"}),
                            qos=1)
        own = gw.publish(f"hall/v1/{SITE}/window/1/event", json.dumps({"id": "own"}), qos=1)
        forged.wait_for_publish(5)  # NATS PUBACKs it all the same
        own.wait_for_publish(5)
        wait_for(lambda: "own" in witness.ids(), timeout=10, what="gw-1's own event")
        time.sleep(0.3)
        assert witness.ids() == ["own"]
    finally:
        gw.disconnect()
        gw.loop_stop()
        witness.close()


# -- failover: a node killed mid-stream ------------------------------------------------------


def run_through_a_kill(cluster, events, kill_at, witness_node=2, killed=0):
    """Feeds `events` events through a "kinds" link that starts on node `killed`, SIGKILLs
    that node after `kill_at` of them; (witness ids, link, seconds)."""
    witness = Witness(cluster.urls[witness_node], f"hall/v1/{SITE}/window/+/event",
                      make_test_ca.monitor_cn(SITE, MONITOR), f"witness-kill-{time.time_ns()}")
    urls = cluster.urls[killed:] + cluster.urls[:killed]
    link = gateway_link(urls, gateway="gw-2", windows=(4, 5, 6)).start()
    try:
        assert link.wait_connected(15)
        started = time.monotonic()
        fed = 0
        while fed < events:
            if fed == kill_at and cluster.alive(killed):
                cluster.kill(killed)
            if link.room > 0:
                link.publish_event(4 + fed % 3, event(fed, 4 + fed % 3), token=fed)
                fed += 1
            else:
                time.sleep(0.002)
        assert link.wait_delivered(60), f"{link.in_flight} events not PUBACKed"
        wait_for(lambda: len(set(witness.ids())) >= events, timeout=60,
                 what=f"{events} events at the witness (has {len(set(witness.ids()))})")
        seconds = time.monotonic() - started
        return witness.ids(), link, seconds
    finally:
        link.stop(timeout=3)
        witness.close()


def test_events_survive_a_node_sigkill(cluster):
    events = 600
    ids, link, seconds = run_through_a_kill(cluster, events, kill_at=200)
    distinct = set(ids)
    lost = {f"ev-{i}" for i in range(events)} - distinct
    print(f"{events} events through a node's SIGKILL in {seconds:.2f} s "
          f"({events / seconds:.0f}/s), {len(ids) - len(distinct)} duplicates, "
          f"{link.stats.reconnects} reconnect(s)")
    assert not lost, f"lost {len(lost)}: {sorted(lost)[:10]}"
    assert link.stats.reconnects >= 1
    assert link.url != cluster.urls[0]


@pytest.mark.soak
@pytest.mark.timeout(900)
def test_soak_events_through_kills_of_each_node(cluster):
    """Each node in turn killed mid-stream, then restarted: 0 lost each time."""
    for killed in range(3):
        witness_node = (killed + 2) % 3
        ids, link, seconds = run_through_a_kill(cluster, 5000, kill_at=1500,
                                                witness_node=witness_node, killed=killed)
        lost = {f"ev-{i}" for i in range(5000)} - set(ids)
        print(f"node {killed} killed: 5000 events in {seconds:.1f} s, "
              f"{len(ids) - len(set(ids))} duplicates")
        assert not lost
        cluster.restart(killed)


# -- TLS with client certificates -------------------------------------------------------------


def test_gateway_connects_with_a_client_certificate(tmp_path):
    need_nats()
    ca = tmp_path / "ca"
    assert make_test_ca.main(["--site", SITE, "--gateway", "gw-1", "--central",
                              "--broker-name", "127.0.0.1", "--out", str(ca)]) == 0
    users = make_nats.strip_comments(make_nats.nats_users(GATEWAYS[:1]))
    tls = {"cert_file": str(ca / "broker.crt"), "key_file": str(ca / "broker.key"),
           "ca_file": str(ca / "ca.crt"), "verify_and_map": True}
    central = make_test_ca.central_cn(SITE)
    with natscluster.start_cluster(tmp_path / "nats", nodes=1, users=users, tls=tls,
                                   probe_cert=(ca / f"{central}.crt", ca / f"{central}.key")
                                   ) as cluster:
        assert cluster.urls[0].startswith("mqtts://")
        gw = make_test_ca.gateway_cn(SITE, "gw-1")
        link = gateway_link(cluster.urls, username=None, password=None,
                            tls={"ca": str(ca / "ca.crt"), "cert": str(ca / f"{gw}.crt"),
                                 "key": str(ca / f"{gw}.key")})
        with link:
            assert link.wait_connected(15), link.last_error
            link.publish_event(1, event(1, 1), token=1)
            assert link.wait_delivered(10)
        # No certificate, no connection: verify_and_map requires one.
        bare = gateway_link(cluster.urls, username=None, password=None,
                            tls={"ca": str(ca / "ca.crt")}, connect_timeout=2.0)
        with bare:
            assert not bare.wait_connected(3)
            assert bare.last_error


# -- the same link on mosquitto ---------------------------------------------------------------


def test_kinds_subscriptions_on_mosquitto(tmp_path):
    with Mosquitto(tmp_path / "broker") as broker:
        central = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="central",
                              protocol=mqtt.MQTTv5)
        central.connect("127.0.0.1", broker.port)
        central.loop_start()
        try:
            for window in (2, 7):  # 7 is not served
                central.publish(f"hall/v1/{SITE}/window/{window}/panel",
                                json.dumps({"version": 1, "mode": "idle"}), qos=1,
                                retain=True).wait_for_publish(5)
            rec = Recorder()
            link = MqttLink(SITE, "gw-1", [broker.url], subscribe="kinds", windows=[1, 2],
                            delivery="puback", on_command=rec.on_command)
            with link:
                wait_for(lambda: rec.commands and link.stats.foreign, timeout=10,
                         what="window 2's panel, and 7's dropped")
                link.set_windows([1, 2, 7])  # no new subscription: 7's next command comes
                central.publish(f"hall/v1/{SITE}/window/7/panel",
                                json.dumps({"version": 2, "mode": "idle"}), qos=1,
                                retain=True).wait_for_publish(5)
                wait_for(lambda: len(rec.commands) == 2, timeout=10, what="window 7's panel")
                assert [(w, k) for w, k, _ in rec.commands] == [(2, "panel"), (7, "panel")]
                assert link.stats.rejected == 0 and link.stats.foreign == 1
        finally:
            central.disconnect()
            central.loop_stop()


def test_subscribe_mode_is_checked():
    with pytest.raises(ValueError, match="subscribe 'all'"):
        MqttLink(SITE, "gw-1", ["mqtt://h"], subscribe="all")


def test_switching_modes_cleans_the_persistent_session(tmp_path):
    """A gateway moved from "windows" to "kinds" (and back) keeps its client id, so its
    persistent session holds the other mode's subscriptions: "kinds" unsubscribes its
    windows' per-window topics once (else each command would come twice), "windows" drops
    a leftover wildcard at its first foreign message, and says so once."""
    with Mosquitto(tmp_path / "broker") as broker:
        central = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="central",
                              protocol=mqtt.MQTTv5)
        central.connect("127.0.0.1", broker.port)
        central.loop_start()

        def panel(window, version):
            central.publish(f"hall/v1/{SITE}/window/{window}/panel",
                            json.dumps({"version": version, "mode": "idle"}), qos=1,
                            ).wait_for_publish(5)

        def run(mode, windows, then):
            rec = Recorder()
            link = MqttLink(SITE, "gw-1", [broker.url], subscribe=mode, windows=windows,
                            delivery="puback", on_command=rec.on_command)
            with link:
                assert link.wait_connected(5)
                time.sleep(0.3)  # SUBACK / UNSUBACK
                then(link, rec)
            return link

        try:
            run("windows", [1, 2], lambda link, rec: None)

            def kinds_check(link, rec):
                panel(1, 1)
                panel(3, 1)  # not served: dropped, counted
                wait_for(lambda: link.stats.foreign == 1 and rec.commands, timeout=5,
                         what="window 1's panel and window 3's dropped")
                time.sleep(0.3)
                assert [(w, c.version) for w, _, c in rec.commands] == [(1, 1)]  # once
            run("kinds", [1], kinds_check)

            def windows_check(link, rec):
                panel(3, 2)  # through the leftover window/+/panel: reported, unsubscribed
                wait_for(lambda: link.stats.rejected == 1, timeout=5, what="the report")
                panel(3, 3)
                panel(1, 2)
                wait_for(lambda: rec.commands, timeout=5, what="window 1's panel")
                time.sleep(0.3)
                assert link.stats.rejected == 1
                assert [(w, c.version) for w, _, c in rec.commands] == [(1, 2)]
            run("windows", [1], windows_check)
        finally:
            central.disconnect()
            central.loop_stop()
