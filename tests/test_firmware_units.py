"""Firmware parts without a process: the keypad and event-queue cases in tests/mp/ run one
by one on CPython and as scripts on the MicroPython interpreter; hal_rp2 runs on MicroPython
against a fake `machine`; config, boot counter and 7-segment font are checked on CPython."""

import importlib
import sys

import pytest
from conftest import FIRMWARE, PROTOCOLS, ROOT, run_micropython
from hallgate.protocols import bus

MP_TESTS = ROOT / "tests" / "mp"
for path in (FIRMWARE, MP_TESTS):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

check_keypad = importlib.import_module("check_keypad")
check_eventqueue = importlib.import_module("check_eventqueue")


def image():
    """MicroPython path: the compiled board image first (as the device runs), sources after."""
    from hallgate.sim.device import compile_firmware

    return (compile_firmware(), FIRMWARE, PROTOCOLS)


@pytest.mark.parametrize("case", check_keypad.CASES, ids=lambda c: c.__name__[5:])
def test_keypad_on_cpython(case):
    case()


@pytest.mark.parametrize("case", check_eventqueue.CASES, ids=lambda c: c.__name__[5:])
def test_eventqueue_on_cpython(case):
    case()


@pytest.mark.micropython
@pytest.mark.parametrize(
    "script, cases",
    [("check_keypad.py", check_keypad.CASES), ("check_eventqueue.py", check_eventqueue.CASES)],
)
def test_cases_on_micropython(script, cases):
    done = run_micropython(MP_TESTS / script, path=image(), timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith(f"{len(cases)} cases ok"), done.stdout


@pytest.mark.micropython
def test_hal_rp2_against_a_fake_machine_module():
    fake = MP_TESTS / "fake"
    done = run_micropython(MP_TESTS / "check_hal_rp2.py", path=(fake, *image()), timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith("cases ok"), done.stdout


@pytest.mark.micropython
def test_device_log_on_micropython(tmp_path):
    done = run_micropython(MP_TESTS / "check_devlog.py", tmp_path, path=image(), heapsize="64k",
                           timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith("devlog: 4 cases ok"), done.stdout


# ---- start-up parts, on CPython ------------------------------------------------------
# devconfig imports the codec as `bus`, as on a board: give it the package's module.

sys.modules.setdefault("bus", bus)
devconfig = importlib.import_module("devconfig")
bootcount = importlib.import_module("bootcount")
max7219 = importlib.import_module("max7219")

BASE = {"address": 3, "role": "call-panel", "window": 2}


def test_config_defaults():
    cfg = devconfig.check(dict(BASE), "/flash/state.json")
    assert cfg["debounce_ms"] == 20 and cfg["lockout_ms"] == 1000 and cfg["long_ms"] == 800
    assert cfg["long_keys"] == ["noshow"] and cfg["queue_len"] == 32
    assert cfg["digits"] == 4 and cfg["state_file"] == "/flash/state.json"
    assert devconfig.check(dict(BASE, role="window-display"))["digits"] == 8
    # the watchdog (8 s on a board; the unix port's emulation when asked for), and where
    # the device log's files go: beside the state file
    assert cfg["watchdog_ms"] == (8000 if sys.platform == "rp2" else 0)
    assert cfg["files"] == "/flash/state"
    assert devconfig.check(dict(BASE, watchdog_ms=8000))["watchdog_ms"] == 8000
    devconfig.sys = type("rp2", (), {"platform": "rp2"})  # as on a Pico
    try:
        assert devconfig.check(dict(BASE))["watchdog_ms"] == 8000
        assert devconfig.check(dict(BASE, watchdog_ms=0))["watchdog_ms"] == 0  # off
    finally:
        devconfig.sys = sys
    assert devconfig.check(dict(BASE, state_file="/x/dev-5"))["files"] == "/x/dev-5"


@pytest.mark.parametrize(
    "change, field",
    [
        ({"address": 0}, "address"),
        ({"address": True}, "address"),
        ({"window": "7"}, "window"),
        ({"role": None}, "role"),
        ({"baud": 12}, "baud"),
        ({"pins": {"call": 99}}, "pins"),
        ({"pins": {"bell": 3}}, "pins"),
        ({"long_keys": "noshow"}, "long_keys"),
        ({"idle_text": "\x00"}, "idle_text"),
        ({"idle_text": "123456789"}, "idle_text"),
        ({"queue_len": 0}, "queue_len"),
        ({"debounce": 20}, "debounce"),
        ({"watchdog_ms": 500}, "watchdog_ms"),  # 0 (off), or 1000-8388
        ({"watchdog_ms": 9000}, "watchdog_ms"),  # over the RP2040's longest
        ({"watchdog_ms": True}, "watchdog_ms"),
        ({"files": "x"}, "files"),  # derived, not a field
    ],
)
def test_config_errors_name_the_field(change, field):
    raw = dict(BASE)
    raw.update(change)
    for name, value in change.items():
        if value is None:
            del raw[name]
    with pytest.raises(devconfig.ConfigError, match=f"'{field}'"):
        devconfig.check(raw)


def test_config_file_errors(tmp_path):
    with pytest.raises(devconfig.ConfigError, match="cannot be read"):
        devconfig.load(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{address: 1")
    with pytest.raises(devconfig.ConfigError, match="not valid JSON"):
        devconfig.load(str(bad))
    good = tmp_path / "good.json"
    good.write_text('{"address": 1, "role": "window-display", "window": 1}')
    assert devconfig.load(str(good))["state_file"] == str(tmp_path / "state.json")


def test_example_configs_are_valid():
    for path in sorted(FIRMWARE.glob("example-*.json")):
        cfg = devconfig.load(str(path))
        assert path.name == f"example-{cfg['role']}.json"


def test_boot_counter_counts_and_falls_back_to_a_random_byte(tmp_path):
    path = str(tmp_path / "state.json")
    assert bootcount.next_boot(path) == (1, True)
    assert bootcount.next_boot(path) == (2, True)
    (tmp_path / "state.json").write_text("garbage")
    count, persisted = bootcount.next_boot(path)
    assert persisted and 1 <= count <= 256  # unreadable: restarts from a random value
    count, persisted = bootcount.next_boot(str(tmp_path / "no" / "such" / "dir.json"))
    assert not persisted and 0 <= count <= 255


def test_seven_segment_font_and_layout():
    out = bytearray(4)
    assert bytes(max7219.segments("A012", out)) == bytes([0x77, 0x7E, 0x30, 0x6D])
    assert bytes(max7219.segments("q 12", out)) == bytes([0x73, 0x00, 0x30, 0x6D])
    assert bytes(max7219.segments("tEA", out)) == bytes([0x0F, 0x4F, 0x77, 0x00])
    assert bytes(max7219.segments("8.8.8.8.", out)) == bytes([0xFF] * 4)
    assert bytes(max7219.segments("a-b_", out)) == bytes([0x77, 0x01, 0x1F, 0x08])
    assert bytes(max7219.segments("123456", out)) == bytes([0x30, 0x6D, 0x79, 0x33])  # cut
    assert bytes(max7219.segments(".?", out)) == bytes([0x80, 0x00, 0x00, 0x00])
