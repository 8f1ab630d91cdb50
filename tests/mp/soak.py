# Memory soak on MicroPython: the real application core and call-panel role, driven in
# process through a loopback HAL on a synthetic clock, like a bus master that polls, acks
# every event, sets new panel states and asks for INFO. Run it under -X heapsize=48k:
#     micropython -X heapsize=48k tests/mp/soak.py EVENTS
# Prints one JSON line: events taken, and gc.mem_free() after gc.collect() at the end of
# each thousand events ("free"); a MemoryError or a failed check exits non-zero.
#
# As on a device, the config is read first, and through it the codec (devconfig imports
# bus): bus then loads its device half only (bus.MASTER is False), as the firmware does,
# so this heap holds what a device's does. The master's side here is a few frames packed
# and unpacked with struct, in the layouts of protocols/BUS.md, with names the firmware
# has already: this heap is at a step of MicroPython's name pool (320 more names cost
# 3.8 KB at once; README, RAM).

import gc
import json
import struct
import sys

ADDR = 7
KEYS = (0, 1, 2, 3, 5, 6, 7)  # every key but noshow, which wants a long press


def config():
    import devconfig  # as devmain does: checked first, then let go

    cfg = devconfig.check({"address": ADDR, "role": "call-panel", "window": 4})
    del sys.modules["devconfig"]
    gc.collect()
    return cfg


cfg = config()

import bus  # noqa: E402  (loaded by devconfig already: the device half)
from appcore import Core  # noqa: E402
from compat import ticks_add  # noqa: E402
from role_panel import CallPanel  # noqa: E402

assert not bus.MASTER


class Loopback:
    """A board with nothing on it: key levels set by the soak, replies kept for it."""

    def __init__(self):
        self.display = self
        self.levels = bytearray(8)
        self.reply = None

    def show(self, text):
        pass

    def light(self, on):
        pass

    def intensity(self, level):
        pass

    def led(self, on):
        pass

    def buzzer(self, on):
        pass

    def emit(self, kind, value):
        pass

    def key_level(self, i, now):
        return self.levels[i]

    def uart_write(self, data):
        self.reply = data


def main(events):
    gc.collect()
    hal = Loopback()
    clock = [ticks_add(0, -5000)]  # crosses the tick wrap early on
    role = CallPanel(hal, cfg, clock[0])
    core = Core(hal, cfg, role, 1, 1, clock[0])
    decoder = bus.Decoder()

    def run(ms):  # the main loop's ticks, every 5 ms
        for _ in range(ms // 5):
            clock[0] = ticks_add(clock[0], 5)
            core.tick(clock[0])

    def request(data):
        hal.reply = None
        core.feed(data, clock[0])
        decoder.feed(hal.reply)
        return decoder.maybe_extract_frame()

    ack = None
    free = [0] * (events // 1000)  # allocated up front: a growing list would look like a leak
    version = 0
    for n in range(1, events + 1):
        key = KEYS[n % len(KEYS)]
        hal.levels[key] = 1
        run(40)
        hal.levels[key] = 0
        run(140)  # 7 keys x 180 ms: each key's lockout (1 s) has passed when it comes again
        # (names the codec has already: every new name costs this small heap, see above)
        frame = request(bus.encode(ADDR, bus.POLL, struct.pack("<BH", *ack) if ack else b""))
        assert frame.mtype == bus.EVENT, frame
        boot, seq, key, action, age_ds, pending = struct.unpack("<BHBBHB", frame.payload)
        assert seq == (n - 1) % 0xFFFF + 1 and key == KEYS[n % len(KEYS)] + 1, (n, seq, key)
        assert pending == 0 and age_ds == 1, (pending, age_ds)
        ack = (boot, seq)
        if n % 100 == 0:
            version = version % 0xFFFF + 1  # a panel SET: "Annn" called, tea every third
            frame = request(bus.encode(ADDR, bus.SET, struct.pack(
                "<BHBBHH", bus.ROLE_CALL_PANEL, version, 1, 2 | (n % 3 == 0), n % 50, n % 900)
                + ("A%03d" % (n % 1000)).encode()))
            assert frame.mtype == bus.STATUS and frame.payload == struct.pack("<H", version)
            frame = request(bus.encode(ADDR, bus.GET_INFO))
            assert frame.mtype == bus.INFO, frame
            info = struct.unpack_from("<HHHB", frame.payload, 12)  # overflows resets version queued
            assert info[0] == 0 and info[2] == version and info[3] == 1, info
        if n % 1000 == 0:
            gc.collect()
            free[n // 1000 - 1] = gc.mem_free()
    frame = request(bus.encode(ADDR, bus.POLL, struct.pack("<BH", *ack)))
    assert frame.mtype == bus.STATUS, frame
    assert core.lockouts == 0 and core.queue.overflows == 0
    print(json.dumps({"events": events, "free": free, "crc_errors": core.decoder.crc_errors}))


main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
