"""A whole service hall on one machine: what `hallgate sim` (and `make demo`) runs.

Design note
-----------
Operations: `Hall(options, workdir).start()` brings the parts up, `run_day()` plays the
day's plan (sim/dayplan.py) until every visitor has been served or marked no-show, and
returns the end-of-day report; `close()` stops everything. `restart_central()` and
`kill_gateway()` are the faults a test plays mid-day.
Parts, each the real component, nothing re-implemented:
- broker: `sim.broker.start_broker` (mosquitto when installed, else amqtt, which speaks
  MQTT 3.1.1 only, so then every client does), or an existing one (`--broker URL`);
- central: `Central` + `CentralService` in this process on the hall clock
  (sim/hallclock.py), so waits, the 15-minute norm and vote timeouts run in hall time
  (the chain's latency never counts); a restart builds new ones on
  the same database and the same clock, as a restarted service would find them;
- gateway: a `hallgate sim gateway` child (sim/gwhost.py), the real daemon with gpiozero
  mock pins for the like / dislike buttons; it can be SIGKILLed like a Pi losing power;
- bus devices: per window a call panel (address n) and a window display (100 + n), the
  real firmware on MicroPython processes joined by the pty `BusHub`;
- kiosk: publishes `ticket/request` at each visitor's arrival;
- observer: one MQTT client logging the hall's topics, for the live view, for the report's
  cross-check, and as the operators' eye on the vote events of their window.
The people (sim/people.py) act only through what a person touches or sees: the panel's
keys, the feedback buttons, the panel and the display as the firmware shows them.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as paho
from hallgate.central.clock import local_day
from hallgate.central.mqtt import CentralService, utc_ts
from hallgate.central.queue import FINAL, QueueConfig
from hallgate.central.service import Central
from hallgate.sim import dayplan
from hallgate.sim.device import FirmwareDevice, compile_firmware
from hallgate.sim.hallclock import HallClock
from hallgate.sim.hub import BusHub
from hallgate.sim.load import offered_load
from paho.mqtt.enums import CallbackAPIVersion

log = logging.getLogger(__name__)

SITE = "sim-hall"
GATEWAY = "gw-sim"
DISPLAY_BASE = 100  # the display of window n is at bus address 100 + n
MAX_WINDOWS = 12  # the Pi header's 26 GPIOs hold 12 like / dislike pairs
OPENING_HOUR = 8  # the day starts at 08:00 UTC of today (the central's zone is UTC)
READY_TIMEOUT = 60.0  # real seconds for a part to come up on a loaded machine
ANSWER_S = 45.0  # real seconds for the hall to answer a request (outages included)


class SimError(RuntimeError):
    """A part did not come up or the day could not be finished."""


@dataclasses.dataclass
class Options:
    windows: int = 10
    visitors: int = 200  # with 10 windows over 10 h: below capacity in every hour
    hours: float = 10.0
    speed: float | None = 600.0  # hall time at most this many times real time; None: as
    # fast as the chain answers (hall time never includes the chain's latency: sim/hallclock.py)
    seed: int = 1
    broker: str | None = None  # an existing broker's URL; None: start one
    broker_kind: str = "auto"  # the one to start: mosquitto when installed, else amqtt
    protocol: str | None = None  # MQTT version; None: what the broker speaks
    real_limit_s: float | None = None  # give up after this long; None: from the day's size
    baud: int = 921600  # the bus: the fastest BUS.md allows
    model_only: bool = False  # the plan through the central alone (sim/model.py)

    def __post_init__(self):
        if self.model_only and not 1 <= self.windows <= 999:
            raise ValueError(f"windows: 1 to 999, got {self.windows}")
        if not self.model_only and not 1 <= self.windows <= MAX_WINDOWS:
            raise ValueError(f"windows: 1 to {MAX_WINDOWS} (the Pi's GPIO holds {MAX_WINDOWS}"
                             f" like / dislike pairs), got {self.windows}")
        if self.visitors < 1:
            raise ValueError(f"visitors: at least 1, got {self.visitors}")
        if not 0.5 <= self.hours <= 16:
            raise ValueError(f"hours: 0.5 to 16, got {self.hours}")
        if self.speed is not None and not self.speed > 0:
            raise ValueError(f"speed: more than 0 times real time (or max), got {self.speed}")


def button_pins(window):
    """(like, dislike) BCM pins of a window: BCM 2 and 3 for window 1, 4 and 5 for 2..."""
    return 2 * window, 2 * window + 1


MAIN_WEIGHT = 3  # a window's main service (central.selection: 600 s head start there)


def skills(windows, services):
    """Each window's services and weights: main services shared out in proportion to each
    service's load (share x mean service time, largest remainder, every service at least
    one main window when there are enough windows), and every window also serves, at weight
    1, the other service with the most load per window serving it, so queues are pooled
    where the load is.

    >>> [sorted(s.items()) for s in skills(4, dayplan.DEFAULT_SERVICES).values()]
    [[('A', 3), ('B', 1)], [('A', 1), ('B', 3)], [('B', 1), ('C', 3)], [('C', 1), ('D', 3)]]
    """
    load = {s.letter: s.share * s.mean_s for s in services}
    total = sum(load.values())
    mains = {c: 0 for c in load}
    if windows >= len(load):
        mains = {c: 1 for c in load}
        quota = {c: windows * load[c] / total - 1 for c in load}
    else:
        quota = {c: windows * load[c] / total for c in load}
    for c in load:
        mains[c] += max(0, int(quota[c]))
    by_remainder = sorted(load, key=lambda c: quota[c] - int(quota[c]), reverse=True)
    i = 0
    while sum(mains.values()) < windows:
        mains[by_remainder[i % len(by_remainder)]] += 1
        i += 1
    while sum(mains.values()) > windows:  # fewer windows than services
        mains[min((c for c in mains if mains[c]), key=lambda c: load[c])] -= 1
    order = [c for c in load for _ in range(mains[c])]
    out = {}
    seconds = {c: 0 for c in load}  # windows serving it second
    for n, main in enumerate(order, 1):
        # The other service with the most load per window serving it (a second window
        # counted half): the next window's help goes where it is needed most.
        need = {c: load[c] / (mains[c] + 0.5 * seconds[c] or 0.5) for c in load if c != main}
        second = max(need, key=need.get)
        seconds[second] += 1
        out[n] = {main: MAIN_WEIGHT, second: 1}
    unserved = [c for c in load if not any(c in s for s in out.values())]
    for k, c in enumerate(unserved):  # fewer windows than services: share the rest out
        out[k % windows + 1][c] = 1
    return out


def redirect_of(skill):
    """Where a window redirects to: its other service (the plan's redirects go elsewhere)."""
    others = [c for c, w in skill.items() if w < MAIN_WEIGHT]
    return others[0] if others else None


def queue_config(options, services):
    by_window = skills(options.windows, services)
    return {
        "services": {s.letter: s.name for s in services},
        "windows": [{"n": n, "services": skill, "redirect_to": redirect_of(skill),
                     "operator": f"operator-{n}"} for n, skill in by_window.items()],
        "tz": "UTC",
        # The day as planned: the report flags a last visit past closing (the overrun).
        "closes": _closing(options.hours),
        # Hall time: the visitor votes while the operator waits (hall time stands still
        # meanwhile); the next call closes voting sooner.
        "vote_timeout_s": 120,
        "blink_s": 3,  # real seconds on the firmware: long enough to see
    }


def _closing(hours):
    """The local closing time ("HH:MM") of a day of `hours` opening at OPENING_HOUR.

    >>> _closing(10), _closing(8.5), _closing(16)
    ('18:00', '16:30', '23:59')
    """
    end = min(OPENING_HOUR * 60 + round(hours * 60), 24 * 60 - 1)
    return f"{end // 60:02d}:{end % 60:02d}"


def gateway_config(path, options, broker_url, protocol, hub_path, outbox):
    devices = "".join(
        f'\n  [[buses.devices]]\n  address = {a}\n  role = "{role}"\n  window = {n}\n'
        for n in range(1, options.windows + 1)
        for a, role in ((n, "call-panel"), (DISPLAY_BASE + n, "window-display")))
    windows = "".join(
        "\n[[windows]]\nnumber = {}\nlike_pin = {}\ndislike_pin = {}\n".format(n, *button_pins(n))
        for n in range(1, options.windows + 1))
    path.write_text(f"""# written by hallgate sim
[gateway]
site = "{SITE}"
id = "{GATEWAY}"

[mqtt]
urls = ["{broker_url}"]
protocol = "{protocol}"

[outbox]
path = "{outbox}"

[timings]
poll_timeout_ms = 200

[[buses]]
name = "hall"
port = "{hub_path}"
baud = {options.baud}
{devices}{windows}""")
    return path


def _percentiles(seconds):
    """{"n", "p50", "p95", "p99", "max"} of real seconds, in ms."""
    if not seconds:
        return {"n": 0}
    s = sorted(seconds)
    at = lambda q: round(1000 * s[min(len(s) - 1, int(q * len(s)))])  # noqa: E731
    return {"n": len(s), "p50": at(0.5), "p95": at(0.95), "p99": at(0.99),
            "max": round(1000 * s[-1])}


class Observer:
    """An MQTT client that logs the hall's topics: the last retained state of each window,
    the tickets issued, the events, the central's stats. Thread-safe reads; `wait(pred)`."""

    def __init__(self, host, port, protocol, site=SITE):
        self.prefix = f"hall/v1/{site}/"
        self.cond = threading.Condition()
        self.issued = {}  # request id -> ticket number
        self.windows = {}  # n -> {"display": ..., "panel": ..., "vote": ...}
        self.events = {}  # event id -> event payload (first delivery)
        self.keys_seen = []  # (monotonic, window, key) of each key event's first delivery
        self.rejected = []  # (monotonic, window, reason) of events the central rejected
        self.deliveries = 0
        self.stats = None
        self.central_errors = 0
        v5 = protocol == "5"
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"hallgate-sim-observer-"
                        f"{uuid.uuid4().hex[:8]}",
                        protocol=paho.MQTTv5 if v5 else paho.MQTTv311)
        c.on_connect = lambda c, u, f, rc, p: c.subscribe(self.prefix + "#", qos=1)
        c.on_message = self._on_message
        c.connect(host, port)
        c.loop_start()
        self.client = c

    def _on_message(self, client, userdata, msg):
        rest = msg.topic[len(self.prefix):].split("/")
        try:
            body = json.loads(msg.payload) if msg.payload else None
        except ValueError:
            return
        with self.cond:
            if rest[0] == "window" and len(rest) == 3:
                if rest[2] == "event":
                    self.deliveries += 1
                    if body.get("id") not in self.events and body.get("type") == "key":
                        self.keys_seen.append((time.monotonic(), body.get("window"),
                                               body.get("key")))
                    self.events.setdefault(body.get("id"), body)
                else:
                    self.windows.setdefault(int(rest[1]), {})[rest[2]] = body
            elif rest == ["ticket", "issued"] and body:
                self.issued[body.get("request_id")] = body.get("ticket")
            elif rest == ["ticket", "refused"] and body:  # answered, with no ticket
                self.issued.setdefault(body.get("request_id"), None)
            elif rest == ["central", "stats"]:
                self.stats = body
            elif rest == ["central", "errors"]:
                self.central_errors += 1
                where = (body or {}).get("topic", "").split("/")
                if (body or {}).get("kind") == "event-rejected" and len(where) == 6:
                    self.rejected.append((time.monotonic(), int(where[4]), body["reason"]))
            self.cond.notify_all()

    def wait(self, predicate, timeout):
        with self.cond:
            return self.cond.wait_for(predicate, timeout)

    def key_seen(self, window, key, since):
        """When (monotonic) the first `key` event of `window` after `since` reached the
        broker; None if none has."""
        with self.cond:
            return next((t for t, w, k in self.keys_seen
                         if t >= since and w == window and k == key), None)

    def rejection(self, window, since):
        """The central's reason for rejecting an event of `window` since `since`, or None."""
        with self.cond:
            return next((r for t, w, r in self.rejected if t >= since and w == window), None)

    def votes_at(self, window):
        """Vote events (distinct ids) seen from `window`."""
        return sum(1 for e in self.events.values()
                   if e.get("type") == "vote" and e.get("window") == window)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


