"""The city's broker measured: a 3-node nats-server cluster (sim/natscluster.py), the real
gateway MqttLink, MQTT 3.1.1, QoS 1. Printed as figures and ratios.

  start     seconds from the first nats-server to ready (meta leader, every MQTT port
            takes a CONNECT);
  events    one link (delivery = "puback", 32 in flight) publishing --events events, the
            node it is on SIGKILLed after a third of them; counted at an independent QoS 1
            subscriber on another node: events/s before the kill, after it, the failover gap
            (lost connection -> connected to the next URL), lost and duplicate counts;
  desired   --gateways links (one site each, --windows windows each) subscribed per kind
            (subscribe = "kinds": 3 subscriptions each) or per window ("windows": 3 per
            window), one publisher sending --desired retained display commands over all
            sites' windows; publishes/s until every link has taken its own windows' share,
            and the ratio kinds / windows when both run (--modes kinds,windows).

    python bench/nats_city.py [--events 3000] [--gateways 96] [--windows 30]
                              [--desired 2000] [--modes kinds] [--json]
"""

import argparse
import json
import sys
import tempfile
import threading
import time

import paho.mqtt.client as mqtt
from hallgate.gateway.mqtt import MqttLink
from hallgate.sim.natscluster import start_cluster
from paho.mqtt.enums import CallbackAPIVersion


def _port(url):
    return int(url.rsplit(":", 1)[1])


class Counter:
    """A persistent-session QoS 1 subscriber counting event ids."""

    def __init__(self, url, topic):
        self.ids = []
        self.lock = threading.Lock()
        ready = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{time.time_ns()}",
                        protocol=mqtt.MQTTv311, clean_session=False)
        c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(topic, qos=1)
        c.on_subscribe = lambda *a: ready.set()
        c.on_message = self._message
        c.connect("127.0.0.1", _port(url))
        c.loop_start()
        self.client = c
        if not ready.wait(20):
            raise RuntimeError("counter could not subscribe")

    def _message(self, client, userdata, msg):
        with self.lock:
            self.ids.append(json.loads(msg.payload)["id"])

    def distinct(self):
        with self.lock:
            return len(set(self.ids))

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def events_through_a_kill(cluster, events):
    counter = Counter(cluster.urls[2], "hall/v1/bench/window/+/event")
    lost_at, back_at = [], []
    link = MqttLink("bench", "gw-1", cluster.urls, protocol="3.1.1", subscribe="kinds",
                    windows=[1], delivery="puback", reconnect_max=1.0,
                    on_connection=lambda up, url: (back_at if up else lost_at).append(
                        time.monotonic()))
    link.start()
    try:
        if not link.wait_connected(20):
            raise RuntimeError(f"link did not connect: {link.last_error}")
        kill_at = events // 3
        started = time.monotonic()
        killed = None
        fed = 0
        while fed < events:
            if fed == kill_at and killed is None:
                while link.in_flight:  # what came before the kill, counted before it
                    time.sleep(0.001)
                killed = time.monotonic()
                cluster.kill(0)
            if link.room > 0:
                payload = json.dumps({"id": f"ev-{fed}", "window": 1}).encode()
                link.publish_event(1, payload, token=fed)
                fed += 1
            else:
                time.sleep(0.0005)
        link.wait_delivered(120)
        deadline = time.monotonic() + 60
        while counter.distinct() < events and time.monotonic() < deadline:
            time.sleep(0.01)
        done = time.monotonic()
        reconnected = [t for t in back_at if t > killed]
        gap = (reconnected[0] - killed) if reconnected else None
        after = done - (reconnected[0] if reconnected else killed)
        return {"events": events, "lost": events - counter.distinct(),
                "duplicates": len(counter.ids) - counter.distinct(),
                "before_per_s": round(kill_at / (killed - started)),
                "after_per_s": round((events - kill_at) / after),
                "failover_gap_s": None if gap is None else round(gap, 2),
                "total_s": round(done - started, 2)}
    finally:
        link.stop(timeout=3)
        counter.close()


