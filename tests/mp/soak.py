# Memory soak on MicroPython: the real application core and call-panel role, driven in
# process through a loopback HAL on a synthetic clock, like a bus master that polls, acks
# every event, sets new panel states and asks for INFO. Run it under -X heapsize=48k:
#     micropython -X heapsize=48k tests/mp/soak.py EVENTS
# Prints one JSON line: events taken, and gc.mem_free() after gc.collect() at the end of
# each thousand events ("free"); a MemoryError or a failed check exits non-zero.

import gc
import json
import sys

import bus
from appcore import Core
from compat import ticks_add
from role_panel import CallPanel

ADDR = 7
KEYS = (0, 1, 2, 3, 5, 6, 7)  # every key but noshow, which wants a long press


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


def config():
    import devconfig  # as devmain does: checked, then let go

    cfg = devconfig.check({"address": ADDR, "role": "call-panel", "window": 4})
    del sys.modules["devconfig"]
    return cfg


def main(events):
    cfg = config()
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
        frame = request(bus.encode_poll(ADDR, ack))
        assert frame.mtype == bus.EVENT, frame
        event = bus.decode_event(frame.payload)
        assert event.seq == (n - 1) % 0xFFFF + 1 and event.key == key + 1, (n, event)
        assert event.pending == 0 and event.age_ds == 1, event
        ack = event.ident
        if n % 100 == 0:
            version = version % 0xFFFF + 1
            state = bus.PanelState("A%03d" % (n % 1000), 1, n % 50, n % 900, n % 3 == 0, True)
            frame = request(bus.encode_set(ADDR, version, state))
            assert frame.mtype == bus.STATUS and bus.decode_status(frame.payload) == version
            info = bus.decode_info(request(bus.encode_get_info(ADDR)).payload)
            assert info.queued == 1 and info.overflows == 0 and info.version == version, info
        if n % 1000 == 0:
            gc.collect()
            free[n // 1000 - 1] = gc.mem_free()
    frame = request(bus.encode_poll(ADDR, ack))
    assert frame.mtype == bus.STATUS, frame
    assert core.lockouts == 0 and core.queue.overflows == 0
    print(json.dumps({"events": events, "free": free, "crc_errors": core.decoder.crc_errors}))


main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
