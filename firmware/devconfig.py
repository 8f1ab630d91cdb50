# The device config: a small JSON file (config.json on the board's flash).
#
# Every field is checked at start, and a bad one stops the device with a message naming
# the field, what was expected and what was found: a technician reads it on the USB
# console (or the simulator on stderr) instead of guessing why a display stays dark.
# Unknown fields are errors too, so a misspelt "lockout_ms" is not silently ignored.

import json
import sys

import bus

# Board pins a HAL may use, by name (values are GPIO numbers); keys by their key names.
KEY_NAMES = bus.KEYS + bus.VOTE_KEYS
PIN_NAMES = ("tx", "rx", "sck", "mosi", "cs", "led", "buzzer", "like_led", "dislike_led")
PIN_NAMES += KEY_NAMES

# Integer fields: name -> (default, lowest, highest); a default of None means required.
_INTS = {
    "address": (None, 1, bus.MAX_ADDRESS),
    "window": (None, 0, 0xFFFF),
    "baud": (115200, 1200, 3000000),
    "uart_id": (0, 0, 9),
    "de_pin": (2, 0, 47),
    "spi_id": (0, 0, 9),
    "debounce_ms": (20, 1, 500),
    "lockout_ms": (1000, 0, 60000),  # 0 on a feedback pad, see check()
    "long_ms": (800, 100, 10000),
    "queue_len": (32, 1, 1000),
    "brightness": (8, 0, 15),
    "digits": (0, 0, 8),  # 0: the role's default (8 display, 4 panel, none on a pad)
    "rotate_ms": (3000, 500, 60000),
    # 0: off (a new image's trial on a board still gets one, see devmain); else at least
    # 1 s, at most the RP2040's longest (8388 ms). Off by default on the unix port, see check
    "watchdog_ms": (8000, 0, 8388),
}
_OTHERS = ("role", "uart", "pins", "long_keys", "idle_text", "state_file")


class ConfigError(ValueError):
    pass


def _fail(name, what, value):
    raise ConfigError("config field %r: expected %s, got %r" % (name, what, value))


def load(path):
    """Read and check the config file; returns a dict with every field filled in."""
    try:
        with open(path) as f:
            raw = json.load(f)
    except OSError as e:
        raise ConfigError("config file %s cannot be read: %s" % (path, e))
    except ValueError as e:
        raise ConfigError("config file %s is not valid JSON: %s" % (path, e))
    slash = path.rfind("/")
    return check(raw, path[: slash + 1] + "state.json")


def check(raw, state_file="state.json"):
    """Check a config dict; returns a new dict with defaults filled in."""
    if not isinstance(raw, dict):
        raise ConfigError("config must be a JSON object, got %r" % (raw,))
    for name in raw:
        if name not in _INTS and name not in _OTHERS:
            raise ConfigError("config field %r is unknown" % (name,))
    role = raw.get("role")
    if role not in bus.ROLES:
        _fail("role", "one of %s" % ", ".join(bus.ROLES), role)
    cfg = {"role": role}
    for name in _INTS:
        default, low, high = _INTS[name]
        if name == "lockout_ms" and role == "feedback-pad":
            # A pad passes every press on: the gateway keeps a too-fast one as misuse,
            # as it does for its GPIO buttons; a lockout here would hide it.
            default = 0
        if name == "watchdog_ms" and sys.platform != "rp2":
            # The unix port's watchdog is an emulation for tests (a thread, hal_unix.py):
            # ~400 bytes of the test heap that a Pico's hardware one does not take from
            # its heap, and that an update over the bus needs. On when configured.
            default = 0
        value = raw.get(name, default)
        if value is None:
            raise ConfigError("config field %r is required" % name)
        # bool is an int subclass: `true` is not a baud rate
        if type(value) is not int or not low <= value <= high:
            _fail(name, "an integer %d-%d" % (low, high), value)
        if name == "watchdog_ms" and 0 < value < 1000:
            _fail(name, "0 (off) or an integer 1000-8388", value)
        cfg[name] = value

    if not cfg["digits"] and role != "feedback-pad":
        cfg["digits"] = 8 if role == "window-display" else 4

    uart = raw.get("uart")
    if uart is not None and not (isinstance(uart, str) and uart):
        _fail("uart", "a serial device path", uart)
    cfg["uart"] = uart

    pins = raw.get("pins", {})
    if not isinstance(pins, dict):
        _fail("pins", "an object of pin name: GPIO number", pins)
    for name in pins:
        if name not in PIN_NAMES:
            _fail("pins", "pin names from %s" % ", ".join(PIN_NAMES), name)
        if type(pins[name]) is not int or not 0 <= pins[name] <= 47:
            _fail("pins", "GPIO numbers 0-47 (pin %s)" % name, pins[name])
    cfg["pins"] = pins

    long_keys = raw.get("long_keys", ["noshow"])
    if not isinstance(long_keys, list):
        _fail("long_keys", "a list of key names", long_keys)
    for key in long_keys:
        if key not in KEY_NAMES:
            _fail("long_keys", "key names from %s" % ", ".join(KEY_NAMES), key)
    cfg["long_keys"] = long_keys

    idle = raw.get("idle_text", "----")
    printable = isinstance(idle, str) and all(" " <= c <= "~" for c in idle)
    if not printable or len(idle) > bus.TEXT_MAX:
        _fail("idle_text", "printable ASCII text of at most %d characters" % bus.TEXT_MAX, idle)
    cfg["idle_text"] = idle

    state_file = raw.get("state_file", state_file)
    if not isinstance(state_file, str) or not state_file:
        _fail("state_file", "a file path", state_file)
    cfg["state_file"] = state_file
    # The board's other small files go beside it (devlog.py): state.log, state.rst, state.id
    cfg["files"] = state_file[:-5] if state_file.endswith(".json") else state_file
    return cfg
