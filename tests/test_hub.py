"""The simulated RS-485 line (sim/hub.py): fan-out, pacing, dead devices, noise, collisions.

Device ends are opened here with plain os.open (the hub sets them raw); the master end with
pyserial, as the gateway does. Timing assertions are lower bounds only (the wire is a
physical floor; a loaded machine is only ever slower).
"""

import os
import select
import subprocess
import sys
import time

import pytest
import serial
from hallgate.sim.hub import BusHub


def read_until(fd, n, timeout=3.0):
    """Read from a raw fd until n bytes came or the timeout passed."""
    got = bytearray()
    deadline = time.monotonic() + timeout
    while len(got) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        r, _, _ = select.select([fd], [], [], left)
        if r:
            got += os.read(fd, 4096)
    return bytes(got)


def read_quiet(fd, quiet=0.2):
    """Everything that arrives until the fd stays quiet for `quiet` seconds."""
    got = bytearray()
    while True:
        r, _, _ = select.select([fd], [], [], quiet)
        if not r:
            return bytes(got)
        got += os.read(fd, 4096)


@pytest.fixture
def opened():
    fds = []

    def open_(path):
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        fds.append(fd)
        return fd

    yield open_
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def test_master_bytes_reach_every_device(opened):
    with BusHub() as hub:
        devs = [opened(hub.add_port()) for _ in range(3)]
        with serial.Serial(hub.master_path, 115200, timeout=1) as master:
            master.write(b"\xa5hello line")
            for fd in devs:
                assert read_until(fd, 11) == b"\xa5hello line"
        assert hub.stats.from_master == 11
        assert hub.stats.collisions == 0


def test_device_bytes_reach_master_and_other_devices_not_itself(opened):
    with BusHub() as hub:
        a, b, c = (opened(hub.add_port(n)) for n in ("a", "b", "c"))
        with serial.Serial(hub.master_path, 115200, timeout=2) as master:
            os.write(b, b"reply-from-b")
            assert master.read(12) == b"reply-from-b"
            assert read_until(a, 12) == b"reply-from-b"
            assert read_until(c, 12) == b"reply-from-b"
            assert read_quiet(b, 0.2) == b""  # no echo to the talker
        assert hub.stats.from_devices == 12
        assert hub.ports()["b"]["bytes_in"] == 12


def test_pacing_at_9600_is_no_faster_than_the_wire(opened):
    n = 96  # 0.1 s on the wire at 9600 baud
    with BusHub(baud=9600) as hub:
        dev = opened(hub.add_port())
        with serial.Serial(hub.master_path, 9600, timeout=1) as master:
            t0 = time.monotonic()
            master.write(bytes(range(n)))
            got = read_until(dev, n)
            elapsed = time.monotonic() - t0
        assert got == bytes(range(n))
        assert elapsed >= 0.9 * n * 10 / 9600


def test_pacing_keeps_a_talkers_chunks_in_order_back_to_back(opened):
    with BusHub(baud=9600) as hub:
        dev = opened(hub.add_port())
        with serial.Serial(hub.master_path, 9600, timeout=1) as master:
            t0 = time.monotonic()
            for i in range(4):
                master.write(bytes([i]) * 12)
            got = read_until(dev, 48)
            elapsed = time.monotonic() - t0
        assert got == b"".join(bytes([i]) * 12 for i in range(4))
        assert elapsed >= 0.9 * 48 * 10 / 9600
        assert hub.stats.collisions == 0  # one talker never collides with itself


def test_a_killed_device_does_not_break_the_others(opened):
    with BusHub() as hub:
        dead_path = hub.add_port("dead")
        alive = opened(hub.add_port("alive"))
        # A device process that opens its end and dies without closing it cleanly.
        script = f"import os, time; os.open({dead_path!r}, os.O_RDWR); time.sleep(30)"
        child = subprocess.Popen([sys.executable, "-c", script])
        time.sleep(0.2)
        child.kill()
        child.wait(5)
        # A device that opened and closed its end.
        closed = os.open(hub.add_port("closed"), os.O_RDWR | os.O_NOCTTY)
        os.close(closed)
        # A device that never opened its end at all, and now a lot of traffic: its buffer
        # fills up and the hub drops for it, without stalling.
        hub.add_port("never")
        with serial.Serial(hub.master_path, 115200, timeout=2) as master:
            block = bytes(range(256)) * 16
            total = 0
            for _ in range(40):  # 160 KB: more than any pty buffer
                master.write(block)
                total += len(block)
                assert len(read_until(alive, len(block))) == len(block)
            os.write(alive, b"still here")
            assert master.read(10) == b"still here"
        assert hub.stats.drops > 0
        assert hub.ports()["alive"]["drops"] == 0
        assert hub.ports()["alive"]["bytes_out"] == total


def test_inject_reaches_everyone(opened):
    with BusHub(baud=115200) as hub:
        devs = [opened(hub.add_port()) for _ in range(2)]
        with serial.Serial(hub.master_path, 115200, timeout=1) as master:
            hub.inject(b"\x00\xff\xa5noise")
            assert master.read(8) == b"\x00\xff\xa5noise"
            for fd in devs:
                assert read_until(fd, 8) == b"\x00\xff\xa5noise"
        assert hub.stats.injected == 8
        assert hub.stats.collisions == hub.stats.noise_collisions == 0


