"""Board identity and device logs on the gateway side (issue 12).

The master's book with synthetic INFO (no port): a board swapped at an address starts its
counters and its event dedupe afresh and is reported; a reboot of the same board is no
swap; the known ids survive a restart in a small JSON file. A log read in pieces. Then the
real parts: the firmware on MicroPython behind a pty hub, the daemon with mosquitto.
"""

import contextlib
import json
import subprocess
import sys
import threading

import pytest
from conftest import wait_for
from hallgate.gateway.boards import KnownBoards, fetch_log
from hallgate.gateway.book import Book
from hallgate.gateway.master import DeviceRefused, NoReply
from hallgate.protocols import bus

PANEL = bus.ROLE_CALL_PANEL
OLD, NEW = bytes.fromhex("e66141040b1c2d3e"), bytes.fromhex("e66141040b1c9f8a")


def frame(data):
    d = bus.Decoder()
    d.feed(data)
    f = d.maybe_extract_frame()
    assert f is not None
    return f


def info(addr, board_id, resets=3, version=0, board=2):
    return bus.encode_info(addr, bus.Info(PANEL, (0, 5, 0), addr, resets=resets,
                                          version=version, board=board, board_id=board_id))


class Recorder:
    def __init__(self):
        self.boards = []
        self.events = []
        self.devices = []

    def on_board(self, addr, old, new):
        self.boards.append((addr, old, new))

    def on_event(self, addr, ev):
        self.events.append((addr, ev.ident))

    def on_device(self, addr, online, inf):
        self.devices.append((addr, online))


def make_book(rec, boards=None):
    return Book(on_event=rec.on_event, on_device=rec.on_device, on_board=rec.on_board,
                boards=boards)


def turn(book, addr, replies, now=0.0):
    """One cycle in which `addr` gets the scripted replies (bytes, or None: a timeout)."""
    assert addr in book.start_cycle(now)
    replies = list(replies)
    sent = []
    while (request := book.next_request(addr)) is not None:
        sent.append(frame(request).mtype)
        r = replies.pop(0)
        if r is None:
            book.handle_failure(addr)
        else:
            book.handle_reply(addr, frame(r))
    assert not replies
    return sent


def test_a_board_seen_first_is_learnt_not_a_swap():
    rec = Recorder()
    book = make_book(rec)
    book.add(5)
    turn(book, 5, [info(5, OLD)])
    assert rec.boards == [(5, None, OLD.hex())]
    assert book.board_ids == {5: OLD.hex()}


def test_a_reboot_of_the_same_board_is_no_swap():
    rec = Recorder()
    book = make_book(rec)
    book.add(5)
    turn(book, 5, [info(5, OLD, resets=3)])
    turn(book, 5, [bus.encode_event(5, bus.Event(3, 1, 1)), bus.encode_status(5, 0)])
    dev = book.devices[5]
    assert dev.stats.events == 1 and dev.last_taken == (3, 1)
    # It reboots (boot counter up, same board): its INFO is fetched again, no swap.
    turn(book, 5, [bus.encode_event(5, bus.Event(4, 1, 1)), info(5, OLD, resets=4),
                   bus.encode_status(5, 0)])
    assert rec.boards == [(5, None, OLD.hex())]
    assert dev.stats.events == 2 and dev.stats.exchanges > 3


def test_another_board_at_the_address_starts_fresh_and_is_reported():
    rec = Recorder()
    book = make_book(rec)
    book.add(5)
    book.set_state(5, bus.PanelState("A001", 1))
    turn(book, 5, [info(5, OLD, resets=9), bus.encode_status(5, 1)])  # SET: confirmed
    turn(book, 5, [bus.encode_event(5, bus.Event(9, 7, 1)), bus.encode_status(5, 1)])
    dev = book.devices[5]
    assert dev.confirmed and dev.last_taken == (9, 7) and dev.stats.events == 1
    before = book.stats.exchanges

    # Unplugged: offline after three misses; another board answers the probe.
    for _ in range(3):
        turn(book, 5, [None])
    assert not dev.online and dev.stats.timeouts == 3
    sent = turn(book, 5, [info(5, NEW, resets=9), bus.encode_status(5, 1)])
    assert sent == [bus.GET_INFO, bus.SET]  # the new board is given its state again
    assert rec.boards == [(5, None, OLD.hex()), (5, OLD.hex(), NEW.hex())]
    assert book.board_ids[5] == NEW.hex()
    # Its counters start after the INFO that told the swap; the bus's go on.
    assert dev.stats.timeouts == 0 and dev.stats.events == 0 and dev.stats.exchanges == 1
    assert book.stats.exchanges == before + 5 and book.stats.timeouts == 3
    # Its event (9, 7) is the new board's own, not a copy of the old one's: taken.
    turn(book, 5, [bus.encode_event(5, bus.Event(9, 7, 1)), bus.encode_status(5, 1)])
    assert rec.events == [(5, (9, 7)), (5, (9, 7))] and dev.stats.events == 1


