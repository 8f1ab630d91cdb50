"""The fault runs of tests/test_faults.py, long: many cycles each (minutes), under
`make soak` only. HALLGATE_SOAK_CYCLES sets the cycles (default 25), HALLGATE_TEST_SEED the
seed. Each prints its counts line (run with -s to see it).

Also the gateway SIGKILL loop with the same counting: tests/test_daemon_kill.py kills it a
few times in a stream of 1,025 presses; here it is killed CYCLES times, each recovery timed.
"""

import os
import random
import time

import pytest
from hallgate.sim.faults import Tally
from test_faults import (
    Hall,
    Operators,
    run_broker_kills,
    run_bus_noise,
    run_disk_full,
    run_network_cuts,
    run_unplugs,
    seed,
)

pytestmark = [pytest.mark.soak, pytest.mark.micropython, pytest.mark.timeout(3600)]

CYCLES = int(os.environ.get("HALLGATE_SOAK_CYCLES", "25"))


def test_gateway_sigkill_loop(tmp_path):
    rng = random.Random(seed())
    hall = Hall(tmp_path, panels=(1, 2, 3))
    tally = Tally("gateway-sigkill")
    try:
        hall.start()
        ops = Operators(hall.devices).start()
        for _ in range(CYCLES):
            time.sleep(rng.uniform(0.5, 3.0))
            hall.daemon.kill()
            time.sleep(rng.uniform(0.05, 1.5))
            hall.daemon.start()
            made = hall.take(tally)
            tally.recovered(hall.arrived(made), 120)
        hall.finish(tally, ops)
        assert hall.daemon.starts == CYCLES + 1
        assert hall.daemon.terminate() == 0, hall.daemon.log()
    finally:
        hall.close()


def test_broker_kill_and_restart_loop(tmp_path):
    run_broker_kills(tmp_path, cycles=CYCLES, down=(0.1, 4.0), up=(0.5, 4.0))


def test_network_cut_and_partition_loop(tmp_path):
    # every 3rd cycle a partition (connections held, nothing flows), up to 12 s: longer
    # than the gateway's keepalive grace for some of them
    run_network_cuts(tmp_path, cycles=CYCLES, down=(0.5, 12.0), up=(0.5, 3.0), hold_every=3)


def test_bus_noise_loop(tmp_path):
    run_bus_noise(tmp_path, cycles=CYCLES, rate=0.1, burst_every_s=0.05, noisy=(2.0, 6.0))


def test_device_unplug_and_power_cycle_loop(tmp_path):
    run_unplugs(tmp_path, cycles=CYCLES, down=(0.5, 4.0))


def test_outbox_disk_full_loop(tmp_path):
    run_disk_full(tmp_path, cycles=CYCLES, full=(1.0, 5.0))
