"""What a hall offers and who works in it: the service catalogue, windows with their
skills, operators, the day and the selection rule's credits (`QueueConfig`).

Design note
-----------
Goals: a catalogue the size of an MFC's (160-200 services and more), ticket numbers that
fit the hall's displays, and a config the queue can trust: every check is made here, once,
with a message naming what is wrong.

Services and ticket numbers
---------------------------
A service has a code: a capital letter and up to three more capitals or digits (``A``,
``P1``, ``D12``, ``RU``): 26 one-letter codes, 936 of two characters, and so on. It has a
name, an optional group (the catalogue's heading, and a row of the report) and an
expected service time (`expected_s`, for the visitor's estimate on ``ticket/issued``).

Its tickets are numbered with its `prefix` (the code unless set; several services may
share a prefix, as MFC halls give a letter to a group of services) and a counter per
prefix per local day of `digits` digits: ``A001``; when the prefix ends in a digit a dot
separates them, ``P1.07``. The displays are 7-segment digits, where a dot lights the
decimal point of the digit before it and takes no digit of its own, so ``P1.07`` needs 4
digits like ``A001``. A prefix uses the letters the 7-segment font shows unlike a digit
(`SEVEN_SEGMENT_LETTERS`: not K M V X Z, blank there, nor O S, read as 0 and 5): a
service coded ``M`` gets ``prefix = "N"`` or another. The numbers must fit the call panel
(`panel_digits`, 4: the panel firmware cuts text past its last digit, which would show a
wrong number) and the bus's 8 bytes of text: a code that cannot is refused here, naming
the service. The window display (8 digits) shows ``A001 > 5``, or ``P1.07>12`` when that
does not fit, or the number alone. `digits` defaults to what the panel leaves for the
counter, at most 3; past the largest the counter wraps to 1 again, and a number still
held by an open ticket is skipped, so two visitors in the hall never hold the same
number.

Windows
-------
A window serves services, each with a weight 1-9 (``services = ["A", "B"]``: all 1;
``services = {A = 3, B = 1}``: A is its main service). How weights, priorities,
appointments and redirects order the queue: `central.selection`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "AT_CLOSE",
    "LATE",
    "Operator",
    "QueueConfig",
    "QueueError",
    "Refused",
    "Service",
    "WindowConfig",
    "digit_positions",
    "minutes",
    "ticket_number",
]

AT_CLOSE = ("serve", "end")
KEYS = ("call", "recall", "start", "finish", "noshow", "pause", "resume", "redirect")
LATE = ("walk-in", "refuse")
TEXT_MAX = 8  # bytes of display and panel text the bus carries (protocols/bus.py)
CODE = re.compile(r"[A-Z][A-Z0-9]{0,3}")
OPERATOR = re.compile(r"[A-Za-z0-9._-]{1,64}")
# Letters the panels' and displays' 7-segment font (firmware/max7219.py) shows, and shows
# unlike a digit: K M V X Z have no form (blank), O and S look like 0 and 5.
SEVEN_SEGMENT_LETTERS = "ABCDEFGHIJLNPQRTUWY"
PIN_LENGTH = 4
PIN_DIGITS = "12345678"  # the panel's eight keys, in order (central.sessions)


class QueueError(ValueError):
    """A command the queue cannot take at all (bad config, unknown service)."""


class Refused(QueueError):
    """A ticket request refused, with a `code` for a kiosk to act on: "before-opening",
    "after-last-ticket", "late-for-slot", "slot-not-today", "numbers-exhausted"."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def minutes(hhmm: str) -> int:
    """``"19:30"`` -> minutes since midnight; QueueError for anything else.

    >>> minutes("08:05")
    485
    """
    try:
        h, m = hhmm.split(":")
        if len(h) == 2 and len(m) == 2 and 0 <= int(h) <= 23 and 0 <= int(m) <= 59:
            return int(h) * 60 + int(m)
    except (AttributeError, ValueError):
        pass
    raise QueueError(f"{hhmm!r}: a local time HH:MM expected (e.g. 08:00)")


