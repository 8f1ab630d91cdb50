"""The plan of a simulated day in a service hall: who comes when, for what, and how it goes.

Design note
-----------
Operations: `plan_visitors` draws the day's visitors (exactly `count` of them, in arrival
order), `plan_breaks` the operators' breaks, `summary` counts a plan for a report; `rate` is
the built-in arrival profile of the day and `issue_until_s` the last moment a ticket is
issued. A calibrated day (sim/profile.py) gives `plan_visitors` its own services, arrivals
by hour (`arrivals`) and probabilities (`Mix`); left out, the day is the built-in one, draw
for draw (the same seed gives the same plan as before these options existed).
Goals: the same seed gives the same day, in a test, in the simulator and on another machine,
so a failure seen once can be replayed; nothing in here reads a clock, sleeps or does I/O.
Times are simulated seconds since the hall opens.
Plan: every draw comes from one `random.Random` made from the seed (the breaks from their
own, seeded with ``f"breaks:{seed}"``, so adding windows never changes the visitors); the
plan is frozen dataclasses, so the simulator can share it between threads.

Arrivals
--------
Visitors arrive as a non-homogeneous Poisson process whose intensity is proportional to
`rate` (a morning peak, a lunch dip, a smaller afternoon rise, a taper before closing).
Conditioned on the number of arrivals, the arrival times of such a process are i.i.d. with
density proportional to the intensity; so exactly `count` times are drawn from that density
by rejection sampling (thinning: a uniform time is kept with probability
``rate(t) / RATE_BOUND``) and sorted. Tickets are issued until `issue_until_s`: 30 minutes
before closing, but never earlier than 80 % of the day, so a late visitor can still be served.

Arrivals by hour (``arrivals=``): a measured day is given as relative weights, one per
opening hour (``ceil(hours)`` of them; the last covers what is left of a partial hour). A
weight is an intensity, arrivals per hour relative to the other hours: the intensity is
piecewise constant, so a half hour of weight 2 gets as many visitors as a full hour of
weight 1, and the part of an hour after `issue_until_s` gets none. The times are drawn by
inverse CDF, one uniform each: the uniform picks an hour by its mass (weight times the
length of the hour inside the issuing window) and its place inside the hour linearly. A
weight of 0 closes an hour (no visitor arrives in it); at least one hour before the last
ticket needs a weight above 0. Still exactly `count` visitors, sorted.

The figures (sources in ``/work/shared/DOMAIN.md`` and its seeds)
-----------------------------------------------------------------
* Service mix: the passport service is "about 30 % of all requests" at the Syzran MFC; the
  other shares and all service times are plausible guesses (a visit takes 10-15 minutes on
  average; collecting a ready certificate is quicker). The mix's mean is about 12 minutes.
* Likes: 80 % of the votes cast (a Moscow survey found 80 % of real visitors satisfied; the
  headline figure is 97 %, the buttons see the less happy ones too).
* Pre-registration 12 %, priority groups 5 %, no-shows 5 %, redirects 3 % of those who come,
  18 % of those served do not vote, 5 % of voters press 2-4 times (buttons that are pressed
  again and again are a known complaint): plausible figures, none published. They are the
  defaults of `Mix`; a profile may give its own.
* Breaks: Moscow centres work "without a lunch break", so the operators' lunches are
  staggered in groups, and at no moment is every window on a break (with two windows or more).
"""

from __future__ import annotations

import math
import random
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields

__all__ = [
    "DEFAULT_MIX",
    "DEFAULT_SERVICES",
    "RATE_BOUND",
    "Break",
    "Mix",
    "Service",
    "Visitor",
    "issue_until_s",
    "plan_breaks",
    "plan_visitors",
    "rate",
    "summary",
]

MIN = 60.0
HOUR = 3600.0


@dataclass(frozen=True)
class Service:
    """One service of the hall: its ticket letter, its name, its relative share of the
    visitors and its service time (mean and standard deviation, simulated seconds)."""

    letter: str  # "A"
    name: str  # "Passports"
    share: float  # relative share of visitors
    mean_s: float  # mean service time, simulated seconds
    sd_s: float  # its standard deviation (lognormal draw)

    def __post_init__(self) -> None:
        if len(self.letter) != 1 or not ("A" <= self.letter <= "Z"):
            raise ValueError(f"a service letter is one of A-Z, got {self.letter!r}")
        if not self.share > 0:
            raise ValueError(f"service {self.letter}: share must be > 0, got {self.share}")
        if not self.mean_s > 0 or not self.sd_s >= 0:
            raise ValueError(f"service {self.letter}: needs mean_s > 0 and sd_s >= 0")


