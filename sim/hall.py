"""One site of a service hall on one machine: what `hallgate sim` (and `make demo`) runs;
several sites are several halls on one broker (sim/town.py).

Design note
-----------
Operations: `Hall(options, workdir).start()` brings the parts up, `run_day()` plays the
day's plan (sim/dayplan.py, or a profile's: sim/profile.py) until every visitor has been
served or marked no-show, and returns the end-of-day report; `close()` stops everything.
`restart_central()` and `kill_gateway()` are the faults a test plays mid-day.
Parts, each the real component, nothing re-implemented:
- broker: `sim.broker.start_broker` (mosquitto when installed, else amqtt, which speaks
  MQTT 3.1.1 only, so then every client does), or an existing one (`--broker URL`);
- central: `Central` + `CentralService` in this process on the hall clock
  (sim/hallclock.py), so waits, the 15-minute norm and vote timeouts run in hall time
  (the chain's latency never counts); a restart builds new ones on
  the same database and the same clock, as a restarted service would find them;
- gateways: each a `hallgate sim gateway` child (sim/gwhost.py), the real daemon with
  gpiozero mock pins for the like / dislike buttons, serving a range of the windows
  (sim/hallconfig.py); it can be SIGKILLed like a Pi losing power;
- bus devices: per window a call panel and a window display (and a feedback pad past the
  GPIO's pairs), the real firmware on MicroPython processes joined by their gateway's pty
  line (`BusHub`, in a process of its own: sim/hubproc.py);
- kiosk: publishes `ticket/request` at each visitor's arrival;
- observer: one MQTT client logging the site's topics (sim/observer.py), for the live
  view, for the report's cross-check, and as the people's eye on the kiosk's answers, the
  central's answers to a key and the vote events of their window;
- pages (`Options.http`): the hall board and the manager's view (hallgate/web), reading
  the site's topics from the broker as they would beside a real central; they outlive a
  restart of the central, as they would.
The people (sim/people.py) act only through what a person touches or sees: the panel's
keys, the feedback buttons, the panel and the display as the firmware shows them.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from hallgate.central.clock import local_day
from hallgate.central.mqtt import CentralService, utc_ts
from hallgate.central.queue import FINAL, QueueConfig
from hallgate.central.service import Central
from hallgate.sim import SimError, dayplan
from hallgate.sim.device import FirmwareDevice, compile_firmware
from hallgate.sim.gwhost import GatewayHost
from hallgate.sim.hallclock import HallClock
from hallgate.sim.hallconfig import (
    MAX_GATEWAY_WINDOWS,
    OPENING_HOUR,
    gateway_config,
    gateway_plans,
    queue_config,
    skills,
)
from hallgate.sim.hubproc import HubProcess
from hallgate.sim.load import offered_load
from hallgate.sim.observer import Observer

__all__ = ["SITE", "Hall", "Options", "SimError", "queue_config", "skills"]

# The lab's devices (booted from signed bundles, updated by technicians' commands): twice in
# ~8 whole-suite runs a call panel at sim/device.py's 64k had no heap left for an update's
# BEGIN (MemoryError in ota._begin, then in every INFO answer), so the update failed as
# "offline". Not yet understood (tests/test_ota.py updates at 64k and passes); until it is,
# the lab, which is for trying the commands, runs its devices on 96k.
LAB_HEAPSIZE = "96k"

log = logging.getLogger(__name__)

SITE = "sim-hall"
READY_TIMEOUT = 60.0  # real seconds for a part to come up on a loaded machine
ANSWER_S = 45.0  # real seconds for the hall to answer a request (outages included)


@dataclasses.dataclass
class Options:
    windows: int = 10
    visitors: int = 200  # with 10 windows over 10 h: below capacity in every hour
    hours: float = 10.0
    speed: float | None = 600.0  # hall time at most this many times real time; None: as
    # fast as the chain answers (hall time never includes the chain's latency: sim/hallclock.py)
    seed: int = 1
    gateways: int = 1  # the site's windows split over this many gateways, each its own bus
    site: str = SITE  # the site's name in the MQTT topics
    broker: str | None = None  # an existing broker's URL; None: start one
    broker_kind: str = "auto"  # the one to start: mosquitto when installed, else amqtt
    protocol: str | None = None  # MQTT version; None: what the broker speaks
    real_limit_s: float | None = None  # give up after this long; None: from the day's size
    baud: int = 921600  # the bus: the fastest BUS.md allows
    model_only: bool = False  # the plan through the central alone (sim/model.py)
    lab: bool = False  # signed firmware on the devices, a key for updates, a spare board
    http: tuple[str, int] | None = None  # serve the site's board and manager's view here
    # Desired state per window topic, or one snapshot per site (central/desired.py): the
    # central publishes and the gateways subscribe that way.
    desired: str = "windows"

    def __post_init__(self):
        most = 999 if self.model_only else MAX_GATEWAY_WINDOWS * self.gateways
        if not 1 <= self.windows <= most:
            why = "" if self.model_only else (
                f" with {self.gateways} gateway(s) of at most {MAX_GATEWAY_WINDOWS} windows"
                " each: more windows need --gateways")
            raise ValueError(f"windows: 1 to {most}{why}, got {self.windows}")
        if not 1 <= self.gateways <= self.windows:
            raise ValueError(f"gateways: 1 to the number of windows, got {self.gateways}")
        if self.visitors < 1:
            raise ValueError(f"visitors: at least 1, got {self.visitors}")
        if not 0.5 <= self.hours <= 16:
            raise ValueError(f"hours: 0.5 to 16, got {self.hours}")
        if self.speed is not None and not self.speed > 0:
            raise ValueError(f"speed: more than 0 times real time (or max), got {self.speed}")


def _percentiles(seconds):
    """{"n", "p50", "p95", "p99", "max"} of real seconds, in ms."""
    if not seconds:
        return {"n": 0}
    s = sorted(seconds)
    at = lambda q: round(1000 * s[min(len(s) - 1, int(q * len(s)))])  # noqa: E731
    return {"n": len(s), "p50": at(0.5), "p95": at(0.95), "p99": at(0.99),
            "max": round(1000 * s[-1])}


class Hall:
    """One site: its central, its gateways with their buses and devices, its people.
    `plan` (visitors) and `by_window` (window -> {service: weight}) come from a profile
    (sim/profile.py), else from `options`."""

    def __init__(self, options, workdir, *, services=dayplan.DEFAULT_SERVICES, plan=None,
                 by_window=None):
        self.options = options
        self.site = options.site
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.services = services
        self.plan = plan if plan is not None else dayplan.plan_visitors(
            options.visitors, options.hours, seed=options.seed, services=services)
        self.breaks = dayplan.plan_breaks(range(1, options.windows + 1), options.hours,
                                          seed=options.seed)
        self.skills = by_window or skills(options.windows, services)
        config = queue_config(options, services, self.skills)
        self.load = offered_load(self.plan, [(w["n"], w["services"])
                                             for w in config["windows"]])
        today = datetime.now(UTC).replace(hour=OPENING_HOUR, minute=0, second=0,
                                          microsecond=0)
        self.opening = today.timestamp()
        self.day = local_day(self.opening, "UTC")
        self.queue_config = QueueConfig.from_dict(config)
        self.db = self.dir / "central.sqlite"
        self.layout = gateway_plans(options.windows, options.gateways)
        self.clock = None
        self.broker = None
        self.hubs = []  # one bus per gateway
        self.gateways = []  # GatewayHost, as `layout`
        self.panels, self.displays, self.pads = {}, {}, {}  # window -> FirmwareDevice
        self.central = self.service = None
        self.central_starts = 0
        self.observer = None
        self.lab = None  # sim/lab.py, with Options.lab
        self.pages = None  # hallgate.web.hallpages.HallPages, with Options.http
        self.gateway_urls = None  # the gateways' broker URLs, if not the hall's one
        self.lock = threading.Lock()
        self.requests = {}  # request id -> visitor
        self.kiosk_done = threading.Event()
        self.stopping = threading.Event()
        self.journal = []  # what the people did: dicts with "what"
        self.problems = []  # what went wrong that a person would notice
        # The chain's real latencies, seconds: key press to the event at the broker, to the
        # panel's answer (through the central and back), a call to the display showing it.
        self.latency = {"press_to_broker": [], "press_to_central": [], "press_to_panel": [],
                        "call_to_display": []}
        self.rejected = []  # (window, key, the central's reason)
        self.redirected = set()  # tickets redirected once already

    @property
    def devices(self):
        """Every firmware device of the site."""
        return [*self.panels.values(), *self.displays.values(), *self.pads.values()]

    def gateway_of(self, window):
        """(GatewayPlan, GatewayHost) of the gateway serving `window`."""
        k = next(k for k, g in enumerate(self.layout) if window in g.windows)
        return self.layout[k], self.gateways[k]

    # ---- parts ----------------------------------------------------------------------------

    def start(self):
        from hallgate.sim.broker import start_broker

        opts = self.options
        if opts.broker:
            url = opts.broker
            protocol = opts.protocol or "5"
        else:
            self.broker = start_broker(self.dir / "broker", prefer=opts.broker_kind)
            url = self.broker.url
            protocol = opts.protocol or self.broker.protocol
        self.url, self.protocol = url, protocol
        host, port = url.split("://", 1)[1].rsplit(":", 1)
        self.observer = Observer(host, int(port), protocol, self.site)
        compile_firmware()
        if opts.lab:
            from hallgate.sim.lab import Lab

            self.lab = Lab(self.dir / "lab").prepare()
            self.lab.start_spare(READY_TIMEOUT)
        for g in self.layout:
            devices = g.devices()
            hub = HubProcess({name: address for name, address, _, _ in devices}, opts.baud,
                             READY_TIMEOUT)
            self.hubs.append(hub)
            kinds = {"call-panel": self.panels, "window-display": self.displays,
                     "feedback-pad": self.pads}
            for name, address, role, n in devices:
                timings = self.panel_timings() if role == "call-panel" else {}
                kinds[role][n] = self._device(hub.port(name), name, address, role, n,
                                              **timings)
        for dev in self.devices:
            dev.start(READY_TIMEOUT)
        self.clock = HallClock(self.opening, max_speed=opts.speed)
        self.start_central()
        if opts.http:
            from hallgate.web.hallpages import HallPages

            try:
                self.pages = HallPages(self.site, url, *opts.http, protocol=protocol,
                                       client_id=f"hallgate-sim-pages-{self.site}").start()
            except OSError as e:  # the port is taken
                raise SimError(f"the pages on {opts.http[0]}:{opts.http[1]}: {e}") from None
        for g, hub in zip(self.layout, self.hubs, strict=True):
            config = gateway_config(
                self.dir / f"{g.id}.toml", self.site, g,
                broker_url=self.gateway_urls or url, protocol=protocol,
                bus_path=hub.master_path, baud=opts.baud,
                outbox=self.dir / f"{g.id}.outbox.sqlite",
                public_key=self.lab.public if self.lab else None,
                subscribe=opts.desired)
            run = self.dir / g.id  # its status file, and its control socket beside it
            run.mkdir(exist_ok=True)
            self.gateways.append(GatewayHost(config, self.dir / f"{g.id}.log",
                                             on_error=self.problem,
                                             status_file=run / "status.json"))
        for gw in self.gateways:
            gw.start(READY_TIMEOUT)
        return self

    def _device(self, path, name, address, role, window, **timings):
        flash = self.lab.flash_dir(name, role) if self.lab else None
        if self.lab:  # OPEN: a lab panel at 64k once ran out of heap at an update's BEGIN
            timings["heapsize"] = LAB_HEAPSIZE  # (ota._begin, MemoryError): see LAB_HEAPSIZE
        return FirmwareDevice(self.dir / name, address, role, window, path,
                              ready_timeout=READY_TIMEOUT, start=False, flash_dir=flash,
                              **timings)

    def panel_timings(self):
        """The panel's human-scale times, made short: the simulated operator presses as
        soon as the chain has answered (hall time stands still meanwhile), so a real-time
        1 s double-click lockout would swallow deliberate presses."""
        return {"lockout_ms": 10, "long_ms": 100}

    def central_store(self):
        """The central's store: None for its SQLite file `db` (sim/cityhall.py: the city's
        PostgreSQL)."""
        return None

    def start_central(self):
        store = self.central_store()
        self.central = Central(self.queue_config, None if store else self.db, self.clock,
                               store=store)
        self.service = CentralService(self.central, self.site, self.url,
                                      protocol=self.protocol, tick_s=0.1, stats_s=0.5,
                                      desired=self.options.desired,
                                      client_id=f"hallgate-sim-central-{self.site}").start()
        self.central_starts += 1
        if not self.service.wait_connected(READY_TIMEOUT):
            raise SimError(f"the central service could not connect to {self.url}")

    def restart_central(self, down_s=1.0):
        """Stop the central service, stay away `down_s` real seconds, start a new one on
        the same database and clock."""
        with self.lock:
            service, central = self.service, self.central
            self.service = None
        service.stop()
        central.close()
        time.sleep(down_s)
        with self.lock:
            self.start_central()

    def kill_gateway(self, down_s=0.5, k=0):
        """SIGKILL gateway `k` mid-day (a power cut), restart it after `down_s`."""
        gw = self.gateways[k]
        gw.kill()
        time.sleep(down_s)
        gw.start(READY_TIMEOUT)

    def close(self):
        self.stopping.set()
        if self.pages is not None:
            self.pages.stop()
        if self.clock is not None:
            self.clock.stop()
        for gw in self.gateways:
            gw.stop()
        with self.lock:
            if self.service is not None:
                self.service.stop()
                self.central.close()
                self.service = None
        for dev in self.devices:
            dev.close()
        for hub in self.hubs:
            hub.close()
        if self.observer is not None:
            self.observer.close()
        if self.lab is not None:
            self.lab.close()
        if self.broker is not None:
            self.broker.stop()

    # ---- what people use ------------------------------------------------------------------

    def sim_now(self):
        """Simulated seconds since opening."""
        return self.clock.now() - self.opening

    def sleep_sim(self, seconds):
        """Sleep `seconds` of hall time (the calling thread is an actor of the hall
        clock); False if the simulation is stopping."""
        return self.clock.sleep(threading.current_thread().name, seconds) and (
            not self.stopping.is_set())

    def visitor_for(self, ticket, timeout=10.0):
        """The planned visitor holding `ticket` (the kiosk's answer names it)."""
        obs = self.observer
        found = {}

        def known():
            for rid, number in obs.issued.items():
                if number == ticket and rid in self.requests:
                    found["v"] = self.requests[rid]
                    return True
            return False

        obs.wait(known, timeout)
        return found.get("v")

    def record(self, what, **fields):
        with self.lock:
            self.journal.append({"what": what, "at_s": round(self.sim_now(), 1), **fields})

    def first_redirect(self, window, ticket, service):
        """True once per ticket, if `window` has somewhere else than `service` to redirect
        to: a visitor the plan sends elsewhere is redirected once, then served there."""
        cfg = next(w for w in self.queue_config.windows if w.n == window)
        with self.lock:
            if cfg.redirect_to in (None, service) or ticket in self.redirected:
                return False
            self.redirected.add(ticket)
            return True

    def measured(self, what, real_s):
        """A latency of the chain (`latency`'s keys), in real seconds."""
        with self.lock:
            self.latency[what].append(real_s)

    def press_rejected(self, window, key, reason):
        with self.lock:
            self.rejected.append((window, key, reason))

    def problem(self, text):
        log.warning("%s", text)
        with self.lock:
            self.problems.append(text)

    def day_over(self):
        """Every visitor has a ticket and every ticket has ended (served or no-show)."""
        if not self.kiosk_done.is_set():
            return False
        with self.lock:
            if self.service is None:
                return False
            with self.service.lock:
                tickets = list(self.central.queue.tickets.values())
        return len(tickets) >= len(self.plan) and all(t.state in FINAL for t in tickets)

    # ---- the day --------------------------------------------------------------------------

    def kiosk(self):
        """Publish a ticket request at each visitor's arrival (QoS 1: the broker keeps it
        for the central service if that is away), and wait for the ticket: hall time
        stands still until the visitor holds it."""
        client = self.observer.client
        obs = self.observer
        for v in self.plan:
            if not self.sleep_sim(v.arrive_s - self.sim_now()):
                return
            rid = str(uuid.uuid4())
            with self.lock:
                self.requests[rid] = v
            body = {"id": rid, "service": v.service, "appointment": v.appointment,
                    "priority": v.priority, "ts": utc_ts()}
            client.publish(f"hall/v1/{self.site}/ticket/request", json.dumps(body), qos=1)
            if not obs.wait(lambda r=rid: r in obs.issued or self.stopping.is_set(),
                            ANSWER_S):
                self.problem(f"the kiosk had no ticket for request {rid} within "
                             f"{ANSWER_S:.0f} s")
        self.kiosk_done.set()

    def desired_panel(self, window):
        """What the central has decided the panel of `window` shows (None while the
        central is away): what an operator's look waits for (sim/people.py)."""
        with self.lock:
            if self.service is None:
                return None
            with self.service.lock:
                return self.central.queue.desired(window, "panel")

    def _faults(self, faults):
        """Each fault at its hall time; hall time stands still while it runs."""
        for at, fault in sorted(faults, key=lambda f: f[0]):
            if not self.sleep_sim(at - self.sim_now()):
                return
            fault()

    def _actor(self, name, work):
        def run():
            try:
                work()
            finally:
                self.clock.leave(name)
        self.clock.join(name)
        return threading.Thread(target=run, name=name, daemon=True)

    def run_day(self, faults=(), progress=None):
        """Play the day; `faults` are (simulated seconds since opening, callable) run on
        the way. Returns the report."""
        from hallgate.sim.people import Operator

        real0 = time.monotonic()
        opts = self.options
        limit = opts.real_limit_s or max(
            120.0, 3 * opts.hours * 3600 / (opts.speed or 1e9), 120 + 3.0 * opts.visitors)
        operators = [Operator(self, n, [b for b in self.breaks if b.window == n])
                     for n in self.panels]
        threads = [self._actor("kiosk", self.kiosk)]
        threads += [self._actor(f"operator-{op.window}", op.run) for op in operators]
        if faults:
            threads.append(self._actor("faults", lambda: self._faults(faults)))
        for t in threads:
            t.start()
        finished = False
        while time.monotonic() - real0 < limit:
            if self.day_over() and not any(t.is_alive() for t in threads):
                finished = True
                break
            if progress is not None:
                progress(self)
            time.sleep(0.1)
        doing = {op.window: op.doing for op in operators}
        self.stopping.set()
        self.clock.stop()
        for t in threads:
            t.join(30)
        if local_day(self.clock.now(), "UTC") != self.day:
            self.problem("the day ran past midnight (the hall could not keep up: fewer "
                         "visitors or more windows): its last votes count for the next day")
        if not finished:
            self.problem(f"the day did not finish within {limit:.0f} real seconds; the "
                         "operators were: "
                         + "; ".join(f"window {n}: {d}" for n, d in doing.items()))
        # Let the last votes and figures reach the observer before counting.
        time.sleep(0.5)
        return self.report(real_s=time.monotonic() - real0, finished=finished)

    # ---- the report -----------------------------------------------------------------------

    def report(self, real_s, finished):
        with self.lock:
            live = self.service is not None
            journal = list(self.journal)
        if live:
            with self.service.lock:
                central = self.central.day_report(self.day)
        else:
            central = None
        calls = [j for j in journal if j["what"] == "call"]
        pressed = [j for j in journal if j["what"] == "vote"]
        return {
            "site": self.site,
            "day": self.day,
            "finished": finished,
            "options": dataclasses.asdict(self.options),
            "real_s": round(real_s, 1),
            "sim_hours": round(self.sim_now() / 3600, 2),
            "plan": dayplan.summary(self.plan),
            "offered_load": self.load,
            "broker": {"url": self.url, "protocol": self.protocol},
            "chain_ms": {k: _percentiles(v) for k, v in self.latency.items()},
            "rejected_presses": len(self.rejected),
            "rejected": [{"window": w, "key": k, "reason": r} for w, k, r in self.rejected],
            "calls": len(calls),
            "calls_shown": sum(1 for c in calls if c["shown"]),
            "vote_presses": sum(j["presses"] for j in pressed),
            "pressed_again": sum(1 for j in journal if j["what"] == "pressed-again"),
            "people": dict(collections.Counter(j["what"] for j in journal)),
            "voters": len(pressed),
            "gateway_starts": sum(gw.starts for gw in self.gateways),
            "central_starts": self.central_starts,
            "observer": {"events": len(self.observer.events),
                         "deliveries": self.observer.deliveries,
                         "tickets_issued": len(set(self.observer.issued.values())),
                         "central_errors": self.observer.central_errors},
            "problems": list(self.problems),
            "central": central,
        }

    # ---- the live view's data -------------------------------------------------------------

    def snapshot(self):
        """What the hall shows now: each window's display and panel as the firmware shows
        them, and the central's live figures (its retained stats)."""
        stats = self.observer.stats or {}
        by_window = stats.get("by_window", {})
        windows = []
        for n in self.panels:
            d = self.displays[n].shown() or {}
            p = self.panels[n].shown() or {}
            w = by_window.get(str(n), {})
            windows.append({
                "n": n, "services": sorted(self.skills[n], key=lambda c: -self.skills[n][c]),
                "display": d.get("text", ""), "blink": bool(d.get("blink")),
                "mode": p.get("mode", "?"), "ticket": p.get("text", ""),
                "queue": p.get("queue", 0), "wait_s": p.get("wait_s", 0),
                "tea": bool(p.get("tea")), "served": w.get("served", 0),
                "likes": w.get("likes", 0), "dislikes": w.get("dislikes", 0),
                "misuse": w.get("misuse", 0),
            })
        return {
            "clock": self.clock.now() if self.clock else self.opening,
            "day": self.day,
            "site": self.site,
            "gateways": len(self.layout),
            "all": stats.get("all", {}),
            "now": stats.get("now", {}),
            "windows": windows,
            "gateway_starts": sum(gw.starts for gw in self.gateways),
            "central_starts": self.central_starts,
            "problems": len(self.problems),
        }
