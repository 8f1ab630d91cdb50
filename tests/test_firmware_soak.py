"""Memory: the real core and call-panel role on MicroPython within a 48 KB heap, pressing and
acking events in process (tests/mp/soak.py): no MemoryError, and the heap free after a
collection does not shrink from the first thousand events to the last."""

import json

import pytest
from conftest import FIRMWARE, PROTOCOLS, ROOT, run_micropython

SOAK = ROOT / "tests" / "mp" / "soak.py"
TOLERANCE = 256  # bytes: what a collection finds free varies by a block or two


def soak(events):
    from hallgate.sim.device import compile_firmware

    path = (compile_firmware(), FIRMWARE, PROTOCOLS)
    done = run_micropython(SOAK, events, heapsize="48k", path=path, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["events"] == events
    free = result["free"]
    assert len(free) == events // 1000
    assert free[-1] >= free[0] - TOLERANCE, free
    assert min(free) >= free[0] - TOLERANCE, free
    return free


@pytest.mark.micropython
def test_10000_events_in_48k_heap_do_not_leak():
    free = soak(10_000)
    assert free[0] > 8 * 1024  # headroom left with everything loaded


@pytest.mark.micropython
@pytest.mark.soak
def test_100000_events_in_48k_heap_do_not_leak():
    soak(100_000)
