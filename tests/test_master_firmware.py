"""The real bus master driving the real firmware: MicroPython processes on one paced hub.

Three call panels and two window displays (sim/device.py runs firmware/main.py on the
MicroPython unix port, each on its own drop of the simulated line) and gateway/master.py
polling them at 115200 baud. What must hold: every press arrives once, in order per device;
displays and panels show what was set, also after a kill and restart; garbage on the line
costs no event; a dead device goes offline while the others keep being served; and a
correct master with correct firmware never collides on the line.
"""

import collections
import random
import threading
import time

import pytest
from conftest import wait_for
from hallgate.gateway.master import BusMaster
from hallgate.protocols import bus
from hallgate.sim.device import FirmwareDevice
from hallgate.sim.hub import BusHub

pytestmark = pytest.mark.micropython

BAUD = 115200
TIMEOUT = 0.2  # MicroPython processes on a loaded 2-core machine answer late at times
PANELS = {1: 1, 2: 2, 3: 3}  # address: window
DISPLAYS = {11: 1, 12: 2}
KEYS = ("call", "start", "finish", "recall", "pause", "resume", "redirect")  # noshow: long press


def in_parallel(fn, args_list, timeout=60):
    """fn(*args) for each args in its own thread; re-raises the first failure."""
    errors = []

    def run(args):
        try:
            fn(*args)
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(a,)) for a in args_list]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    if errors:
        raise errors[0]


class Hall:
    """The hub, the firmware processes and the master, with what the master passed up."""

    def __init__(self, tmp_path):
        self.hub = BusHub(baud=BAUD).start()
        self.paths = {}
        self.devices = {}
        self.events = collections.defaultdict(list)
        self.changes = []
        self.lock = threading.Lock()
        try:
            for addr, window in PANELS.items():
                self._device(tmp_path, addr, "call-panel", window)
            for addr, window in DISPLAYS.items():
                self._device(tmp_path, addr, "window-display", window)
        except Exception:
            self.close()
            raise
        self.master = BusMaster(
            self.hub.master_path,
            baudrate=BAUD,
            timeout=TIMEOUT,
            on_event=self.on_event,
            on_device=self.on_device,
            devices=self.devices,
        ).start()

    def _device(self, tmp_path, addr, role, window):
        path = self.paths[addr] = self.hub.add_port(f"{role}-{addr}")
        # lockout 0: the tests press the same key again at once
        self.devices[addr] = FirmwareDevice(
            tmp_path / f"dev{addr}", addr, role, window, path, lockout_ms=0, ready_timeout=30
        )

    def on_event(self, addr, ev):
        with self.lock:
            self.events[addr].append((ev.ident, ev.key_name))

    def on_device(self, addr, online, info):
        self.changes.append((addr, online))

    def taken(self, addr):
        with self.lock:
            return list(self.events[addr])

    def online(self, addr):
        return (self.master.device(addr) or {}).get("online", False)

    def wait_all_online(self):
        wait_for(lambda: all(self.online(a) for a in self.devices), what="all devices online")

    def press_in_turn(self, addr, keys):
        """Press keys one after another, each once the device counted the one before."""
        dev = self.devices[addr]
        for key in keys:
            mark = dev.mark()
            dev.press(key, hold_ms=60)
            dev.wait_kind("event", timeout=10, since=mark)
            time.sleep(0.1)  # let go first: a re-press within the debounce time is a bounce

    def restart(self, addr):
        dev = self.devices[addr]
        dev.kill()
        # What the hub delivered to the dead device is not for the new one (a board's UART
        # starts empty at power-up).
        self.hub.reset_port(self.paths[addr])
        dev.start(30)

    def close(self):
        if getattr(self, "master", None) is not None:
            self.master.close()
        for dev in self.devices.values():
            dev.close()
        self.hub.close()


@pytest.fixture
def hall(tmp_path):
    h = Hall(tmp_path)
    yield h
    h.close()


def test_presses_arrive_once_each_in_order_per_device(hall):
    hall.wait_all_online()
    plan = {a: [KEYS[(i + a) % len(KEYS)] for i in range(6)] for a in PANELS}
    in_parallel(hall.press_in_turn, plan.items())
    for addr in plan:
        wait_for(lambda a=addr: len(hall.taken(a)) >= 6, what=f"events of {addr}")
    time.sleep(0.3)  # a few more cycles: nothing may come twice
    for addr, keys in plan.items():
        taken = hall.taken(addr)
        boot = taken[0][0][0]
        assert taken == [((boot, seq), key) for seq, key in enumerate(keys, 1)]
    stats = hall.master.stats
    assert stats["events"] == 18
    assert hall.hub.stats.collisions == 0
    for addr in PANELS:
        assert hall.devices[addr].info()["queued"] == 0  # every event acked