DEFAULT_SERVICES: tuple[Service, ...] = (
    Service("A", "Passports", 0.30, 12 * MIN, 5 * MIN),
    Service("B", "Registration", 0.30, 15 * MIN, 6 * MIN),
    Service("C", "Benefits", 0.25, 13 * MIN, 6 * MIN),
    Service("D", "Certificates", 0.15, 7 * MIN, 3 * MIN),
)


@dataclass(frozen=True)
class Visitor:
    """One visitor of the day and everything they will do (see the module's figures)."""

    n: int  # 0.. in arrival order
    arrive_s: float  # arrival (ticket taken at the kiosk), sim seconds since opening
    service: str  # letter
    appointment: bool  # pre-registered
    priority: int  # 0 normally; 1 for a priority group
    shows_up: bool  # False for a no-show: never comes to the window
    recalls: int  # recalls before the visitor comes; for a no-show: before it is marked (1..3)
    service_s: float  # how long serving takes, clipped to [60 s, 4 * mean]
    redirect: bool  # redirected to another service mid-service; served again there
    vote: str | None  # "like", "dislike", or None (does not vote)
    presses: int  # 0 if vote is None; 1 normally; 2-4 for the few who press several times


@dataclass(frozen=True)
class Break:
    """A window paused for `duration_s` from `start_s` (sim seconds since opening)."""

    window: int
    start_s: float
    duration_s: float

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s


# ---- probabilities ------------------------------------------------------------------------

P_APPOINTMENT = 0.12
P_PRIORITY = 0.05
P_NO_SHOW = 0.05
P_REDIRECT = 0.03  # of those who come
P_NO_VOTE = 0.18  # of those served
P_LIKE = 0.80  # of the voters
P_MULTI_PRESS = 0.05  # of the voters
RECALLS = ((0, 1, 2), (0.80, 0.15, 0.05))  # a visitor who comes
NO_SHOW_RECALLS = ((1, 2, 3), (0.4, 0.4, 0.2))  # before the operator marks the no-show
CLOSING_MARGIN_S = 30 * MIN
MIN_ISSUING_FRACTION = 0.8
MIN_SERVICE_S = 60.0


@dataclass(frozen=True)
class Mix:
    """The probabilities of what a visitor does (the module's figures are the defaults).

    >>> Mix().no_show == P_NO_SHOW, Mix(no_show=1.0).no_show
    (True, 1.0)
    >>> Mix(like=1.5)
    Traceback (most recent call last):
    ...
    ValueError: Mix.like: a probability from 0 to 1 expected, got 1.5
    """

    appointments: float = P_APPOINTMENT  # pre-registered, of all visitors
    priority: float = P_PRIORITY  # in a priority group, of all visitors
    no_show: float = P_NO_SHOW  # never come to the window, of all visitors
    redirect: float = P_REDIRECT  # redirected to another service, of those who come
    no_vote: float = P_NO_VOTE  # do not vote, of those served
    like: float = P_LIKE  # like (else dislike), of the voters
    multi_press: float = P_MULTI_PRESS  # press 2-4 times, of the voters

    def __post_init__(self) -> None:
        for f in fields(self):
            p = getattr(self, f.name)
            if (isinstance(p, bool) or not isinstance(p, (int, float))
                    or not 0.0 <= p <= 1.0):  # NaN fails the comparison too
                raise ValueError(f"Mix.{f.name}: a probability from 0 to 1 expected, "
                                 f"got {p!r}")


DEFAULT_MIX = Mix()

# ---- the arrival profile ------------------------------------------------------------------

_BASE = 0.40  # all day
_MORNING = (0.60, 0.15, 0.07)  # height, centre, width (fractions of the day)
_AFTERNOON = (0.35, 0.72, 0.09)
_LUNCH_DIP = (0.40, 0.50, 0.06)  # depth as a fraction of the rate
_CLOSING_TAPER = (0.60, 1.00, 0.08)

