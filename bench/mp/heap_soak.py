# Heap high-water of the device firmware on MicroPython (run by bench/fw_heap.py):
#     micropython -X heapsize=48k bench/mp/heap_soak.py EVENTS THRESHOLD
# The real application core and call-panel role, driven in process as tests/mp/soak.py
# does (loopback HAL, synthetic clock; a master that polls, acks every event, sets a new
# panel state and asks for INFO every 100 events). gc.mem_alloc() is sampled after every
# main-loop tick and every request. With THRESHOLD > 0, gc.threshold(THRESHOLD) makes the
# collector run after that many bytes were allocated, so the samples show what is live
# plus at most THRESHOLD bytes of garbage; with 0 the collector runs only when the heap
# is full, as on a board. Prints one JSON line.
#
# As on a device (and as tests/mp/soak.py), the config is read first, and through it the
# codec: bus loads its device half only (bus.MASTER is False), so this heap holds what a
# device's does. The master's side is a few frames packed and unpacked with struct, in the
# layouts of protocols/BUS.md.

import gc
import json
import struct
import sys

ADDR = 7


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

KEYS = (0, 1, 2, 3, 5, 6, 7)  # every key but noshow, which wants a long press


class Loopback:
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


def step(n, ack, run, request, hal, live_peak):
    """One key event pressed, polled and acked; a SET and an INFO every 100."""
    key = KEYS[n % len(KEYS)]
    hal.levels[key] = 1
    run(40)
    hal.levels[key] = 0
    run(140)
    frame = request(bus.encode(ADDR, bus.POLL, struct.pack("<BH", *ack) if ack else b""))
    assert frame.mtype == bus.EVENT, frame
    ack = struct.unpack_from("<BH", frame.payload)  # (boot, seq)
    if n % 100 == 0:
        version = n // 100 % 0xFFFF + 1  # a panel SET: "Annn" called, tea every third
        request(bus.encode(ADDR, bus.SET, struct.pack(
            "<BHBBHH", bus.ROLE_CALL_PANEL, version, 1, 2 | (n % 3 == 0), n % 50, n % 900)
            + ("A%03d" % (n % 1000)).encode()))  # noqa: UP031 - as tests/mp/soak.py
        request(bus.encode(ADDR, bus.GET_INFO))
        gc.collect()
        live = gc.mem_alloc()
        if live > live_peak[0]:
            live_peak[0] = live
    return ack


def main(events, threshold):
    hal = Loopback()
    clock = [ticks_add(0, -5000)]
    role = CallPanel(hal, cfg, clock[0])
    core = Core(hal, cfg, role, 1, 1, clock[0])
    decoder = bus.Decoder()
    gc.collect()
    loaded = gc.mem_alloc()  # everything loaded and built, nothing run yet
    heap = gc.mem_alloc() + gc.mem_free()
    peak = [0]
    if threshold:
        gc.threshold(threshold)

    def sample():
        a = gc.mem_alloc()
        if a > peak[0]:
            peak[0] = a

    def run(ms):
        for _ in range(ms // 5):
            clock[0] = ticks_add(clock[0], 5)
            core.tick(clock[0])
            sample()

    def request(data):
        hal.reply = None
        core.feed(data, clock[0])
        sample()
        decoder.feed(hal.reply)
        frame = decoder.maybe_extract_frame()
        sample()
        return frame

    ack = None
    live_peak = [0]
    failed = None
    n = 0
    try:
        for n in range(1, events + 1):
            ack = step(n, ack, run, request, hal, live_peak)
    except MemoryError as e:  # reported, not raised: running out is a result here
        failed = {"event": n, "error": str(e)}
        hal = core = role = None
    gc.threshold(-1)
    gc.collect()
    print(json.dumps({"events": events, "heap": heap, "loaded": loaded,
                      "peak_sampled": peak[0], "live_peak": live_peak[0],
                      "end_live": gc.mem_alloc(), "threshold": threshold,
                      "memory_error": failed}))


main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000,
     int(sys.argv[2]) if len(sys.argv) > 2 else 0)
