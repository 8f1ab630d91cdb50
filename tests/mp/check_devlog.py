# firmware/devlog.py on MicroPython (it uses sys.print_exception): the crash kept and its
# bounds, the flash writes it spares, the reset-cause marker and the board id; and GET_LOG
# answered in pieces from what it keeps (appcore.Core._log). Files go in the folder given
# on the command line. bus is imported first: the master's half, to read the replies.
# Usage: check_devlog.py DIR ; prints "devlog: N cases ok" (an AssertionError exits non-zero).

import os
import sys

import bus
import devlog
from appcore import Core

DIR = sys.argv[1]
WRITES = []
_write = devlog._write


def counting_write(path, data):  # every file devlog writes, counted
    WRITES.append(path)
    _write(path, data)


devlog._write = counting_write


def files(name):
    return DIR + "/" + name


def crash(text):
    try:
        raise RuntimeError(text)
    except RuntimeError as e:
        return e


class Hal:
    BOARD = 1
    identity = (None, 1)


class Device:
    """What Core._log reads of a core: its address and ident."""

    address = 9

    def __init__(self, files, cause=1):
        self.ident = (1, None, cause, files)


def read_log(device, offset):
    frame = bus.Decoder()
    frame.feed(Core._log(device, offset))
    got = frame.maybe_extract_frame()
    assert got is not None and got.mtype == bus.LOG and got.addr == 9, got
    return bus.decode_log(got.payload)


def case_a_crash_is_kept_once_and_read_in_pieces():
    f = files("a")
    del WRITES[:]
    devlog.keep(f, 12, crash("the pad fell off the wall"))
    devlog.keep(f, 13, crash("the pad fell off the wall"))  # the same text: no write
    assert WRITES == [f + ".log"], WRITES
    core = Device(f, 2)
    first = read_log(core, 0)
    assert (first.reset_cause_name, first.crash_boot, first.offset) == ("watchdog", 12, 0)
    text, offset = b"", 0
    while offset < first.total:
        piece = read_log(core, offset)
        assert piece.total == first.total and len(piece.text) <= 120
        text += piece.text
        offset = piece.offset + len(piece.text)
    assert text.startswith(b"Traceback") and text.endswith(
        b"RuntimeError: the pad fell off the wall\n"), text
    past = read_log(core, 5000)  # past the end: none, at the end
    assert (past.offset, past.text) == (past.total, b"")
    devlog.keep(f, 14, crash("another fault"))  # a new text: written, with its boot
    assert WRITES == [f + ".log"] * 2 and read_log(core, 0).crash_boot == 14


def case_a_long_text_keeps_its_last_512_bytes_from_a_line_start():
    f = files("b")
    devlog.keep(f, 3, crash("x" * 700 + " the end"))
    with open(f + ".log", "rb") as fh:
        assert fh.readline() == b"3\n"
        text = fh.read()
    assert len(text) == 512 and text.endswith(b" the end\n"), text  # its last line, cut
    log = read_log(Device(f), 0)
    assert log.total == len(text) and log.crash_boot == 3
    devlog.keep(f, 4, crash("a\n" * 300 + "last"))
    with open(f + ".log", "rb") as fh:
        fh.readline()
        text = fh.read()
    assert len(text) <= 512 and text.startswith(b"a\n") and text.endswith(b"last\n"), text


def case_no_crash_kept_and_a_core_without_files():
    log = read_log(Device(files("none")), 0)
    assert (log.crash_boot, log.total, log.text, log.reset_cause_name) == (0, 0, b"", "power-on")
    assert read_log(Device(None, 3), 7) == bus.Log(3)


def case_the_reset_marker_is_read_once_and_the_id_kept():
    f = files("c")
    with open(f + ".rst", "w") as fh:
        fh.write("3")
    board, board_id, cause, kept = devlog.ident(Hal(), f)
    assert (board, cause, kept) == (1, 3, f) and len(board_id) == 8
    again = devlog.ident(Hal(), f)
    assert again == (1, board_id, 1, f), again  # marker gone: the board's own cause
    assert devlog.ident(Hal(), files("d"))[1] != board_id  # another board, another id

    class Pico:
        BOARD = 2
        identity = (b"\x01\x02\x03\x04\x05\x06\x07\x08", 2)

    assert devlog.ident(Pico(), files("e")) == (2, Pico.identity[0], 2, files("e"))
    try:
        os.stat(files("e") + ".id")
        raise AssertionError("a board with its own id keeps none")
    except OSError:
        pass


CASES = [
    case_a_crash_is_kept_once_and_read_in_pieces,
    case_a_long_text_keeps_its_last_512_bytes_from_a_line_start,
    case_no_crash_kept_and_a_core_without_files,
    case_the_reset_marker_is_read_once_and_the_id_kept,
]

if __name__ == "__main__":
    for case in CASES:
        case()
    print("devlog: %d cases ok" % len(CASES))
