"""How fast one process of central services commits events: many sites on PostgreSQL (a
city worker, `hallgate central worker`) against the same sites on SQLite files.

Method: a throwaway PostgreSQL (sim/pgserver.py) and mosquitto (sim/broker.py); every
site's persistent session is made first, then `--events` QoS 1 events per site are published
while no central runs (the broker queues them, as during a take-over); then the server under
test starts in a child process and the bench counts committed journal rows until all are
in. events/s = events / (last commit - first commit): the drain rate, group commits
included. The child's RSS and thread count are read at the end (/proc).

    .venv/bin/python bench/central_pg.py --sites 32 --events 300
    .venv/bin/python bench/central_pg.py --store pg --json
"""

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
from hallgate.sim.broker import Mosquitto
from hallgate.sim.pgserver import start_postgres
from paho.mqtt.enums import CallbackAPIVersion

QUEUE = ('services = { A = "Passports" }\n'
         '[[windows]]\nn = 1\nservices = ["A"]\n[[windows]]\nn = 2\nservices = ["A"]\n')


def proc_status(pid):
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "Threads"):
            out[k] = int(v.split()[0])
    return {"rss_mb": round(out.get("VmRSS", 0) / 1024, 1), "threads": out.get("Threads")}


def write_city(folder, broker, dsn, sites):
    lines = ["[city]", 'name = "bench"', f'brokers = ["{broker}"]', f'database = "{dsn}"']
    for s in sites:
        (folder / f"{s}.toml").write_text(QUEUE)
        lines += ["[[sites]]", f'name = "{s}"', f'queue = "{s}.toml"']
    (folder / "city.toml").write_text("\n".join(lines) + "\n")
    return folder / "city.toml"


def queue_events(port, sites, per_site):
    """Sessions first (so the broker keeps what comes for them), then the events."""
    for s in sites:
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"hallgate-central-{s}",
                        protocol=paho.MQTTv311, clean_session=False)
        c.connect("127.0.0.1", port)
        c.loop_start()
        c.subscribe(f"hall/v1/{s}/window/+/event", 1)[1]
        time.sleep(0.05)
        c.disconnect()
        c.loop_stop()
    pub = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
    pub.max_inflight_messages_set(1000)
    pub.max_queued_messages_set(0)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    infos = []
    for i in range(per_site):
        for s in sites:
            w = 1 + i % 2
            payload = json.dumps({"id": f"{s}-{i}", "gateway": "gw-1", "seq": i,
                                  "ts": "2026-12-05T10:00:00.000Z", "window": w,
                                  "type": "vote", "vote": "like", "ticket": None,
                                  "misuse": True, "misuse_reason": "voting closed"})
            infos.append(pub.publish(f"hall/v1/{s}/window/{w}/event", payload, qos=1))
    for info in infos:
        info.wait_for_publish(60)
    pub.disconnect()
    pub.loop_stop()


def serve_sqlite(folder, broker, sites):
    """The child for --store sqlite: the worker's shape (one tick thread), SQLite files."""
    from hallgate.central.mqtt import CentralService
    from hallgate.central.queue import QueueConfig
    from hallgate.central.service import Central

    cfg = QueueConfig.from_dict({"services": {"A": "Passports"},
                                 "windows": [{"n": 1, "services": ["A"]},
                                             {"n": 2, "services": ["A"]}]})
    services = []
    for s in sites:
        central = Central(cfg, Path(folder) / f"{s}.db")
        services.append(CentralService(central, s, broker, ticker=False).start())
    print("ready", flush=True)
    while True:
        time.sleep(0.25)
        for svc in services:
            svc.tick_due()


def committed(store, dsn, folder, sites):
    if store == "pg":
        import psycopg

        with psycopg.connect(dsn) as c:
            if c.execute("SELECT to_regclass('journal')").fetchone()[0] is None:
                return 0  # the worker has not made the schema yet
            return c.execute("SELECT count(*) FROM journal").fetchone()[0]
    n = 0
    for s in sites:
        db = Path(folder) / f"{s}.db"
        if db.exists():
            try:
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as c:
                    n += c.execute("SELECT count(*) FROM journal").fetchone()[0]
            except sqlite3.Error:
                pass
    return n


def run(store, n_sites, per_site):
    root = Path(tempfile.mkdtemp(prefix=f"bench-central-{store}-"))
    sites = [f"b{i:03d}" for i in range(n_sites)]
    with Mosquitto(root / "broker") as broker, start_postgres() as pg:
        city = write_city(root, broker.url, pg.dsn, sites)
        t0 = time.monotonic()
        queue_events(broker.port, sites, per_site)
        queued_s = time.monotonic() - t0
        if store == "pg":
            argv = [sys.executable, "-m", "hallgate.cli", "central", "worker", "--city",
                    str(city), "--name", "bench"]
        else:
            argv = [sys.executable, __file__, "--serve-sqlite", str(root), broker.url,
                    *sites]
        child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 text=True)
        threading.Thread(target=lambda: [None for _ in child.stdout], daemon=True).start()
        total = n_sites * per_site
        first = last = None
        seen = 0
        deadline = time.monotonic() + 600
        try:
            while seen < total and time.monotonic() < deadline:
                seen = committed(store, pg.dsn, root, sites)
                now = time.monotonic()
                if seen and first is None:
                    first = now
                last = now
                time.sleep(0.05)
            status = proc_status(child.pid)
        finally:
            child.terminate()
            child.wait(20)
    drain = (last - first) if first and last and last > first else None
    return {"store": store, "sites": n_sites, "events": total, "committed": seen,
            "queued_s": round(queued_s, 2), "drain_s": drain and round(drain, 2),
            "events_per_s": drain and round(total / drain), **status}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sites", type=int, default=32)
    p.add_argument("--events", type=int, default=300, help="per site")
    p.add_argument("--store", choices=("pg", "sqlite", "both"), default="both")
    p.add_argument("--json", action="store_true")
    p.add_argument("--serve-sqlite", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_sqlite:
        folder, broker, *sites = args.serve_sqlite
        serve_sqlite(folder, broker, sites)
        return 0
    stores = ["pg", "sqlite"] if args.store == "both" else [args.store]
    results = [run(s, args.sites, args.events) for s in stores]
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for r in results:
            print(f"{r['store']:>6}: {r['sites']} sites, {r['committed']}/{r['events']} events"
                  f" committed in {r['drain_s']} s = {r['events_per_s']} events/s; child "
                  f"RSS {r['rss_mb']} MB, {r['threads']} threads")
    return 0


if __name__ == "__main__":
    sys.exit(main())