def test_a_board_swapped_while_the_gateway_was_down_is_reported_at_start(tmp_path):
    path = tmp_path / "boards.json"
    known = KnownBoards(path)
    assert known.of("hall") == {}
    assert known.set("hall", 5, OLD.hex()) and known.set("hall", 6, NEW.hex())
    assert json.loads(path.read_text()) == {"buses": {"hall": {"5": OLD.hex(),
                                                               "6": NEW.hex()}}}
    # The gateway restarts: the book starts from the file.
    rec = Recorder()
    book = make_book(rec, KnownBoards(path).of("hall"))
    book.add(5)
    book.add(6)
    turn(book, 5, [info(5, NEW)])
    turn(book, 6, [info(6, NEW)])
    assert rec.boards == [(5, OLD.hex(), NEW.hex())]  # 6: the same board as before


def test_firmware_that_does_not_say_its_board_changes_nothing():
    rec = Recorder()
    book = make_book(rec, {5: OLD.hex()})
    book.add(5)
    old_info = bus.encode_info(5, bus.Info(PANEL, (0, 4, 0), 5, resets=2))[:4 + 19]
    raw = bytearray(old_info)
    raw[3] = 19  # LEN: the 19-byte INFO of firmware before board identity
    turn(book, 5, [bus.encode(5, bus.INFO, bytes(raw[4:]))])
    assert book.devices[5].online and book.devices[5].info.board_id is None
    assert rec.boards == [] and book.board_ids == {5: OLD.hex()}


def test_known_boards_file_that_cannot_be_read_starts_empty(tmp_path, caplog):
    path = tmp_path / "boards.json"
    path.write_text("{torn")
    known = KnownBoards(path)
    assert known.of("hall") == {}
    assert "cannot read it" in caplog.text
    assert known.set("hall", 1, OLD.hex())  # and is written whole again
    assert KnownBoards(path).of("hall") == {1: OLD.hex()}
    # A folder that cannot be written: the id is kept in memory, the bus goes on.
    ro = KnownBoards(tmp_path / "no-such-folder" / "boards.json")
    assert ro.set("hall", 1, OLD.hex()) is False and ro.of("hall") == {1: OLD.hex()}


# ---- a log read in pieces --------------------------------------------------------------


def reader(text, reset_cause=2, crash_boot=12, change_at=None):
    """read(offset) as a device answers GET_LOG, from `text`; the text changes to
    `change_at` (a new crash) after the first read."""
    state = {"text": text, "boot": crash_boot, "reads": []}

    def read(offset):
        state["reads"].append(offset)
        t = state["text"]
        offset = min(offset, len(t))
        chunk = bus.Log(reset_cause, state["boot"], len(t), offset, t[offset:offset + 120])
        # through the codec, as on the wire
        chunk = bus.decode_log(frame(bus.encode_log(3, chunk)).payload)
        if change_at is not None and len(state["reads"]) == 1:
            state["text"], state["boot"] = change_at, crash_boot + 1
        return chunk

    return read, state


def test_a_log_is_read_in_pieces_until_its_total():
    text = ("Traceback (most recent call last):\n" + "  File \"appcore.py\", line 1\n" * 10
            + "MemoryError: memory allocation failed\n").encode()
    read, state = reader(text)
    log = fetch_log(read)
    assert log["text"].encode() == text and log["complete"]
    assert log["reset_cause"] == "watchdog" and log["crash_boot"] == 12
    assert log["total"] == len(text) > 240
    assert state["reads"] == list(range(0, len(text), 120))


def test_a_log_that_changes_while_read_is_read_again_and_none_is_no_crash():
    first = b"A" * 200
    second = b"B" * 150
    read, state = reader(first, change_at=second)
    log = fetch_log(read)
    assert log["text"] == "B" * 150 and log["crash_boot"] == 13
    assert state["reads"] == [0, 120, 0, 120]
    read, _ = reader(b"", reset_cause=1, crash_boot=0)
    log = fetch_log(read)
    assert (log["reset_cause"], log["crash_boot"], log["total"], log["text"]) == (
        "power-on", 0, 0, "")


