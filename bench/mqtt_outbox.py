"""Events per second through the durable path, as ratios to plain paho, in one run.

Three ways to get N QoS 1 events to a real mosquitto on loopback, each counted when the
broker's PUBACK came back:
  paho      plain paho-mqtt, pipelined publishes, nothing on disk (loses all on a crash);
  link      hallgate's MqttLink fed from an outbox already holding the events (the backlog
            after an outage);
  outbox    each event committed to the SQLite outbox (fsync) first, then sent by the link:
            the gateway's real path, which loses nothing on SIGKILL or power cut.

    python bench/mqtt_outbox.py [--events 5000] [--json]
"""

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from hallgate.gateway.mqtt import MqttLink
from hallgate.gateway.outbox import Outbox
from hallgate.sim.broker import Mosquitto

PAYLOAD_FIELDS = {"type": "key", "key": "call", "action": "press",
                  "ts": "2026-11-23T10:15:02.123Z", "source": {"bus": "hall", "address": 1,
                                                               "boot": 1, "seq": 1}}


def plain_paho(port, n):
    done = threading.Event()
    acked = [0]

    def on_publish(client, userdata, mid, reason_code, properties):
        acked[0] += 1
        if acked[0] == n:
            done.set()

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-paho")
    c.max_inflight_messages_set(20)
    c.max_queued_messages_set(0)
    c.on_publish = on_publish
    c.connect("127.0.0.1", port)
    c.loop_start()
    payload = json.dumps({**PAYLOAD_FIELDS, "id": "x", "gateway": "g", "seq": 1, "window": 1})
    t0 = time.perf_counter()
    for _ in range(n):
        c.publish("hall/v1/bench/window/1/event", payload, qos=1)
    done.wait(120)
    elapsed = time.perf_counter() - t0
    c.loop_stop()
    c.disconnect()
    return n / elapsed


def through_link(port, outbox, n, add_first):
    delivered = threading.Event()
    count = [0]

    def on_delivered(seq):
        outbox.delete(seq)
        count[0] += 1
        if count[0] == n:
            delivered.set()

    link = MqttLink("bench", "gw-bench", [f"mqtt://127.0.0.1:{port}"], windows=[1],
                    on_delivered=on_delivered).start()
    link.wait_connected(10)
    t0 = time.perf_counter()
    last = 0
    made = 0
    while count[0] < n:
        if add_first is False and made < n:
            outbox.add(1, PAYLOAD_FIELDS)  # the gateway's path: commit, then send
            made += 1
        room = link.room
        if room > 0:
            for e in outbox.pending(limit=room, after_seq=last or None):
                link.publish_event(e.window, e.payload, token=e.seq)
                last = e.seq
        elif add_first:
            delivered.wait(0.001)
        if time.perf_counter() - t0 > 120:
            raise SystemExit("bench: events not delivered within 120 s")
    elapsed = time.perf_counter() - t0
    link.stop()
    return n / elapsed


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=5000)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    n = args.events
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp) / "broker") as broker:
        paho_rate = plain_paho(broker.port, n)
        with Outbox(Path(tmp) / "backlog.sqlite", "gw-bench", max_events=10 * n) as ob:
            for _ in range(n):
                ob.add(1, PAYLOAD_FIELDS)
            link_rate = through_link(broker.port, ob, n, add_first=True)
        with Outbox(Path(tmp) / "live.sqlite", "gw-bench", max_events=10 * n) as ob:
            outbox_rate = through_link(broker.port, ob, n, add_first=False)
    result = {
        "events": n,
        "paho_per_s": round(paho_rate),
        "link_per_s": round(link_rate),
        "outbox_per_s": round(outbox_rate),
        "link_over_paho": round(link_rate / paho_rate, 2),
        "outbox_over_paho": round(outbox_rate / paho_rate, 2),
    }
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{n} QoS 1 events to mosquitto, counted at PUBACK:")
        print(f"  plain paho (RAM only)        {paho_rate:8.0f}/s  1.00")
        print(f"  backlog from the outbox      {link_rate:8.0f}/s  {link_rate / paho_rate:.2f}"
              " x paho")
        print(f"  commit (fsync) then send     {outbox_rate:8.0f}/s  "
              f"{outbox_rate / paho_rate:.2f} x paho")
        print("A hall makes a few events a second; the durable path's headroom is the ratio"
              " times paho's rate.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
