# The application core shared by every role and board: bus requests in, replies out;
# key samples in, queued events out.
#
# It owns the bus decoder, the event queue and the keys; the role (role_*.py) owns what
# is shown; the HAL (hal_*.py) owns every board call. The core never reads a clock
# itself: every entry point takes `now` (ticks_ms), so a test can drive the real core
# with a synthetic clock and a loopback HAL.
#
# HAL interface used here and by the roles:
#   uart_write(data)      send one reply (an RS-485 HAL drives DE around it)
#   key_level(i, now)     1 while contact i (role.KEYS[i]) is closed
#   display               .show(text) .light(on) .intensity(level)
#   led(on), buzzer(on)   panel outputs; led(on, i): the LED in key i (a feedback pad's)
#   emit(kind, value)     observer channel: what a test or simulator may watch
#                         (JSON lines on the unix HAL; nothing on a board)
# and by devmain and devlog: BOARD (a bus.BOARDS code), identity ((board id or None,
# reset cause)), watchdog(ms), feed(), close().

import gc
import struct
import sys

import bus
import keypad
from eventqueue import EventQueue
from compat import const, ticks_diff

FIRMWARE = (0, 1, 0)
_OTA_IDLE_MS = const(5000)  # an update's modules are let go this long after its last request


class Core:
    def __init__(self, hal, cfg, role, boot, resets, now, slots=None):
        self.hal = hal
        self.role = role
        self.slots = slots  # the boot loader's Boot (main.py); None on a development image
        self.ota = None  # ota.Receiver, made at the first update request
        self._ota_at = now  # when the last update request came
        self.reboot = False  # set once a new image is staged: the main loop reboots
        self.address = cfg["address"]
        self.window = cfg["window"]
        self.resets = resets  # boot counter, reported in INFO
        # (board code, board id, reset cause, devlog's files), set by devmain once the
        # board is known: INFO's board and id, LOG's reset cause and crash (one tuple:
        # each attribute costs RAM). No files, no log: the tests' cores.
        self.ident = (0, None, 0, None)  # type: tuple
        self.decoder = bus.Decoder()
        # A partial frame is given up after 3 quiet character times (BUS.md, 2 and 7):
        # 0.26 ms at 115200 baud. In whole ms ticks, one more so a byte that came at the end
        # of a millisecond is not taken for quiet just after it.
        self.quiet_ms = (30000 + cfg["baud"] - 1) // cfg["baud"] + 1
        self._last_rx = now
        self.queue = EventQueue(cfg["queue_len"], boot)
        long_keys = cfg["long_keys"]
        self.keys = [
            keypad.Key(
                (bus.KEYS + bus.VOTE_KEYS).index(name) + 1,  # the key's code
                long=name in long_keys,
                debounce_ms=cfg["debounce_ms"],
                long_ms=cfg["long_ms"],
                lockout_ms=cfg["lockout_ms"],
            )
            for name in role.KEYS
        ]
        self.lockouts = 0  # presses ignored by the lockout
        self.shorts = 0  # long-press keys let go too early
        self.requests = 0  # requests addressed to this device (or broadcast)
        self.naks = 0
        self._uptime_s = 0
        self._uptime_ms = 0  # milliseconds not yet counted into _uptime_s
        self._last = now

    # ---- bus ----------------------------------------------------------------------

    def feed(self, data, now):
        """Bytes from the bus; replies go out through the HAL as each request completes."""
        self.decoder.feed(data)
        self._last_rx = now
        self._extract(False, now)

    def waiting(self):
        """True while part of a frame is held: the loop should look again soon (tick()
        gives the part up once the line has been quiet)."""
        return self.decoder.pending() > 0

    def _extract(self, line_idle, now):
        while True:
            frame = self.decoder.maybe_extract_frame(line_idle)
            if frame is None:
                return
            reply = self.handle(frame, now)
            if reply is not None:
                self.hal.uart_write(reply)

    def handle(self, frame, now):
        """One checked frame; the reply's bytes, or None (not for us, a reply, broadcast)."""
        if frame.is_reply:
            return None  # another device talking to the master
        if frame.addr != self.address and frame.addr != bus.BROADCAST:
            return None
        self.requests += 1
        reply = self._answer(frame.mtype, frame.payload, now)
        if frame.addr == bus.BROADCAST:
            return None  # every device would answer at once
        return reply

    def _answer(self, mtype, payload, now):
        addr = self.address
        if mtype == bus.POLL:
            try:
                ack = bus.decode_poll(payload)
            except ValueError:
                return self._nak(mtype, bus.NAK_BAD_LENGTH)
            if ack is not None:
                self.queue.ack(ack[0], ack[1])
            queue = self.queue
            head = queue.head()
            if head is None:
                return bus.encode_status(addr, self.role.version)
            seq, key, action, pressed_at = head
            age = queue.age_ds(pressed_at, now)
            return bus.encode_event(
                addr, bus.Event(queue.boot, seq, key, action, age, len(queue) - 1)
            )
        if mtype == bus.GET_INFO:
            if payload:
                return self._nak(mtype, bus.NAK_BAD_LENGTH)
            return bus.encode_info(addr, self.info())
        if mtype == bus.SET:
            try:
                role, version, state = bus.decode_set(payload)
            except ValueError:
                return self._nak(mtype, bus.NAK_BAD_VALUE)
            if role != self.role.ROLE:
                return self._nak(mtype, bus.NAK_WRONG_ROLE)
            fresh = version != self.role.version
            if fresh or state != self.role.state:
                self.role.apply(version, state, now, fresh)
            return bus.encode_status(addr, self.role.version)
        if mtype == bus.GET_LOG:
            if len(payload) != 2:
                return self._nak(mtype, bus.NAK_BAD_LENGTH)
            return self._log(payload[0] | payload[1] << 8)
        if mtype == bus.IDENTIFY:
            try:
                seconds = bus.decode_identify(payload)
            except ValueError:
                return self._nak(mtype, bus.NAK_BAD_LENGTH)
            self.role.identify(seconds, now)
            self.hal.emit("identify", seconds)
            return bus.encode_status(addr, self.role.version)
        slots = self.slots
        if mtype == bus.OTA_QUERY and self.ota is None and not payload and slots is not None:
            return self._last_update(slots)
        if bus.OTA_BEGIN <= mtype <= bus.OTA_QUERY:
            if self.ota is None:
                gc.collect()  # ~5 KB in one go: from a heap tidied first
                # otawire first: its globals table wants ~600 bytes in one piece, which the
                # heap has before ota's code is in it
                import otawire  # noqa: F401, I001
                import ota

                self.ota = ota.Receiver(self, FIRMWARE)
            self._ota_at = now
            return self.ota.answer(mtype, payload)
        return self._nak(mtype, bus.NAK_UNKNOWN_TYPE)

    def _last_update(self, slots):
        """OTA_STATUS when no update is running: how the last one ended, from the slots.
        The master asks this again and again in a new image's first seconds, the tightest
        moment for RAM: answered without importing ota and otawire (~5 KB). The layout is
        otawire.encode_status's: the master reads it with otawire.decode_status after every
        update in tests/test_ota.py."""
        last = slots.state.get("last") or (0, "")  # 0: otawire.IDLE
        state, reason = (3, "") if slots.trial else (last[0], last[1])  # 3: TRIAL
        head = struct.pack("<BIBBB", state, 0, FIRMWARE[0], FIRMWARE[1], FIRMWARE[2])
        return bus.encode(self.address, bus.OTA_STATUS, head + reason.encode()[:64])

    def _log(self, offset):
        """LOG: this boot's reset cause and up to 120 bytes of the crash devlog.py keeps,
        from offset (past the end: none, at the end), read from the flash now: no RAM
        between requests, and no module loaded for it (one coming and going splits the
        heap an update needs). The layout is bus.encode_log's, left out of a device's bus
        with the rest of the master's half: the master reads it with bus.decode_log
        (tests/test_firmware_identity.py)."""
        boot = total = 0
        text = b""
        try:
            with open(self.ident[3] + ".log", "rb") as f:
                boot = min(int(f.readline()), 0xFFFF)
                start = f.tell()
                total = f.seek(0, 2) - start
                f.seek(start + min(offset, total))
                text = f.read(120)  # (last: nothing raises after it)
        except (OSError, ValueError, TypeError):  # none kept (TypeError: no files)
            boot = total = 0
        head = struct.pack("<BHHH", self.ident[2], boot, total, min(offset, total))
        return bus.encode(self.address, bus.LOG, head + text)

    def _nak(self, mtype, reason):
        self.naks += 1
        return bus.encode_nak(self.address, mtype, reason)

    def info(self):
        return bus.Info(
            self.role.ROLE,
            FIRMWARE,
            self.window,
            uptime_s=self._uptime_s,
            crc_errors=self.decoder.crc_errors,
            overflows=self.queue.overflows,
            resets=self.resets,
            version=self.role.version,
            queued=len(self.queue),
            board=self.ident[0],
            board_id=self.ident[1],
        )

    # ---- time and keys ------------------------------------------------------------

    def tick(self, now):
        """Call every few ms (Debouncer.sample_ms): samples the keys, runs the role, and
        gives up a partial frame the quiet line will not complete (garbage whose LEN reached
        past its end may hide a real request behind it)."""
        if self.decoder.pending() and ticks_diff(now, self._last_rx) >= self.quiet_ms:
            self._extract(True, now)
        ota = self.ota
        if ota is not None:
            ota.tick()
            if not ota.busy() and ticks_diff(now, self._ota_at) >= _OTA_IDLE_MS:
                # an update's ~5 KB of RAM back once its requests have stopped (not after
                # each one: importing it again for every request fragments the heap)
                self.ota = None
                del sys.modules["ota"], sys.modules["otawire"]
        elapsed = ticks_diff(now, self._last)
        self._last = now
        if elapsed > 0:
            # uptime in whole seconds plus a remainder: never a growing millisecond
            # count, which would become a heap-allocated long int after 12 days
            self._uptime_ms += elapsed
            if self._uptime_ms >= 1000:
                self._uptime_s += self._uptime_ms // 1000
                self._uptime_ms %= 1000
        hal = self.hal
        keys = self.keys
        for i in range(len(keys)):
            result = keys[i].sample(hal.key_level(i, now), now)
            if result:
                self._key(i, result, now)
        self.role.tick(now)

    def _key(self, i, result, now):
        name = self.role.KEYS[i]
        emit = self.hal.emit
        if result == keypad.PRESS or result == keypad.LONG:
            seq = self.queue.add(self.keys[i].code, result, now)
            what = {"seq": seq or self.queue.last_seq, "key": name,
                    "action": bus.ACTIONS[result - 1]}
            if seq:
                emit("event", what)
            else:
                what["overflows"] = self.queue.overflows
                emit("dropped", what)
        elif result == keypad.LOCKED:
            self.lockouts += 1
            emit("ignored", {"key": name, "why": "lockout"})
        elif result == keypad.SHORT:
            self.shorts += 1
            emit("ignored", {"key": name, "why": "short"})
        self.role.key_feedback(result, now)

    # ---- observer channel ---------------------------------------------------------

    def counters(self):
        """Everything the device counts, for the control channel's `info`."""
        queue = self.queue
        return {
            "boot": queue.boot,
            "resets": self.resets,
            "uptime_s": self._uptime_s,
            "version": self.role.version,
            "queued": len(queue),
            "last_seq": queue.last_seq,
            "overflows": queue.overflows,
            "lockouts": self.lockouts,
            "shorts": self.shorts,
            "requests": self.requests,
            "naks": self.naks,
            "crc_errors": self.decoder.crc_errors,
            "discarded": self.decoder.discarded,
        }