def test_errors_of_a_log_read_name_the_device():
    e = DeviceRefused(7, bus.GET_LOG, bus.NAK_UNKNOWN_TYPE)
    assert e.unknown_type and str(e) == "device 7 refused GET_LOG (unknown message type)"
    assert str(NoReply(7, "no answer")) == "device 7: no answer"
    with pytest.raises(DeviceRefused):
        fetch_log(lambda offset: (_ for _ in ()).throw(e))


# ---- the real parts ----------------------------------------------------------------------


class ScriptedDevice:
    """A device on a hub port, in CPython, for what the real firmware cannot be made to do
    on cue: `board_id` None is firmware from before board identity and device logs (the
    19-byte INFO, NAK unknown type to anything newer, as its appcore does); `silent`
    answers nothing (unplugged)."""

    def __init__(self, path, addr, window, board_id=None, resets=7):
        import serial

        self.addr, self.window = addr, window
        self.board_id, self.resets = board_id, resets
        self.silent = False
        self.port = serial.Serial(path, 115200, timeout=0.02)
        self._stop = threading.Event()
        self.asked = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _reply(self, f):
        if f.mtype == bus.GET_INFO:
            inf = bus.Info(PANEL, (0, 3, 0) if self.board_id is None else (0, 5, 0),
                           self.window, resets=self.resets, board=2 if self.board_id else 0,
                           board_id=self.board_id)
            full = bus.encode_info(self.addr, inf)
            if self.board_id is None:
                return bus.encode(self.addr, bus.INFO, full[4:4 + 19])
            return full
        if f.mtype in (bus.POLL, bus.SET):
            return bus.encode_status(self.addr, bus.decode_set(f.payload)[1]
                                     if f.mtype == bus.SET else 0)
        return bus.encode_nak(self.addr, f.mtype, bus.NAK_UNKNOWN_TYPE)

    def _serve(self):
        decoder = bus.Decoder()
        while not self._stop.is_set():
            decoder.feed(self.port.read(64))
            while (f := decoder.maybe_extract_frame(True)) is not None:
                if f.addr != self.addr or f.is_reply or self.silent:
                    continue
                self.asked.append(f.mtype)
                self.port.write(self._reply(f))

    def close(self):
        self._stop.set()
        self._thread.join(2)
        self.port.close()


def hallgate(*args, timeout=60):
    out = subprocess.run([sys.executable, "-m", "hallgate.cli", *map(str, args)],
                         capture_output=True, text=True, timeout=timeout)
    assert "Traceback (most recent" not in out.stderr, out.stderr
    return out


def test_logs_of_firmware_without_them_and_of_nobody_say_so(tmp_path):
    from hallgate.sim.hub import BusHub

    with BusHub(baud=115200) as hub:
        old = ScriptedDevice(hub.add_port("old"), 4, 4)
        try:
            port = ["--port", hub.master_path, "--timeout", "0.2",
                    "--status-file", tmp_path / "status.json"]
            out = hallgate("logs", "4", *port)
            assert out.returncode == 1
            assert out.stderr.strip() == (
                "hallgate: device 4: its firmware (0.3.0) predates device logs (it does not "
                "know GET_LOG): update it (`hallgate ota`) to read its reset cause and crash")
            assert bus.GET_LOG in old.asked
            out = hallgate("logs", "5", *port)
            assert out.returncode == 1
            assert out.stderr.startswith("hallgate: device 5 did not answer (directly on "
                                         f"{hub.master_path}): is it powered"), out.stderr
            # Its row says it does not report its board.
            out = hallgate("devices", "--json", *port, "--addresses", "4")
            row, = json.loads(out.stdout)["devices"]
            assert (row["board"], row["board_id"], row["firmware"]) == ("unknown", None,
                                                                       "0.3.0")
        finally:
            old.close()


SITE, GW = "board-site", "gw-b"