RATE_BOUND = _BASE + _MORNING[0] + _AFTERNOON[0]
"""An upper bound of `rate` (the factors of the dip and the taper are at most 1)."""


def _bump(t: float, height: float, centre: float, width: float) -> float:
    return height * math.exp(-0.5 * ((t - centre) / width) ** 2)


def rate(t_frac: float) -> float:
    """Relative arrival rate at a fraction `t_frac` of the opening hours (clamped to [0, 1]).

    The shape: a base level plus a morning peak (its top at 0.15 of the day, 1.5 hours after
    opening in a 10-hour day) and a smaller afternoon rise (top near 0.72), times a lunch dip
    (down to about a quarter of the peak at mid-day) and a taper towards closing. The peak is
    1.0; the rate is always > 0 (at least 0.16).

    >>> [round(rate(t), 2) for t in (0.0, 0.15, 0.3, 0.5, 0.72, 0.9, 1.0)]
    [0.46, 1.0, 0.46, 0.25, 0.75, 0.32, 0.16]
    >>> rate(0.15) > rate(0.72) > rate(0.5)       # morning peak > afternoon rise > lunch
    True
    >>> min(rate(i / 1000) for i in range(1001)) > 0.15
    True
    >>> rate(-1.0) == rate(0.0) and rate(2.0) == rate(1.0)
    True
    """
    t = min(max(float(t_frac), 0.0), 1.0)
    level = _BASE + _bump(t, *_MORNING) + _bump(t, *_AFTERNOON)
    return level * (1.0 - _bump(t, *_LUNCH_DIP)) * (1.0 - _bump(t, *_CLOSING_TAPER))


def issue_until_s(hours: float) -> float:
    """The last moment a ticket is issued: 30 minutes before closing, but never earlier than
    80 % of the day.

    >>> issue_until_s(10) / 3600
    9.5
    >>> issue_until_s(1) / 3600
    0.8
    """
    day_s = _day_s(hours)
    return max(day_s - CLOSING_MARGIN_S, MIN_ISSUING_FRACTION * day_s)


def _day_s(hours: float) -> float:
    if not hours > 0:
        raise ValueError(f"hours must be > 0, got {hours}")
    return hours * HOUR


# ---- visitors -----------------------------------------------------------------------------


