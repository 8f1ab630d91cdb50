"""Desired-state commands from the central service: topics and payloads parsed and validated.

Design note
-----------
Operations: `parse_topic(site, topic)` says which window and kind a topic under
`hall/v1/{site}/window/{n}/` names; `parse_command(kind, payload)` turns a payload into a
`DisplayCommand`, `PanelCommand` or `VoteCommand`, into None for an empty payload (a cleared
retained topic: "no desired state"), or raises `CommandError` whose message says which field
is wrong and what was expected. No I/O, no threads: the MQTT link (gateway/mqtt.py) calls it
for each message and answers a `CommandError` on the gateway's errors topic.
`supersedes(new, current)` is the version rule for whoever applies the commands.
Goals: nothing malformed reaches a device; every rejection names the field and the rule, so
whoever wrote the central service can fix it from the error message alone. The rules here and
the JSON Schemas in protocols/schemas/ say the same thing (tests/test_mqtt_contract.py checks
both against the same good and bad payloads).
Plan: one small function per kind over a dict; unknown fields are ignored (so version 1 can
gain optional fields without breaking gateways already installed); booleans are never taken
for integers (JSON `true` is not 1), a number with a fraction never either, while `8.0` is the
integer 8 (JSON has one number type; JSON Schema's "integer" says the same). Any bytes end
parsed or as a CommandError, never another exception (protocols/jsonobject.py: the size
before decoding, the nesting depth before json.loads). Worst case cost: one linear scan and
one json.loads of at most MAX_PAYLOAD bytes.

    >>> parse_command("display", b'{"version": 4, "text": "A042", "blink_s": 10}')
    DisplayCommand(version=4, text='A042', blink_s=10, brightness=8)
    >>> try:
    ...     parse_command("vote", b"[" * 2000 + b"]" * 2000)
    ... except CommandError as e:
    ...     print(e)
    payload nests deeper than 32 levels
"""

import json
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from hallgate.protocols import jsonobject

KINDS = ("display", "panel", "vote")
MODES = ("idle", "called", "serving", "paused", "closed")

MAX_PAYLOAD = 4096  # bytes; every valid command is far below
MAX_TEXT = 8  # characters on a window display or a panel (protocols/BUS.md: 8 bytes)
MAX_TICKET = 8
# A central service bumps a window's version once per change of its state: 2**31 - 1 is
# decades of changes even at one a second, and fits a signed 32-bit integer everywhere. A
# higher one is refused: applied, it would make every later version stale.
MAX_VERSION = 2**31 - 1
MAX_DEPTH = jsonobject.MAX_DEPTH  # a command nests 1 level, unknown fields more
MAX_COUNT = 2**31 - 1  # queue and wait_s; devices show at most 65535 (BUS.md, u16)
MAX_VOTE_TIMEOUT = 3600

_PRINTABLE = re.compile(r"[\x20-\x7e]*\Z")
_WINDOW = re.compile(r"[1-9][0-9]{0,5}\Z")  # canonical decimal: "5", never "05" or "+5"