def test_the_daemon_reports_a_swap_now_and_one_made_while_it_was_down(tmp_path):
    from gpiozero.pins.mock import MockFactory
    from hallgate.gateway.config import load_config
    from hallgate.gateway.daemon import Gateway
    from hallgate.sim.broker import Mosquitto
    from hallgate.sim.hub import BusHub
    from harness import Witness, write_hall_config

    errors = f"hall/v1/{SITE}/gw/{GW}/errors"
    a, b, c = (bytes.fromhex(x) for x in ("e6614104aa000001", "e6614104bb000002",
                                          "e6614104cc000003"))
    with contextlib.ExitStack() as stack:
        broker = Mosquitto(tmp_path / "broker").start()
        stack.callback(broker.stop)
        hub = stack.enter_context(BusHub(baud=115200))
        witness = Witness(broker.port, topics=(errors,))
        stack.callback(witness.close)
        config = load_config(write_hall_config(
            tmp_path, site=SITE, gateway=GW, broker_url=broker.url,
            hub_path=hub.master_path, devices=[(1, "call-panel", 1)],
            windows="[[windows]]\nnumber = 1\n"))
        dev = ScriptedDevice(hub.add_port("d1"), 1, 1, board_id=a)
        stack.callback(dev.close)
        boards = tmp_path / "boards.json"

        def gateway():
            gw = Gateway(config, pin_factory=MockFactory()).start()
            stack.callback(gw.stop, drain_s=0)
            wait_for(lambda: gw.link.connected, what="connected")
            return gw

        def online(gw):
            wait_for(lambda: gw.masters["hall"].device(1)["online"], what="device 1 online")

        gw = gateway()
        online(gw)
        wait_for(lambda: boards.exists(), what="boards.json")
        assert json.loads(boards.read_text()) == {"buses": {"hall": {"1": a.hex()}}}

        # Unplugged, another board in its place (the same boot count: no matter).
        dev.silent = True
        wait_for(lambda: not gw.masters["hall"].device(1)["online"], what="offline")
        dev.board_id, dev.silent = b, False
        wait_for(lambda: witness.on(errors), what="the swap on the errors topic")
        e, = witness.on(errors)
        assert (e["kind"], e["bus"], e["address"], e["old_board_id"], e["board_id"]) == (
            "board-swapped", "hall", 1, a.hex(), b.hex())
        assert e["reason"] == (f"bus hall address 1: the call-panel of window 1 is another "
                               f"board now (board id {a.hex()} -> {b.hex()}); its counters "
                               "start fresh")
        row, = gw.device_rows()
        assert row["board_id"] == b.hex() and row["link"]["timeouts"] == 0
        assert json.loads(boards.read_text())["buses"]["hall"] == {"1": b.hex()}
        gw.stop(drain_s=0)

        # Swapped while the gateway was down: told at the next start. A reboot is not.
        dev.board_id = c
        gw = gateway()
        wait_for(lambda: len(witness.on(errors)) == 2, what="the swap made while down")
        e = witness.on(errors)[1]
        assert (e["kind"], e["old_board_id"], e["board_id"]) == ("board-swapped", b.hex(),
                                                                 c.hex())
        gw.stop(drain_s=0)
        dev.resets += 1
        gw = gateway()
        online(gw)
        gw.stop(drain_s=0)
        assert len(witness.on(errors)) == 2
        assert json.loads(boards.read_text())["buses"]["hall"] == {"1": c.hex()}


