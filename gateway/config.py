"""The hall config: one TOML file that describes a gateway, checked whole before it is used.

Design note
-----------
Operations: `load_config(path)` reads, checks and returns a frozen `HallConfig`, or raises
`ConfigError` listing every `Problem`; `check_config(path)` returns the problems (empty when
the file is good), for `hallgate config check`.
Goals: a technician fixes a config in one round: every problem of the file in one pass, each
with the file, the line, the key path (`buses[0].devices[2].address`) and what was found
against what was expected; no follow-on noise from a value already reported.
Plan: the schema is the dataclasses themselves: each TOML key is a dataclass field whose
metadata holds a `Spec` (kind, default, range, choices, doc). A generic walk checks types,
ranges, required and unknown keys of every table; `_cross_check` then checks what spans tables
(duplicates, GPIO pins, windows and their devices). tomllib gives no positions, so
`_key_lines` scans the raw text once (table headers, array-of-tables occurrences, keys, array
elements) into {key path: line}; a problem takes the line of the longest known prefix of its
path (a missing key: its table's header).
Reading: only a regular file is opened (a FIFO or a device is refused after a stat, as
reading one may block or never end), of at most MAX_BYTES, in UTF-8 (a leading BOM, as
Notepad writes, is skipped); a value quoted in a message is cut to QUOTE_CHARS.
Run-time files: what `hallgate run` opens at start is checked here too (the outbox's folder
can be made, the TLS files are PEM and the key is the certificate's, the password file is
UTF-8), so that a config this check passes does not fail at start.
Cost: linear in the file; a config is a few KB.
"""

import codecs
import dataclasses
import difflib
import os
import re
import stat
import tomllib
import urllib.parse
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from hallgate.protocols import bus

__all__ = [
    "BAUDS",
    "HEADER_PIN",
    "TOKEN_MIN",
    "Broker",
    "Bus",
    "BusDevice",
    "ConfigError",
    "Firmware",
    "Gateway",
    "GpioPanel",
    "HallConfig",
    "Http",
    "Mqtt",
    "Outbox",
    "Problem",
    "Timings",
    "Window",
    "check_config",
    "load_config",
]

BAUDS = (9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)  # protocols/BUS.md
PINS = (2, 27)  # BCM GPIOs on the 40-pin header; 0 and 1 are the HAT EEPROM's I2C
# BCM number -> physical pin of the 40-pin header (every Pi since the B+).
HEADER_PIN = {
    2: 3, 3: 5, 4: 7, 5: 29, 6: 31, 7: 26, 8: 24, 9: 21, 10: 19, 11: 23, 12: 32, 13: 33,
    14: 8, 15: 10, 16: 36, 17: 11, 18: 12, 19: 35, 20: 38, 21: 40, 22: 15, 23: 16, 24: 18,
    25: 22, 26: 37, 27: 13,
}
# Serial devices on the primary UART, which takes BCM 14 (TXD) and 15 (RXD).
PRIMARY_UART = ("/dev/serial0", "/dev/ttyAMA0", "/dev/ttyS0")
UART_PINS = ((14, "TXD"), (15, "RXD"))
SLUG = r"[a-z0-9][a-z0-9-]{0,63}"  # safe in an MQTT topic level
# MQTT over TCP, plain or TLS: what the link (gateway/mqtt.py) speaks. ws:// and wss://
# are refused here with a reason, not accepted and then refused by `run`.
SCHEMES = {"mqtt": 1883, "mqtts": 8883}
HOST = r"[A-Za-z0-9._:%-]+"  # a DNS name, IPv4 or IPv6 (as gateway/mqtt.py's parse_url takes)
WINDOWS = (1, 999_999)  # window numbers, as the MQTT contract allows (protocols/MQTT.md)
BUS_WINDOWS = (1, 0xFFFF)  # a bus device keeps its window in 16 bits (protocols/BUS.md INFO)
MAX_BYTES = 1 << 20  # a hall config (or a file it names) past this is not one; they are KBs
QUOTE_CHARS = 80  # of a value quoted in a message; PATH_CHARS of a path
PATH_CHARS = 300
TOKEN_MIN = 16  # characters of the technician page's token


# ---- problems -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config: where (file, line, key path) and what."""

    file: str
    line: int | None  # None when the place cannot be told (a missing table)
    key: str | None  # dotted key path, None for a problem of the whole file
    message: str

    @property
    def where(self):
        """'hall.toml:14: buses[0].devices[2].address' (what is known of it)."""
        place = self.file + (f":{self.line}" if self.line else "")
        return place + (f": {self.key}" if self.key else "")

    def __str__(self):
        return f"{self.where}: {self.message}"

    def asdict(self):
        return dataclasses.asdict(self)


class ConfigError(ValueError):
    """A config that cannot be used; `problems` holds all that is wrong with it."""

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__("\n".join(map(str, self.problems)))


# ---- the schema: dataclasses whose fields carry a Spec --------------------------------------

REQUIRED = dataclasses.MISSING


@dataclass(frozen=True)
class Spec:
    kind: object  # int, str, "slug", "urls", "file", "path", a config dataclass, or Many
    lo: int | None = None
    hi: int | None = None
    choices: tuple = ()
    doc: str = ""


@dataclass(frozen=True)
class Many:
    """An array of tables of `table` (`[[name]]`), at least `min` of them."""

    table: type
    min: int = 0


def key(kind, default=REQUIRED, doc="", **rules):
    """A dataclass field that is also a TOML key."""
    return field(default=default, metadata={"spec": Spec(kind, doc=doc, **rules)})


def pin(doc):
    return key(int, None, doc, lo=PINS[0], hi=PINS[1])


@dataclass(frozen=True)
class Gateway:
    site: str = key("slug", doc="site name in MQTT topics hall/v1/{site}/...")
    id: str = key("slug", doc="gateway id in hall/v1/{site}/gw/{id}/...")


