"""A city day (`hallgate sim city`): many centres on a clustered broker and one database, a
broker node and a central worker SIGKILLed mid-day, and the day balances.

Design note
-----------
Operations: `City(options, workdir).start()` brings the parts up, `run_day(progress)` plays
the day and returns the report (`report["lost"]`, `report["counted_twice"]`, `kills`),
`close()` stops everything. Parts, each the real one:
- brokers: a 3-node NATS JetStream cluster with MQTT (sim/natscluster.py; `broker="mosquitto"`
  runs one mosquitto instead, for a quick look without the cluster);
- database: a throwaway PostgreSQL (sim/pgserver.py), one schema for every site
  (central/pgstore.py); `database="sqlite"` keeps a SQLite file per site instead;
- centrals: `workers` processes `hallgate central worker --city city.toml` on the scaled
  clock (sim/citycentral.py picks the real workers, or a stand-in before they exist);
- gateways and people at contract level: `fleets` processes of sim/cityfleet.py, each
  running its share of the centres (real Outbox + real MqttLink, fed by the daemon's code);
- one real hall with firmware (sim/hall.py's `Hall`: real gateway daemons, MicroPython
  devices on their buses, its own people), its gateways given every broker URL. Its central
  stays the Hall's own, in this process: the Hall's people need its hall clock, which
  stands still while the chain answers, so it cannot be one of the workers on the scaled
  clock; but it stores into the city's database (a `PgStore`), so the city's counts and
  the journal cover it. Its central and observer use the node that is never killed: a
  `CentralService` takes one URL (the workers fail over; this one would wait for the node);
- the witness (sim/citywatch.py): its own persistent session on every site's events and
  centrals' status.
Goals: the figures are measured, not assumed: every event id a gateway took is looked for
in the database's journal (`lost`, `counted_twice`) and at the witness; take-over times
come from what the gateways and the witness saw.
Measured here (2 cores, nats-server 2.9, PostgreSQL 15): 96 centres at 80x do not keep up.
Per window, each ticket changed ~11-15 retained payloads (the panel's `queue` of every
window serving its service changes at each issue and call); published one by one, as
replicated JetStream writes, the cluster carried 200-250 a second with every core busy
(~1,300 asked for). With one snapshot per site at most every 0.25 s (`desired = "site"`,
the default here: central/desired.py) the desired state is no longer the limit: the
cluster then carried ~250 QoS 1 messages a second in all (events, receipts, tickets,
snapshots, stats: ~4 per event), ~100 events a second, where the day at 80x asks for
~330. Once behind, waits grow, and the gateways' receipt timeouts and the operators'
calls on stale panels add load (duplicates and rejected calls), worst after a node's
restart, so the figures of an overloaded day are those of the stall, not of a slower
day. Nothing is lost or counted twice meanwhile: what has no receipt stays in the
outboxes (`held_in_outboxes`).
Plan: the day runs on one `ScaledClock` (hall time = start + (real - real0) x speed), given
to the workers on their command line and to the fleets when they are ready ("go"). Unlike
`hallgate sim`, hall time never stands still: the chain's latency counts as hall time,
times the speed. Kills at fractions of the day: SIGKILL of a broker node (restarted
`node_down_s` later) and of one worker (left dead: the others take its sites over).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from hallgate.sim import SimError
from hallgate.sim.citycentral import real_workers, worker_command
from hallgate.sim.cityplan import (
    CityOptions,
    ScaledClock,
    city_toml,
    opening_today,
    plan_centres,
    queue_toml,
)
from hallgate.sim.citywatch import Witness, retained_online

__all__ = ["City", "CityOptions"]

log = logging.getLogger(__name__)

READY_S = 180.0  # real seconds for the parts to come up on a loaded machine
SETTLE_S = 30.0  # real seconds for the last events to reach the witness at the end
HALL_SITE = "hall"
NODE_KILLED = 0  # the broker node killed mid-day; the real hall's central uses the last


def _percentiles(values):
    if not values:
        return {"n": 0}
    s = sorted(values)
    at = lambda q: s[min(len(s) - 1, int(q * len(s)))]  # noqa: E731
    return {"n": len(s), "p50": at(0.5), "p95": at(0.95), "p99": at(0.99), "max": s[-1]}


class FleetProcess:
    """One sim/cityfleet.py child: its spec, its stdout lines, its report."""

    def __init__(self, name, spec_path, log_path):
        self.name = name
        self.report_path = spec_path.with_suffix(".report.json")
        self.lines = []
        self.last = {}
        self.ready = threading.Event()
        self.done = threading.Event()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hallgate.sim.cityfleet", str(spec_path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=open(log_path, "w"),
            text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg.get("ready"):
                self.ready.set()
            elif msg.get("done"):
                self.done.set()
            else:
                self.last = msg
        self.done.set()

    def send(self, line):
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass

    def report(self):
        try:
            return json.loads(self.report_path.read_text())
        except (OSError, ValueError):
            return None

    def stop(self):
        if self.proc.poll() is None:
            self.send("stop")
            try:
                self.proc.wait(DRAIN_WAIT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


DRAIN_WAIT_S = 150.0  # a fleet's drain (60 s) and report, on a loaded machine


class City:
    def __init__(self, options: CityOptions, workdir, *, broker="nats", database="postgres"):
        self.options = options
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.broker_kind = broker
        self.database_kind = database
        self.centres = plan_centres(options)
        self.sites = [c.site for c in self.centres]
        self.cluster = self.mosquitto = self.pg = None
        self.urls, self.protocol, self.dsn = [], "3.1.1", None
        self.workers = {}  # name -> Popen
        self.fleets = []
        self.witness = None
        self.hall = None
        self.hall_result = {}
        self.clock = None
        self.kills = []
        self.problems = []
        self.witness_missed_online = []  # sites online by their retained status only
        self.started_real = time.monotonic()
        self.startup = {}

    # ---- parts ----------------------------------------------------------------------------

    def start(self, say=lambda text: None):
        t0 = time.time()
        say("starting the brokers")
        self._start_brokers()
        say("starting the database")
        self._start_database()
        # The witness counts, it is not under test: it starts on the node never killed (the
        # last), as the real hall's central does. Failing over, a NATS session may come back
        # new, and its re-made subscription misses what was queued meanwhile (measured: 2
        # events of a short city missed at the witness, none in the database).
        self.witness = Witness(self.urls[::-1], self.protocol).start()
        # The day opens at real0, chosen ahead so the workers (which take the clock on
        # their command line) and the fleets are up by then.
        self.clock = ScaledClock(opening_today(), self.options.speed,
                                 real0=time.time() + self.options.startup())
        say(f"starting {self.options.workers} central worker(s) for {len(self.sites)} sites")
        self._start_workers()
        # The centrals first, then the gateways: every MQTT subscription is a JetStream
        # consumer, and NATS times out creating them when hundreds come at once (measured:
        # a few sites then never said online; a gateway's refused subscription is not
        # retried by the link).
        deadline = time.monotonic() + READY_S
        probed, confirmed = time.monotonic(), set()
        while (missing := set(self.sites) - self.witness.online(self.sites) - confirmed):
            if time.monotonic() > probed + 15:  # the witness may have missed a status
                probed = time.monotonic()
                confirmed |= retained_online(self.urls, self.protocol, sorted(missing))
                continue
            if time.monotonic() > deadline:
                raise SimError(f"centrals not online within {READY_S:.0f} s: "
                               f"{', '.join(sorted(missing)[:10])}"
                               f"{'...' if len(missing) > 10 else ''} (see {self.dir}/w*.log)")
            self._check_workers()
            time.sleep(0.2)
        if confirmed:  # online by their retained status, which the witness did not see
            log.warning("city: the witness missed the online status of %d site(s): %s",
                        len(confirmed), ", ".join(sorted(confirmed)))
            self.witness_missed_online = sorted(confirmed)
        say(f"starting {self.options.fleets} fleet(s) of {len(self.centres)} centres' gateways")
        self._start_fleets()
        if self.options.hall_windows:
            say(f"starting the real hall ({self.options.hall_windows} windows, firmware)")
            self._start_hall()
        for f in self.fleets:
            if not f.ready.wait(READY_S):
                raise SimError(f"fleet {f.name} not ready within {READY_S:.0f} s "
                               f"(see {self.dir / (f.name + '.log')})")
        self.startup = {"ready_s": round(time.time() - t0, 1),
                        "late_s": round(max(0.0, time.time() - self.clock.real0), 1)}
        say(f"ready in {self.startup['ready_s']} s; the day opens "
            f"{max(0.0, self.clock.real0 - time.time()):.0f} s from now")
        time.sleep(max(0.0, self.clock.real0 - time.time()))
        go = json.dumps({"go": self.clock.asdict()})
        for f in self.fleets:
            f.send(go)
        return self

    def _start_brokers(self):
        if self.broker_kind == "mosquitto":
            from hallgate.sim.broker import Mosquitto

            self.mosquitto = Mosquitto(self.dir / "mosquitto")
            self.mosquitto.start()
            self.urls, self.protocol = [self.mosquitto.url], "3.1.1"
            return
        from hallgate.sim.natscluster import start_cluster

        self.cluster = start_cluster(self.dir / "nats", nodes=3)
        self.urls, self.protocol = list(self.cluster.urls), self.cluster.protocol

    def _start_database(self):
        if self.database_kind == "sqlite":
            self.dsn = None
            self.database = str(self.dir / "db")
            Path(self.database).mkdir(exist_ok=True)
            return
        from hallgate.sim.pgserver import start_postgres

        self.pg = start_postgres(self.dir / "pg")
        self.dsn = self.database = self.pg.dsn

    def _write_city(self):
        queues = self.dir / "queues"
        queues.mkdir(exist_ok=True)
        entries = []
        for c in self.centres:
            path = queues / f"{c.site}.toml"
            path.write_text(queue_toml(c.site, c.queue_config(self.options.hours),
                                       broker=self.urls[0], database="unused.sqlite",
                                       protocol=self.protocol))
            entries.append((c.site, f"queues/{c.site}.toml"))
        city = self.dir / "city.toml"
        city.write_text(city_toml("sim-city", self.urls, self.protocol, self.database,
                                  entries, desired=self.options.desired))
        return city

    def _start_workers(self):
        city = self._write_city()
        n = self.options.workers
        for k in range(n):
            name = f"w{k + 1}"
            argv = worker_command(city, name, self.clock, self.sites[k::n],
                                  postgres=self.dsn is not None)
            self.workers[name] = subprocess.Popen(  # stdout: its ownership events
                argv, stdout=open(self.dir / f"{name}.events.jsonl", "w"),
                stderr=open(self.dir / f"{name}.log", "w"))

    def _check_workers(self):
        for name, p in self.workers.items():
            if p.poll() is not None and not any(k["what"] == f"worker {name}"
                                                 for k in self.kills):
                raise SimError(f"central worker {name} exited ({p.returncode}): "
                               f"{(self.dir / f'{name}.log').read_text()[-1500:]}")

    def _link_options(self):
        # The site's one snapshot, or three wildcard subscriptions per gateway instead of
        # three per window (every QoS 1 subscription is a JetStream consumer on NATS).
        return {"subscribe": "site" if self.options.desired == "site" else "kinds"}

    def _start_fleets(self):
        n = self.options.fleets
        link_options = self._link_options()
        for k in range(n):
            name = f"f{k + 1}"
            centres = []
            for j, c in enumerate(self.centres):
                if j % n != k:
                    continue
                centres.append({"site": c.site, "visitors": c.visitors, "seed": c.seed,
                                "skills": {str(w): s for w, s in c.skills.items()},
                                # spread the gateways over the nodes, as an installer would
                                "urls": self.urls[j % len(self.urls):]
                                + self.urls[:j % len(self.urls)]})
            spec = {"fleet": name, "urls": self.urls, "protocol": self.protocol,
                    "link_options": link_options, "hours": self.options.hours,
                    "workdir": str(self.dir / name), "centres": centres,
                    "report": str(self.dir / f"{name}.report.json")}
            path = self.dir / f"{name}.json"
            path.write_text(json.dumps(spec))
            self.fleets.append(FleetProcess(name, path, self.dir / f"{name}.log"))

    def _start_hall(self):
        from hallgate.sim.cityhall import CityHall, hall_options

        opts = hall_options(self.options, self.centres, site=HALL_SITE,
                            home=self.urls[-1], protocol=self.protocol)
        self.hall = CityHall(opts, self.dir / "hall", urls=self.urls, dsn=self.dsn).start()

    # ---- the day --------------------------------------------------------------------------

    def _fault_plan(self):
        o = self.options
        plan = []
        if o.kill_node_at is not None and self.cluster is not None:
            plan.append((o.kill_node_at, "node"))
        if o.kill_worker_at is not None:
            plan.append((o.kill_worker_at, "worker"))
        return sorted(plan)

    def _kill(self, what):
        t = time.time()
        hall_h = round(self.clock.hall_s() / 3600, 2)
        if what == "node":
            self.cluster.kill(NODE_KILLED)
            self.kills.append({"what": f"broker node {NODE_KILLED}", "kind": "node", "at": t,
                               "hall_h": hall_h, "down_s": self.options.node_down_s})
            threading.Timer(self.options.node_down_s, self._restart_node).start()
        else:
            name, proc = next(iter(self.workers.items()))
            proc.send_signal(signal.SIGKILL)
            self.kills.append({"what": f"worker {name}", "kind": "worker", "at": t,
                               "hall_h": hall_h, "pid": proc.pid})
        log.warning("city: killed %s at %.2f h", what, hall_h)

    def _restart_node(self):
        try:
            self.cluster.restart(NODE_KILLED)
            self.kills[-1 if self.kills[-1]["kind"] == "node" else 0]["restarted_at"] = \
                time.time()
        except Exception as e:  # noqa: BLE001 - reported, the day goes on
            self.problems.append(f"broker node {NODE_KILLED} did not restart: {e}")

    def limit_s(self):
        o = self.options
        return o.real_limit_s or max(180.0, 2.5 * o.day_real_s + 120)

    def run_day(self, progress=None):
        real0 = time.monotonic()
        if self.hall is not None:
            threading.Thread(target=self._hall_day, name="hall-day", daemon=True).start()
        faults = self._fault_plan()
        finished = False
        while time.monotonic() - real0 < self.limit_s():
            if faults and self.clock.hall_s() >= faults[0][0] * self.options.day_s:
                self._kill(faults.pop(0)[1])
            if all(f.done.is_set() for f in self.fleets) and (
                    self.hall is None or "report" in self.hall_result
                    or "error" in self.hall_result):
                finished = True
                break
            self._check_fleets()
            if progress is not None:
                progress(self)
            time.sleep(0.25)
        day_real_s = time.monotonic() - real0
        for f in self.fleets:
            f.stop()
        if self.hall is not None and "report" not in self.hall_result:
            self.hall.stopping.set()
        return self.report(day_real_s, finished)

    def _hall_day(self):
        try:
            self.hall_result["report"] = self.hall.run_day()
        except Exception as e:  # noqa: BLE001 - reported as the hall's problem
            self.hall_result["error"] = repr(e)

    def _check_fleets(self):
        for f in self.fleets:
            if f.proc.poll() not in (None, 0) and not f.done.is_set():
                raise SimError(f"fleet {f.name} died ({f.proc.returncode}): see "
                               f"{self.dir / (f.name + '.log')}")

    def status(self):
        """What the progress line shows."""
        lasts = [f.last for f in self.fleets]
        total = lambda k: sum(x.get(k, 0) for x in lasts)  # noqa: E731
        return {"hall_h": round(self.clock.hall_s() / 3600, 2) if self.clock else 0,
                "visitors": sum(c.visitors for c in self.centres),
                "issued": total("issued"), "ended": total("ended"),
                "events": total("events"), "waiting": total("waiting"),
                "connected": total("connected"), "gateways": len(self.centres),
                "hall": None if self.hall is None or self.hall.clock is None else
                round(self.hall.sim_now() / 3600, 2),
                "kills": [k["what"] for k in self.kills]}

    # ---- the report -----------------------------------------------------------------------

    def report(self, day_real_s, finished):
        fleets = [f.report() for f in self.fleets]
        missing = [f.name for f, r in zip(self.fleets, fleets, strict=True) if r is None]
        fleets = [r for r in fleets if r is not None]
        ids = collections.defaultdict(set)
        for r in fleets:
            for site, got in r["ids"].items():
                ids[site].update(got)
        sites = list(self.sites) + ([HALL_SITE] if self.hall is not None else [])
        # Give the witness the time to see the last events (it is a subscriber like any).
        want = sum(len(v) for v in ids.values())
        deadline = time.monotonic() + SETTLE_S
        while time.monotonic() < deadline and sum(
                len(ids[s] & self.witness.ids[s]) for s in ids) < want:
            time.sleep(0.2)
        db = self._database_counts(sites)
        hall = self.hall_result.get("report")
        # The real hall's daemons keep no ids once delivered: counted, not named. Made:
        # what its outboxes took; lost: made, minus still held, minus the journal's ids.
        hall_made = hall_lost = 0
        if self.hall is not None:
            box = self.hall.outbox_counts()
            hall_made = box["added"]
            hall_lost = max(0, box["added"] - box["depth"]
                            - len(db["ids"].get(HALL_SITE, ())))
        held = collections.defaultdict(set)  # still in an outbox at the end: not lost
        for r in fleets:
            for site, got in r.get("held", {}).items():
                held[site].update(got)
        lost_db = {s: sorted(ids[s] - db["ids"].get(s, set()) - held[s]) for s in ids}
        with self.witness.lock:
            lost_witness = {s: len(ids[s] - self.witness.ids[s] - held[s]) for s in ids}
        centres = {}
        for r in fleets:
            for site, c in r["centres"].items():
                centres[site] = {**{k: c[k] for k in ("visitors", "issued", "served",
                                                        "noshow", "refused", "unended",
                                                        "votes_missed")},
                                 **db["stats"].get(site, {})}
        latency = [x for r in fleets for x in r["latency_ms"]]
        per_10s = collections.Counter()
        for r in fleets:
            per_10s.update({int(k): n for k, n in r["delivered_per_10s"].items()})
        events = sum(len(v) for v in ids.values()) + hall_made
        people = collections.Counter()
        for c in centres.values():
            people.update({k: c[k] for k in ("visitors", "issued", "served", "noshow",
                                             "refused", "unended")})
        report = {
            "city": True, "finished": finished and not missing,
            "options": dataclasses.asdict(self.options),
            "broker": {"kind": self.broker_kind, "urls": self.urls,
                       "protocol": self.protocol},
            "database": self.database_kind,
            "centrals": "workers" if real_workers() and self.dsn else
            "stand-in workers (no take-over)",
            "real_s": round(time.monotonic() - self.started_real, 1),
            "day_real_s": round(day_real_s, 1),
            "startup": self.startup,
            "hall_hours": round(self.clock.hall_s() / 3600, 2),
            "speed": self.options.speed,
            "centres": len(self.centres),
            "gateways": len(self.centres) + (len(self.hall.layout) if self.hall else 0),
            "windows": sum(c.windows for c in self.centres),
            "visitors": dict(people),
            "every_visitor_ended": people["unended"] == 0,
            "events": events,
            "events_per_s": round(events / day_real_s, 1) if day_real_s else None,
            "events_per_s_peak_10s": round(max(per_10s.values(), default=0) / 10, 1),
            "press_to_receipt_ms": _percentiles(latency),
            "lost": sum(len(v) for v in lost_db.values()) + hall_lost,
            "lost_at_witness": sum(lost_witness.values()),
            "lost_ids": {s: v[:20] for s, v in lost_db.items() if v},
            "held_in_outboxes": sum(len(v) for v in held.values()),
            "counted_twice": db["counted_twice"],
            "journal_rows": db["rows"],
            "tickets": db["tickets"],
            "desired_publishes": db["desired"],
            "desired_per_ticket": round(db["desired"] / max(1, sum(
                sum(t.values()) for t in db["tickets"].values())), 1),
            "nats": self._nats_figures(),
            "witness": {"deliveries": self.witness.deliveries,
                        "distinct": self.witness.events(),
                        "missed_online_at_start": self.witness_missed_online},
            "kills": self._kill_report(fleets),
            "by_centre": centres,
            "hall": None if self.hall is None else {
                "finished": bool(hall and hall["finished"]),
                "problems": (hall or {}).get("problems", [self.hall_result.get("error")]),
                "real_s": (hall or {}).get("real_s"),
                "chain_ms": (hall or {}).get("chain_ms"),
                "outbox": self.hall.outbox_counts(),
                "stats": db["stats"].get(HALL_SITE)},
            "problems": self.problems + [f"fleet {m} wrote no report" for m in missing]
            + [f"{s}: {p}" for r in fleets for s, c in r["centres"].items()
               for p in c["problems"]],
        }
        return report

    def _kill_report(self, fleets):
        out = []
        connections = [x for r in fleets for x in r["connections"]]
        for k in self.kills:
            k = dict(k)
            at = k["at"]
            if k["kind"] == "node":
                lost = {}
                for gw, t, state, _url in sorted(connections, key=lambda x: x[1]):
                    if state == "lost" and at - 1 <= t <= at + 10:
                        lost.setdefault(gw, None)
                    elif state == "connected" and gw in lost and lost[gw] is None and t > at:
                        lost[gw] = round(t - at, 2)
                back = [v for v in lost.values() if v is not None]
                k.update(gateways_moved=len(lost), gateways_back=len(back),
                         reconnect_s=_percentiles(back))
            else:
                took = self.witness.takeovers(at, self.sites, window_s=60.0)
                back = [v for v in took.values() if v is not None]
                owned = self._ownership(k["what"].split()[-1], at)
                again = [v for v in owned.values() if v is not None]
                k.update(sites=len(took), sites_back=len(back),
                         takeover_s=_percentiles(back),
                         # the workers' own word: the sites it owned at the kill, and from
                         # the kill to another worker's "owned"
                         sites_owned=len(owned), sites_owned_back=len(again),
                         owned_s=_percentiles(again))
            out.append(k)
        return out

    def _ownership(self, killed, at):
        """Per site the killed worker owned: real seconds from the kill to another
        worker's ownership event (central/city.py's stdout lines)."""
        def events(name):
            try:
                lines = (self.dir / f"{name}.events.jsonl").read_text().splitlines()
            except OSError:
                return []
            out = []
            for line in lines:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
            return out

        held = {}  # site -> owned by the killed worker, as of its last line before the kill
        for e in events(killed):
            if e.get("site") and e["ts"] <= at:
                held[e["site"]] = bool(e.get("owned"))
        mine = {site for site, owned in held.items() if owned}
        out = dict.fromkeys(mine)  # None: not served again
        for name in self.workers:
            if name == killed:
                continue
            for e in events(name):
                if e.get("owned") and e.get("site") in mine and e["ts"] > at \
                        and out[e["site"]] is None:
                    out[e["site"]] = round(e["ts"] - at, 2)
        return out

    def _database_counts(self, sites):
        """Journal rows per event id, tickets by state, and each site's day statistics,
        read from the city's database."""
        from hallgate.central.stats import day_stats

        out = {"ids": {}, "counted_twice": 0, "rows": 0, "tickets": {}, "stats": {},
               "desired": 0}
        day = time.strftime("%Y-%m-%d", time.gmtime(self.clock.start))
        for site in sites:
            store = self._store(site)
            try:
                rows = collections.Counter(i for (i,) in self._rows(store, "id", "journal"))
                out["ids"][site] = set(rows)
                out["rows"] += sum(rows.values())
                out["counted_twice"] += sum(1 for n in rows.values() if n > 1)
                # every version of a window's display, panel, vote and session is one
                # retained publish (the figure that limits a city on NATS)
                out["desired"] += sum(v for (v,) in self._rows(store, "version", "desired"))
                tickets, votes = store.day(day)
                states = collections.Counter(t.state for t in tickets)
                out["tickets"][site] = dict(states)
                stats = day_stats(tickets, votes, norm_s=900, day=day, tz="UTC",
                                  now=self.clock.now())["all"]
                out["stats"][site] = {k: stats.get(k) for k in (
                    "wait_avg_s", "wait_p95_s", "over_norm_share", "satisfaction", "votes")}
            finally:
                store.close()
        return out

    @staticmethod
    def _rows(store, cols, table):
        if hasattr(store, "_select"):  # PgStore: the site's rows
            return store._select(cols, table)
        return store.db.execute(f"SELECT {cols} FROM {table}").fetchall()

    def _nats_figures(self):
        """Each node's counters (its monitoring /varz): messages, CPU, memory."""
        import urllib.request

        if self.cluster is None:
            return None
        out = []
        for node in self.cluster.nodes:
            try:
                with urllib.request.urlopen(
                        f"http://{node.host}:{node.http_port}/varz", timeout=5) as r:
                    v = json.load(r)
                out.append({"node": node.index, "in_msgs": v["in_msgs"],
                            "out_msgs": v["out_msgs"], "cpu": v["cpu"],
                            "mem_mb": v["mem"] // 2**20, "connections": v["connections"]})
            except (OSError, ValueError, KeyError) as e:
                out.append({"node": node.index, "error": str(e)})
        return out

    def _store(self, site):
        from hallgate.central.service import open_store

        if self.dsn:
            return open_store(self.dsn, site)
        if site == HALL_SITE:
            return open_store(str(self.hall.db))
        return open_store(str(Path(self.database) / f"{site}.sqlite"))

    # ---- the end --------------------------------------------------------------------------

    def close(self):
        for f in self.fleets:
            if f.proc.poll() is None:
                f.proc.kill()
                f.proc.wait(5)
        if self.hall is not None:
            try:
                self.hall.close()
            except Exception:  # noqa: BLE001 - closing what is left
                log.exception("city: closing the hall")
        for p in self.workers.values():
            if p.poll() is None:
                p.terminate()
        for p in self.workers.values():
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        if self.witness is not None:
            self.witness.stop()
        if self.cluster is not None:
            self.cluster.stop()
        if self.mosquitto is not None:
            self.mosquitto.stop()
        if self.pg is not None:
            self.pg.stop()


def city_text(r):
    """The report in a few lines for a person."""
    v = r["visitors"]
    lines = [
        f"city: {r['centres']} centres, {r['windows']} windows, {r['gateways']} gateways; "
        f"{v.get('visitors', 0)} visitors: {v.get('served', 0)} served, "
        f"{v.get('noshow', 0)} no-show, {v.get('refused', 0)} refused, "
        f"{v.get('unended', 0)} not ended",
        f"day: {r['hall_hours']} hall hours in {r['day_real_s']} s real "
        f"({r['speed']:g}x; {r['real_s']} s with start-up); finished: {r['finished']}",
        f"events: {r['events']} committed, {r['events_per_s']}/s sustained, "
        f"{r['events_per_s_peak_10s']}/s peak (10 s); press -> receipt ms "
        f"{r['press_to_receipt_ms']}",
        f"lost: {r['lost']} (witness: {r['lost_at_witness']}); counted twice: "
        f"{r['counted_twice']}; held in outboxes (no receipt yet): {r['held_in_outboxes']}",
        f"desired state: {r['desired_publishes']} retained publishes, "
        f"{r['desired_per_ticket']} per ticket",
    ]
    for k in r["kills"]:
        detail = (f"{k.get('gateways_back')}/{k.get('gateways_moved')} gateways back, "
                  f"reconnect s {k.get('reconnect_s')}" if k["kind"] == "node" else
                  f"{k.get('sites_back')}/{k.get('sites')} sites online again, "
                  f"take-over s {k.get('takeover_s')}; owned again s {k.get('owned_s')}")
        lines.append(f"killed {k['what']} at {k['hall_h']} h: {detail}")
    if r["hall"]:
        h = r["hall"]
        lines.append(f"real hall: finished {h['finished']}, outbox {h['outbox']}, "
                     f"stats {h['stats']}")
    for p in r["problems"][:10]:
        lines.append(f"problem: {p}")
    return "\n".join(lines)


def env_ok():
    """Why a city cannot run here (None when it can)."""
    from hallgate.sim.natscluster import nats_binary
    from hallgate.sim.pgserver import postgres_missing

    try:
        nats_binary()
    except Exception as e:  # noqa: BLE001
        return str(e)
    return postgres_missing()