def ticket_number(prefix: str, n: int, digits: int) -> str:
    """The printed number of counter value `n`.

    >>> ticket_number("A", 7, 3), ticket_number("P1", 7, 2), ticket_number("RU", 7, 2)
    ('A007', 'P1.07', 'RU07')
    """
    sep = "." if prefix[-1].isdigit() else ""
    return f"{prefix}{sep}{n:0{digits}d}"


def digit_positions(text: str) -> int:
    """7-segment digits `text` takes: a dot after a character lights that digit's point.

    >>> digit_positions("P1.07"), digit_positions("A001 > 5")
    (4, 8)
    """
    return len(text) - sum(1 for i, c in enumerate(text) if c == "." and i and text[i - 1] != ".")


@dataclass(frozen=True)
class Service:
    code: str
    name: str
    group: str | None = None
    expected_s: int | None = None  # expected service time
    prefix: str = ""  # ticket prefix; "" = the code
    digits: int = 0  # counter digits; 0 = what the call panel leaves, at most 3

    def number(self, n: int) -> str:
        return ticket_number(self.prefix or self.code, n, self.digits)

    @property
    def largest(self) -> int:
        """The largest counter value before it wraps."""
        return 10 ** self.digits - 1


@dataclass(frozen=True)
class Operator:
    id: str
    name: str = ""
    pin: str | None = None  # PIN_LENGTH digits 1-8, entered on the panel's keys


@dataclass(frozen=True)
class WindowConfig:
    n: int
    services: tuple[str, ...]
    redirect_to: str | None = None
    operator: str | None = None  # logged in from the start (and after every restart)
    weights: Mapping[str, int] = field(default_factory=dict)  # service -> 1-9; absent 1

    def weight(self, service: str) -> int:
        return self.weights.get(service, 1)


def _service(code: str, value: Any) -> Service:
    if isinstance(value, Service):
        return value
    if isinstance(value, str):
        return Service(code, value)
    if not isinstance(value, Mapping):
        raise QueueError(f"services.{code}: a name or a table (name, group, expected_s, "
                         "prefix, digits) expected")
    unknown = set(value) - {"name", "group", "expected_s", "prefix", "digits"}
    if unknown:
        raise QueueError(f"services.{code}: unknown key {sorted(unknown)[0]!r}")
    for key, kind in (("name", str), ("group", str), ("prefix", str), ("expected_s", int),
                      ("digits", int)):
        v = value.get(key)
        if v is not None and (not isinstance(v, kind) or isinstance(v, bool)):
            raise QueueError(f"services.{code}.{key}: {v!r} is not {kind.__name__}")
    if "name" not in value:
        raise QueueError(f"services.{code}.name: missing")
    return Service(code, value["name"], value.get("group"), value.get("expected_s"),
                   value.get("prefix", ""), value.get("digits", 0))