@dataclass(frozen=True)
class Broker:
    """One broker URL, taken apart for the MQTT client."""

    url: str
    scheme: str
    host: str
    port: int

    @property
    def tls(self):
        return self.scheme == "mqtts"

    def __str__(self):
        return self.url


@dataclass(frozen=True)
class Mqtt:
    urls: tuple[Broker, ...] = key("urls", doc="brokers, tried in order (failover)")
    protocol: str = key(str, "5", "MQTT version", choices=("5", "3.1.1"))
    username: str | None = key(str, None, "user name")
    password: str | None = key(str, None, "password inline (prefer password_file)")
    password_file: Path | None = key("file", None, "file holding the password")
    ca_file: Path | None = key("file", None, "CA certificates (PEM); default: system store")
    cert_file: Path | None = key("file", None, "client certificate (PEM); needs key_file")
    key_file: Path | None = key("file", None, "client private key (PEM); needs cert_file")
    keepalive_s: int = key(int, 30, "MQTT keepalive, seconds", lo=5, hi=600)
    # "windows": window/{n}/{kind} for each served window (what the mosquitto ACL allows);
    # "kinds": window/+/{kind}, 3 subscriptions whatever the windows (the city's NATS
    # cluster, where each QoS 1 subscription is a JetStream consumer: hardware/nats/);
    # "site": hall/v1/{site}/desired, one retained snapshot of the whole site (there too: a
    # retained QoS 1 publish is a replicated write). gateway/desired.py says more.
    subscribe: str = key(str, "windows", "desired state: a subscription per window and kind "
                         "(windows), one per kind (kinds: window/+/kind), or one snapshot of "
                         "the whole site (site: desired)", choices=("windows", "kinds", "site"))

    def read_password(self):
        """The password: inline, or password_file's text without its line end; else None."""
        if self.password_file is not None:
            return self.password_file.read_text(encoding="utf-8").rstrip("\r\n")
        return self.password


@dataclass(frozen=True)
class Outbox:
    path: Path = key("path", Path("/var/lib/hallgate/outbox.sqlite"), "SQLite outbox file")
    max_events: int = key(int, 100_000, "events kept unsent before the oldest go",
                          lo=100, hi=10_000_000)
    # "receipt": an event leaves the outbox when the central service's receipt names it
    # (it is then in the central's database). "puback": when the broker acknowledges it,
    # for a central that sends no receipts; a broker crash can then lose every event it
    # acknowledged since its last save to disk (mosquitto: autosave_interval).
    delivery: str = key(str, "receipt", "when an event leaves the outbox: the central's "
                        "receipt, or the broker's PUBACK (risk: a broker crash loses events)",
                        choices=("receipt", "puback"))
    receipt_timeout_s: int = key(int, 30, "an event without a receipt this long after its "
                                 "PUBACK is sent again (the wait doubles, up to 8x)",
                                 lo=1, hi=3600)


@dataclass(frozen=True)
class Timings:
    debounce_ms: int = key(int, 20, "GPIO button debounce", lo=1, hi=500)
    vote_window_s: int = key(int, 120, "voting stays open this long without news from central",
                             lo=5, hi=3600)
    vote_min_interval_ms: int = key(int, 1500, "presses closer than this are misuse",
                                    lo=0, hi=60_000)
    vote_ack_ms: int = key(int, 1500, "LED thank-you after a vote", lo=0, hi=10_000)
    poll_timeout_ms: int = key(int, 20, "time a bus device has to start its reply",
                               lo=1, hi=1000)
    offline_after: int = key(int, 3, "missed polls before a bus device counts as offline",
                             lo=1, hi=100)


@dataclass(frozen=True)
class Firmware:
    """Device firmware updates over the bus (`hallgate ota`)."""

    public_key: Path | None = key("file", None, "Ed25519 public key that firmware bundles "
                                  "must be signed with (from `hallgate keygen`); no key: no "
                                  "updates over the bus")
    job_share: int = key(int, 50, "most of the bus time an update may take, percent (the "
                         "poll cycle gets the rest)", lo=10, hi=90)
    offline_s: int = key(int, 30, "seconds without an answer after which a device's update "
                         "fails as offline (it keeps what it staged; the next update "
                         "resumes there)", lo=5, hi=3600)


@dataclass(frozen=True)
class Http:
    """The technician's page (hallgate/web/gatewaypage.py), served by the daemon only when
    `listen` is set. On a loopback address it is this machine's; on any other it needs a
    token, which every request then carries (a login form sets a cookie)."""

    listen: str | None = key("listen", None, 'HOST:PORT the technician\'s page is served '
                             'on, e.g. "127.0.0.1:8081" (this machine only); absent: no page')
    token: str | None = key(str, None, "the page's token inline (prefer token_file)")
    token_file: Path | None = key("file", None, "file holding the page's token")

    @property
    def address(self):
        """(host, port) of `listen`; None when no page is served."""
        if self.listen is None:
            return None
        from hallgate.web import http_address  # standard library only

        return http_address(self.listen)

    def read_token(self):
        """The token: inline, or token_file's text without its line end; else None."""
        if self.token_file is not None:
            return self.token_file.read_text(encoding="utf-8").rstrip("\r\n")
        return self.token


@dataclass(frozen=True)
class BusDevice:
    address: int = key(int, doc="bus address, unique on its bus", lo=1, hi=bus.MAX_ADDRESS)
    role: str = key(str, doc="device role", choices=bus.ROLES)
    window: int = key(int, doc="window the device serves", lo=BUS_WINDOWS[0],
                      hi=BUS_WINDOWS[1])