def test_two_talkers_at_once_collide_and_garble(opened):
    seen = []
    with BusHub(baud=9600, tap=seen) as hub:
        dev = opened(hub.add_port("talker"))
        listener = opened(hub.add_port("listener"))
        with serial.Serial(hub.master_path, 9600, timeout=1) as master:
            # 40 bytes take 42 ms on the wire: both start well within each other's bytes.
            master.write(b"\x0f" * 40)
            os.write(dev, b"\xf0" * 40)
            heard = read_until(listener, 80, timeout=2)
        assert hub.stats.collisions == 1
        assert b"\xff" in heard  # OR of the two: neither talker's bytes came through intact
        assert any(c.collided for c in seen)


def test_noise_on_a_talker_is_counted_apart(opened):
    with BusHub(baud=9600) as hub:
        dev = opened(hub.add_port())
        with serial.Serial(hub.master_path, 9600, timeout=1):
            hub.inject(b"\x55" * 60)  # 62 ms of noise
            time.sleep(0.01)
            os.write(dev, b"\xaa" * 10)
            read_quiet(dev, 0.3)
        assert hub.stats.noise_collisions == 1
        assert hub.stats.collisions == 0


def test_tap_sees_every_chunk_with_its_source(opened):
    seen = []
    with BusHub(baud=115200, tap=seen) as hub:
        dev = opened(hub.add_port("d1"))
        with serial.Serial(hub.master_path, 115200, timeout=1) as master:
            master.write(b"request")
            assert read_until(dev, 7) == b"request"
            os.write(dev, b"reply")
            assert master.read(5) == b"reply"
    assert [(c.source, c.data) for c in seen] == [("master", b"request"), ("d1", b"reply")]
    assert seen[0].t <= seen[1].t
    assert not any(c.collided for c in seen)


def test_stale_bytes_of_a_deaf_port_are_flushed_and_reset_port_flushes(opened):
    with BusHub(stale_after=0.1) as hub:
        path = hub.add_port("asleep")
        with serial.Serial(hub.master_path, 115200, timeout=1) as master:
            master.write(b"old request")
            deadline = time.monotonic() + 5
            while hub.stats.stale_flushed < 11 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert hub.stats.stale_flushed == 11
            master.write(b"unread")
            time.sleep(0.05)
            hub.reset_port(path)
            fd = opened(path)
            assert read_quiet(fd, 0.1) == b""
            master.write(b"fresh")
            assert read_until(fd, 5) == b"fresh"


def test_stop_is_prompt_and_close_is_idempotent():
    hub = BusHub(baud=9600).start()
    t0 = time.monotonic()
    hub.stop()
    assert time.monotonic() - t0 < 2.5
    hub.close()
    hub.close()


# ---- the master's USB adapter: its latency timer --------------------------------------------


def test_adapter_latency_timer_holds_replies_until_it_runs_out(opened):
    """An FTDI-like adapter at the master's end: a short reply reaches the master only when
    the timer runs out (a lower bound: a loaded machine is only later), all at once."""
    with BusHub(latency_timer_ms=60) as hub:
        dev = opened(hub.add_port("d"))
        with serial.Serial(hub.master_path, 115200, timeout=2) as master:
            master.reset_input_buffer()
            for _ in range(3):
                due = hub.next_tick(time.monotonic())  # before it is sent: a lower bound
                os.write(dev, b"short reply")
                assert master.read(11) == b"short reply"
                assert time.monotonic() >= due - 0.002
                time.sleep(0.013)  # another phase of the timer
        assert hub.stats.adapter_ticks >= 3 and hub.stats.adapter_full == 0
        # The master's own bytes are never held: a device hears them at once.
        with serial.Serial(hub.master_path, 115200, timeout=2) as master:
            master.write(b"request")
            assert read_until(dev, 7) == b"request"


def test_adapter_timer_keeps_ticking_while_the_line_is_idle(opened):
    """After a quiet spell the timer has run on: a reply waits for its next run-out, not
    for none (the hub must not deliver it at once because it last looked long ago)."""
    with BusHub(latency_timer_ms=20) as hub:
        dev = opened(hub.add_port("d"))
        with serial.Serial(hub.master_path, 115200, timeout=2) as master:
            for _ in range(5):
                time.sleep(0.12)  # longer than the hub's idle housekeeping period
                due = hub.next_tick(time.monotonic())
                os.write(dev, b"reply")
                assert master.read(5) == b"reply"
                assert time.monotonic() >= due - 0.002


def test_adapter_sends_full_usb_packets_without_waiting(opened):
    with BusHub(latency_timer_ms=200) as hub:
        dev = opened(hub.add_port("d"))
        with serial.Serial(hub.master_path, 115200, timeout=3) as master:
            data = bytes(range(200))
            os.write(dev, data)
            assert master.read(200) == data
        assert hub.stats.adapter_full == 3  # 3 x 62 at once, the last 14 at the tick


def test_adapter_latency_timer_can_change_and_be_switched_off(opened):
    with pytest.raises(ValueError):
        BusHub(latency_timer_ms=0)
    with BusHub(latency_timer_ms=16) as hub:
        dev = opened(hub.add_port("d"))
        assert hub.latency_timer_ms == 16
        hub.latency_timer_ms = 1
        assert hub.next_tick(time.monotonic() + 10) <= time.monotonic() + 10.001
        hub.latency_timer_ms = None
        with serial.Serial(hub.master_path, 115200, timeout=2) as master:
            os.write(dev, b"plain")
            assert master.read(5) == b"plain"
        assert hub.stats.adapter_ticks == 0