@dataclass(frozen=True)
class QueueConfig:
    """`services`: code -> `Service` (or just its name, e.g. ``{"A": "Passports"}``)."""

    services: Mapping[str, Any]
    windows: tuple[WindowConfig, ...]
    tz: str | None = None  # IANA zone for the ticket day; None = the machine's zone
    norm_s: int = 900  # the waiting-time norm (15 min): past it, tea
    warn_s: int = 600  # a waiting visitor's wait past this: an alert (open a window)
    blink_s: int = 10  # display blinks this long when a ticket is called or recalled
    brightness: int = 8
    vote_timeout_s: int = 60
    panel_digits: int = 4  # the call panels' 7-segment digits: ticket numbers must fit
    # The day (local times "HH:MM"; None: no limit): tickets from `opens` until
    # `last_ticket` (default: `closes`); at `closes`, visitors still waiting are served
    # (at_close "serve": the overrun is in the day's report) or their tickets end
    # "closed" ("end").
    opens: str | None = None
    last_ticket: str | None = None
    closes: str | None = None
    at_close: str = "serve"
    # Appointments: called from their slot; a visitor arriving later than slot + grace
    # becomes a walk-in ("walk-in") or is refused ("refuse").
    grace_s: int = 300
    late: str = "walk-in"
    # The selection rule's credits, seconds (central.selection); None: the norm.
    priority_credit_s: int = 600  # per priority level (0-9)
    skill_credit_s: int = 300  # per weight step above 1 at the window
    appointment_credit_s: int | None = None
    redirect_credit_s: int | None = None
    # Operators with PINs log in on the panel; with any operator configured, a window
    # with nobody logged in is closed (it calls nobody) until someone does.
    operators: Mapping[str, Operator] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.at_close not in AT_CLOSE:
            raise QueueError(f"at_close {self.at_close!r}: one of {', '.join(AT_CLOSE)}")
        if self.late not in LATE:
            raise QueueError(f"late {self.late!r}: one of {', '.join(LATE)}")
        times = [(k, minutes(v)) for k in ("opens", "last_ticket", "closes")
                 if (v := getattr(self, k)) is not None]
        if [m for _, m in times] != sorted(m for _, m in times):
            raise QueueError("opens <= last_ticket <= closes expected, not "
                             + ", ".join(f"{k} {getattr(self, k)}" for k, _ in times))
        if not 2 <= self.panel_digits <= 8:
            raise QueueError(f"panel_digits {self.panel_digits}: 2-8 expected")
        services = {code: self._check_service(code, _service(code, v))
                    for code, v in self.services.items()}
        object.__setattr__(self, "services", services)
        if self.appointment_credit_s is None:
            object.__setattr__(self, "appointment_credit_s", self.norm_s)
        if self.redirect_credit_s is None:
            object.__setattr__(self, "redirect_credit_s", self.norm_s)
        self._check_windows()
        self._check_operators()

    def _check_service(self, code: str, s: Service) -> Service:
        where = f"service {code!r}"
        if not isinstance(code, str) or not CODE.fullmatch(code):
            raise QueueError(f"{where}: a capital letter and up to 3 more capitals or "
                             "digits expected (A, P1, D12)")
        prefix = s.prefix or code
        if not CODE.fullmatch(prefix):
            raise QueueError(f"{where}: prefix {prefix!r}: a capital letter and up to 3 more "
                             "capitals or digits expected")
        unreadable = sorted({c for c in prefix if c.isalpha()} - set(SEVEN_SEGMENT_LETTERS))
        if unreadable:
            raise QueueError(f"{where}: prefix {prefix!r}: the 7-segment panels and displays "
                             f"cannot show {', '.join(unreadable)} (blank, or read as a "
                             f"digit): use the letters {' '.join(SEVEN_SEGMENT_LETTERS)}, or "
                             "set a prefix")
        room = self.panel_digits - len(prefix)
        digits = s.digits or min(3, room)
        if not 1 <= digits <= 6:
            raise QueueError(f"{where}: digits {digits}: 1-6 expected")
        if digits < 2 and not s.digits:
            raise QueueError(f"{where}: its prefix {prefix!r} leaves {room} digit(s) of the "
                             f"call panel's {self.panel_digits} for the counter: use a "
                             "prefix of at most "
                             f"{self.panel_digits - 2} characters (share one between "
                             "services), or set panel_digits for larger panels")
        sample = ticket_number(prefix, 1, digits)
        if digit_positions(sample) > self.panel_digits or len(sample) > TEXT_MAX:
            raise QueueError(f"{where}: numbers like {sample} take {digit_positions(sample)} "
                             f"digits: more than the call panel's {self.panel_digits} "
                             "(panel_digits)")
        if s.expected_s is not None and not 1 <= s.expected_s <= 86400:
            raise QueueError(f"{where}: expected_s {s.expected_s}: 1-86400 expected")
        if not s.name.strip():
            raise QueueError(f"{where}: an empty name")
        return Service(code, s.name, s.group, s.expected_s, prefix, digits)

    def _check_windows(self) -> None:
        seen: set[int] = set()
        for w in self.windows:
            if w.n in seen:
                raise QueueError(f"window {w.n} configured twice")
            seen.add(w.n)
            if not 1 <= w.n <= 999999:
                raise QueueError(f"window {w.n}: 1-999999 expected")
            if not w.services:
                raise QueueError(f"window {w.n}: serves no service")
            for s in (*w.services, *([w.redirect_to] if w.redirect_to else []), *w.weights):
                if s not in self.services:
                    raise QueueError(f"window {w.n}: unknown service {s!r}")
            for s, weight in w.weights.items():
                if isinstance(weight, bool) or not isinstance(weight, int) \
                        or not 1 <= weight <= 9:
                    raise QueueError(f"window {w.n}: weight of {s} {weight!r}: 1-9 expected")

    def _check_operators(self) -> None:
        pins: dict[str, str] = {}
        for oid, op in self.operators.items():
            if not OPERATOR.fullmatch(oid) or op.id != oid:
                raise QueueError(f"operator {oid!r}: 1-64 of A-Z a-z 0-9 . _ -")
            if op.pin is None:
                continue
            if len(op.pin) != PIN_LENGTH or not set(op.pin) <= set(PIN_DIGITS):
                raise QueueError(f"operator {oid}: pin: {PIN_LENGTH} digits 1-8 expected "
                                 "(the panel's keys call=1 ... redirect=8)")
            if op.pin in pins:
                raise QueueError(f"operator {oid}: pin is the same as {pins[op.pin]}'s")
            pins[op.pin] = oid
        for w in self.windows:
            if w.operator is not None and self.operators and w.operator not in self.operators:
                raise QueueError(f"window {w.n}: operator {w.operator!r} is not in operators")

    def service(self, code: str) -> Service:
        return self.services[code]

    @property
    def sessions(self) -> bool:
        """Operators log in and out (operators configured): an empty window is closed."""
        return bool(self.operators)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> QueueConfig:
        """``{"services": {"A": "Passports", "P1": {"name": "...", "group": "...",
        "expected_s": 600}}, "windows": [{"n": 1, "services": {"A": 3, "P1": 1},
        "redirect_to": "P1", "operator": "ivanova"}], "operators": {"ivanova":
        {"name": "Ivanova A.", "pin": "1357"}}, "tz": "Europe/Moscow", ...}``"""
        windows = []
        for w in d["windows"]:
            svc = w["services"]
            weights = dict(svc) if isinstance(svc, Mapping) else {}
            windows.append(WindowConfig(
                n=int(w["n"]), services=tuple(svc), redirect_to=w.get("redirect_to"),
                operator=w.get("operator"), weights=weights))
        operators = {}
        for oid, o in (d.get("operators") or {}).items():
            if isinstance(o, str):
                o = {"name": o}
            if not isinstance(o, Mapping):
                raise QueueError(f"operators.{oid}: a name or a table (name, pin) expected")
            unknown = set(o) - {"name", "pin"}
            if unknown:
                raise QueueError(f"operators.{oid}: unknown key {sorted(unknown)[0]!r}")
            pin = o.get("pin")
            if pin is not None and not isinstance(pin, str):
                raise QueueError(f"operators.{oid}.pin: a string of digits, e.g. \"1357\"")
            operators[oid] = Operator(oid, str(o.get("name", "")), pin)
        extra = {k: d[k] for k in ("tz", "norm_s", "warn_s", "blink_s", "brightness",
                                   "vote_timeout_s", "panel_digits", "opens", "last_ticket",
                                   "closes", "at_close", "grace_s", "late",
                                   "priority_credit_s", "skill_credit_s",
                                   "appointment_credit_s", "redirect_credit_s") if k in d}
        return cls(services=dict(d["services"]), windows=tuple(windows), operators=operators,
                   **extra)
