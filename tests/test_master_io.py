"""The bus master's I/O loop over the simulated line, against stand-in devices.

The `Responder` below is a tiny device written with the same codec, kept in this test file
only (never in the package): it exercises the loop's I/O (timeouts, echo, foreign replies,
garbage, the thread) while the firmware is being written. The integration tests with the real
firmware on MicroPython (test_master_firmware.py) replace it as the proof of the protocol.
"""

import collections
import os
import select
import threading
import time

import pytest
from conftest import wait_for
from hallgate.gateway.master import BusMaster
from hallgate.protocols import bus
from hallgate.sim.hub import BusHub

TIMEOUT = 0.1  # generous: the hub, the master and the responders share a loaded machine


class Responder(threading.Thread):
    """A stand-in device at `addr` on a hub port (see the module docstring)."""

    def __init__(self, hub, addr, role=bus.ROLE_WINDOW_DISPLAY, boot=1):
        super().__init__(name=f"responder-{addr}", daemon=True)
        self.addr = addr
        self.role = role
        self.boot = boot
        self.fd = os.open(hub.add_port(f"dev{addr}"), os.O_RDWR | os.O_NOCTTY)
        self.queue = collections.deque()
        self.seq = 0
        self.version = 0
        self.shown = None
        self.identified = None
        self.requests = collections.Counter()
        self.silent = False  # a dead device
        self.garble = 0  # garble this many replies
        self.late = 0.0  # answer this late (once)
        self._lock = threading.Lock()
        self._halt = threading.Event()

    def press(self, key=1):
        with self._lock:
            self.seq += 1
            self.queue.append(bus.Event(self.boot, self.seq, key))

    def reboot(self):
        with self._lock:
            self.boot = (self.boot + 1) & 0xFF
            self.seq = self.version = 0
            self.shown = None
            self.queue.clear()

    def info(self):
        return bus.Info(self.role, (0, 1, 0), self.addr, resets=self.boot, version=self.version)

    def run(self):
        decoder = bus.Decoder()
        while not self._halt.is_set():
            r, _, _ = select.select([self.fd], [], [], 0.05)
            if not r:
                continue
            decoder.feed(os.read(self.fd, 4096))
            while (f := decoder.maybe_extract_frame()) is not None:
                if not f.is_reply and f.addr == self.addr and not self.silent:
                    self.requests[bus.TYPE_NAMES[f.mtype]] += 1
                    with self._lock:
                        reply = self.answer(f)
                    if self.late:
                        time.sleep(self.late)
                        self.late = 0.0
                    if self.garble:
                        self.garble -= 1
                        reply = reply[:5] + bytes([reply[5] ^ 0xFF]) + reply[6:]
                    os.write(self.fd, reply)

    def answer(self, f):
        a = self.addr
        if f.mtype == bus.POLL:
            ack = bus.decode_poll(f.payload)
            if ack is not None and self.queue and self.queue[0].ident == tuple(ack):
                self.queue.popleft()
            if self.queue:
                head = self.queue[0]
                head.pending = len(self.queue) - 1
                return bus.encode_event(a, head)
            return bus.encode_status(a, self.version)
        if f.mtype == bus.GET_INFO:
            return bus.encode_info(a, self.info())
        if f.mtype == bus.SET:
            role, version, state = bus.decode_set(f.payload)
            if role != self.role:
                return bus.encode_nak(a, bus.SET, bus.NAK_WRONG_ROLE)
            self.version, self.shown = version, state
            return bus.encode_status(a, version)
        if f.mtype == bus.IDENTIFY:
            self.identified = bus.decode_identify(f.payload)
            return bus.encode_status(a, self.version)
        return bus.encode_nak(a, f.mtype, bus.NAK_UNKNOWN_TYPE)

    def stop(self):
        self._halt.set()
        self.join(2)
        os.close(self.fd)


class Taken:
    """The master's callbacks, recorded."""

    def __init__(self):
        self.events = collections.defaultdict(list)
        self.devices = []
        self.naks = []
        self.lock = threading.Lock()

    def on_event(self, addr, ev):
        with self.lock:
            self.events[addr].append(ev.ident)

    def on_device(self, addr, online, info):
        self.devices.append((addr, online))

    def on_nak(self, addr, mtype, reason):
        self.naks.append((addr, mtype, reason))

    def online(self, addr):
        states = [o for a, o in self.devices if a == addr]
        return bool(states) and states[-1]