@dataclass(frozen=True)
class Bus:
    name: str = key("slug", doc="bus name, unique")
    port: str = key(str, doc="serial device of the RS-485 adapter")
    baud: int = key(int, 115200, "line speed", choices=BAUDS)
    de_pin: int | None = pin("RS-485 driver enable (DE and /RE); omit for auto-direction")
    devices: tuple[BusDevice, ...] = key(Many(BusDevice), (), "devices on this bus")


@dataclass(frozen=True)
class GpioPanel:
    """An operator call panel wired straight to the GPIO header: a button per key."""

    call: int = key(int, doc="call-next key", lo=PINS[0], hi=PINS[1])
    recall: int | None = pin("recall key")
    start: int | None = pin("start-service key")
    finish: int | None = pin("finish key")
    noshow: int | None = pin("no-show key")
    pause: int | None = pin("pause key")
    resume: int | None = pin("resume key")
    redirect: int | None = pin("redirect key")
    led_pin: int | None = pin("panel LED (visitor invited)")
    buzzer_pin: int | None = pin("buzzer (active, through a transistor)")

    @property
    def keys(self):
        """{key name: BCM pin} of the keys wired, in bus.KEYS order."""
        return {k: getattr(self, k) for k in bus.KEYS if getattr(self, k) is not None}


@dataclass(frozen=True)
class Window:
    number: int = key(int, doc="window number (per site), unique in the file", lo=WINDOWS[0],
                      hi=WINDOWS[1])
    like_pin: int | None = pin("like button; needs dislike_pin; not with a feedback-pad")
    dislike_pin: int | None = pin("dislike button; needs like_pin; not with a feedback-pad")
    like_led_pin: int | None = pin("LED in/at the like button; needs like_pin")
    dislike_led_pin: int | None = pin("LED in/at the dislike button; needs dislike_pin")
    panel: GpioPanel | None = key(GpioPanel, None, "call panel on GPIO")

    @property
    def buttons(self):
        """{input name: BCM pin}: like, dislike and the GPIO panel's keys."""
        out = {"like": self.like_pin, "dislike": self.dislike_pin}
        out = {k: p for k, p in out.items() if p is not None}
        return out | (self.panel.keys if self.panel else {})

    @property
    def leds(self):
        """{output name: BCM pin}: like_led, dislike_led, panel_led, buzzer."""
        out = {"like_led": self.like_led_pin, "dislike_led": self.dislike_led_pin}
        if self.panel:
            out |= {"panel_led": self.panel.led_pin, "buzzer": self.panel.buzzer_pin}
        return {k: p for k, p in out.items() if p is not None}


@dataclass(frozen=True)
class HallConfig:
    gateway: Gateway = key(Gateway, doc="who this gateway is")
    mqtt: Mqtt = key(Mqtt, doc="broker connection")
    windows: tuple[Window, ...] = key(Many(Window, 1), doc="windows served, by number")
    outbox: Outbox = key(Outbox, Outbox(), "durable event outbox")
    timings: Timings = key(Timings, Timings(), "timings")
    buses: tuple[Bus, ...] = key(Many(Bus), (), "RS-485 buses")
    firmware: Firmware = key(Firmware, Firmware(), "device firmware updates")
    http: Http = key(Http, Http(), "the technician's page (off without listen)")
    file: str = ""  # where it was read from (not a TOML key)

    def window(self, number):
        """The Window numbered `number`; KeyError if this gateway does not serve it."""
        for w in self.windows:
            if w.number == number:
                return w
        raise KeyError(f"window {number} is not in {self.file or 'the config'}")

    @property
    def window_numbers(self):
        return tuple(w.number for w in self.windows)  # sorted, as `windows` is

    def bus_devices(self, window=None):
        """[(Bus, BusDevice)] of every bus, or only those serving `window`."""
        return [(b, d) for b in self.buses for d in b.devices if window in (None, d.window)]

    def gpio_pins(self):
        """{BCM pin: what it does} for every GPIO in use, e.g. {5: "window 1 like button"}."""
        out = {}
        for b in self.buses:
            if b.de_pin is not None:
                out[b.de_pin] = f"bus {b.name} DE/RE"
            if b.port in PRIMARY_UART:
                out |= {p: f"bus {b.name} UART {fn}" for p, fn in UART_PINS}
        for w in self.windows:
            pins = w.buttons | w.leds
            out |= {p: f"window {w.number} {_label(k)}" for k, p in pins.items()}
        return dict(sorted(out.items()))

    def summary(self):
        buttons = sum(len(w.buttons) for w in self.windows)
        return (f"{len(self.windows)} windows, {len(self.bus_devices())} bus devices, "
                f"{buttons} GPIO buttons")


def _label(name):
    names = {"like": "like button", "dislike": "dislike button", "like_led": "like LED",
             "dislike_led": "dislike LED", "panel_led": "panel LED", "buzzer": "panel buzzer"}
    return names.get(name, f"panel {name} key")


def _specs(cls):
    return {f.name: f for f in dataclasses.fields(cls) if "spec" in f.metadata}


# ---- loading -------------------------------------------------------------------------------


def load_config(path):
    """The checked config in `path`; raises ConfigError listing every problem.

        >>> config = load_config("hardware/hall-12-windows.toml")
        >>> config.summary()
        '12 windows, 24 bus devices, 24 GPIO buttons'
        >>> [(d.role, d.address) for bus, d in config.bus_devices(window=3)]
        [('call-panel', 3), ('window-display', 103)]
        >>> config.window(3).buttons
        {'like': 27, 'dislike': 22}
    """
    config, problems = _load(path)
    if problems:
        raise ConfigError(problems)
    return config


def check_config(path):
    """Every problem of the config in `path`, in file order; [] when it is good."""
    return _load(path)[1]


