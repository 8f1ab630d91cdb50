"""Events per second through the durable path, as ratios to plain paho, in one run.

The backlog after an outage: N events (100,000 by default) are committed to the SQLite
outbox one by one, each add its own fsynced transaction as the gateway takes them while the
broker is away, then published to a real mosquitto on loopback with QoS 1 and deleted on
PUBACK. Rates, each against plain paho in the same run:
  paho      plain paho-mqtt, N pipelined QoS 1 publishes (32 in flight, as the link),
            nothing on disk (loses all on a crash), counted at the last PUBACK;
  commit    outbox.add() of the N events (fsync each), no network: what an outage costs;
  backlog   hallgate's MqttLink fed from the outbox holding the N events, as the daemon's
            sender does (oldest first, as far as the link has room), deleted at PUBACK
            (delivery = "puback");
  receipts  the same backlog with delivery = "receipt" (the default): the reference central
            service (`hallgate central run`, its own process, SQLite) applies and commits
            each event and sends receipts; counted when the last receipt has deleted the
            last row: the backlog is in the central's database, not just at the broker;
  live      --live events each committed (fsync) and then sent by the link: the gateway's
            steady path, which loses nothing on SIGKILL or power cut.

    python bench/mqtt_outbox.py [--events 100000] [--live 5000] [--json]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from hallgate.gateway.mqtt import MqttLink
from hallgate.gateway.outbox import Outbox
from hallgate.sim.broker import Mosquitto

INFLIGHT = 32  # MqttLink's default max_inflight, for both
QUEUE_AHEAD = 10_000  # publishes queued in paho ahead of the acks
PAYLOAD_FIELDS = {"type": "key", "key": "call", "action": "press",
                  "ts": "2026-11-23T10:15:02.123Z", "source": {"bus": "hall", "address": 1,
                                                               "boot": 1, "seq": 1}}


def plain_paho(port, n, inflight):
    """n QoS 1 publishes, pipelined: `inflight` on the wire (as the link's max_inflight),
    at most QUEUE_AHEAD queued in paho ahead of the PUBACKs (paho's packet ids wrap at
    65535: a longer queue reuses ids still waiting, and their acks go astray)."""
    done = threading.Event()
    ahead = threading.Semaphore(QUEUE_AHEAD)
    acked = [0]

    def on_publish(client, userdata, mid, reason_code, properties):
        acked[0] += 1
        ahead.release()
        if acked[0] == n:
            done.set()

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-paho")
    c.max_inflight_messages_set(inflight)
    c.max_queued_messages_set(0)
    c.on_publish = on_publish
    c.connect("127.0.0.1", port)
    c.loop_start()
    payload = json.dumps({**PAYLOAD_FIELDS, "id": "x", "gateway": "g", "seq": 1, "window": 1})
    t0 = time.perf_counter()
    for _ in range(n):
        if not ahead.acquire(timeout=30):
            raise SystemExit(f"bench: plain paho, no PUBACK for 30 s ({acked[0]} of {n})")
        c.publish("hall/v1/bench/window/1/event", payload, qos=1)
    if not done.wait(300):
        raise SystemExit(f"bench: plain paho got {acked[0]} of {n} PUBACKs within 300 s")
    elapsed = time.perf_counter() - t0
    c.loop_stop()
    c.disconnect()
    return n / elapsed


VOTE_FIELDS = {"type": "vote", "vote": "like", "ticket": None, "misuse": True,
               "misuse_reason": "voting closed", "ts": "2026-11-23T10:15:02.123Z",
               "source": {"gpio": 17}}  # applied and kept by the central whatever its state


def through_link(port, outbox, n, add_first, delivery="puback"):
    """Events per second through the link, fed from the outbox as the daemon's sender does
    (gateway/daemon.py _send_loop): oldest first, as far as the link has room, woken by
    each confirmation (PUBACK or receipt, by `delivery`). add_first=False: each event is
    committed just before it is fed."""
    wake = threading.Event()
    count = [0]

    def on_delivered(seqs):
        outbox.delete(*seqs)
        count[0] += len(seqs)
        wake.set()

    link = MqttLink("bench", "gw-bench", [f"mqtt://127.0.0.1:{port}"], windows=[1],
                    on_delivered=on_delivered, max_inflight=INFLIGHT,
                    delivery=delivery).start()
    if not link.wait_connected(10):
        raise SystemExit("bench: the link did not connect within 10 s")
    t0 = time.perf_counter()
    last = 0
    made = 0
    while count[0] < n:
        if not add_first and made < n:
            outbox.add(1, PAYLOAD_FIELDS)  # the gateway's path: commit, then send
            made += 1
        fed = 0
        room = link.room
        if room > 0:
            for e in outbox.pending(limit=room, after_seq=last or None):
                link.publish_event(e.window, e.payload, token=e.seq, event_id=e.id)
                last = e.seq
                fed += 1
        if not fed and (add_first or made == n):
            wake.wait(0.05)
            wake.clear()
        if time.perf_counter() - t0 > 300:
            raise SystemExit(f"bench: {count[0]} of {n} events delivered within 300 s")
    elapsed = time.perf_counter() - t0
    link.stop()
    return n / elapsed


def start_central(port, folder):
    """`hallgate central run` on the broker, in its own process (as on its own machine);
    returns the process once it says online."""
    folder.mkdir()
    config = folder / "central.toml"
    config.write_text(f'site = "bench"\nbroker = "mqtt://127.0.0.1:{port}"\n'
                      f'database = "{folder / "central.db"}"\n\n[services]\nA = "Bench"\n\n'
                      '[[windows]]\nn = 1\nservices = ["A"]\n')
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    proc = subprocess.Popen([sys.executable, "-m", "hallgate.cli", "central", "run",
                             "--config", str(config)], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(folder / "log", "wb"))
    online = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-status")
    c.on_message = lambda cl, u, m: b'"online"' in m.payload and online.set()
    c.on_connect = lambda cl, *a: cl.subscribe("hall/v1/bench/central/status", 1)
    c.connect("127.0.0.1", port)
    c.loop_start()
    ok = online.wait(30)
    c.loop_stop()
    c.disconnect()
    if not ok:
        proc.kill()
        raise SystemExit(f"bench: the central did not come online: {folder / 'log'}")
    return proc


def commit(outbox, n):
    """n adds, each its own fsynced transaction; events per second."""
    t0 = time.perf_counter()
    for _ in range(n):
        outbox.add(1, PAYLOAD_FIELDS)
    return n / (time.perf_counter() - t0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=100_000, help="backlog size")
    p.add_argument("--live", type=int, default=5000,
                   help="events committed then sent one by one (0: skip)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    n = args.events
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp) / "broker") as broker:
        paho_rate = plain_paho(broker.port, n, INFLIGHT)
        with Outbox(Path(tmp) / "backlog.sqlite", "gw-bench", max_events=10 * n) as ob:
            commit_rate = commit(ob, n)
            link_rate = through_link(broker.port, ob, n, add_first=True)
            left = ob.depth()
        central = start_central(broker.port, Path(tmp) / "central")
        try:
            with Outbox(Path(tmp) / "receipts.sqlite", "gw-bench", max_events=10 * n) as ob:
                for _ in range(n):
                    ob.add(1, VOTE_FIELDS)
                receipt_rate = through_link(broker.port, ob, n, add_first=True,
                                            delivery="receipt")
                left += ob.depth()
        finally:
            central.terminate()
            central.wait(30)
        outbox_rate = None
        if args.live:
            with Outbox(Path(tmp) / "live.sqlite", "gw-bench",
                        max_events=10 * args.live) as ob:
                outbox_rate = through_link(broker.port, ob, args.live, add_first=False)
    result = {
        "events": n,
        "paho_per_s": round(paho_rate),
        "commit_per_s": round(commit_rate),
        "link_per_s": round(link_rate),
        "commit_over_paho": round(commit_rate / paho_rate, 3),
        "link_over_paho": round(link_rate / paho_rate, 3),
        "receipt_per_s": round(receipt_rate),
        "receipt_over_paho": round(receipt_rate / paho_rate, 3),
        "receipt_drain_s": round(n / receipt_rate, 1),
        "backlog_drain_s": round(n / link_rate, 1),
        "left_in_outbox": left,
        "live_events": args.live,
        "outbox_per_s": round(outbox_rate) if outbox_rate else None,
        "outbox_over_paho": round(outbox_rate / paho_rate, 3) if outbox_rate else None,
    }
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{n} QoS 1 events to mosquitto on loopback:")
        print(f"  plain paho, pipelined, counted at PUBACK   {paho_rate:8.0f}/s  1.00")
        print(f"  committed to the outbox (fsync each)       {commit_rate:8.0f}/s  "
              f"{commit_rate / paho_rate:.2f} x paho")
        print(f"  backlog published from the outbox, PUBACK  {link_rate:8.0f}/s  "
              f"{link_rate / paho_rate:.2f} x paho  (drained in {n / link_rate:.0f} s;"
              f" {left} left)")
        print(f"  backlog to the central's database, receipts {receipt_rate:7.0f}/s  "
              f"{receipt_rate / paho_rate:.2f} x paho  (drained in {n / receipt_rate:.0f} s)")
        if outbox_rate:
            print(f"  {args.live} committed then sent one by one    {outbox_rate:8.0f}/s  "
                  f"{outbox_rate / paho_rate:.2f} x paho")
    return 0 if left == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