class GatewayHost:
    """The `hallgate sim gateway` child: start, kill (SIGKILL), press a button, and the
    voting state it reports (`ballots`: window -> ticket open, or None)."""

    def __init__(self, config, log_path, on_error=None):
        self.config = config
        self.on_error = on_error
        self.log_path = log_path
        self.proc = None
        self.starts = 0
        self.started_at = 0.0  # time.monotonic() of the last start
        self.cond = threading.Condition()
        self.ballots = {}

    def start(self, timeout=READY_TIMEOUT):
        cmd = [sys.executable, "-m", "hallgate.cli", "sim", "gateway", "--config",
               str(self.config)]
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET",
                                                                 "WATCHDOG_USEC")}
        with open(self.log_path, "ab") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=err, env=env, text=True, bufsize=1)
        self.starts += 1
        self.started_at = time.monotonic()
        ready = threading.Event()
        threading.Thread(target=self._read, args=(self.proc, ready), daemon=True).start()
        if not ready.wait(timeout):
            raise SimError(f"the gateway did not start within {timeout:.0f} s; its log: "
                           f"{self.log_path}")
        return self

    def _read(self, proc, ready):
        for line in proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if "ready" in msg:
                ready.set()
            elif "ballot" in msg:
                with self.cond:
                    self.ballots[msg["ballot"]["window"]] = msg["ballot"]["ticket"]
                    self.cond.notify_all()
            elif "error" in msg and self.on_error is not None:
                self.on_error(f"gateway host: {msg['error']}")

    def press(self, pin, ms):
        try:
            self.proc.stdin.write(f"press {pin} {int(ms)}\n")
            self.proc.stdin.flush()
            return True
        except (OSError, ValueError):  # the gateway is down: the visitor's press is lost
            return False

    def wait_ballot(self, window, ticket, timeout):
        with self.cond:
            return self.cond.wait_for(lambda: self.ballots.get(window) == ticket, timeout)

    def kill(self):
        self.proc.kill()
        self.proc.wait(10)
        with self.cond:
            self.ballots.clear()

    def stop(self, timeout=15):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


