"""Nothing lost: SIGKILL the gateway daemon at random moments and restart the broker while
1,000+ presses stream from real firmware devices; the witness must see every press.

Each press is identified at its source by (device address, boot, seq), which the firmware
reports on its control channel when it queues the event. The witness (an independent MQTT
client with a persistent session) must receive an event for every one of them; an event
received twice must carry the same id (a redelivery), never a new one.
"""

import os
import random
import threading
import time

import pytest
from conftest import wait_for
from hallgate.sim.broker import Mosquitto
from hallgate.sim.device import FirmwareDevice
from hallgate.sim.hub import BusHub
from harness import Daemon, Witness, write_hall_config

pytestmark = pytest.mark.micropython

SITE, GW = "kill-site", "gw-k"
PANELS = (1, 2, 3, 4, 5)
PRESSES_PER_PANEL = 205  # 1,025 in all
KEYS = ("call", "start", "finish", "recall", "pause", "resume", "redirect")


def test_sigkill_and_broker_restarts_lose_no_press(tmp_path):
    rng = random.Random(int(os.environ.get("HALLGATE_TEST_SEED", "7")))
    broker = Mosquitto(tmp_path / "broker").start()
    hub = BusHub(baud=115200).start()
    devices, witness, daemon = {}, None, None
    try:
        for addr in PANELS:
            # queue_len 64: presses go on while the gateway is dead; nothing may overflow
            devices[addr] = FirmwareDevice(tmp_path / f"p{addr}", addr, "call-panel", addr,
                                           hub.add_port(f"p{addr}"), ready_timeout=30,
                                           lockout_ms=0, queue_len=64)
        witness = Witness(broker.port, topics=[f"hall/v1/{SITE}/window/+/event"])
        config = write_hall_config(
            tmp_path, site=SITE, gateway=GW, broker_url=broker.url, hub_path=hub.master_path,
            devices=[(a, "call-panel", a) for a in PANELS],
            windows="".join(f"[[windows]]\nnumber = {a}\n" for a in PANELS))
        daemon = Daemon(tmp_path, config)
        daemon.start()

        made = set()
        made_lock = threading.Lock()
        errors = []

        def operator(addr):
            dev = devices[addr]
            try:
                for i in range(PRESSES_PER_PANEL):
                    mark = dev.mark()
                    dev.press(KEYS[i % len(KEYS)], hold_ms=100)
                    ev = dev.wait_kind("event", timeout=10, since=mark)
                    with made_lock:
                        made.add((addr, dev.ready["boot"], ev["seq"]))
                    time.sleep(0.05)
            except Exception as e:  # noqa: BLE001 - handed to the test thread
                errors.append((addr, e))

        threads = [threading.Thread(target=operator, args=(a,)) for a in PANELS]
        for t in threads:
            t.start()

        # The faults, at random moments while the presses stream.
        faults = ["kill", "broker", "kill", "broker", "kill"]
        for fault in faults:
            time.sleep(rng.uniform(1.5, 3.0))
            if fault == "kill":
                daemon.kill()
                time.sleep(rng.uniform(0.1, 1.0))
                daemon.start()
            else:
                broker.restart()
        for t in threads:
            t.join(120)
        assert not errors, errors
        assert len(made) == len(PANELS) * PRESSES_PER_PANEL

        wait_for(lambda: made <= set(witness.sources()), timeout=90,
                 what="every press at the witness")
        events = witness.events()
        by_source = witness.sources()
        assert set(by_source) == made  # nothing lost, nothing invented
        assert all(len(ids) == 1 for ids in by_source.values()), "a press got two ids"
        for addr, dev in devices.items():
            assert dev.info()["overflows"] == 0, f"device {addr} dropped presses"
        duplicates = len(events) - len(by_source)
        print(f"{len(made)} presses, {len(events)} deliveries ({duplicates} redelivered), "
              f"{daemon.starts} gateway starts, {broker.starts} broker starts")
        assert daemon.starts == 4 and broker.starts == 3
        assert daemon.terminate() == 0  # and a clean stop at the end
    finally:
        if daemon is not None:
            daemon.close()
        if witness is not None:
            witness.close()
        for d in devices.values():
            d.close()
        hub.close()
        broker.stop()
