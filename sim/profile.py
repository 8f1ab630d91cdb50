"""Calibrated days: a real hall's figures in a TOML file (`hallgate sim --profile NAME|FILE`).

Design note
-----------
Operations: `load_profile(spec)` reads a bundled profile (`PROFILES`: its name) or a TOML
file (its path) and returns a `Profile`: the day's services, arrivals by hour and
probabilities (sim/dayplan.py's `Service`, weights, `Mix`) and the sites of the hall, each
with its windows, gateways, visitors and optionally its windows' skills. `site_plan` draws
one site's day; `site_seed` is the seed it uses.
Goals: a day shaped like a real one (Syzran's MFC, a Moscow centre) from figures a reader
can check against their source, written next to them; a typo never silently becomes a
default: an unknown key, a missing key, a wrong type or a value out of range is a
`ProfileError` whose message names the file, the key path and what was expected against
what was found, e.g. ``syzran.toml: sites[1].windows (site "branch"): expected an integer
1..999, found 0 (an integer)``. Array indices in key paths count from 0.
Plan: `tomllib` parses, one small checker per table validates, the result is frozen
dataclasses. Each site's plan has its own seed derived from the day's seed and the site's
name (a hash, the same on every machine), so adding, removing or reordering sites never
changes another site's day. The bundled files live in sim/profiles/ and are read through
`importlib.resources`, so an installed package finds them (pyproject.toml's package-data).

The file
--------
A complete profile (every key shown; the optional ones say so)::

    name = "example"             # required: the profile's name
    about = "Where the figures come from, in a line or two"   # required
    hours = 10                   # required: opening hours, 0.5 to 16 (the day opens 08:00)

    [[services]]                 # one or more
    code = "A"                   # the ticket letter, A-Z, unique
    name = "Passports"
    share = 0.30                 # relative share of the visitors (> 0; need not sum to 1)
    mean_min = 12                # mean service time, minutes (> 0)
    sd_min = 5                   # its standard deviation, minutes (>= 0)
    [[services]]
    code = "D"
    name = "Certificates"
    share = 0.15
    mean_min = 7
    sd_min = 3

    [arrivals]                   # optional; without it the built-in curve (dayplan.rate)
    by_hour = [7, 10, 9, 7, 4, 5, 7, 6, 5, 3]   # relative arrivals in each opening hour:
                                 # ceil(hours) weights >= 0; the last may be a partial hour

    [mix]                        # optional, and so is each key: dayplan.Mix's defaults
    appointments = 0.12          # pre-registered, of all visitors
    priority = 0.05              # priority group, of all visitors
    no_show = 0.05               # never come to the window, of all visitors
    redirect = 0.03              # redirected to another service, of those who come
    no_vote = 0.18               # do not vote, of those served
    like = 0.80                  # like (else dislike), of the voters
    multi_press = 0.05           # press 2-4 times, of the voters

    [[sites]]                    # one or more
    name = "main"                # a slug [a-z0-9-]+, unique (it goes into MQTT topics)
    windows = 9                  # 1 to 999, numbered 1.. in the site
    gateways = 1                 # optional (1): 1 to windows; contiguous ranges of windows
    visitors = 120               # a day, 1 to 100000
    [sites.skills]               # optional: without it the simulator computes them
    "1-8" = { A = 3, D = 1 }     # a window "n" or a range "a-b" = {service = weight 1-9}
    "9" = ["A", "D"]             # or a list of services, weight 1 each

With a skills table, every window of the site has exactly one entry, every service it names
is declared in ``[[services]]``, and every declared service is served by at least one window
of the site (a visitor of a service nobody serves would wait forever).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import tomllib
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

from . import dayplan

__all__ = ["PROFILES", "Profile", "ProfileError", "SiteProfile", "load_profile", "site_plan",
           "site_seed"]

PROFILES: tuple[str, ...] = ("moscow-centre", "syzran")
"""The bundled profiles (sim/profiles/NAME.toml)."""

MAX_WINDOWS = 999
MAX_VISITORS = 100_000  # a site's day; all of Moscow's 96 centres see about 40,000
HOURS = (0.5, 16.0)
MAX_WEIGHT = 9  # a window's weight for a service (the central's rule: 1-9)
_SLUG = re.compile(r"[a-z0-9-]+")
_RANGE = re.compile(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?")


class ProfileError(ValueError):
    """A profile that cannot be used; the message names the file, the key path and what
    was expected against what was found."""

    def __init__(self, source: str, key: str, expected: str, found: str) -> None:
        where = f"{source}: {key}: " if key else f"{source}: "
        super().__init__(f"{where}expected {expected}, found {found}")
        self.source, self.key, self.expected, self.found = source, key, expected, found


@dataclass(frozen=True)
class SiteProfile:
    name: str                      # slug [a-z0-9-]+, unique; used in MQTT topics
    windows: int                   # 1..999
    gateways: int                  # 1..windows; windows are split into contiguous ranges
    visitors: int                  # >= 1
    skills: dict[int, dict[str, int]] | None  # window n -> {service letter: weight 1-9};
    #                                           None: computed by the simulator


@dataclass(frozen=True)
class Profile:
    name: str
    about: str                     # one or two lines: where the figures come from
    hours: float                   # 0.5..16
    services: tuple[dayplan.Service, ...]
    arrivals: tuple[float, ...] | None   # relative arrivals per opening hour; None: dayplan.rate
    mix: dayplan.Mix
    sites: tuple[SiteProfile, ...]
    source: str                    # the file it was read from

    @property
    def windows(self) -> int:
        """The windows of all the sites."""
        return sum(s.windows for s in self.sites)

    @property
    def visitors(self) -> int:
        """The visitors of all the sites in a day."""
        return sum(s.visitors for s in self.sites)


# ---- loading ------------------------------------------------------------------------------


def load_profile(spec: str | os.PathLike[str]) -> Profile:
    """The profile `spec` names: a bundled one (see `PROFILES`) or a TOML file's path.

    >>> p = load_profile("syzran")
    >>> p.windows, [s.name for s in p.sites]
    (36, ['main', 'branch', 'remote'])
    """
    if isinstance(spec, str) and spec in PROFILES:
        resource = resources.files(__package__ or "hallgate.sim") / "profiles" / f"{spec}.toml"
        source = str(resource)
        try:
            raw = resource.read_bytes()
        except OSError as e:  # a broken install: the package data is missing
            raise ProfileError(source, "", "the bundled profile's file",
                               f"none ({e.strerror or e})") from None
    else:
        source = os.fspath(spec)
        path = Path(source)
        if not path.is_file():
            raise ProfileError(source, "", "a bundled profile (" + ", ".join(PROFILES)
                               + ") or the path of a TOML file", "neither")
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise ProfileError(source, "", "a readable file", f"{e.strerror or e}") from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ProfileError(source, "", "UTF-8 text", f"undecodable bytes ({e.reason})",
                           ) from None
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(source, "", "valid TOML", f"a syntax error: {e}") from None
    return _Reader(source).profile(doc)


def site_seed(seed: int, site: str) -> int:
    """The seed of site `site`'s plan on a day of seed `seed`: a hash of both (48 bits),
    the same on every machine, and independent of the other sites.

    >>> site_seed(1, "main") == site_seed(1, "main") != site_seed(1, "branch")
    True
    >>> 0 <= site_seed(1, "main") < 2 ** 48
    True
    """
    digest = hashlib.sha256(f"hallgate-site:{seed}:{site}".encode()).digest()
    return int.from_bytes(digest[:6], "big")


def site_plan(profile: Profile, site: SiteProfile | str, seed: int) -> list[dayplan.Visitor]:
    """The visitors of `site` (a site of `profile`, or its name) on the day of `seed`:
    `dayplan.plan_visitors` with the profile's services, arrivals and mix, seeded with
    `site_seed(seed, site.name)`.

    >>> p = load_profile("syzran")
    >>> len(site_plan(p, "remote", seed=1)) == p.sites[2].visitors
    True
    """
    if isinstance(site, str):
        found = [s for s in profile.sites if s.name == site]
        if not found:
            raise ValueError(f"profile {profile.name}: no site {site!r} (sites: "
                             + ", ".join(s.name for s in profile.sites) + ")")
        site = found[0]
    return dayplan.plan_visitors(site.visitors, profile.hours,
                                 seed=site_seed(seed, site.name),
                                 services=profile.services, arrivals=profile.arrivals,
                                 mix=profile.mix)


# ---- checking -----------------------------------------------------------------------------


def _what(v: Any) -> str:
    """How a found value is shown: the value and its TOML type."""
    if isinstance(v, bool):
        return f"{str(v).lower()} (a boolean)"
    if isinstance(v, int):
        return f"{v} (an integer)"
    if isinstance(v, float):
        return f"{v!r} (a number)"
    if isinstance(v, str):
        return f'"{v}" (a string)'
    if isinstance(v, dict):
        return "a table"
    if isinstance(v, list):
        return f"an array of {len(v)}"
    return f"{v} (a {type(v).__name__})"  # TOML dates and times


def _key(name: str) -> str:
    """A key as it is written in a key path (quoted when not a bare name)."""
    return name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) else f'"{name}"'


_MISSING = "nothing (the key is missing)"


class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, expected: str, found: str) -> ProfileError:
        return ProfileError(self.source, key, expected, found)

    # -- generic checks --

    def table(self, d: Any, where: str, required: tuple[str, ...],
              optional: tuple[str, ...] = (), tag: str = "") -> dict:
        """`d` is a table with the `required` keys and no key but those and `optional`
        ones; `tag` follows the key path in a message (the site's name)."""
        if not isinstance(d, dict):
            raise self.fail(where + tag, "a table", _what(d))
        known = required + optional
        for k in d:
            if k not in known:
                path = f"{where}.{_key(k)}" if where else _key(k)
                raise self.fail(path + tag, "one of the keys " + ", ".join(known),
                                "an unknown key")
        for k in required:
            if k not in d:
                raise self.fail((f"{where}.{k}" if where else k) + tag, _REQUIRED[k],
                                _MISSING)
        return d

    def number(self, v: Any, key: str, low: float, high: float = math.inf, *,
               low_open: bool = False, text: str = "") -> float:
        ok = (not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
              and (v > low if low_open else v >= low) and v <= high)
        if not ok:
            if not text:
                bound = f"> {low:g}" if low_open else f">= {low:g}"
                text = f"a number {bound}" if high == math.inf else \
                    f"a number from {low:g} to {high:g}"
            raise self.fail(key, text, _what(v))
        return float(v)

    def integer(self, v: Any, key: str, low: int, high: int) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
            raise self.fail(key, f"an integer {low}..{high}", _what(v))
        return v

    def text(self, v: Any, key: str, what: str = "a non-empty string") -> str:
        if not isinstance(v, str) or not v.strip():
            raise self.fail(key, what, _what(v))
        return v

    def array(self, v: Any, key: str, what: str) -> list:
        if not isinstance(v, list) or not v:
            raise self.fail(key, what, _what(v))
        return v

    # -- the tables --

    def profile(self, doc: dict) -> Profile:
        self.table(doc, "", ("name", "about", "hours", "services", "sites"),
                   ("arrivals", "mix"))
        name = self.text(doc["name"], "name")
        about = self.text(doc["about"], "about")
        hours = self.number(doc["hours"], "hours", *HOURS, text="a number of hours from "
                            f"{HOURS[0]:g} to {HOURS[1]:g}")
        services = self.services(doc["services"])
        arrivals = self.arrivals(doc["arrivals"], hours) if "arrivals" in doc else None
        mix = self.mix(doc["mix"]) if "mix" in doc else dayplan.Mix()
        codes = [s.letter for s in services]
        sites = self.array(doc["sites"], "sites", "one or more [[sites]] tables")
        out = []
        for i, d in enumerate(sites):
            site = self.site(d, f"sites[{i}]", codes)
            if site.name in (s.name for s in out):
                raise self.fail(f"sites[{i}].name", "a site name not used before",
                                _what(site.name))
            out.append(site)
        return Profile(name=name, about=about, hours=hours, services=services,
                       arrivals=arrivals, mix=mix, sites=tuple(out), source=self.source)

    def services(self, v: Any) -> tuple[dayplan.Service, ...]:
        out: list[dayplan.Service] = []
        for i, d in enumerate(self.array(v, "services", "one or more [[services]] tables")):
            where = f"services[{i}]"
            self.table(d, where, ("code", "name", "share", "mean_min", "sd_min"))
            code = d["code"]
            if not isinstance(code, str) or not re.fullmatch(r"[A-Z]", code):
                raise self.fail(f"{where}.code", "a ticket letter A-Z", _what(code))
            if code in (s.letter for s in out):
                raise self.fail(f"{where}.code", "a code not used by another service",
                                _what(code))
            out.append(dayplan.Service(
                letter=code, name=self.text(d["name"], f"{where}.name"),
                share=self.number(d["share"], f"{where}.share", 0, low_open=True),
                mean_s=self.number(d["mean_min"], f"{where}.mean_min", 0, low_open=True,
                                   text="minutes > 0") * 60,
                sd_s=self.number(d["sd_min"], f"{where}.sd_min", 0, text="minutes >= 0")
                * 60))
        return tuple(out)

    def arrivals(self, v: Any, hours: float) -> tuple[float, ...]:
        self.table(v, "arrivals", ("by_hour",))
        n = math.ceil(hours)
        weights = v["by_hour"]
        expected = f"{n} weights (one per opening hour of hours = {hours:g})"
        if not isinstance(weights, list):
            raise self.fail("arrivals.by_hour", f"an array of {expected}", _what(weights))
        if len(weights) != n:
            raise self.fail("arrivals.by_hour", expected, f"{len(weights)} weights")
        out = tuple(self.number(w, f"arrivals.by_hour[{h}]", 0, text="a weight >= 0")
                    for h, w in enumerate(weights))
        last = dayplan.issue_until_s(hours) / dayplan.HOUR
        if not any(w > 0 for h, w in enumerate(out) if h < last):
            raise self.fail("arrivals.by_hour", "a weight > 0 in some hour before the last "
                            f"ticket ({last:g} h after opening)", "none")
        return out

    def mix(self, v: Any) -> dayplan.Mix:
        names = tuple(f.name for f in fields(dayplan.Mix))
        self.table(v, "mix", (), names)
        return dayplan.Mix(**{k: self.number(p, f"mix.{k}", 0, 1,
                                             text="a probability from 0 to 1")
                              for k, p in v.items()})

    def site(self, d: Any, where: str, codes: list[str]) -> SiteProfile:
        name = d.get("name") if isinstance(d, dict) else None
        tag = f' (site "{name}")' if isinstance(name, str) and _SLUG.fullmatch(name) else ""
        self.table(d, where, ("name", "windows", "visitors"), ("gateways", "skills"), tag)
        if not isinstance(name, str) or not _SLUG.fullmatch(name):
            raise self.fail(f"{where}.name", "a slug of a-z, 0-9 and - (it goes into MQTT "
                            "topics)", _what(name))
        windows = self.integer(d["windows"], f"{where}.windows{tag}", 1, MAX_WINDOWS)
        gateways = self.integer(d.get("gateways", 1), f"{where}.gateways{tag}", 1, windows)
        visitors = self.integer(d["visitors"], f"{where}.visitors{tag}", 1, MAX_VISITORS)
        skills = None
        if "skills" in d:
            skills = self.skills(d["skills"], f"{where}.skills", tag, windows, codes)
        return SiteProfile(name=name, windows=windows, gateways=gateways, visitors=visitors,
                           skills=skills)

    def skills(self, v: Any, where: str, tag: str, windows: int,
               codes: list[str]) -> dict[int, dict[str, int]]:
        if not isinstance(v, dict):
            raise self.fail(where + tag, "a table of window = skills", _what(v))
        declared = ", ".join(codes)
        out: dict[int, dict[str, int]] = {}
        given_by: dict[int, str] = {}
        for key, skill in v.items():
            path = f'{where}."{key}"'
            m = _RANGE.fullmatch(key)
            first, last = (int(m[1]), int(m[2] or m[1])) if m else (0, 0)
            if not (m and 1 <= first <= last <= windows):
                raise self.fail(path + tag, f'a window 1..{windows} or a range "a-b" of them',
                                f'"{key}"')
            if isinstance(skill, list):
                if not skill or not all(isinstance(c, str) for c in skill) \
                        or len(set(skill)) != len(skill):
                    raise self.fail(path + tag, "a non-empty list of distinct services, or a "
                                    "table of service = weight", _what(skill))
                skill = dict.fromkeys(skill, 1)
            elif isinstance(skill, dict):
                if not skill:
                    raise self.fail(path + tag, "one or more service = weight", "an empty "
                                    "table")
                for code, weight in skill.items():
                    self.integer(weight, f"{path}.{_key(code)}{tag}", 1, MAX_WEIGHT)
            else:
                raise self.fail(path + tag, "a table of service = weight (1-9), or a list of "
                                "services", _what(skill))
            for code in skill:
                if code not in codes:
                    raise self.fail(f"{path}.{_key(code)}{tag}", "a service declared in "
                                    f"[[services]] ({declared})", f'"{code}"')
            for n in range(first, last + 1):
                if n in out:
                    raise self.fail(path + tag, "windows not given skills before",
                                    f'window {n}, given in "{given_by[n]}" too')
                out[n] = dict(skill)
                given_by[n] = key
        missing = [n for n in range(1, windows + 1) if n not in out]
        if missing:
            raise self.fail(where + tag, f"skills for every window 1..{windows} (or no "
                            "skills table)", "none for window(s) " + _ranges(missing))
        unserved = [c for c in codes if not any(c in s for s in out.values())]
        if unserved:
            raise self.fail(where + tag, f"every service ({declared}) served by a window",
                            ", ".join(unserved) + " served by none")
        return dict(sorted(out.items()))


def _ranges(ns: list[int]) -> str:
    """Sorted window numbers written short.

    >>> _ranges([1, 2, 3, 5, 7, 8])
    '1-3, 5, 7-8'
    """
    out: list[str] = []
    start = prev = ns[0]
    for n in [*ns[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        out.append(f"{start}-{prev}" if prev > start else f"{start}")
        if n is not None:
            start = prev = n
    return ", ".join(out)


_REQUIRED = {
    "name": "a name",
    "about": "a line or two on where the figures come from",
    "hours": f"the opening hours ({HOURS[0]:g} to {HOURS[1]:g})",
    "services": "one or more [[services]] tables",
    "sites": "one or more [[sites]] tables",
    "code": "a ticket letter A-Z",
    "share": "a relative share > 0",
    "mean_min": "the mean service time, minutes > 0",
    "sd_min": "its standard deviation, minutes >= 0",
    "by_hour": "relative arrivals, one weight per opening hour",
    "windows": f"the number of windows, 1..{MAX_WINDOWS}",
    "visitors": f"the visitors of a day, 1..{MAX_VISITORS}",
}
