# Firmware update over the bus, the device's side (spec: protocols/BUS.md, 10).
#
# The image is staged in ota.bin beside the slots, with ota.json naming its size and
# sha256, so an update cut by a reset or a lost bus resumes where it stopped: OTA_BEGIN
# for the same image answers with the bytes already staged. Bytes come strictly in order
# (OTA_DATA at any other offset is answered with what is staged, and the master goes on
# from there). OTA_COMMIT is answered at once ("checking"); the next tick of the main loop
# hashes the whole staged file, unpacks it into the slot that is not running, marks that
# slot for a trial in boot.json and asks the main loop to reboot, so the bus never waits
# for the flash. The boot loader (slots.py) does the rest. Imported at the first update
# request only.

import json
import os
import struct

import bus
import otawire as ow

_BLOCK = 256  # bytes read at a time when hashing or unpacking


class Receiver:
    def __init__(self, core, firmware):
        self._core = core
        self._firmware = firmware
        slots = core.slots
        self._root = slots.root if slots else ""
        self._file = None  # ota.bin, open while receiving
        self._size = 0
        self._digest = None
        self.have = 0
        self._state = ow.IDLE  # of the transfer; IDLE: see the slots (_status)
        self._reason = ""

    def answer(self, mtype, payload):
        if self._core.slots is None:
            return self._status(ow.BAD_IMAGE, "no slots: install with hallgate flash")
        try:
            if mtype == bus.OTA_BEGIN:
                self._begin(*ow.decode_begin(payload))
            elif mtype == bus.OTA_DATA:
                self._data(*ow.decode_data(payload))
            elif mtype == bus.OTA_COMMIT:
                if self._state == ow.RECEIVING and ow.decode_commit(payload) == self._digest:
                    self._state, self._reason = ow.CHECKING, ""  # tick() does the work
            elif payload:
                return self._core._nak(mtype, bus.NAK_BAD_LENGTH)
        except ValueError:
            return self._core._nak(mtype, bus.NAK_BAD_LENGTH)
        except OSError as e:  # a full or failing flash: say so, keep running
            self._stop()
            self._state, self._reason = ow.BAD_IMAGE, "flash: %r" % (e,)
        state, reason = self._state, self._reason
        if state == ow.IDLE:  # the slots say how the last update ended
            slots = self._core.slots
            last = slots.state.get("last")
            if slots.trial:
                state = ow.TRIAL
            elif last:
                state, reason = last[0], last[1]
        return self._status(state, reason)

    def busy(self):
        """True while an image is coming in or being checked."""
        return self._state == ow.RECEIVING or self._state == ow.CHECKING

    def tick(self):
        """The main loop's turn: check and unpack a committed image."""
        if self._state == ow.CHECKING:
            try:
                self._commit()
            except OSError as e:  # a full or failing flash
                self._discard()
                self._state, self._reason = ow.BAD_IMAGE, "flash: %r" % (e,)

    def _status(self, state, reason):
        return ow.encode_status(
            self._core.address, ow.Status(state, self.have, self._firmware, reason))

    def _path(self, name):
        return self._root + name

    def _begin(self, size, digest):
        if self._state == ow.RECEIVING and digest == self._digest and size == self._size:
            return  # a repeated BEGIN (its reply was lost)
        self._stop()
        try:
            with open(self._path("ota.json")) as f:
                meta = json.load(f)
            same = meta["size"] == size and meta["sha256"] == _hex(digest)
            have = os.stat(self._path("ota.bin"))[6] if same else 0
        except (OSError, ValueError, KeyError):
            same, have = False, 0
        if not same or have > size:
            _write(self._path("ota.json"), json.dumps({"size": size, "sha256": _hex(digest)}))
            have = 0
        self._file = open(self._path("ota.bin"), "ab" if have else "wb")
        self._size, self._digest, self.have = size, digest, have
        self._state, self._reason = ow.RECEIVING, ""

    def _data(self, offset, data):
        f = self._file
        if self._state != ow.RECEIVING or offset != self.have or f is None:
            return  # the status tells the master where to go on
        if self.have + len(data) > self._size:
            raise ValueError
        f.write(data)
        f.flush()  # a reset keeps what the reply said was staged
        self.have += len(data)

    def _commit(self):
        self._stop()
        if self.have != self._size:
            self._state, self._reason = ow.RECEIVING, "%d of %d bytes" % (self.have, self._size)
            self._file = open(self._path("ota.bin"), "ab")
            return
        import hashlib

        h = hashlib.sha256()
        with open(self._path("ota.bin"), "rb") as f:
            _each_block(f, self._size, h.update, self._core.hal.feed)
        if h.digest() != self._digest:
            self._discard()
            self._state, self._reason = ow.BAD_IMAGE, "image sha256 mismatch"
            return
        slots = self._core.slots
        new = "b" if slots.slot == "a" else "a"
        try:
            version = self._unpack(self._path(new + "/"))
        except (OSError, ValueError, IndexError) as e:  # the slot stays unused
            self._discard()
            self._state, self._reason = ow.BAD_IMAGE, "cannot unpack: %r" % (e,)
            return
        self._discard()
        slots.save({"slot": slots.slot, "trial": new, "tries": 0, "version": version})
        self._state, self._reason = ow.STAGED, version
        self._core.reboot = True  # after this reply

    def _unpack(self, folder):
        """Write the image's files into `folder` (emptied first); returns its version."""
        try:
            os.mkdir(folder[:-1])
        except OSError:
            pass  # already there
        for name in os.listdir(folder[:-1]):
            os.remove(folder + name)
        with open(self._path("ota.bin"), "rb") as f:
            if f.read(4) != ow.MAGIC:
                raise OSError("not an image")
            version = _name(f)
            while True:
                name = _name(f)
                if not name:
                    return version
                size = struct.unpack("<I", f.read(4))[0]
                with open(folder + name, "wb") as out:
                    _each_block(f, size, out.write, self._core.hal.feed)

    def _stop(self):
        if self._file is not None:
            self._file.close()
            self._file = None

    def _discard(self):
        for name in ("ota.bin", "ota.json"):
            try:
                os.remove(self._path(name))
            except OSError:
                pass
        self.have = 0


def _each_block(f, size, use, feed):
    """Read exactly `size` bytes of f, a block at a time, into use(); feed() the watchdog
    at each: hashing and unpacking an image on a Pico's flash take seconds."""
    view = memoryview(bytearray(_BLOCK))
    while size > 0:
        feed()
        n = f.readinto(view[: min(size, _BLOCK)])
        if not n:
            raise OSError("image cut short")
        use(view[:n])
        size -= n


def _name(f):
    n = f.read(1)[0]
    return f.read(n).decode() if n else ""


def _hex(digest):
    return "".join("%02x" % b for b in digest)


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)