def _load(path):
    name = str(path)
    try:
        text = _read_text(path)
    except _Unreadable as e:
        return None, [Problem(name, None, None, f"cannot read the file: {e}")]
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        return None, [_syntax_problem(name, text, e)]
    except RecursionError:  # arrays or inline tables nested past the recursion limit
        return None, [Problem(name, None, None, "TOML syntax error: arrays or inline "
                              "tables nested too deep")]
    except ValueError as e:  # an integer past Python's digit limit; tomllib gives no line
        long = re.search(r"\d{4000,}", text)
        if long is None:
            return None, [Problem(name, None, None, f"TOML syntax error: {e}")]
        line = text.count("\n", 0, long.start()) + 1
        return None, [Problem(name, line, None, f"TOML syntax error: a number of "
                              f"{len(long.group())} digits")]
    ctx = _Context(name, Path(path).resolve().parent, _key_lines(text))
    top = _table(HallConfig, data, (), ctx)
    _cross_check(top, ctx)
    if ctx.problems:
        return None, sorted(ctx.problems, key=lambda p: p.line or 0)
    top["windows"].sort(key=lambda w: w["number"])
    return dataclasses.replace(_build(HallConfig, top), file=name), []


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


class _Unreadable(ValueError):
    """Why a file cannot be read (not a regular file, too big, not UTF-8, an OSError)."""


def _read(path):
    """The bytes of the regular file `path`; _Unreadable saying why not. A FIFO or a device
    is refused before it is opened, a file past MAX_BYTES before it is read."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            kind = next((k for is_kind, k in _KINDS if is_kind(st.st_mode)), "a special file")
            raise _Unreadable(f"it is {kind}, not a regular file")
        size = st.st_size
        if size <= MAX_BYTES:
            with open(path, "rb") as f:
                raw = f.read(MAX_BYTES + 1)  # the size a stat tells may be wrong (/proc)
            size = len(raw)
    except OSError as e:
        raise _Unreadable(e.strerror or str(e)) from None
    if size > MAX_BYTES:
        raise _Unreadable(f"it is {size:,} bytes, over the limit of {MAX_BYTES:,} (1 MB): "
                          f"is it the right file?")
    return raw


def _read_text(path):
    """The UTF-8 text of the file `path` (a leading BOM skipped); _Unreadable saying why not."""
    raw = _read(path)
    bom = len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0
    try:
        return raw[bom:].decode("utf-8")
    except UnicodeDecodeError as e:
        at = bom + e.start
        line = raw.count(b"\n", 0, at) + 1
        raise _Unreadable(f"not UTF-8 at byte {at + 1}, line {line} (byte 0x{raw[at]:02x}): "
                          f"save it as UTF-8") from None


def _syntax_problem(name, text, e):
    msg = str(e)
    m = re.search(r" \(at (?:line (\d+), column (\d+)|end of document)\)$", msg)
    if not m:
        return Problem(name, None, None, f"TOML syntax error: {msg}")
    what = msg[: m.start()]
    if m.group(1):
        return Problem(name, int(m.group(1)), None,
                       f"TOML syntax error at column {m.group(2)}: {what}")
    return Problem(name, text.count("\n") + 1, None, f"TOML syntax error at end of file: {what}")


class _Context:
    def __init__(self, file, base, lines):
        self.file, self.base, self.lines = file, base, lines
        self.problems = []
        self.failed = set()  # key paths with a problem
        self._failed_under = set()  # ... and every prefix of them (has_failed in O(1))

    def line(self, path):
        for n in range(len(path), 0, -1):
            if path[:n] in self.lines:
                return self.lines[path[:n]]
        return None

    def problem(self, path, message):
        self.fail(path)
        self.problems.append(Problem(self.file, self.line(path), _dotted(path) or None, message))

    def fail(self, path):
        """Notes `path` as bad without a problem of its own (one said elsewhere)."""
        self.failed.add(path)
        self._failed_under.update(path[:n] for n in range(len(path) + 1))

    def has_failed(self, prefix):
        return prefix in self._failed_under

    def at(self, path, note=None):
        """'buses[0].de_pin (line 12)', to name the other side of a clash."""
        more = [f"line {self.line(path)}" if self.line(path) else None, note]
        more = ", ".join(m for m in more if m)
        return _dotted(path) + (f" ({more})" if more else "")


def _dotted(path):
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + _cut(part)
    return out


def _cut(v, quote="", most=QUOTE_CHARS):
    """str(v) in quotes for a message, cut to its first `most` characters if longer."""
    s = str(v)
    if len(s) <= most:
        return f"{quote}{s}{quote}"
    return f"{quote}{s[:most]}{quote}... ({len(s)} characters)"


def _found(v):
    """What a wrong value is, in TOML words: 'a string ("115200")'."""
    if isinstance(v, bool):
        return f"a boolean ({str(v).lower()})"
    for t, word in ((str, "a string"), (int, "an integer"), (float, "a float")):
        if isinstance(v, t):
            return f"{word} ({_toml(v) if t is str else _cut(repr(v))})"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, dict):
        return "a table"
    return f"a date/time ({v})"


def _expected(spec):
    kind = spec.kind
    if isinstance(kind, Many):
        return "an array of tables"
    if dataclasses.is_dataclass(kind):
        return "a table"
    if kind == "urls":
        return "an array of URL strings"
    return {int: "an integer"}.get(kind, "a string")


def _table(cls, data, path, ctx):
    """The valid keys of `data` as a dict (missing optional keys left out); problems to ctx."""
    if not isinstance(data, dict):
        ctx.problem(path, f"expected a table, found {_found(data)}")
        return None
    specs = _specs(cls)
    meant = set()  # keys suggested for a misspelt one: their absence is not reported again
    for name in data:
        if name not in specs:
            close = difflib.get_close_matches(name, specs, n=1)
            meant.update(close)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            ctx.problem(path + (name,),
                        f'unknown key {_toml(name)}{hint}; allowed here: {", ".join(specs)}')
    out = {}
    for name, f in specs.items():
        spec = f.metadata["spec"]
        if name in data:
            value = _value(spec, data[name], path + (name,), ctx)
            if value is not None:
                out[name] = value
        elif f.default is REQUIRED:
            if name in meant:
                ctx.fail(path + (name,))
            elif isinstance(spec.kind, Many):
                ctx.problem(path + (name,), f"at least {spec.kind.min} [[{name}]] table needed")
            elif dataclasses.is_dataclass(spec.kind):
                ctx.problem(path + (name,), f"required table [{name}] is missing")
            else:
                ctx.problem(path + (name,), f'required key "{name}" is missing '
                                            f"({_expected(spec)}: {spec.doc})")
    return out


def _value(spec, v, path, ctx):
    """The checked (and converted) value, or None after reporting what is wrong."""
    kind = spec.kind
    if isinstance(kind, Many):
        if not isinstance(v, list):
            return ctx.problem(path, f"expected an array of tables, found {_found(v)}")
        if len(v) < kind.min:
            return ctx.problem(path, f"at least {kind.min} [[{path[-1]}]] table needed")
        # An element that is not a table stays as {} so the others keep their index.
        return [_table(kind.table, item, path + (i,), ctx) or {} for i, item in enumerate(v)]
    if dataclasses.is_dataclass(kind):
        return _table(kind, v, path, ctx)
    if kind == "urls":
        if not isinstance(v, list) or not v:
            return ctx.problem(path, f"expected an array of one or more URL strings like "
                                     f'"mqtts://broker.example:8883", found {_found(v)}')
        urls = [_value(Spec("url"), u, path + (i,), ctx) for i, u in enumerate(v)]
        return tuple(urls) if None not in urls else None
    want = int if kind is int else str
    if not isinstance(v, want) or isinstance(v, bool):
        expected = _expected(spec)
        if spec.choices:
            expected += ", one of " + ", ".join(map(_toml, spec.choices))
        return ctx.problem(path, f"expected {expected}, found {_found(v)}")
    if spec.choices and v not in spec.choices:
        return ctx.problem(path, f"{_toml(v)} is not allowed; expected one of "
                                 + ", ".join(map(_toml, spec.choices)))
    if spec.lo is not None and not spec.lo <= v <= spec.hi:
        unit = {PINS: " (BCM GPIO numbers)",
                BUS_WINDOWS: " (a bus device keeps its window in 16 bits)"}
        unit = unit.get((spec.lo, spec.hi), "")
        return ctx.problem(path, f"{_cut(v)} is out of range {spec.lo}-{spec.hi}{unit}")
    try:
        return _CONVERT.get(kind, lambda v, ctx: v)(v, ctx)
    except ValueError as e:
        return ctx.problem(path, str(e))


def _toml(v):
    return _cut(v, '"') if isinstance(v, str) else _cut(v)


def _slug(v, ctx):
    if not re.fullmatch(SLUG, v):
        raise ValueError(f"{_toml(v)} is not a valid name: expected lower-case letters, digits "
                         f"and '-', starting with a letter or digit, at most 64 characters")
    return v


def _path(v, ctx):
    """The path `v` names: ~ expanded, relative to the config's folder."""
    if "\0" in v:
        raise ValueError(f"{_toml(v)}: a NUL character in a path")
    try:
        return ctx.base / Path(v).expanduser()
    except RuntimeError as e:  # ~user of no such user
        raise ValueError(f"{_toml(v)}: {e}") from None


