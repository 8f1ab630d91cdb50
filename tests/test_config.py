"""The hall config: broken configs rejected with the expected messages, the examples pass."""

import dataclasses
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from hallgate.gateway.config import (
    HEADER_PIN,
    ConfigError,
    GpioPanel,
    HallConfig,
    Problem,
    check_config,
    load_config,
)
from hallgate.gateway.config import _key_lines as key_lines
from hallgate.gateway.config import _specs as specs

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "tests" / "configs"
HARDWARE = ROOT / "hardware"
EXAMPLES = sorted(HARDWARE.glob("*.toml"))

BASE = """\
[gateway]
site = "test"
id = "gw-1"

[mqtt]
urls = ["mqtt://localhost:1883"]
"""
WINDOW = """
[[windows]]
number = 1
like_pin = 5
dislike_pin = 6
"""

# fixture -> every problem it must give: (key path, line, part of the message).
BROKEN = {
    "syntax-error.toml": [(None, 7, "TOML syntax error at column 18")],
    "unknown-key.toml": [
        ("buses[0].devices[0].adress", 12,
         'unknown key "adress" (did you mean "address"?); allowed here: address, role, window'),
    ],
    "wrong-type.toml": [
        ("mqtt.urls", 6, 'expected an array of one or more URL strings like "mqtts://'),
        ("buses[0].baud", 11, 'expected an integer, one of 9600, 19200, 38400, 57600, 115200, '
                              '230400, 460800, 921600, found a string ("115200")'),
        ("windows[0].dislike_pin", 16, "expected an integer, found a float (6.0)"),
    ],
    "out-of-range.toml": [
        ("buses[0].baud", 11, "14400 is not allowed; expected one of 9600, 19200"),
        ("buses[0].devices[0].address", 13, "300 is out of range 1-247"),
        ("windows[0].dislike_pin", 20, "28 is out of range 2-27 (BCM GPIO numbers)"),
    ],
    "duplicate-address.toml": [
        ("buses[0].devices[1].address", 16,
         "address 7 is already used by buses[0].devices[0].address (line 12)"),
    ],
    "duplicate-pin.toml": [
        ("windows[0].like_led_pin", 21, "pin 17 is already used by buses[0].de_pin (line 11)"),
        ("windows[0].dislike_led_pin", 22,
         "pin 14 is already used by buses[0].port (line 10, UART TXD of /dev/serial0)"),
    ],
    "window-without-device.toml": [
        ("windows[1]", 13, "window 2 has no device: no bus device serves it, no like/dislike "
                           "buttons, no [windows.panel]"),
    ],
    "undeclared-window.toml": [
        ("buses[0].devices[1].window", 13,
         "window 4 has no [[windows]] table; windows declared: 1"),
    ],
    "missing-key.toml": [
        ("gateway.id", 1, 'required key "id" is missing (a string: gateway id'),
        ("buses[0].port", 7, 'required key "port" is missing (a string: serial device'),
    ],
    "bad-url.toml": [
        ("mqtt.urls[1]", 8, '"http://broker-b.example": scheme "http" is not allowed; '
                            "expected one of mqtt://, mqtts://"),
        ("mqtt.urls[2]", 9, '"mqtt://:1883": no host'),
        ("mqtt.urls[3]", 10, '"mqtt://broker-c.example:99999": bad port; expected a number '
                             "1-65535"),
    ],
    "cert-without-key.toml": [
        ("mqtt.key_file", 5, "missing: a client certificate (cert_file) needs its private key"),
        ("mqtt.ca_file", 8, "file not found: " + str(CONFIGS / "files" / "no-such-ca.pem")),
    ],
    "two-call-panels.toml": [
        ("windows[0].panel", 26, "window 1 already has a call panel: buses[0].devices[0] "
                                 "(line 11); one call panel per window"),
    ],
    "many-problems.toml": [
        ("gateway.site", 3, '"Syzran Main" is not a valid name: expected lower-case letters'),
        ("mqtt.protocol", 8, '"5.0" is not allowed; expected one of "5", "3.1.1"'),
        ("mqtt.keepalive_s", 9, "2 is out of range 5-600"),
        ("timings.debounce", 12, 'unknown key "debounce" (did you mean "debounce_ms"?)'),
        ("buses[0].devices[0].window", 20, "window 3 has no [[windows]] table; windows "
                                           "declared: 1"),
        ("windows[0].dislike_pin", 22, "missing: like_pin is set, and the like and dislike "
                                       "buttons go together"),
        ("windows[1].number", 27, "window number 1 is already used by windows[0].number "
                                  "(line 23)"),
        ("windows[1].like_pin", 28, "pin 5 is already used by windows[0].like_pin (line 24)"),
    ],
}


