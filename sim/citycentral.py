"""The city's central workers, as sim/city.py starts them: `hallgate central worker --city`
(central/city.py) when it exists, else a stand-in with the same command line.

Design note
-----------
Operations: `worker_command(city_file, name, clock)` is the argv of one worker process;
`python -m hallgate.sim.citycentral --city FILE --name wN --sites c001,c002 --clock-*`
is the stand-in: one `CentralService` per listed site on the scaled clock, on the city's
database (`open_store`: PostgreSQL by URL, else a SQLite file per site in that folder).
Goals: the city is built and tested against the real workers' command line from the start,
so switching to them is one function. The stand-in has no take-over (its sites are fixed
by `--sites`); the real workers share sites by advisory lock and take a dead one's over.
"""

from __future__ import annotations

import argparse
import importlib.util
import signal
import sys
import threading
import tomllib
from pathlib import Path

from hallgate.sim.cityplan import ScaledClock


def real_workers():
    """True when central/city.py (the real city workers) is installed."""
    return importlib.util.find_spec("hallgate.central.city") is not None


def worker_command(city_file, name, clock, sites=None, *, postgres=True):
    """argv of worker `name`; `sites`: the stand-in's share (ignored by the real ones).
    The real workers need PostgreSQL: on SQLite files the stand-in runs."""
    if real_workers() and postgres:
        return [sys.executable, "-m", "hallgate.cli", "central", "worker", "--city",
                str(city_file), "--name", name, *clock.args()]
    return [sys.executable, "-m", "hallgate.sim.citycentral", "--city", str(city_file),
            "--name", name, "--sites", ",".join(sites or ()), *clock.args()]


def main(argv=None):
    from hallgate.central.config import load_config
    from hallgate.central.mqtt import CentralService
    from hallgate.central.service import Central, open_store

    p = argparse.ArgumentParser()
    p.add_argument("--city", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--sites", required=True)
    p.add_argument("--clock-start", type=float, required=True)
    p.add_argument("--clock-speed", type=float, required=True)
    p.add_argument("--clock-real0", type=float, required=True)
    args = p.parse_args(argv)
    city_file = Path(args.city)
    city = tomllib.loads(city_file.read_text())
    clock = ScaledClock(args.clock_start, args.clock_speed, args.clock_real0)
    queues = {s["name"]: city_file.parent / s["queue"] for s in city["sites"]}
    database = city["city"]["database"]
    urls = city["city"]["brokers"]
    services = []
    for k, site in enumerate(s for s in args.sites.split(",") if s):
        cfg = load_config(queues[site])
        db = database if database.startswith("postgresql") else Path(database) / (
            f"{site}.sqlite")
        central = Central(cfg.queue, None, clock, store=open_store(str(db), site))
        services.append(CentralService(central, site, urls[k % len(urls)],
                                       protocol=city["city"].get("protocol", "3.1.1"),
                                       tick_s=0.5, stats_s=5.0).start())
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    for s in services:
        s.stop()
        s.central.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
