# The device log (spec: protocols/BUS.md, 11): the last crash, the reset cause of this boot
# and, on a board with no id of its own, the board id, in small files beside the state file
# (config "files": state.json gives state.log, state.rst, state.id).
#
# Imported when needed (start-up, a fault the main loop survived, a start-up that raised)
# and let go right after: the running device keeps none of this in RAM. GET_LOG reads the
# crash back from the flash in appcore (Core._log), a piece at a time.
#
# state.log: the boot count (INFO resets) of the crash on the first line, then its
# traceback, the last 512 bytes at most (the last lines name the error). Written through a
# temporary file and a rename, and only when the text differs from the one kept; devmain
# asks at most a few times per boot. A Pico's flash wears out with writes: a fault that
# repeats every loop, or a start-up that raises on every boot, must not write each time.
# state.rst: the reset-cause marker. A restart the firmware or its boot loader asks for
# writes "3" (reboot) first, because an RP2040 reports its own machine.reset() as a
# watchdog reset; the unix port's watchdog writes "2" (the unix port has no reset cause).
# The next start reads it and removes it.
# state.id: 8 random bytes drawn at the first start (unix: the chip has no id to read).

import os

from compat import const

_MAX = const(512)  # bytes of crash text kept
_PIECE = const(120)  # bytes compared at a time (appcore reads it back as LOG does)


def ident(hal, files):
    """Core.ident at start-up: (board code, board id, reset cause, files)."""
    board_id, cause = hal.identity
    return hal.BOARD, board_id or _board_id(files), _reset_cause(files, cause), files


def _reset_cause(files, board_cause):
    """This boot's reset cause code (bus.RESET_CAUSES): the marker a restart left, else
    what the board says (board_cause)."""
    path = files + ".rst"
    try:
        with open(path) as f:
            marker = f.read()
        os.remove(path)
        return int(marker)
    except (OSError, ValueError):  # no marker (the usual case), or a torn one
        return board_cause


def _board_id(files):
    """This board's 8-byte id, kept in files.id; drawn at random the first time. When it
    cannot be written, the id lasts this run only."""
    path = files + ".id"
    try:
        with open(path, "rb") as f:
            got = f.read()
        if len(got) == 8:
            return got
    except OSError:
        pass  # the first start
    got = os.urandom(8)
    try:
        _write(path, got)
    except OSError:
        pass
    return got


def keep(files, boot, exc):
    """Keep exc's traceback as the crash of boot `boot`, unless the same text is kept."""
    import io
    import sys

    out = io.StringIO()
    sys.print_exception(exc, out)  # pyright: ignore[reportArgumentType]
    text = out.getvalue().encode()  # pyright: ignore[reportAttributeAccessIssue]
    if len(text) > _MAX:
        text = text[-_MAX:]
        cut = text.find(b"\n") + 1  # from the start of a line, unless the last is too long
        if cut < len(text):
            text = text[cut:]
    if not _kept(files, text):
        _write(files + ".log", str(boot).encode() + b"\n" + text)


def _kept(files, text):
    """True when the crash kept is `text` (read a piece at a time: a device's heap may
    have no 512 bytes in one block)."""
    try:
        with open(files + ".log", "rb") as f:
            f.readline()
            for i in range(0, len(text), _PIECE):
                if f.read(_PIECE) != text[i : i + _PIECE]:
                    return False
            return not f.read(1)
    except OSError:  # none kept
        return False


def _write(path, data):
    """Through a temporary file and a rename: a power cut mid-write leaves the old file."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    try:
        os.rename(tmp, path)
    except OSError:  # FAT will not rename onto an existing file
        os.remove(path)
        os.rename(tmp, path)