def test_every_fixture_has_expectations():
    assert sorted(p.name for p in CONFIGS.glob("*.toml")) == sorted(BROKEN)


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_config_is_rejected_with_every_problem(name):
    path = CONFIGS / name
    with pytest.raises(ConfigError) as err:
        load_config(path)
    got = err.value.problems
    assert [(p.key, p.line) for p in got] == [(k, line) for k, line, _ in BROKEN[name]], (
        "\n".join(map(str, got)))
    for problem, (_, _, gist) in zip(got, BROKEN[name], strict=True):
        assert problem.file == str(path)
        assert gist in problem.message, str(problem)
    assert str(err.value).splitlines() == [str(p) for p in got]
    assert check_config(path) == got


def test_problem_line_format():
    p = Problem("hall.toml", 14, "buses[0].devices[2].address", "300 is out of range 1-247")
    assert str(p) == "hall.toml:14: buses[0].devices[2].address: 300 is out of range 1-247"
    assert str(Problem("hall.toml", None, "gateway", "required table [gateway] is missing")) == (
        "hall.toml: gateway: required table [gateway] is missing")
    p = Problem("hall.toml", 3, None, "TOML syntax error")
    assert str(p) == "hall.toml:3: TOML syntax error"


def check_text(tmp_path, text, name="hall.toml"):
    path = tmp_path / name
    path.write_text(text)
    return [(p.key, p.line, p.message) for p in check_config(path)]


@pytest.mark.parametrize(
    "text, key, line, gist",
    [
        ("[mqtt]\nurls = ['mqtt://h']\n" + WINDOW, "gateway", None,
         "required table [gateway] is missing"),
        ("windows = []\n" + BASE, "windows", 1, "at least 1 [[windows]] table needed"),
        (BASE, "windows", None, "at least 1 [[windows]] table needed"),
        ("buses = [1]\n" + BASE + WINDOW, "buses[0]", 1, "expected a table, found an integer (1)"),
        (BASE + "[gatway]\n" + WINDOW, "gatway", 7, 'unknown key "gatway" (did you mean '
                                                   '"gateway"?); allowed here: gateway, mqtt'),
        (BASE + "password = 'x'\n" + WINDOW, "mqtt.username", 5,
         "missing: a password needs a username"),
        (BASE + "username = 'u'\npassword = 'x'\npassword_file = 'hall.toml'\n" + WINDOW,
         "mqtt.password", 8, "give password or password_file, not both"),
        (BASE + "ca_file = 'hall.toml'\n" + WINDOW, "mqtt.ca_file", 7,
         "ca_file is set but no URL uses TLS (mqtts://)"),
        (BASE.replace("mqtt://localhost:1883", "mqtt://user:pw@localhost") + WINDOW,
         "mqtt.urls[0]", 6, "no credentials in the URL; use username and password_file"),
        (BASE.replace("mqtt://localhost:1883", "mqtt://localhost/x") + WINDOW,
         "mqtt.urls[0]", 6, "unexpected path or query; expected scheme://host[:port]"),
        (BASE.replace("mqtt://localhost:1883", "wss://localhost/mqtt") + WINDOW,
         "mqtt.urls[0]", 6, "MQTT over WebSockets is not supported by the gateway"),
        (BASE + WINDOW + "like_led_pin = 5\n", "windows[0].like_led_pin", 12,
         "pin 5 is already used by windows[0].like_pin (line 10)"),
        (BASE + WINDOW + "dislike_led_pin = 7\nlike_led_pin = 'x'\n", "windows[0].like_led_pin",
         13, 'expected an integer, found a string ("x")'),
        (BASE + "[[windows]]\nnumber = 1\npanel = { call = 20, led = 21 }\n",
         "windows[0].panel.led", 9, 'unknown key "led" (did you mean "led_pin"?)'),
        (BASE + "[[windows]]\nnumber = 1\n[windows.panel]\nrecall = 20\n",
         "windows[0].panel.call", 9, 'required key "call" is missing (an integer: call-next'),
    ],
)
def test_more_problems(tmp_path, text, key, line, gist):
    problems = check_text(tmp_path, text)
    assert len(problems) == 1, problems
    assert problems[0][:2] == (key, line)
    assert gist in problems[0][2]


