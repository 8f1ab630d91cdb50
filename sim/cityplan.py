"""The plan of a city day (`hallgate sim city`): its centres, their windows and visitors, the
files the central workers read, and the city's one clock.

Design note
-----------
Operations: `CityOptions` holds what the command line gives; `plan_centres` shares the
visitors out to the centres (each its own seeded day: sim/dayplan.py) and sizes each
centre's windows for its load; `queue_toml` and `city_toml` write what `hallgate central
worker --city` reads (central/config.py's format per site, `[city]` + `[[sites]]`);
`ScaledClock` is the hall time every process of the city shares.
Goals: the same options and seed give the same city in every process (the fleets rebuild
their centres' plans from the seed instead of being sent them); nothing here does I/O but
the two writers.
Plan: hall time = start + (time.time() - real0) * speed, the formula the workers take as
`--clock-start/--clock-speed/--clock-real0`, so a central, a gateway's people and the
report agree on the hour. Unlike `hallgate sim`'s hall clock, this one never stands still:
the chain's latency (press -> gateway -> broker -> central -> desired state back) is hall
time too, times the speed.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from datetime import UTC, datetime

from hallgate.sim import dayplan
from hallgate.sim.hallconfig import OPENING_HOUR, closing, redirect_of, skills

__all__ = ["Centre", "CityOptions", "ScaledClock", "centre_names", "city_toml",
           "plan_centres", "queue_toml", "windows_for"]

UTILISATION = 0.75  # a centre's windows are sized so the day's work fills this share
VOTE_TIMEOUT_S = 300  # hall seconds: at 80x the chain's ~100 ms is 8 hall seconds


@dataclasses.dataclass
class CityOptions:
    centres: int = 96
    visitors: int = 40000
    hours: float = 10.0
    speed: float = 80.0  # hall seconds per real second: 10 h in 7.5 min
    seed: int = 1
    fleets: int = 2  # processes running the contract-level gateways and their people
    workers: int = 3  # central worker processes
    kill_node_at: float | None = 0.3  # fraction of the day; None: no broker node killed
    node_down_s: float = 15.0  # real seconds before the killed node is restarted
    kill_worker_at: float | None = 0.6  # fraction of the day; None: no worker killed
    hall_windows: int = 4  # the real hall with firmware; 0: none
    hall_visitors: int | None = None  # default: a centre's visitors per window, times its
    real_limit_s: float | None = None  # give up then; None: from the day's length
    startup_s: float | None = None  # real seconds from the workers' start to the opening
    # One retained snapshot per site (central/desired.py: the cluster carried ~18 retained
    # window messages per visitor at 200-290/s), or "windows": a topic per window and kind.
    desired: str = "site"

    def startup(self):
        """Real seconds for the workers and fleets to come up (measured: 96 sites' centrals
        on the 3-node cluster, then 96 gateways: about 20-40 s here)."""
        return self.startup_s if self.startup_s is not None else 20 + 0.35 * self.centres

    def __post_init__(self):
        if self.centres < 1:
            raise ValueError(f"centres: at least 1, got {self.centres}")
        if self.visitors < self.centres:
            raise ValueError(f"visitors: at least one per centre ({self.centres}), "
                             f"got {self.visitors}")
        if not 0.5 <= self.hours <= 16:
            raise ValueError(f"hours: 0.5 to 16, got {self.hours}")
        if not self.speed > 0:
            raise ValueError(f"speed: more than 0, got {self.speed}")
        if not 1 <= self.fleets <= self.centres:
            raise ValueError(f"fleets: 1 to the number of centres, got {self.fleets}")
        if self.workers < 1 or (self.kill_worker_at is not None and self.workers < 2):
            raise ValueError("workers: at least 1, and 2 when one is killed")
        if self.desired not in ("site", "windows"):
            raise ValueError(f"desired: 'site' or 'windows', got {self.desired!r}")
        for name in ("kill_node_at", "kill_worker_at"):
            at = getattr(self, name)
            if at is not None and not 0 < at < 1:
                raise ValueError(f"{name}: a fraction of the day (0-1), got {at}")

    @property
    def day_s(self):
        return self.hours * 3600

    @property
    def day_real_s(self):
        return self.day_s / self.speed


@dataclasses.dataclass(frozen=True)
class Centre:
    site: str
    visitors: int
    windows: int
    seed: int
    skills: dict  # window -> {service: weight}

    def plan(self, hours):
        return dayplan.plan_visitors(self.visitors, hours, seed=self.seed)

    def queue_config(self, hours):
        """The central's queue config of the centre (QueueConfig.from_dict's dict)."""
        return {
            "services": {s.letter: s.name for s in dayplan.DEFAULT_SERVICES},
            "windows": [{"n": n, "services": skill, "redirect_to": redirect_of(skill),
                         "operator": f"operator-{n}"} for n, skill in sorted(self.skills.items())],
            "tz": "UTC", "closes": closing(hours), "vote_timeout_s": VOTE_TIMEOUT_S,
            "blink_s": 3,
        }


def centre_names(n):
    """The centres' site names.

    >>> centre_names(3)
    ['c001', 'c002', 'c003']
    """
    return [f"c{k + 1:03d}" for k in range(n)]


def windows_for(visitors, hours):
    """Windows that serve `visitors` of the default mix in `hours` at UTILISATION.

    >>> windows_for(417, 10), windows_for(10, 10)
    (12, 2)
    """
    mean_s = sum(s.share * s.mean_s for s in dayplan.DEFAULT_SERVICES) / sum(
        s.share for s in dayplan.DEFAULT_SERVICES)
    return max(2, math.ceil(visitors * mean_s / (hours * 3600 * UTILISATION)))


def plan_centres(options):
    """The centres: visitors shared out at random weights 0.7-1.3 (exactly `visitors` in
    all, at least one each), windows sized for each share.

    >>> cs = plan_centres(CityOptions(centres=4, visitors=400))
    >>> sum(c.visitors for c in cs), [c.site for c in cs]
    (400, ['c001', 'c002', 'c003', 'c004'])
    """
    rng = random.Random(f"city:{options.seed}")
    weights = [rng.uniform(0.7, 1.3) for _ in range(options.centres)]
    spare = options.visitors - options.centres
    raw = [spare * w / sum(weights) for w in weights]
    counts = [1 + int(r) for r in raw]
    by_remainder = sorted(range(options.centres), key=lambda k: int(raw[k]) - raw[k])
    for k in by_remainder[:options.visitors - sum(counts)]:
        counts[k] += 1
    out = []
    for k, (site, n) in enumerate(zip(centre_names(options.centres), counts, strict=True)):
        w = windows_for(n, options.hours)
        out.append(Centre(site, n, w, options.seed * 1000 + k,
                          skills(w, dayplan.DEFAULT_SERVICES)))
    return out


def opening_today():
    """Today's OPENING_HOUR (UTC), epoch seconds: the hall time the day starts at."""
    return datetime.now(UTC).replace(hour=OPENING_HOUR, minute=0, second=0,
                                     microsecond=0).timestamp()