def _file(v, ctx):
    p = _path(v, ctx)
    try:
        found = p.is_file()
    except OSError as e:  # a name too long
        raise ValueError(f"{_cut(p, most=PATH_CHARS)}: {e.strerror}") from None
    if not found:
        raise ValueError(f"file not found: {_cut(p, most=PATH_CHARS)}")
    return p


def _outbox_path(v, ctx):
    """The outbox file; the daemon makes its folder, and those above it, at start."""
    p = _path(v, ctx)
    try:
        if p.is_dir():
            raise ValueError(f"{_cut(p, most=PATH_CHARS)} is a folder; expected the outbox "
                             f"file in it, e.g. {_cut(p / 'outbox.sqlite', most=PATH_CHARS)}")
        for folder in p.parents:
            if folder.is_dir():
                break
            if os.path.lexists(folder):  # a file, or a link to nowhere
                what = "a broken link" if folder.is_symlink() else "a file"
                raise ValueError(f"{_cut(folder, most=PATH_CHARS)} is {what}, not a folder: "
                                 f"the outbox's folder cannot be made there")
    except OSError as e:  # a name too long
        raise ValueError(f"{_cut(p, most=PATH_CHARS)}: {e.strerror}") from None
    return p


def _broker(url, ctx):
    u = urllib.parse.urlsplit(url)
    quoted = _toml(url)
    if u.scheme in ("ws", "wss"):
        raise ValueError(f"{quoted}: MQTT over WebSockets is not supported by the gateway; "
                         "use the broker's TCP listener, mqtt:// or mqtts://")
    if u.scheme not in SCHEMES:
        raise ValueError(f'{quoted}: scheme {_toml(u.scheme)} is not allowed; expected one of '
                         + ", ".join(f"{s}://" for s in SCHEMES))
    try:
        port = u.port
    except ValueError:
        port = 0
    if port == 0:
        raise ValueError(f"{quoted}: bad port; expected a number 1-65535")
    port = port or SCHEMES[u.scheme]
    if not u.hostname:
        raise ValueError(f"{quoted}: no host; expected e.g. {u.scheme}://broker.example")
    if not re.fullmatch(HOST, u.hostname):
        raise ValueError(f"{quoted}: host {_toml(u.hostname)} is not a host name or an IP "
                         f"address (letters, digits, '.' and '-'; an IPv6 address in [])")
    if u.username is not None or u.password is not None:
        raise ValueError(f"{quoted}: no credentials in the URL; use username and password_file")
    if u.query or u.fragment or u.path not in ("", "/"):
        raise ValueError(f"{quoted}: unexpected path or query; expected scheme://host[:port]")
    return Broker(url, u.scheme, u.hostname, port)


