"""The firmware as a process (sim/device.py) on a pty, talked to by a tiny bus master here.

Each test starts the real firmware (MicroPython unix port, 64 KB heap) on its own pty, plays
the gateway with the shared codec, and presses keys / reads the display on the control channel.
"""

import json
import os
import select
import signal
import subprocess
import termios
import time
import tty

import pytest
from hallgate.protocols import bus
from hallgate.sim.device import (
    HEAPSIZE,
    FirmwareDevice,
    compile_firmware,
    micropython_command,
    micropython_path,
)

pytestmark = pytest.mark.micropython

ADDR = 5


class Master:
    """The master's end of a pty: send a request, read back the device's reply frames."""

    def __init__(self, fd):
        self.fd = fd
        self.decoder = bus.Decoder()

    def send(self, data):
        os.write(self.fd, data)

    def reply(self, timeout=2.0):
        """The next frame from the line, or None if none comes within timeout."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self.decoder.maybe_extract_frame()
            if frame is not None:
                return frame
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                self.decoder.feed(os.read(self.fd, 4096))

    def request(self, data, timeout=2.0):
        self.send(data)
        frame = self.reply(timeout)
        assert frame is not None, f"no reply to {data.hex()}"
        assert frame.addr == ADDR and frame.is_reply, frame
        return frame

    def poll(self, ack=None):
        return self.request(bus.encode_poll(ADDR, ack))

    def event(self, ack=None):
        frame = self.poll(ack)
        assert frame.mtype == bus.EVENT, frame
        return bus.decode_event(frame.payload)

    def status(self, ack=None):
        frame = self.poll(ack)
        assert frame.mtype == bus.STATUS, frame
        return bus.decode_status(frame.payload)

    def nak(self, data):
        frame = self.request(data)
        assert frame.mtype == bus.NAK, frame
        return bus.decode_nak(frame.payload)

    def silent(self, data, wait=0.3):
        """Send, and check that nothing answers."""
        self.send(data)
        return self.reply(wait) is None


class Rig:
    """A pty pair, a device on its slave end, a master on its master end."""

    def __init__(self, tmp_path, role, **config):
        self.fd, self.slave = os.openpty()
        # Raw before the device opens it (a new pty echoes), and the slave held open by us
        # for the whole test: with no slave open, reads on the master fail with EIO (while
        # a device is being restarted, for one).
        tty.setraw(self.slave)
        self.master = Master(self.fd)
        self.dev = FirmwareDevice(tmp_path, ADDR, role, 3, os.ttyname(self.slave), **config)

    def restart(self):
        self.dev.kill()
        termios.tcflush(self.slave, termios.TCIOFLUSH)  # a board's UART starts empty
        return self.dev.start()

    def close(self):
        self.dev.close()
        os.close(self.slave)
        os.close(self.fd)


@pytest.fixture
def panel(tmp_path):
    rig = Rig(tmp_path, "call-panel")
    yield rig
    rig.close()


@pytest.fixture
def display(tmp_path):
    rig = Rig(tmp_path, "window-display", idle_text="- -")
    yield rig
    rig.close()


def press_event(dev, key, hold_ms=60):
    mark = dev.mark()
    dev.press(key, hold_ms)
    return dev.wait_kind("event", since=mark)


# ---- bus basics ---------------------------------------------------------------------


def test_poll_gets_status_with_version_0_after_boot(panel):
    assert panel.dev.ready["address"] == ADDR
    assert panel.dev.ready["role"] == "call-panel"
    assert panel.master.status() == 0


def test_press_is_an_event_on_the_next_poll_and_an_ack_pops_it(panel):
    m, dev = panel.master, panel.dev
    told = press_event(dev, "call")
    assert told == {"seq": 1, "key": "call", "action": "press"}
    ev = m.event()
    assert (ev.boot, ev.seq, ev.key_name, ev.action_name, ev.pending) == (
        dev.ready["boot"],
        1,
        "call",
        "press",
        0,
    )
    assert m.status(ack=ev.ident) == 0  # acked: gone
    assert dev.info()["queued"] == 0


def test_an_unacked_event_is_sent_again_with_the_same_seq_and_an_older_age(panel):
    m, dev = panel.master, panel.dev
    press_event(dev, "start")
    first = m.event()
    time.sleep(0.25)
    again = m.event()
    assert again.ident == first.ident and again.key_name == "start"
    assert again.age_ds >= first.age_ds + 2
    assert m.event(ack=(first.boot, first.seq + 1)).ident == first.ident  # not its ack: kept
    assert m.event(ack=((first.boot + 1) & 0xFF, first.seq)).ident == first.ident  # old boot
    assert m.status(ack=first.ident) == 0


def test_events_queue_in_order_with_pending_count(panel):
    m, dev = panel.master, panel.dev
    for key in ("call", "start", "finish"):
        press_event(dev, key)
    taken = []
    ack = None
    for pending in (2, 1, 0):
        ev = m.event(ack)
        assert ev.pending == pending
        taken.append((ev.seq, ev.key_name))
        ack = ev.ident
    assert taken == [(1, "call"), (2, "start"), (3, "finish")]
    assert m.status(ack) == 0


def test_get_info_reports_role_window_counters(panel):
    m, dev = panel.master, panel.dev
    press_event(dev, "call")
    info = bus.decode_info(m.request(bus.encode_get_info(ADDR)).payload)
    assert info.role_name == "call-panel"
    assert info.firmware_text == dev.ready["firmware"]
    assert info.window == 3
    assert info.resets == dev.ready["resets"] and info.resets & 0xFF == dev.ready["boot"]
    assert (info.version, info.queued, info.overflows, info.crc_errors) == (0, 1, 0, 0)
    assert info.uptime_s >= 0


def test_garbage_before_a_poll_does_not_stop_the_reply(panel):
    m = panel.master
    junk = bytes([0xA5, 0x05, 0x01, 0x00, 0x12]) + bytes(range(200, 256)) + b"\xa5\xa5\x00"
    m.send(junk)
    assert m.status() == 0
    m.send(b"\xa5" + bus.encode_poll(ADDR)[1:-1] + b"\x00\x00")  # a frame with a bad CRC
    assert m.status() == 0
    info = bus.decode_info(m.request(bus.encode_get_info(ADDR)).payload)
    assert info.crc_errors >= 1


def test_requests_for_others_replies_and_broadcasts_get_no_answer(panel):
    m, dev = panel.master, panel.dev
    assert m.silent(bus.encode_poll(ADDR + 1))
    assert m.silent(bus.encode_status(ADDR, 0))  # another device's reply
    mark = dev.mark()
    assert m.silent(bus.encode_identify(bus.BROADCAST, 2))  # acted on, not answered
    assert dev.wait_kind("identify", since=mark) == 2
    assert m.status() == 0  # still talking to us


def test_naks_unknown_type_bad_length_and_keeps_working(panel):
    m = panel.master
    assert m.nak(bus.encode(ADDR, 0x33, b"")) == (0x33, bus.NAK_UNKNOWN_TYPE)
    assert m.nak(bus.encode(ADDR, bus.POLL, b"\x01")) == (bus.POLL, bus.NAK_BAD_LENGTH)
    assert m.nak(bus.encode(ADDR, bus.IDENTIFY, b"")) == (bus.IDENTIFY, bus.NAK_BAD_LENGTH)
    assert m.status() == 0


# ---- desired state ------------------------------------------------------------------


def test_set_panel_state_is_shown_and_reported(panel):
    m, dev = panel.master, panel.dev
    mark = dev.mark()
    state = bus.PanelState("A012", mode=1, queue=12, wait_s=430, tea=True, beep=True)
    frame = m.request(bus.encode_set(ADDR, 7, state))
    assert (frame.mtype, bus.decode_status(frame.payload)) == (bus.STATUS, 7)
    shown = dev.wait_kind("panel", since=mark)
    assert shown == {
        "text": "A012",
        "mode": "called",
        "queue": 12,
        "wait_s": 430,
        "tea": True,
        "version": 7,
    }
    assert dev.wait_kind("beep", since=mark) > 0
    now = dev.state()
    assert now["faces"] == ["A012", "q 12", "w 07", "tEA"]
    assert now["face"] == "A012"
    assert m.status() == 7


def test_same_version_again_is_harmless(panel):
    m, dev = panel.master, panel.dev
    state = bus.PanelState("B1", mode=2, beep=True)
    m.request(bus.encode_set(ADDR, 9, state))
    # Version 9 itself, not the boot-time state: stdout may lag behind the bus reply.
    dev.wait_for(lambda msg: msg.get("panel", {}).get("version") == 9)
    mark = dev.mark()
    for _ in range(3):
        assert bus.decode_status(m.request(bus.encode_set(ADDR, 9, state)).payload) == 9
    time.sleep(0.1)
    assert [msg for msg in dev.messages[mark:] if "beep" in msg or "panel" in msg] == []


def test_malformed_or_wrong_role_set_is_refused_and_the_device_goes_on(panel):
    m, dev = panel.master, panel.dev
    assert m.nak(bus.encode(ADDR, bus.SET, bytes([1, 3, 0, 9, 0, 0, 0, 0, 0]))) == (
        bus.SET,
        bus.NAK_BAD_VALUE,
    )
    assert m.nak(bus.encode(ADDR, bus.SET, b"\x01")) == (bus.SET, bus.NAK_BAD_VALUE)
    assert m.nak(bus.encode_set(ADDR, 4, bus.DisplayState("Z"))) == (bus.SET, bus.NAK_WRONG_ROLE)
    assert m.status() == 0 and dev.shown()["version"] == 0
    assert m.request(bus.encode_set(ADDR, 3, bus.PanelState("X"))).mtype == bus.STATUS
    assert dev.wait_for(lambda msg: msg.get("panel", {}).get("version") == 3)


def test_display_shows_text_blinks_then_steady_and_idle_text_when_empty(display):
    m, dev = display.master, display.dev
    assert dev.shown() == {"text": "- -", "blink": False, "brightness": 8, "version": 0}
    mark = dev.mark()
    m.request(bus.encode_set(ADDR, 2, bus.DisplayState("A042", blink_s=1, brightness=5)))
    assert dev.wait_kind("display", since=mark) == {
        "text": "A042",
        "blink": True,
        "brightness": 5,
        "version": 2,
    }
    # Re-sent while blinking: does not restart the blink.
    m.request(bus.encode_set(ADDR, 2, bus.DisplayState("A042", blink_s=1, brightness=5)))
    steady = dev.wait_kind("display", timeout=3, since=mark + 1)
    assert steady == {"text": "A042", "blink": False, "brightness": 5, "version": 2}
    assert sum("display" in msg for msg in dev.messages[mark:]) == 2  # no second blink
    mark = dev.mark()
    m.request(bus.encode_set(ADDR, 3, bus.DisplayState("")))
    assert dev.wait_kind("display", since=mark)["text"] == "- -"
    assert dev.state()["face"] == "- -"


def test_identify_is_shown_and_answered_with_status(display):
    m, dev = display.master, display.dev
    mark = dev.mark()
    frame = m.request(bus.encode_identify(ADDR, 1))
    assert (frame.mtype, bus.decode_status(frame.payload)) == (bus.STATUS, 0)
    assert dev.wait_kind("identify", since=mark) == 1
    now = dev.state()
    assert now["identify"] is True and now["face"] == "8.8.8.8.8.8.8.8."
    time.sleep(1.1)
    assert dev.state()["identify"] is False


# ---- keys ---------------------------------------------------------------------------


def test_bouncing_contact_gives_one_event(panel):
    dev = panel.dev
    mark = dev.mark()
    bounce = [(0, 1), (2, 0), (3, 1), (5, 0), (6, 1), (9, 0), (10, 1), (12, 0), (13, 1)]
    release = [(150, 0), (151, 1), (153, 0), (154, 1), (156, 0)]
    dev.levels("recall", bounce + release)
    assert dev.wait_kind("event", since=mark)["key"] == "recall"
    time.sleep(0.3)
    assert sum("event" in msg for msg in dev.messages[mark:]) == 1


def test_a_press_counts_even_when_the_process_is_starved_of_cpu(panel):
    # A loaded machine can stop the interpreter for longer than a press lasts; a board
    # would have sampled the closed contact all along, so the press must still count.
    dev = panel.dev
    for key in ("start", "finish", "pause"):
        mark = dev.mark()
        dev.press(key, 60)
        time.sleep(0.002)
        os.kill(dev.proc.pid, signal.SIGSTOP)
        time.sleep(0.3)
        os.kill(dev.proc.pid, signal.SIGCONT)
        assert dev.wait_kind("event", since=mark)["key"] == key


def test_double_call_within_lockout_is_ignored_not_queued(panel):
    m, dev = panel.master, panel.dev
    mark = dev.mark()
    dev.levels("call", [(0, 1), (60, 0), (250, 1), (310, 0)])
    assert dev.wait_kind("ignored", since=mark) == {"key": "call", "why": "lockout"}
    assert sum("event" in msg for msg in dev.messages[mark:]) == 1
    assert dev.info()["lockouts"] == 1
    ev = m.event()
    assert ev.pending == 0


def test_noshow_needs_a_long_press(panel):
    m, dev = panel.master, panel.dev
    mark = dev.mark()
    dev.press("noshow", 200)
    assert dev.wait_kind("ignored", since=mark) == {"key": "noshow", "why": "short"}
    assert dev.wait_kind("beep", since=mark) > 0
    assert m.status() == 0  # nothing queued
    told = press_event(dev, "noshow", hold_ms=1000)
    assert told["action"] == "long"
    ev = m.event()
    assert (ev.key_name, ev.action, ev.seq) == ("noshow", bus.LONG, 1)


def test_full_queue_drops_the_newest_and_counts_it(tmp_path):
    rig = Rig(tmp_path, "call-panel", queue_len=2, lockout_ms=0)
    try:
        m, dev = rig.master, rig.dev
        for key in ("call", "start"):
            press_event(dev, key)
        mark = dev.mark()
        dev.press("finish", 60)
        dropped = dev.wait_kind("dropped", since=mark)
        assert dropped["key"] == "finish" and dropped["overflows"] == 1
        info = bus.decode_info(m.request(bus.encode_get_info(ADDR)).payload)
        assert (info.overflows, info.queued) == (1, 2)
        assert [m.event().key_name, m.event((dev.ready["boot"], 1)).key_name] == ["call", "start"]
    finally:
        rig.close()


# ---- restarts and config ------------------------------------------------------------


def test_restart_reports_version_0_and_a_new_boot_byte(panel):
    m, dev = panel.master, panel.dev
    m.request(bus.encode_set(ADDR, 21, bus.PanelState("C1")))
    press_event(dev, "call")
    before = m.event()
    resets = dev.ready["resets"]
    ready = panel.restart()
    assert ready["resets"] == resets + 1 and ready["boot"] == (before.boot + 1) & 0xFF
    assert ready["boot_persisted"]
    assert m.status() == 0  # nothing applied since this boot, old event gone with the RAM
    assert press_event(dev, "call")["seq"] == 1
    assert m.event().ident == (ready["boot"], 1)


def test_bad_config_names_the_field(tmp_path):
    mpy = compile_firmware()
    env = dict(os.environ, MICROPYPATH=micropython_path(mpy))
    for bad, field in (
        ({"address": 300}, "address"),
        ({"role": "toaster"}, "role"),
        ({"long_keys": ["nope"]}, "long_keys"),
        ({"lockot_ms": 5}, "lockot_ms"),
        ({"uart": "/nonexistent/tty"}, "uart"),
    ):
        config = {"address": 1, "role": "call-panel", "window": 1, "uart": "/dev/null"}
        config.update(bad)
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(config))
        done = subprocess.run(
            [micropython_command(), "-X", f"heapsize={HEAPSIZE}", str(mpy / "main.py"), str(path)],
            capture_output=True,
            text=True,
            timeout=20,
            env=env,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 2, (bad, done.stdout, done.stderr)
        assert f"'{field}'" in done.stderr, (bad, done.stderr)


def test_control_channel_reports_bad_commands_and_memory(panel):
    dev = panel.dev
    mark = dev.mark()
    dev.send("press nokey")
    dev.send("dance")
    first = dev.wait_kind("error", since=mark)
    assert "nokey" in first
    assert "dance" in dev.wait_kind("error", since=dev.messages.index({"error": first}) + 1)
    info = dev.info()
    assert info["mem_free"] > 16 * 1024  # 64 KB heap, everything loaded
    assert info["boot"] == dev.ready["boot"]