def test_led_without_its_button(tmp_path):
    text = BASE + "[[windows]]\nnumber = 1\nlike_pin = 5\ndislike_pin = 6\n"
    text += "[[windows]]\nnumber = 2\ndislike_led_pin = 7\n[windows.panel]\ncall = 8\n"
    assert check_text(tmp_path, text) == [
        ("windows[1].dislike_led_pin", 13,
         "dislike_led_pin is set but dislike_pin is not; the LED belongs to that button")]


PAD_BUS = """
[[buses]]
name = "hall"
port = "/dev/ttyUSB0"

  [[buses.devices]]
  address = 41
  role = "feedback-pad"
  window = 2
"""


def test_a_feedback_pad_gives_a_window_its_votes(tmp_path):
    text = BASE + PAD_BUS + WINDOW + "\n[[windows]]\nnumber = 2\n"
    (tmp_path / "hall.toml").write_text(text)
    config = load_config(tmp_path / "hall.toml")
    [(bus, pad)] = config.bus_devices(window=2)
    assert (bus.name, pad.address, pad.role, pad.window) == ("hall", 41, "feedback-pad", 2)
    assert config.window(2).buttons == {} and config.window(2).leds == {}
    assert config.summary() == "2 windows, 1 bus devices, 2 GPIO buttons"


@pytest.mark.parametrize(
    "more, key, line, gist",
    [
        # window 1: like / dislike on GPIO, and a pad too
        ('  [[buses.devices]]\n  address = 42\n  role = "feedback-pad"\n  window = 1\n',
         "buses[0].devices[1]", 17,
         "window 1 has like / dislike buttons on GPIO: windows[0].like_pin (line 24); a "
         "window's votes come from one source: its like_pin / dislike_pin or one "
         "feedback-pad"),
        # window 2: two pads
        ('  [[buses.devices]]\n  address = 42\n  role = "feedback-pad"\n  window = 2\n',
         "buses[0].devices[1]", 17,
         "window 2 already has a feedback pad: buses[0].devices[0] (line 12); a window's "
         "votes come from one source"),
        # a pad for a window this gateway does not serve
        ('  [[buses.devices]]\n  address = 42\n  role = "feedback-pad"\n  window = 7\n',
         "buses[0].devices[1].window", 20,
         "window 7 has no [[windows]] table; windows declared: 1-2"),
        ('  [[buses.devices]]\n  address = 42\n  role = "feedback-panel"\n  window = 2\n',
         "buses[0].devices[1].role", 19,
         '"feedback-panel" is not allowed; expected one of "call-panel", "window-display", '
         '"feedback-pad"'),
    ],
)
def test_feedback_pad_problems(tmp_path, more, key, line, gist):
    text = BASE + PAD_BUS + "\n" + more + WINDOW + "\n[[windows]]\nnumber = 2\n"
    problems = check_text(tmp_path, text)
    assert len(problems) == 1, problems
    assert problems[0][:2] == (key, line), problems
    assert gist in problems[0][2], problems
    assert str(check_config(tmp_path / "hall.toml")[0]).startswith(
        f"{tmp_path / 'hall.toml'}:{line}: {key}: ")