def _listen(v, ctx):
    """[http] listen: HOST:PORT with the address of an interface (or localhost)."""
    import ipaddress

    from hallgate.web import http_address  # standard library only

    try:
        host, port = http_address(v)
    except ValueError:
        raise ValueError(f"{_toml(v)}: expected HOST:PORT, e.g. \"127.0.0.1:8081\" (this "
                         f"machine only) or \"0.0.0.0:8081\" (every interface, with a token)"
                         ) from None
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{_toml(v)}: {_toml(host)} is not an IP address; listen takes "
                             f"the address of one of this machine's interfaces, e.g. "
                             f"127.0.0.1 (this machine only) or 0.0.0.0 (all)") from None
    if port == 0:
        raise ValueError(f"{_toml(v)}: port 0 would be a different port at every start; "
                         f"give one, e.g. 8081")
    return v


def _loopback(listen):
    """Whether `listen` (checked) is reachable from this machine only."""
    import ipaddress

    host = listen.rpartition(":")[0].strip("[]")
    return host == "localhost" or ipaddress.ip_address(host).is_loopback


_CONVERT = {
    "slug": _slug,
    "file": _file,
    "path": _outbox_path,
    "url": _broker,
    "listen": _listen,
}


def _build(cls, d):
    """The dataclass of a checked dict (nested tables too)."""
    kw = {}
    for name, value in d.items():
        kind = _specs(cls)[name].metadata["spec"].kind
        if isinstance(kind, Many):
            value = tuple(_build(kind.table, item) for item in value)
        elif dataclasses.is_dataclass(kind):
            value = _build(kind, value)
        kw[name] = value
    return cls(**kw)


# ---- checks across tables ------------------------------------------------------------------


def _cross_check(top, ctx):
    buses = top.get("buses") or []
    windows = top.get("windows") or []
    _check_mqtt(top.get("mqtt") or {}, ctx)
    _check_http(top.get("http") or {}, ctx)
    _unique(ctx, "bus name", [(("buses", i, "name"), b.get("name")) for i, b in enumerate(buses)])
    _unique(ctx, "port", [(("buses", i, "port"), b.get("port")) for i, b in enumerate(buses)])
    devices = [(("buses", i, "devices", j), d)
               for i, b in enumerate(buses) for j, d in enumerate(b.get("devices") or [])]
    for i, b in enumerate(buses):
        _unique(ctx, "address", [(("buses", i, "devices", j, "address"), d.get("address"))
                                 for j, d in enumerate(b.get("devices") or [])])
    _unique(ctx, "window number", [(("windows", j, "number"), w.get("number"))
                            for j, w in enumerate(windows)])
    _check_pins(buses, windows, ctx)

    for j, w in enumerate(windows):
        here = ("windows", j)
        for have, need in (("like_pin", "dislike_pin"), ("dislike_pin", "like_pin")):
            if have in w and need not in w and not ctx.has_failed(here + (need,)):
                ctx.problem(here + (need,), f"missing: {have} is set, and the like and dislike "
                                            f"buttons go together")
        for led, button in (("like_led_pin", "like_pin"), ("dislike_led_pin", "dislike_pin")):
            if led in w and button not in w and not ctx.has_failed(here + (button,)):
                ctx.problem(here + (led,), f"{led} is set but {button} is not; the LED "
                                           f"belongs to that button")

    # Windows and the devices serving them. What is already reported bad is left out, so that
    # one mistake (a window number of the wrong type) is not reported again as a device for an
    # undeclared window and a window with no device.
    panels = defaultdict(list)  # window -> key paths of its call panels
    for path, d in devices:
        if d.get("role") == "call-panel" and "window" in d:
            panels[d["window"]].append(path)
    for j, w in enumerate(windows):
        if w.get("panel") and "number" in w:
            panels[w["number"]].append(("windows", j, "panel"))
    for n, paths in panels.items():
        first, *more = sorted(paths, key=lambda p: ctx.line(p) or 0)
        for p in more:
            ctx.problem(p, f"window {n} already has a call panel: {ctx.at(first)}; "
                           f"one call panel per window")
    _check_vote_sources(devices, windows, ctx)

    if "windows" not in top or any("number" not in w for w in windows):
        return
    declared = sorted({w["number"] for w in windows})
    for path, d in devices:
        if "window" in d and d["window"] not in declared:
            ctx.problem(path + ("window",), f"window {d['window']} has no [[windows]] table; "
                                            f"windows declared: {_ranges(declared)}")
    bus_lists = [("buses",)] + [("buses", i) for i in range(len(buses))]
    bus_lists += [("buses", i, "devices") for i in range(len(buses))]
    if any(p in ctx.failed for p in bus_lists) or any("window" not in d for _, d in devices):
        return  # which windows the bus devices serve is not known
    served = {d["window"] for _, d in devices}
    for j, w in enumerate(windows):
        if w["number"] in served or "like_pin" in w or w.get("panel") is not None:
            continue
        if not ctx.has_failed(("windows", j)):
            ctx.problem(("windows", j), f"window {w['number']} has no device: no bus device "
                                        f"serves it, no like/dislike buttons, no [windows.panel]")


