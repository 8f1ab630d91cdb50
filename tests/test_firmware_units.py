"""Firmware logic on both interpreters: the keypad and the event queue cases in tests/mp/
run one by one on CPython, and as scripts on the MicroPython interpreter."""

import importlib
import sys

import pytest
from conftest import FIRMWARE, PROTOCOLS, ROOT, run_micropython

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
