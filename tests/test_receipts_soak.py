"""The receipt fault loops of tests/test_receipts_faults.py, long: HALLGATE_SOAK_CYCLES
cycles each (default 25), under `make soak` only. Each prints its counts (run with -s)."""

import os

import pytest
from test_receipts_faults import run_broker_kills_central_away, run_kills

pytestmark = [pytest.mark.soak, pytest.mark.micropython, pytest.mark.timeout(3600)]

CYCLES = int(os.environ.get("HALLGATE_SOAK_CYCLES", "25"))


def test_broker_sigkill_loop_with_the_central_away(tmp_path):
    counts = run_broker_kills_central_away(tmp_path, cycles=CYCLES, up=(0.3, 3.0),
                                           down=(0.05, 2.0))
    assert counts["made"] >= 4 * CYCLES


def test_central_sigkill_loop(tmp_path):
    counts = run_kills(tmp_path, "central", cycles=CYCLES, up=(0.3, 3.0), down=(0.05, 2.0))
    assert counts["made"] >= 4 * CYCLES


def test_gateway_sigkill_loop_with_receipts(tmp_path):
    counts = run_kills(tmp_path, "gateway", cycles=CYCLES, up=(0.3, 3.0), down=(0.05, 1.5))
    assert counts["made"] >= 4 * CYCLES