def _check_vote_sources(devices, windows, ctx):
    """A window's votes come from one source: its like / dislike pair on GPIO, or one
    feedback pad on a bus. Two would judge the same visitor's presses twice, and only one
    set of LEDs would say which vote counted."""
    pads = defaultdict(list)  # window -> key paths of its feedback pads
    for path, d in devices:
        if d.get("role") == "feedback-pad" and "window" in d:
            pads[d["window"]].append(path)
    gpio = {}  # window -> key path of its like (or dislike) pin
    for j, w in enumerate(windows):
        pin = next((k for k in ("like_pin", "dislike_pin") if k in w), None)
        if pin and "number" in w:
            gpio[w["number"]] = ("windows", j, pin)
    for n, paths in pads.items():
        first, *more = sorted(paths, key=lambda p: ctx.line(p) or 0)
        if n in gpio:
            more = [first, *more]
            first = gpio[n]
        what = ("has like / dislike buttons on GPIO" if first[0] == "windows"
                else "already has a feedback pad")
        for p in more:
            ctx.problem(p, f"window {n} {what}: {ctx.at(first)}; a window's votes come "
                           f"from one source: its like_pin / dislike_pin or one feedback-pad")


def _check_mqtt(m, ctx):
    def fail(k, msg):
        if not ctx.has_failed(("mqtt", k)):
            ctx.problem(("mqtt", k), msg)

    if "password" in m and "password_file" in m:
        fail("password", "give password or password_file, not both")
    if ("password" in m or "password_file" in m) and "username" not in m:
        fail("username", "missing: a password needs a username")
    if "cert_file" in m and "key_file" not in m:
        fail("key_file", "missing: a client certificate (cert_file) needs its private key")
    if "key_file" in m and "cert_file" not in m:
        fail("cert_file", "missing: a private key (key_file) needs its client certificate")
    tls_files = [k for k in ("ca_file", "cert_file", "key_file") if k in m]
    if tls_files and "urls" in m and not any(b.tls for b in m["urls"]):
        fail(tls_files[0], f"{tls_files[0]} is set but no URL uses TLS (mqtts://)")
    _check_files(m, fail)


def _check_http(h, ctx):
    """The technician's page: a token off loopback, one token, and one worth having."""
    def fail(k, msg):
        if not ctx.has_failed(("http", k)):
            ctx.problem(("http", k), msg)

    given = [k for k in ("token", "token_file") if k in h]
    if len(given) == 2:
        fail("token", "give token or token_file, not both")
    if given and "listen" not in h and not ctx.has_failed(("http", "listen")):
        fail(given[0], f"{given[0]} is set but listen is not: no page is served")
    tried = [k for k in ("token", "token_file") if ctx.has_failed(("http", k))]
    if "listen" in h and not given and not tried and not _loopback(h["listen"]):
        fail("listen", f"{_toml(h['listen'])} is reachable from other machines: the page "
                       f"then needs a token (token_file = \"/etc/hallgate/page.token\", or "
                       f"token = \"...\"), or listen on 127.0.0.1 (this machine only)")
    for k in given:
        if ctx.has_failed(("http", k)):
            continue
        try:
            token = h[k] if k == "token" else _read_text(h[k]).rstrip("\r\n")
        except _Unreadable as e:
            fail(k, f"{_cut(h[k], most=PATH_CHARS)}: {e}")
            continue
        where = "" if k == "token" else f"{_cut(h[k], most=PATH_CHARS)}: "
        if len(token) < TOKEN_MIN:
            fail(k, f"{where}the token is {len(token)} characters; at least {TOKEN_MIN} "
                    f"(make one: python3 -c 'import secrets; print(secrets.token_urlsafe(24))')")
        elif not token.isprintable():
            fail(k, f"{where}the token has a control character (a tab, a line break inside "
                    f"it): printable characters only")


def _check_files(m, fail):
    """What `hallgate run` reads at start: the password file in UTF-8; the TLS files in PEM,
    CA certificates, and a client certificate with its unencrypted private key (these two
    are checked together, once both are given)."""
    if "password_file" in m:
        try:
            _read_text(m["password_file"])
        except _Unreadable as e:
            fail("password_file", f"{_cut(m['password_file'], most=PATH_CHARS)}: {e}")
    if not {"ca_file", "cert_file", "key_file"} & m.keys():
        return
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    def load(k, loader, what):
        """loader(the file's bytes), or None after reporting why not."""
        where = _cut(m[k], most=PATH_CHARS)
        try:
            return loader(_read(m[k]))
        except _Unreadable as e:
            fail(k, f"{where}: {e}")
        except (ValueError, UnsupportedAlgorithm):
            fail(k, f"{where}: it is not {what}")
        except TypeError:  # load_pem_private_key: it needs a password
            fail(k, f"{where}: the private key is encrypted; the gateway needs it "
                    f"unencrypted (openssl pkey -in KEY -out KEY.plain)")

    if "ca_file" in m:
        load("ca_file", x509.load_pem_x509_certificates,
             "PEM certificates (-----BEGIN CERTIFICATE-----)")
    if "cert_file" not in m or "key_file" not in m:
        return
    certs = load("cert_file", x509.load_pem_x509_certificates,
                 "a PEM certificate (-----BEGIN CERTIFICATE-----)")
    key = load("key_file", lambda raw: serialization.load_pem_private_key(raw, None),
               "a PEM private key (-----BEGIN PRIVATE KEY-----)")
    if certs and key:
        der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if certs[0].public_key().public_bytes(*der) != key.public_key().public_bytes(*der):
            fail("key_file", f"{_cut(m['key_file'], most=PATH_CHARS)} is not the private key "
                             f"of cert_file {_cut(m['cert_file'], most=PATH_CHARS)}")