def test_syntax_error_at_end_of_file_and_unreadable_files(tmp_path):
    assert check_text(tmp_path, BASE + 'x = "open') == [
        (None, 7, "TOML syntax error at end of file: Unterminated string")]
    (tmp_path / "latin1.toml").write_bytes(b'site = "\xe9"\n')
    for path in (tmp_path / "latin1.toml", tmp_path / "missing.toml"):
        [problem] = check_config(path)
        assert (problem.line, problem.key) == (None, None)
        assert problem.message.startswith("cannot read the file: ")


def test_a_misspelt_value_is_reported_once(tmp_path):
    """A window number of the wrong type is not reported again as 'no [[windows]] table'."""
    text = BASE + "[[buses]]\nname = 'hall'\nport = '/dev/ttyUSB0'\n"
    text += "devices = [{address = 1, role = 'call-panel', window = 1}]\n"
    text += "[[windows]]\nnumber = '1'\n"
    assert [p[0] for p in check_text(tmp_path, text)] == ["windows[0].number"]


def test_defaults_paths_and_brokers(tmp_path):
    (tmp_path / "pw").write_text("s3cret\n")
    text = BASE.replace('"mqtt://localhost:1883"',
                        '"mqtts://a.example", "mqtt://b.example", "mqtt://[::1]:9001"')
    text += 'username = "u"\npassword_file = "pw"\n[outbox]\npath = "state/outbox.sqlite"\n'
    text += WINDOW
    (tmp_path / "hall.toml").write_text(text)
    config = load_config(tmp_path / "hall.toml")
    a, b, c = config.mqtt.urls
    assert (a.host, a.port, a.tls) == ("a.example", 8883, True)
    assert (b.host, b.port, b.tls) == ("b.example", 1883, False)
    assert (c.host, c.port, c.tls) == ("::1", 9001, False)
    assert config.mqtt.protocol == "5" and config.mqtt.keepalive_s == 30
    assert config.mqtt.read_password() == "s3cret"
    assert config.outbox.path == tmp_path / "state" / "outbox.sqlite"
    assert config.outbox.max_events == 100_000
    assert config.timings.debounce_ms == 20 and config.timings.vote_window_s == 120
    assert config.buses == () and config.file == str(tmp_path / "hall.toml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.timings.debounce_ms = 5


def test_examples_pass_and_have_the_promised_shape():
    branch = load_config(HARDWARE / "branch-2-windows.toml")
    assert branch.summary() == "2 windows, 0 bus devices, 18 GPIO buttons"
    assert branch.window_numbers == (1, 2) and branch.buses == ()
    w1 = branch.window(1)
    assert set(w1.buttons) == {"like", "dislike", "call", "recall", "start", "finish",
                               "noshow", "pause", "resume"}
    assert set(w1.leds) == {"like_led", "dislike_led", "panel_led"}
    assert len(branch.gpio_pins()) == 24 and not {14, 15} & set(branch.gpio_pins())

    hall = load_config(HARDWARE / "hall-12-windows.toml")
    assert hall.summary() == "12 windows, 24 bus devices, 24 GPIO buttons"
    assert hall.window_numbers == tuple(range(1, 13))
    [bus] = hall.buses
    assert (bus.name, bus.baud, bus.de_pin) == ("hall", 115200, None)
    for n in hall.window_numbers:
        devices = {(d.role, d.address) for _, d in hall.bus_devices(n)}
        assert devices == {("call-panel", n), ("window-display", 100 + n)}
        assert set(hall.window(n).buttons) == {"like", "dislike"} and not hall.window(n).leds
    assert len(hall.gpio_pins()) == 24
    with pytest.raises(KeyError):
        hall.window(13)


def test_windows_are_sorted_by_number(tmp_path):
    text = BASE + WINDOW.replace("number = 1", "number = 9")
    text += WINDOW.replace("5", "7").replace("6", "8")
    (tmp_path / "hall.toml").write_text(text)
    config = load_config(tmp_path / "hall.toml")
    assert config.window_numbers == (1, 9)
    assert config.window(9).like_pin == 5


def toml_paths(value, path=()):
    """Every key path and array element of parsed TOML."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield path + (k,)
            yield from toml_paths(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield path + (i,)
            yield from toml_paths(v, path + (i,))


TRICKY = '''\
title = """a [[fake]] header
x = 1 inside a string"""   # comment with ] and [
"quoted.key" = 'it''s'
a.b . c = 1
[t]
arr = [
  1, # one
  [2, 3],
  { k = "v,}" },
]
lit = \'\'\'no \\escape\'\'\'
esc = "quote \\" [x] \\\\"
[[t.aot]]
n = 1
[t.aot.sub]
m = 2
[[t.aot]]
n = 2
'''


@pytest.mark.parametrize("name", [*sorted(BROKEN), *(p.name for p in EXAMPLES), "tricky"])
def test_key_lines_find_every_key(name):
    text = TRICKY if name == "tricky" else ((CONFIGS / name) if name in BROKEN
                                            else HARDWARE / name).read_text()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return
    lines = key_lines(text)
    text_lines = text.splitlines()
    for path in toml_paths(data):
        assert path in lines, path
        if isinstance(path[-1], str):  # a key: its line names it (or is its table's header)
            assert path[-1] in text_lines[lines[path] - 1] or path[-1] in ("sub",), path
    if name == "tricky":
        assert lines[("t", "aot", 1, "n")] == 19 and lines[("t", "aot", 0, "sub", "m")] == 17
        assert lines[("t", "arr", 2, "k")] == 9 and ("fake",) not in lines


def test_readme_documents_every_key():
    readme = (HARDWARE / "README.md").read_text()
    tables = [HallConfig]
    for table in tables:
        for name, f in specs(table).items():
            kind = f.metadata["spec"].kind
            nested = getattr(kind, "table", kind)
            if dataclasses.is_dataclass(nested):
                tables.append(nested)
            row = f"| `{name}` |" in readme
            heading = re.search(rf"^### `\[\[?([a-z]+\.)?{name}\]\]?`", readme, re.M)
            assert row or heading, f"{table.__name__}.{name} is not in the README"
    assert GpioPanel in tables


def test_readme_pinouts_match_the_examples():
    readme = (HARDWARE / "README.md").read_text()
    for example in EXAMPLES:
        section = readme.split(f"### `{example.name}`", 1)[1].split("\n#", 1)[0]
        rows = re.findall(r"^\| (\d+) \| (\d+) \| ([^|]+?) \|", section, re.M)
        pins = load_config(example).gpio_pins()
        assert sorted((int(h), int(b), f) for h, b, f in rows) == sorted(
            (HEADER_PIN[b], b, f) for b, f in pins.items()), example.name


def hallgate(*args):
    return subprocess.run([sys.executable, "-m", "hallgate.cli", *args],
                          capture_output=True, text=True, timeout=30)


def test_cli_config_check():
    for example in EXAMPLES:
        out = hallgate("config", "check", str(example))
        assert out.returncode == 0, out.stdout + out.stderr
        summary = load_config(example).summary()
        assert out.stdout == f"{example}: ok ({summary})\n"

    broken = CONFIGS / "many-problems.toml"
    out = hallgate("config", "check", str(broken))
    assert out.returncode == 1
    assert out.stdout.splitlines() == [str(p) for p in check_config(broken)]
    assert out.stdout.splitlines()[2] == f"{broken}:9: mqtt.keepalive_s: 2 is out of range 5-600"

    out = hallgate("config", "check", "--json", str(broken))
    assert out.returncode == 1
    report = json.loads(out.stdout)
    assert report["ok"] is False and len(report["problems"]) == len(BROKEN[broken.name])
    assert report["problems"][2] == {"file": str(broken), "line": 9, "key": "mqtt.keepalive_s",
                                     "message": "2 is out of range 5-600"}

    out = hallgate("config", "check", "--json", str(EXAMPLES[0]))
    assert (out.returncode, json.loads(out.stdout)) == (0, {"ok": True, "problems": []})


def test_docstring_examples(monkeypatch):
    import doctest

    import hallgate.gateway.config

    monkeypatch.chdir(ROOT)
    assert doctest.testmod(hallgate.gateway.config).failed == 0