def desired_state(cluster, gateways, windows, messages, mode):
    """Retained display commands, one publisher, until every link has its share."""
    got = [0] * gateways
    lock = threading.Lock()

    def on_command(i):
        def take(window, kind, command):
            with lock:
                got[i] += 1
        return take

    links = [MqttLink(f"site-{i}", "gw-1", cluster.urls[i % 3:] + cluster.urls[:i % 3],
                      protocol="3.1.1", subscribe=mode, windows=range(1, windows + 1),
                      delivery="puback", on_command=on_command(i),
                      client_id=f"bench-{mode}-{i}-{time.time_ns()}")
             for i in range(gateways)]
    for link in links:
        link.start()
    try:
        for link in links:
            if not link.wait_connected(60):
                raise RuntimeError(f"a link did not connect: {link.last_error}")
        time.sleep(1.0)  # subscriptions confirmed (their consumers made)
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-central-{mode}",
                          protocol=mqtt.MQTTv311)
        pub.max_inflight_messages_set(64)
        pub.connect("127.0.0.1", _port(cluster.urls[1]))
        pub.loop_start()
        started = time.monotonic()
        infos = []
        for n in range(messages):
            site, window = n % gateways, (n // gateways) % windows + 1
            payload = json.dumps({"version": n + 1, "text": f"A{n % 1000:03d}"})
            infos.append(pub.publish(f"hall/v1/site-{site}/window/{window}/display",
                                     payload, qos=1, retain=True))
        for info in infos:
            info.wait_for_publish(120)
        acked = time.monotonic()
        deadline = acked + 120
        while sum(got) < messages and time.monotonic() < deadline:
            time.sleep(0.01)
        done = time.monotonic()
        pub.disconnect()
        pub.loop_stop()
        return {"mode": mode, "gateways": gateways, "windows": windows,
                "subscriptions": gateways * (3 if mode == "kinds" else 3 * windows),
                "messages": messages, "taken": sum(got),
                "acked_per_s": round(messages / (acked - started)),
                "delivered_per_s": round(sum(got) / (done - started))}
    finally:
        for link in links:
            link.stop(timeout=2)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=3000)
    p.add_argument("--gateways", type=int, default=96)
    p.add_argument("--windows", type=int, default=30)
    p.add_argument("--desired", type=int, default=2000)
    p.add_argument("--modes", default="kinds", help="kinds, windows or kinds,windows")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        with start_cluster(f"{tmp}/a") as cluster:
            report["start_s"] = round(cluster.start_seconds, 2)
            report["kill"] = events_through_a_kill(cluster, args.events)
        for mode in args.modes.split(","):
            with start_cluster(f"{tmp}/{mode}") as cluster:  # a fresh cluster each
                report[mode] = desired_state(cluster, args.gateways, args.windows,
                                             args.desired, mode)
    if "kinds" in report and "windows" in report:
        report["kinds_over_windows"] = round(
            report["kinds"]["delivered_per_s"] / max(1, report["windows"]["delivered_per_s"]), 2)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    k = report["kill"]
    print(f"cluster ready in {report['start_s']} s")
    print(f"events through a node's SIGKILL: {k['events']} in {k['total_s']} s, lost "
          f"{k['lost']}, duplicates {k['duplicates']}; {k['before_per_s']}/s before, "
          f"{k['after_per_s']}/s after (ratio {k['after_per_s'] / k['before_per_s']:.2f}); "
          f"failover gap {k['failover_gap_s']} s")
    for mode in args.modes.split(","):
        d = report[mode]
        print(f"desired state, subscribe={mode}: {d['gateways']} gateways x {d['windows']} "
              f"windows ({d['subscriptions']} subscriptions): {d['taken']}/{d['messages']} "
              f"taken, {d['delivered_per_s']}/s delivered, {d['acked_per_s']}/s acked")
    if "kinds_over_windows" in report:
        print(f"kinds / windows: {report['kinds_over_windows']}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