@pytest.fixture
def line():
    """A paced hub, responders at 1-3, a master (not started), the callbacks."""
    hub = BusHub(baud=115200).start()
    devs = {a: Responder(hub, a) for a in (1, 2, 3)}
    for d in devs.values():
        d.start()
    taken = Taken()
    master = BusMaster(
        hub.master_path,
        timeout=TIMEOUT,
        on_event=taken.on_event,
        on_device=taken.on_device,
        on_nak=taken.on_nak,
        devices=devs,
    )
    yield hub, devs, master, taken
    master.close()
    for d in devs.values():
        d.stop()
    hub.close()


def all_online(master, addrs):
    return lambda: all((master.device(a) or {}).get("online") for a in addrs)


def test_presses_arrive_once_in_order_and_states_are_shown(line):
    hub, devs, master, taken = line
    with master:
        wait_for(all_online(master, devs), what="devices online")
        for i in range(5):
            for d in devs.values():
                d.press(key=1 + i % 8)
        devs[3].press()
        state = bus.DisplayState("A042", blink_s=3)
        assert master.set_state(2, state) == 1
        wait_for(lambda: sum(map(len, taken.events.values())) == 16, what="16 events")
        wait_for(lambda: devs[2].shown == state, what="state shown")
        wait_for(lambda: not any(d.queue for d in devs.values()), what="acks")
    assert taken.events[1] == [(1, s) for s in range(1, 6)]
    assert taken.events[3] == [(1, s) for s in range(1, 7)]
    assert master.device(2)["applied"] == 1
    stats = master.stats
    assert stats["events"] == 16 and stats["duplicates"] == 0
    assert stats["cycles"] > 0 and stats["cycle_mean"] > 0
    assert hub.stats.collisions == 0


def test_a_rebooted_device_gets_its_state_back_and_new_seqs_are_taken(line):
    hub, devs, master, taken = line
    with master:
        state = bus.DisplayState("B7")
        master.set_state(1, state)
        wait_for(lambda: devs[1].shown == state, what="state shown")
        devs[1].press()
        wait_for(lambda: taken.events[1] == [(1, 1)], what="first event")
        devs[1].reboot()
        devs[1].press()
        wait_for(lambda: devs[1].shown == state, what="state shown after reboot")
        wait_for(lambda: taken.events[1] == [(1, 1), (2, 1)], what="event after reboot")
    assert hub.stats.collisions == 0


def test_a_dead_device_goes_offline_and_costs_at_most_one_timeout_per_cycle(line):
    hub, devs, master, taken = line
    with master:
        wait_for(all_online(master, devs), what="devices online")
        devs[2].silent = True
        wait_for(lambda: not master.device(2)["online"], what="device 2 offline")
        assert (2, False) in taken.devices
        before = master.stats
        events_before = len(taken.events[1])
        for _ in range(3):
            devs[1].press()
        wait_for(lambda: len(taken.events[1]) == events_before + 3, what="events from 1")
        wait_for(lambda: master.stats["cycles"] >= before["cycles"] + 5, what="5 cycles")
        after = master.stats
        devs[2].silent = False
        wait_for(lambda: master.device(2)["online"], what="device 2 back")
    cycles = after["cycles"] - before["cycles"]
    assert after["timeouts"] - before["timeouts"] <= cycles + 1
    assert taken.devices.count((2, True)) == 2


def test_garbled_replies_are_retried_and_cost_no_event(line):
    hub, devs, master, taken = line
    with master:
        wait_for(all_online(master, devs), what="devices online")
        devs[1].press()
        devs[1].garble = 1
        hub.inject(b"\xa5\x01\x82\x08garbage\x00\xff")
        devs[3].press()
        wait_for(lambda: taken.events[1] and taken.events[3], what="both events")
        time.sleep(0.2)  # a few more cycles: nothing passed up twice
    assert taken.events[1] == [(1, 1)] and taken.events[3] == [(1, 1)]
    assert master.stats["garbled"] >= 1 and master.stats["retries"] >= 1


def test_identify_and_scan(line):
    hub, devs, master, taken = line
    with master:
        assert master.identify(3, 10).result(timeout=5) is True
        assert devs[3].identified == 10
        assert master.identify(9, 5).result(timeout=5) is False  # nobody there
        found = master.scan([1, 2, 3, 4], timeout=TIMEOUT)
    assert sorted(found) == [1, 2, 3]
    assert found[2].window == 2
    assert master.device(4) is None