def test_displays_and_panels_show_what_was_set(hall):
    hall.wait_all_online()
    display = bus.DisplayState("A042", blink_s=2, brightness=5)
    panel = bus.PanelState("B7", mode=1, queue=4, wait_s=95, tea=True)
    v11 = hall.master.set_state(11, display)
    v1 = hall.master.set_state(1, panel)
    wait_for(lambda: (hall.devices[11].shown() or {}).get("text") == "A042", what="display")
    wait_for(lambda: (hall.devices[1].shown() or {}).get("text") == "B7", what="panel")
    wait_for(lambda: hall.master.device(11)["applied"] == v11, what="display version")
    wait_for(lambda: hall.master.device(1)["applied"] == v1, what="panel version")
    assert hall.devices[11].shown()["brightness"] == 5
    shown = hall.devices[1].shown()
    assert (shown["mode"], shown["queue"], shown["wait_s"]) == ("called", 4, 95)
    # A new state replaces it; the other display was never touched.
    hall.master.set_state(11, bus.DisplayState("A043"))
    wait_for(lambda: hall.devices[11].shown()["text"] == "A043", what="second display state")
    assert hall.devices[12].shown()["version"] == 0
    assert hall.hub.stats.collisions == 0


def test_a_killed_and_restarted_device_gets_its_state_back(hall):
    hall.wait_all_online()
    state = bus.DisplayState("C300")
    version = hall.master.set_state(12, state)
    wait_for(lambda: (hall.devices[12].shown() or {}).get("text") == "C300", what="state")
    hall.press_in_turn(2, ["call"])
    wait_for(lambda: len(hall.taken(2)) == 1, what="event before the restart")
    boot_before = hall.taken(2)[0][0][0]

    hall.restart(12)
    hall.restart(2)
    # Both come back showing what they should, without anyone sending it again by hand.
    wait_for(lambda: (hall.devices[12].shown() or {}).get("text") == "C300", what="state back")
    assert hall.devices[12].shown()["version"] == version
    hall.press_in_turn(2, ["call"])  # seq 1 again, under a new boot: not a duplicate
    wait_for(lambda: len(hall.taken(2)) == 2, what="event after the restart")
    (boot_after, seq), _ = hall.taken(2)[1]
    assert seq == 1 and boot_after != boot_before
    assert hall.hub.stats.collisions == 0


def test_garbage_on_the_line_costs_no_event(hall):
    hall.wait_all_online()
    rng = random.Random(7)
    stop = threading.Event()

    def noise():
        while not stop.is_set():
            size = rng.randrange(1, 40)
            junk = bytes(rng.choice((0xA5, rng.randrange(256))) for _ in range(size))
            hall.hub.inject(junk)
            stop.wait(rng.uniform(0.1, 0.3))  # a bad cable, not a dead line

    noisy = threading.Thread(target=noise)
    noisy.start()
    try:
        plan = {a: ["call", "start", "finish", "call"] for a in PANELS}
        in_parallel(hall.press_in_turn, plan.items())
        for addr in PANELS:
            wait_for(lambda a=addr: len(hall.taken(a)) >= 4, what=f"events of {addr}")
    finally:
        stop.set()
        noisy.join(5)
    time.sleep(0.3)
    for addr, keys in plan.items():
        taken = hall.taken(addr)
        assert [seq for (_, seq), _ in taken] == [1, 2, 3, 4]
        assert [key for _, key in taken] == keys
    assert hall.hub.stats.noise_collisions > 0  # the noise did hit traffic
    assert hall.hub.stats.collisions == 0  # but the master and devices never talked at once


def test_a_dead_device_goes_offline_and_the_others_keep_being_polled(hall):
    hall.wait_all_online()
    hall.devices[3].kill()
    wait_for(lambda: not hall.online(3), what="device 3 offline")
    assert (3, False) in hall.changes
    before = hall.master.stats
    hall.press_in_turn(1, ["call", "start"])
    hall.master.set_state(11, bus.DisplayState("D1"))
    wait_for(lambda: len(hall.taken(1)) == 2, what="events of 1")
    wait_for(lambda: hall.devices[11].shown()["text"] == "D1", what="display set")
    wait_for(lambda: hall.master.stats["cycles"] >= before["cycles"] + 10, what="cycles")
    after = hall.master.stats
    # The dead device is probed at most once a cycle: one timeout per cycle at most.
    assert after["timeouts"] - before["timeouts"] <= after["cycles"] - before["cycles"] + 1
    assert all(hall.online(a) for a in hall.devices if a != 3)
    assert hall.hub.stats.collisions == 0