class ScaledClock:
    """Hall time = start + (time.time() - real0) * speed (central/clock.py's Clock).

    >>> c = ScaledClock(1000.0, 60.0, real0=time.time())
    >>> 1000.0 <= c.now() < 1000.0 + 60.0 * 5
    True
    >>> round(c.real_at(1060.0) - c.real0, 6)
    1.0
    """

    def __init__(self, start, speed, real0=None):
        self.start = float(start)
        self.speed = float(speed)
        self.real0 = time.time() if real0 is None else float(real0)

    def now(self):
        return self.start + (time.time() - self.real0) * self.speed

    def hall_s(self):
        """Hall seconds since the start (the day's opening)."""
        return (time.time() - self.real0) * self.speed

    def real_at(self, hall):
        """The real time (epoch) when hall time is `hall` (epoch)."""
        return self.real0 + (hall - self.start) / self.speed

    def asdict(self):
        return {"start": self.start, "speed": self.speed, "real0": self.real0}

    def args(self):
        """The worker's command-line options for this clock."""
        return ["--clock-start", repr(self.start), "--clock-speed", repr(self.speed),
                "--clock-real0", repr(self.real0)]


def _toml_str(s):
    return '"' + str(s).replace("\\", "\\\\").replace('"', '\\"') + '"'


def queue_toml(site, config, *, broker, database, protocol="3.1.1"):
    """A central config file (central/config.py) for one site of the city."""
    lines = [f"site = {_toml_str(site)}", f"broker = {_toml_str(broker)}",
             f"database = {_toml_str(database)}", f"protocol = {_toml_str(protocol)}",
             f"tz = {_toml_str(config['tz'])}", f"closes = {_toml_str(config['closes'])}",
             f"vote_timeout_s = {config['vote_timeout_s']}",
             f"blink_s = {config['blink_s']}", "", "[services]"]
    lines += [f"{code} = {_toml_str(name)}" for code, name in config["services"].items()]
    for w in config["windows"]:
        skill = ", ".join(f"{c} = {v}" for c, v in w["services"].items())
        lines += ["", "[[windows]]", f"n = {w['n']}", f"services = {{ {skill} }}"]
        if w.get("redirect_to"):
            lines.append(f"redirect_to = {_toml_str(w['redirect_to'])}")
        if w.get("operator"):
            lines.append(f"operator = {_toml_str(w['operator'])}")
    return "\n".join(lines) + "\n"


def city_toml(name, brokers, protocol, database, sites, desired="windows"):
    """The city file `hallgate central worker --city` reads; `sites`: (name, queue file)."""
    lines = ["[city]", f"name = {_toml_str(name)}",
             "brokers = [" + ", ".join(_toml_str(b) for b in brokers) + "]",
             f"protocol = {_toml_str(protocol)}", f"database = {_toml_str(database)}",
             f"desired = {_toml_str(desired)}"]
    for site, queue in sites:
        lines += ["", "[[sites]]", f"name = {_toml_str(site)}", f"queue = {_toml_str(queue)}"]
    return "\n".join(lines) + "\n"