def test_scan_without_the_thread_adds_the_devices_it_finds():
    with BusHub(baud=115200) as hub:
        dev = Responder(hub, 9)
        dev.start()
        try:
            master = BusMaster(hub.master_path, timeout=TIMEOUT)
            found = master.scan(range(8, 11))
            assert list(found) == [9]
            assert master.device(9)["online"]
            master.close()
        finally:
            dev.stop()


def test_nak_is_reported_and_not_retried_in_a_loop(line):
    hub, devs, master, taken = line
    with master:
        wait_for(all_online(master, devs), what="devices online")
        master.set_state(1, bus.PanelState("A1"))  # the responders are displays
        wait_for(lambda: taken.naks, what="NAK")
        cycles = master.stats["cycles"]
        wait_for(lambda: master.stats["cycles"] >= cycles + 20, what="20 cycles")
    assert taken.naks == [(1, bus.SET, bus.NAK_WRONG_ROLE)]
    assert devs[1].requests["SET"] == 1


def test_a_late_reply_is_not_taken_for_the_next_request():
    # Unpaced line: device 1 answers after the master gave up and moved on to device 2;
    # its late STATUS must be ignored there (another address), and stale input dropped.
    with BusHub() as hub:
        d1, d2 = Responder(hub, 1), Responder(hub, 2)
        for d in (d1, d2):
            d.start()
        taken = Taken()
        master = BusMaster(hub.master_path, timeout=0.2, on_event=taken.on_event, devices=(1, 2))
        try:
            for _ in range(4):
                master.run_cycle()  # both online
            d1.late = 0.3
            d2.press()
            for _ in range(3):
                master.run_cycle()
            assert taken.events[2] == [(1, 1)]
            assert master.device(1)["stats"]["timeouts"] == 1
            assert master.device(2)["stats"]["timeouts"] == 0
        finally:
            master.close()
            d1.stop()
            d2.stop()


class EchoingPort:
    """A port on an adapter without echo suppression: it hears its own requests."""

    def __init__(self, port):
        self.port = port
        self.echo = bytearray()

    def __getattr__(self, name):
        return getattr(self.port, name)

    def __setattr__(self, name, value):
        if name in ("port", "echo"):
            object.__setattr__(self, name, value)
        else:
            setattr(self.port, name, value)

    def write(self, data):
        self.echo += data
        return self.port.write(data)

    def reset_input_buffer(self):
        self.echo.clear()
        self.port.reset_input_buffer()

    @property
    def in_waiting(self):
        return len(self.echo) + self.port.in_waiting

    def read(self, n=1):
        if self.echo:
            data, self.echo[:] = bytes(self.echo[:n]), self.echo[n:]
            return data
        return self.port.read(n)


def test_echo_of_requests_is_ignored_and_the_direction_seam_is_toggled():
    import serial

    with BusHub(baud=115200) as hub:
        dev = Responder(hub, 4)
        dev.start()
        toggles = []
        port = EchoingPort(serial.Serial(hub.master_path, 115200))
        master = BusMaster(port, timeout=TIMEOUT, devices=(4,), tx_enable=toggles.append)
        try:
            for _ in range(3):
                master.run_cycle()
            assert master.device(4)["online"]
            assert master.device(4)["stats"]["timeouts"] == 0
            n = master.stats["exchanges"]
            assert toggles == [True, False] * n
        finally:
            master.close()
            port.close()
            dev.stop()


def test_stop_is_prompt_with_every_device_dead():
    with BusHub(baud=115200) as hub:
        master = BusMaster(hub.master_path, timeout=0.2, devices=range(1, 20))
        master.start()
        time.sleep(0.5)
        t0 = time.monotonic()
        master.stop()
        assert time.monotonic() - t0 < 1.5
        assert master._thread is None
        master.close()


def test_an_adapter_latency_timer_costs_one_period_per_exchange_and_is_reported(line):
    """The hub models an FTDI left at Linux's 16 ms: each reply waits for the adapter's
    timer, so a cycle of 3 devices spans at least 2 whole periods (a lower bound). The
    master says what its port is: a pty, no latency timer to set."""
    hub, devs, master, taken = line
    master.min_cycle = 0
    master.scan(devs, add=True)
    for _ in range(3):
        master.run_cycle()  # the devices come online, get their INFO
    hub.latency_timer_ms = 16
    for _ in range(3):
        master.run_cycle()
        assert master.stats["cycle_last"] >= 2 * 0.016 - 0.001
    assert master.stats["timeouts"] == 0
    adapter = master.stats["adapter"]
    assert adapter["kind"] == "pty" and adapter["latency_timer_ms"] is None
    assert adapter["warning"] is None