@pytest.mark.micropython
def test_the_real_firmware_its_log_a_reboot_and_a_board_swapped_at_its_address(tmp_path):
    from hallgate.sim.broker import Mosquitto
    from hallgate.sim.device import FirmwareDevice
    from hallgate.sim.hub import BusHub
    from harness import Daemon, Witness, write_hall_config

    errors = f"hall/v1/{SITE}/gw/{GW}/errors"
    with contextlib.ExitStack() as stack:
        broker = Mosquitto(tmp_path / "broker").start()
        stack.callback(broker.stop)
        hub = stack.enter_context(BusHub(baud=115200))
        witness = Witness(broker.port, topics=(errors,))
        stack.callback(witness.close)

        def board(name):  # a board: its flash (state, id, log) in a folder of its own
            dev = FirmwareDevice(tmp_path / name, 1, "call-panel", 1, hub.add_port(name),
                                 ready_timeout=30, watchdog_ms=1000)
            stack.callback(dev.close)
            return dev

        def board_id(name):
            return (tmp_path / name / "device-1-state.id").read_bytes().hex()

        first = board("board-a")
        daemon = Daemon(tmp_path, write_hall_config(
            tmp_path, site=SITE, gateway=GW, broker_url=broker.url,
            hub_path=hub.master_path, devices=[(1, "call-panel", 1)],
            windows="[[windows]]\nnumber = 1\n"))
        stack.callback(daemon.close)
        daemon.start()
        daemon.wait_status(lambda s: s["devices"]["online"] == 1, "the panel online", 30)
        via = ["--status-file", daemon.status_file]

        def row():
            out = hallgate("devices", "--json", *via)
            assert out.returncode == 0, out.stderr
            r, = json.loads(out.stdout)["devices"]
            return r

        r = row()
        assert (r["board"], r["board_id"]) == ("unix", board_id("board-a"))
        assert json.loads((tmp_path / "boards.json").read_text()) == {
            "buses": {"hall": {"1": board_id("board-a")}}}

        # A fault the firmware survives is kept, with the boot it happened in.
        mark = first.mark()
        first.send("fault the display driver fell over")
        first.wait_kind("fault", since=mark)
        out = hallgate("logs", "1", "--json", *via)
        assert out.returncode == 0, out.stderr
        log = json.loads(out.stdout)
        boot = first.ready["resets"]
        assert (log["via"], log["bus"], log["address"], log["reset_cause"],
                log["crash_boot"], log["boot"], log["complete"]) == (
            "daemon", "hall", 1, "power-on", boot, boot, True)
        assert log["text"].startswith("Traceback (most recent call last):\n")
        assert log["text"].endswith("RuntimeError: the display driver fell over\n")
        assert log["total"] == len(log["text"].encode()) and log["board_id"] == r["board_id"]

        # Stuck: the watchdog resets it (the simulator starts it again, as a board
        # restarts). The same board: no swap, and its log says why it reset.
        first.send("hang 3000")
        wait_for(lambda: not first.running, 10, "the watchdog reset")
        first.start(30)
        wait_for(lambda: row()["device"]["resets"] == boot + 1, 15, "its INFO after the reset")
        out = hallgate("logs", "1", *via)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[0].startswith(f"device 1 on bus hall (call-panel, firmware "
                                   f"{r['firmware']}, boot {boot + 1}), via the gateway "
                                   f"daemon (pid {daemon.proc.pid}"), lines
        assert lines[1] == "last reset: watchdog"
        assert lines[2] == (f"crash kept from boot {boot}; it is in boot {boot + 1} now; its "
                            f"traceback ({log['total']} bytes):")
        assert lines[-1] == "  RuntimeError: the display driver fell over"

        # Another board at the address: the technician swapped the panel.
        first.close()
        before = daemon.status()["ts"]
        daemon.wait_status(lambda s: s["ts"] > before and s["devices"]["online"] == 0,
                           "the old panel offline")
        second = board("board-b")
        wait_for(lambda: witness.on(errors), 20, "the swap on the errors topic")
        e, = witness.on(errors)
        assert (e["kind"], e["bus"], e["address"], e["old_board_id"], e["board_id"]) == (
            "board-swapped", "hall", 1, board_id("board-a"), board_id("board-b"))
        r = row()
        assert r["board_id"] == board_id("board-b") and r["online"]
        assert r["link"]["timeouts"] == 0  # the old board's timeouts are not the new one's
        out = hallgate("logs", "1", *via)
        assert out.returncode == 0, out.stderr
        assert "last reset: power-on\nno crash kept" in out.stdout, out.stdout
        assert "another board now" in daemon.log(200)

        # The gateway stopped, the first board put back meanwhile: told at the next start.
        assert daemon.terminate() == 0, daemon.log()
        second.close()
        first.start(30)
        daemon.start()
        wait_for(lambda: len(witness.on(errors)) == 2, 30, "the swap made while it was down")
        e = witness.on(errors)[1]
        assert (e["old_board_id"], e["board_id"]) == (board_id("board-b"),
                                                      board_id("board-a"))


@pytest.mark.micropython
def test_logs_directly_on_the_port(tmp_path):
    from hallgate.sim.device import FirmwareDevice
    from hallgate.sim.hub import BusHub

    with BusHub(baud=115200) as hub:
        dev = FirmwareDevice(tmp_path / "d", 3, "window-display", 3, hub.add_port("d"),
                             ready_timeout=30)
        try:
            port = ["--port", hub.master_path, "--timeout", "0.2",
                    "--status-file", tmp_path / "status.json"]
            out = hallgate("logs", "3", *port)
            assert out.returncode == 0, out.stderr
            assert out.stdout.splitlines() == [
                f"device 3 on bus port (window-display, firmware {dev.ready['firmware']}, "
                f"boot {dev.ready['resets']}), directly on {hub.master_path}",
                "last reset: power-on",
                "no crash kept"]
            mark = dev.mark()
            dev.send("fault segment driver")
            dev.wait_kind("fault", since=mark)
            log = json.loads(hallgate("logs", "3", "--json", *port).stdout)
            assert (log["via"], log["port"], log["crash_boot"], log["reset_cause"]) == (
                "port", hub.master_path, dev.ready["resets"], "power-on")
            assert log["text"].endswith("RuntimeError: segment driver\n")
            id_file = tmp_path / "d" / "device-3-state.id"
            assert log["board_id"] == id_file.read_bytes().hex()
        finally:
            dev.close()