def _unique(ctx, what, uses):
    """Reports every later use (in file order) of a value an earlier use already has.

    uses: (key path, value) or (key path, value, note), the note saying more of that use.
    """
    first = {}
    for path, value, *note in sorted(uses, key=lambda u: ctx.line(u[0]) or 0):
        if value is None:
            continue
        if value not in first:
            first[value] = (path, note)
            continue
        other, other_note = first[value]
        mine = f" ({note[0]})" if note else ""
        ctx.problem(path, f"{what} {_toml(value)}{mine} is already used by "
                          f"{ctx.at(other, *other_note)}")


def _check_pins(buses, windows, ctx):
    uses = []
    for i, b in enumerate(buses):
        uses.append((("buses", i, "de_pin"), b.get("de_pin")))
        if b.get("port") in PRIMARY_UART:
            uses += [(("buses", i, "port"), p, f"UART {fn} of {b['port']}") for p, fn in UART_PINS]
    for j, w in enumerate(windows):
        uses += [(("windows", j, k), v) for k, v in w.items() if k.endswith("_pin")]
        uses += [(("windows", j, "panel", k), v) for k, v in (w.get("panel") or {}).items()]
    _unique(ctx, "pin", uses)


def _ranges(numbers):
    """[1, 2, 3, 7] -> '1-3, 7'."""
    out = []
    for n in numbers:
        if out and out[-1][1] == n - 1:
            out[-1][1] = n
        else:
            out.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in out) or "none"


# ---- where each key is: {key path: line} from the raw text ---------------------------------


def _key_lines(text):
    """{path: line} for every table header, key and array element of a valid TOML text.

    A path is a tuple like ("buses", 0, "devices", 2, "address"); array-of-tables elements
    are numbered by their occurrence. Best effort: on anything unexpected it returns what it
    found so far (lines are a help in messages, never a condition for them).
    """
    s = _Scanner(text)
    try:
        s.document()
    except (IndexError, ValueError, AttributeError):
        pass
    return s.lines


class _Scanner:
    BARE = re.compile(r"[A-Za-z0-9_-]+")

    def __init__(self, text):
        self.t, self.i, self.line = text, 0, 1
        self.lines = {}
        self.aot = {}  # array-of-tables path -> elements so far

    def peek(self, s):
        return self.t.startswith(s, self.i)

    def advance(self, n):
        self.line += self.t.count("\n", self.i, self.i + n)
        self.i += n

    def space(self, newlines=False):
        """Skips blanks (and newlines and comments if `newlines`)."""
        while self.i < len(self.t):
            c = self.t[self.i]
            if c in " \t\r" or (newlines and c == "\n"):
                self.advance(1)
            elif newlines and c == "#":
                end = self.t.find("\n", self.i)
                self.advance((end if end >= 0 else len(self.t)) - self.i)
            else:
                return

    def keys(self):
        """A dotted key -> tuple of its parts."""
        parts = []
        while True:
            self.space()
            if self.peek('"') or self.peek("'"):
                start = self.i
                self.string()
                parts.append(tomllib.loads("k = " + self.t[start : self.i])["k"])
            else:
                m = self.BARE.match(self.t, self.i)
                parts.append(m.group())
                self.advance(m.end() - self.i)
            self.space()
            if not self.peek("."):
                return tuple(parts)
            self.advance(1)

    def resolve(self, parts):
        """Header key parts -> path, an array of tables standing for its last element."""
        path = ()
        for part in parts:
            path += (part,)
            if path in self.aot:
                path += (self.aot[path] - 1,)
        return path

    def document(self):
        table = ()
        while True:
            self.space(newlines=True)
            if self.i >= len(self.t):
                return
            line = self.line
            if self.peek("[["):
                self.advance(2)
                parts = self.keys()
                self.advance(2)
                array = self.resolve(parts[:-1]) + parts[-1:]
                n = self.aot.get(array, 0)
                self.aot[array] = n + 1
                table = array + (n,)
                self.lines.setdefault(array, line)
            elif self.peek("["):
                self.advance(1)
                table = self.resolve(self.keys())
                self.advance(1)
            else:
                self.pair(table)
                continue
            self.lines[table] = line

    def pair(self, table):
        line = self.line
        parts = self.keys()
        self.advance(1)  # "="
        for n in range(1, len(parts) + 1):
            self.lines.setdefault(table + parts[:n], line)
        self.value(table + parts)

    def value(self, path):
        self.space()
        if self.peek("["):
            self.advance(1)
            n = 0
            while True:
                self.space(newlines=True)
                if self.peek("]"):
                    return self.advance(1)
                self.lines[path + (n,)] = self.line
                self.value(path + (n,))
                self.space(newlines=True)
                if self.peek(","):
                    self.advance(1)
                n += 1
        elif self.peek("{"):
            self.advance(1)
            while True:
                self.space()
                if self.peek("}"):
                    return self.advance(1)
                self.pair(path)
                self.space()
                if self.peek(","):
                    self.advance(1)
        elif self.peek('"') or self.peek("'"):
            self.string()
        else:  # number, boolean, date: up to the next delimiter
            m = re.compile(r"[^,\]}#\n]*").match(self.t, self.i)
            self.advance(m.end() - self.i)

    def string(self):
        q = self.t[self.i]
        if self.peek(q * 3):
            end = self.i + 3
            while True:
                end = self.t.index(q * 3, end)
                if q == "'" or not _escaped(self.t, end):
                    break
                end += 1
            while self.t.startswith(q, end + 3):  # up to two quotes may end the content
                end += 1
            return self.advance(end + 3 - self.i)
        end = self.i + 1
        while True:
            end = self.t.index(q, end)
            if q == "'" or not _escaped(self.t, end):
                return self.advance(end + 1 - self.i)
            end += 1


def _escaped(t, i):
    """Whether the character at i follows an odd run of backslashes."""
    n = 0
    while t[i - 1 - n] == "\\":
        n += 1
    return n % 2 == 1