class Hall:
    def __init__(self, options, workdir, *, services=dayplan.DEFAULT_SERVICES):
        self.options = options
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.services = services
        self.plan = dayplan.plan_visitors(options.visitors, options.hours, seed=options.seed,
                                          services=services)
        self.breaks = dayplan.plan_breaks(range(1, options.windows + 1), options.hours,
                                          seed=options.seed)
        config = queue_config(options, services)
        self.load = offered_load(self.plan, [(w["n"], w["services"])
                                             for w in config["windows"]])
        today = datetime.now(UTC).replace(hour=OPENING_HOUR, minute=0, second=0,
                                          microsecond=0)
        self.opening = today.timestamp()
        self.day = local_day(self.opening, "UTC")
        self.queue_config = QueueConfig.from_dict(config)
        self.db = self.dir / "central.sqlite"
        self.clock = None
        self.broker = None
        self.hub = None
        self.panels, self.displays = {}, {}
        self.central = self.service = None
        self.central_starts = 0
        self.gateway = None
        self.observer = None
        self.lock = threading.Lock()
        self.requests = {}  # request id -> visitor
        self.kiosk_done = threading.Event()
        self.stopping = threading.Event()
        self.journal = []  # what the people did: dicts with "what"
        self.problems = []  # what went wrong that a person would notice
        # The chain's real latencies, seconds: key press to the event at the broker, to the
        # panel's answer (through the central and back), a call to the display showing it.
        self.latency = {"press_to_broker": [], "press_to_panel": [], "call_to_display": []}
        self.rejected = []  # (window, key, the central's reason)
        self.redirected = set()  # tickets redirected once already

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
        self.observer = Observer(host, int(port), protocol)
        compile_firmware()
        self.hub = BusHub(baud=opts.baud).start()
        for n in range(1, opts.windows + 1):
            self.panels[n] = FirmwareDevice(self.dir / f"panel-{n}", n, "call-panel", n,
                                            self.hub.add_port(f"panel-{n}"),
                                            ready_timeout=READY_TIMEOUT, start=False,
                                            **self.panel_timings())
            self.displays[n] = FirmwareDevice(self.dir / f"display-{n}", DISPLAY_BASE + n,
                                              "window-display", n,
                                              self.hub.add_port(f"display-{n}"),
                                              ready_timeout=READY_TIMEOUT, start=False)
        for dev in [*self.panels.values(), *self.displays.values()]:
            dev.start(READY_TIMEOUT)
        self.clock = HallClock(self.opening, max_speed=opts.speed)
        self.start_central()
        config = gateway_config(self.dir / "hall.toml", opts, url, protocol,
                                self.hub.master_path, self.dir / "outbox.sqlite")
        self.gateway = GatewayHost(config, self.dir / "gateway.log",
                                   on_error=self.problem).start()
        return self

    def panel_timings(self):
        """The panel's human-scale times, made short: the simulated operator presses as
        soon as the chain has answered (hall time stands still meanwhile), so a real-time
        1 s double-click lockout would swallow deliberate presses."""
        return {"lockout_ms": 10, "long_ms": 100}

    def start_central(self):
        self.central = Central(self.queue_config, self.db, self.clock)
        self.service = CentralService(self.central, SITE, self.url, protocol=self.protocol,
                                      tick_s=0.1, stats_s=0.5,
                                      client_id="hallgate-sim-central").start()
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

    def kill_gateway(self, down_s=0.5):
        """SIGKILL the gateway mid-day (a power cut), restart it after `down_s`."""
        self.gateway.kill()
        time.sleep(down_s)
        self.gateway.start()

    def close(self):
        self.stopping.set()
        if self.clock is not None:
            self.clock.stop()
        if self.gateway is not None:
            self.gateway.stop()
        with self.lock:
            if self.service is not None:
                self.service.stop()
                self.central.close()
                self.service = None
        for dev in [*self.panels.values(), *self.displays.values()]:
            dev.close()
        if self.hub is not None:
            self.hub.close()
        if self.observer is not None:
            self.observer.close()
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
            client.publish(f"hall/v1/{SITE}/ticket/request", json.dumps(body), qos=1)
            if not obs.wait(lambda r=rid: r in obs.issued or self.stopping.is_set(),
                            ANSWER_S):
                self.problem(f"the kiosk had no ticket for request {rid} within "
                             f"{ANSWER_S:.0f} s")
            self.panels_settle()
        self.kiosk_done.set()

    def panels_settle(self, timeout=5.0):
        """Wait (real time, hall time standing still) until every call panel shows the
        panel state the central last published for it: the new queue length reaches the
        operators before they look again."""
        deadline = time.monotonic() + timeout
        for n, panel in self.panels.items():
            while time.monotonic() < deadline and not self.stopping.is_set():
                with self.observer.cond:  # the device counts its own versions: compare
                    want = self.observer.windows.get(n, {}).get("panel") or {}  # content
                shown = panel.shown() or {}
                if all(shown.get(k) == want.get(k) for k in ("mode", "queue")):
                    break
                time.sleep(0.005)

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
            "gateway_starts": self.gateway.starts if self.gateway else 0,
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
        skills_now = skills(len(self.panels), self.services)
        windows = []
        for n in self.panels:
            d = self.displays[n].shown() or {}
            p = self.panels[n].shown() or {}
            w = by_window.get(str(n), {})
            windows.append({
                "n": n, "services": sorted(skills_now[n], key=lambda c: -skills_now[n][c]),
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
            "all": stats.get("all", {}),
            "now": stats.get("now", {}),
            "windows": windows,
            "gateway_starts": self.gateway.starts if self.gateway else 0,
            "central_starts": self.central_starts,
            "problems": len(self.problems),
        }