def utc_ts(t=None):
    """The contract's timestamp: UTC ISO 8601 with milliseconds, '2026-11-23T10:15:02.123Z'
    (`t`: seconds since the epoch; default now)."""
    dt = datetime.fromtimestamp(time.time() if t is None else t, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


class CommandError(ValueError):
    """A command that cannot be applied; str() is the reason, for the errors topic."""


@dataclass(frozen=True)
class DisplayCommand:
    """Desired content of a window display (LED board above the window)."""

    version: int
    text: str  # "" = the display's idle text
    blink_s: int = 0
    brightness: int = 8


@dataclass(frozen=True)
class PanelCommand:
    """Desired content of an operator call panel."""

    version: int
    mode: str
    text: str = ""
    queue: int = 0
    wait_s: int = 0
    tea: bool = False  # the visitor waited past the norm: offer hot tea
    beep: bool = False


@dataclass(frozen=True)
class VoteCommand:
    """Voting open for a ticket (the like/dislike LED invites a vote), or closed."""

    version: int
    open: bool
    ticket: str | None = None
    timeout_s: int | None = None


Command = DisplayCommand | PanelCommand | VoteCommand


def topic_prefix(site):
    return f"hall/v1/{site}/window/"


def command_topic(site, window, kind):
    return f"hall/v1/{site}/window/{window}/{kind}"


def parse_topic(site, topic):
    """(window, kind) for `hall/v1/{site}/window/{n}/{kind}` with kind in KINDS, else None."""
    prefix = topic_prefix(site)
    if not topic.startswith(prefix):
        return None
    window, _, kind = topic[len(prefix) :].partition("/")
    if kind not in KINDS or not _WINDOW.match(window):
        return None
    return int(window), kind


# -- field checks ---------------------------------------------------------------------------


def _int(obj, name, lo, hi, default=None, required=False, why_max=None):
    if name not in obj:
        if required:
            raise CommandError(f"{name}: missing (an integer {lo}-{hi})")
        return default
    value = obj[name]
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # 8.0 is the number 8 (as JSON Schema's "integer" says)
    if isinstance(value, bool) or not isinstance(value, int):
        raise CommandError(f"{name}: {_show(value)} is not an integer ({lo}-{hi})")
    if value > hi and why_max:
        raise CommandError(f"{name}: {value} is out of range {lo}-{hi} ({why_max})")
    if not lo <= value <= hi:
        raise CommandError(f"{name}: {value} is out of range {lo}-{hi}")
    return value


def _bool(obj, name, default=None, required=False):
    if name not in obj:
        if required:
            raise CommandError(f"{name}: missing (true or false)")
        return default
    value = obj[name]
    if not isinstance(value, bool):
        raise CommandError(f"{name}: {_show(value)} is not true or false")
    return value


def _text(obj, name, limit, default=None, required=False, empty_ok=True):
    if name not in obj:
        if required:
            raise CommandError(f"{name}: missing (a string, at most {limit} printable ASCII)")
        return default
    value = obj[name]
    if not isinstance(value, str):
        raise CommandError(f"{name}: {_show(value)} is not a string")
    if not _PRINTABLE.match(value):
        raise CommandError(f"{name}: {_show(value)} has characters outside printable ASCII")
    if len(value) > limit:
        raise CommandError(
            f"{name}: {_show(value)} is {len(value)} characters, at most {limit} allowed"
        )
    if not value and not empty_ok:
        raise CommandError(f"{name}: must not be empty")
    return value


def _show(value, limit=40):
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _version(obj):
    why = "a higher version would make every later one stale"
    return _int(obj, "version", 1, MAX_VERSION, required=True, why_max=why)


# -- payloads -------------------------------------------------------------------------------


def load_object(payload):
    """The JSON object in `payload` (bytes), or CommandError saying why not."""
    try:
        return jsonobject.load_object(payload, MAX_PAYLOAD, MAX_DEPTH)
    except ValueError as e:
        raise CommandError(str(e)) from None


def parse_display(obj):
    return DisplayCommand(
        version=_version(obj),
        text=_text(obj, "text", MAX_TEXT, required=True),
        blink_s=_int(obj, "blink_s", 0, 255, default=0),
        brightness=_int(obj, "brightness", 0, 15, default=8),
    )


def parse_panel(obj):
    version = _version(obj)
    if "mode" not in obj:
        raise CommandError(f"mode: missing (one of {', '.join(MODES)})")
    mode = obj["mode"]
    if not isinstance(mode, str) or mode not in MODES:
        raise CommandError(f"mode: {_show(mode)} is not one of {', '.join(MODES)}")
    return PanelCommand(
        version=version,
        mode=mode,
        text=_text(obj, "text", MAX_TEXT, default=""),
        queue=_int(obj, "queue", 0, MAX_COUNT, default=0),
        wait_s=_int(obj, "wait_s", 0, MAX_COUNT, default=0),
        tea=_bool(obj, "tea", default=False),
        beep=_bool(obj, "beep", default=False),
    )


def parse_vote(obj):
    version = _version(obj)
    is_open = _bool(obj, "open", required=True)
    ticket = obj.get("ticket")
    if is_open or ticket is not None:
        ticket = _text(obj, "ticket", MAX_TICKET, required=is_open, empty_ok=False)
    timeout_s = None
    if "timeout_s" in obj and obj["timeout_s"] is not None:
        timeout_s = _int(obj, "timeout_s", 1, MAX_VOTE_TIMEOUT)
    return VoteCommand(version=version, open=is_open, ticket=ticket, timeout_s=timeout_s)


_PARSERS = {"display": parse_display, "panel": parse_panel, "vote": parse_vote}


def supersedes(new, current):
    """Whether command `new` replaces `current` (both of one window and kind, either may be
    None: no desired state). A higher version replaces; the same or a lower one is stale
    (a retained message sent again after a reconnect changes nothing, a late older one never
    overwrites a newer one); a clear (None) replaces any state, and after it any version
    applies."""
    if new is None:
        return current is not None
    return current is None or new.version > current.version


def parse_command(kind, payload):
    """The typed command in `payload` (bytes) for `kind`; None for an empty payload (a
    cleared retained topic); CommandError with the reason if it is malformed."""
    if kind not in _PARSERS:
        raise CommandError(f"unknown command kind {kind!r} (one of {', '.join(KINDS)})")
    if not payload:
        return None
    return _PARSERS[kind](load_object(bytes(payload)))