def plan_visitors(
    count: int, hours: float, *, seed: int, services: Sequence[Service] = DEFAULT_SERVICES,
    arrivals: Sequence[float] | None = None, mix: Mix | None = None,
) -> list[Visitor]:
    """Exactly `count` visitors of a day of `hours` hours, in arrival order.

    The arrival times are a non-homogeneous Poisson process with intensity proportional to
    `rate` (or, given `arrivals`, to the weight of each opening hour: see the module's note),
    conditioned on `count` arrivals: `count` i.i.d. draws from the density proportional to
    the intensity over the issuing window [0, `issue_until_s`), then sorted. Everything else
    about each visitor is drawn with the probabilities of `mix` (default: the module's
    figures); the same seed gives the same list.

    >>> day = plan_visitors(3, 10, seed=7)
    >>> [v.n for v in day], day == plan_visitors(3, 10, seed=7)
    ([0, 1, 2], True)
    >>> all(0 <= v.arrive_s < issue_until_s(10) for v in day)
    True
    >>> late = plan_visitors(50, 3, seed=7, arrivals=[0, 0, 1], mix=Mix(no_show=1.0))
    >>> all(2 * 3600 <= v.arrive_s < issue_until_s(3) and not v.shows_up for v in late)
    True
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    services = tuple(services)
    if not services:
        raise ValueError("no services")
    letters = [s.letter for s in services]
    if len(set(letters)) != len(letters):
        raise ValueError(f"service letters repeat: {letters}")
    if mix is None:
        mix = DEFAULT_MIX
    elif not isinstance(mix, Mix):
        raise ValueError(f"mix: a dayplan.Mix expected, got {mix!r}")
    day_s = _day_s(hours)
    rng = random.Random(seed)
    if arrivals is None:  # the built-in day, draw for draw as it always was
        end_frac = issue_until_s(hours) / day_s
        times = sorted(_arrival_fraction(rng, end_frac) * day_s for _ in range(count))
    else:
        draw = _hourly_arrivals(arrivals, hours)
        times = sorted(draw(rng) for _ in range(count))
    weights = [s.share for s in services]
    return [
        _visitor(rng, n, t, rng.choices(services, weights)[0], mix)
        for n, t in enumerate(times)
    ]


def _arrival_fraction(rng: random.Random, end_frac: float) -> float:
    """One draw from the density proportional to `rate` on [0, end_frac) (thinning)."""
    while True:
        t = rng.random() * end_frac
        if rng.random() * RATE_BOUND < rate(t):
            return t


def _hourly_arrivals(arrivals: Sequence[float], hours: float,
                     ) -> Callable[[random.Random], float]:
    """A draw (one uniform of the rng) of an arrival second from the piecewise-constant
    intensity `arrivals` (one weight per opening hour), cut at `issue_until_s(hours)`.

    >>> draw = _hourly_arrivals([1, 0, 3], 3)
    >>> sorted({int(draw(r) // 3600) for r in map(random.Random, range(200))})
    [0, 2]
    """
    weights = list(arrivals)
    expected = math.ceil(hours)
    if len(weights) != expected:
        raise ValueError(f"arrivals: {expected} weights expected (one per opening hour of a "
                         f"{hours:g}-hour day), got {len(weights)}")
    for h, w in enumerate(weights):
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w < math.inf:
            raise ValueError(f"arrivals[{h}]: a weight >= 0 expected, got {w!r}")
    end_s = issue_until_s(hours)
    spans = []  # (start_s, end_s, weight) of the hours that get visitors
    for h, w in enumerate(weights):
        a, b = h * HOUR, min((h + 1) * HOUR, end_s)
        if b > a and w > 0:
            spans.append((a, b, float(w)))
    if not spans:
        raise ValueError(f"arrivals: every hour before the last ticket "
                         f"({end_s / HOUR:g} h after opening) has weight 0")
    cum, total = [], 0.0
    for a, b, w in spans:
        total += w * (b - a)
        cum.append(total)

    def draw(rng: random.Random) -> float:
        x = rng.random() * total
        k = min(bisect_right(cum, x), len(spans) - 1)
        a, b, w = spans[k]
        t = a + (x - (cum[k - 1] if k else 0.0)) / w
        return min(max(t, a), math.nextafter(b, a))  # rounding never leaves the hour

    return draw


def _service_time(rng: random.Random, service: Service) -> float:
    """A lognormal time with the service's mean and sd, clipped to [60 s, 4 * mean] (the lower
    bound drops to 4 * mean for a service shorter than 15 s on average)."""
    sigma2 = math.log1p((service.sd_s / service.mean_s) ** 2)
    mu = math.log(service.mean_s) - sigma2 / 2
    high = 4 * service.mean_s
    return min(max(rng.lognormvariate(mu, math.sqrt(sigma2)), min(MIN_SERVICE_S, high)), high)


def _visitor(rng: random.Random, n: int, arrive_s: float, service: Service,
             mix: Mix) -> Visitor:
    # The draws and their order are those of the built-in day: do not reorder them.
    appointment = rng.random() < mix.appointments
    priority = 1 if rng.random() < mix.priority else 0
    shows_up = rng.random() >= mix.no_show
    recalls = rng.choices(*(RECALLS if shows_up else NO_SHOW_RECALLS))[0]
    service_s = _service_time(rng, service)
    redirect, vote, presses = False, None, 0
    if shows_up:
        redirect = rng.random() < mix.redirect
        if rng.random() >= mix.no_vote:
            vote = "like" if rng.random() < mix.like else "dislike"
            presses = rng.randint(2, 4) if rng.random() < mix.multi_press else 1
    return Visitor(n=n, arrive_s=arrive_s, service=service.letter, appointment=appointment,
                   priority=priority, shows_up=shows_up, recalls=recalls, service_s=service_s,
                   redirect=redirect, vote=vote, presses=presses)


# ---- breaks -------------------------------------------------------------------------------

LUNCH_S = (30 * MIN, 45 * MIN)
SHORT_S = (10 * MIN, 15 * MIN)
P_SHORT_BREAK = 0.7
MAX_GROUPS = 4  # at most 4 lunch groups: a quarter to a half of the windows away at once
_LUNCH_JITTER_S = 5 * MIN  # spread of the starts within a lunch group
_SHORT_JITTER_S = 5 * MIN


def plan_breaks(windows: Iterable[int], hours: float, *, seed: int) -> list[Break]:
    """The operators' breaks, sorted by start (then window).

    Every window has a lunch break of 30-45 minutes. The windows are shuffled into 2-4 groups
    (one group for a single window) whose lunches follow one another around the middle of
    the day, so one group at most is at lunch at any moment; within a group the starts are
    spread over 5 minutes, so no two lunches start together. A window may also take one
    short break of 10-15 minutes (probability 0.7) in the morning (around a quarter of the
    day) or in the afternoon (around 0.8), again in its group's slot, when the day has room
    for it. On days shorter than 2 hours every duration is scaled by ``hours / 2``.

    >>> breaks = plan_breaks([1, 2], 10, seed=1)
    >>> sorted(b.window for b in breaks if b.duration_s >= 30 * 60)
    [1, 2]
    >>> breaks == sorted(breaks, key=lambda b: (b.start_s, b.window))
    True
    """
    windows = list(windows)
    if len(set(windows)) != len(windows):
        raise ValueError(f"windows repeat: {windows}")
    day_s = _day_s(hours)
    if not windows:
        return []
    scale = min(1.0, hours / 2)
    rng = random.Random(f"breaks:{seed}")
    order = windows[:]
    rng.shuffle(order)

    lunch_slot = (LUNCH_S[1] + _LUNCH_JITTER_S) * scale
    groups = min(len(order), MAX_GROUPS)
    while groups > 2 and groups * lunch_slot > day_s / 2:
        groups -= 1
    lunch_from = _fit(day_s / 2, groups * lunch_slot, 0.0, day_s)
    assert lunch_from is not None  # 2 groups take at most 100/120 of the day (scaled)
    short_slot = (SHORT_S[1] + _SHORT_JITTER_S) * scale
    zones = [
        _fit(0.25 * day_s, groups * short_slot, 0.0, lunch_from),
        _fit(0.80 * day_s, groups * short_slot, lunch_from + groups * lunch_slot, day_s),
    ]
    zones = [z for z in zones if z is not None]

    sizes = Counter(k % groups for k in range(len(order)))
    breaks = []
    for k, window in enumerate(order):
        group, member = k % groups, k // groups
        spread = (member + rng.random()) / sizes[group]  # in [member, member + 1) / size
        start = lunch_from + group * lunch_slot + spread * _LUNCH_JITTER_S * scale
        breaks.append(Break(window, start, rng.uniform(*LUNCH_S) * scale))
        if zones and rng.random() < P_SHORT_BREAK:
            zone = rng.choice(zones)
            start = zone + group * short_slot + rng.random() * _SHORT_JITTER_S * scale
            breaks.append(Break(window, start, rng.uniform(*SHORT_S) * scale))
    return sorted(breaks, key=lambda b: (b.start_s, b.window))


def _fit(centre: float, length: float, low: float, high: float) -> float | None:
    """The start of an interval of `length` inside [low, high], as near `centre` as it can
    be; None if it does not fit.

    >>> _fit(50, 20, 0, 100), _fit(5, 20, 0, 100), _fit(50, 20, 0, 10)
    (40.0, 0.0, None)
    """
    if high - low < length:
        return None
    return float(min(max(centre - length / 2, low), high - length))


# ---- summary ------------------------------------------------------------------------------


def summary(visitors: Iterable[Visitor]) -> dict:
    """Counts of a plan, JSON-serialisable, for the simulator's report and for tests.

    >>> summary([])["visitors"], summary([])["services"]
    (0, {})
    """
    visitors = list(visitors)
    voters = [v for v in visitors if v.vote is not None]
    return {
        "visitors": len(visitors),
        "services": dict(sorted(Counter(v.service for v in visitors).items())),
        "no_shows": sum(not v.shows_up for v in visitors),
        "redirects": sum(v.redirect for v in visitors),
        "voters": len(voters),
        "likes": sum(v.vote == "like" for v in voters),
        "dislikes": sum(v.vote == "dislike" for v in voters),
        "multi_press": sum(v.presses > 1 for v in voters),
        "appointments": sum(v.appointment for v in visitors),
        "priority": sum(v.priority > 0 for v in visitors),
    }
