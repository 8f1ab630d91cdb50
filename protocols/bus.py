# hallgate bus codec: frames and messages of the RS-485 device bus (spec: protocols/BUS.md).
#
# Design note
# -----------
# Operations: `encode_*` turns a message into the bytes of one frame; a `Decoder` is fed
# whatever bytes the line delivered (any split, any garbage) and hands back whole frames
# that passed their CRC, one at a time, through `maybe_extract_frame`; `decode_*` turns a
# frame's payload back into a message.
# Goals: one file, no I/O, no threads, nothing CPython-only, so the gateway (CPython) and
# the devices (MicroPython) import this same file; few allocations on the device.
# Plan: a frame is SYNC ADDR TYPE LEN PAYLOAD CRC16. The decoder hunts for SYNC; a header
# with an impossible LEN or ADDR, or a frame whose CRC fails, costs only its SYNC byte, and
# the hunt goes on from the next byte, so a valid frame that follows (or hides inside)
# garbage is always found. A frame cut short (a device unplugged mid-reply) waits for
# bytes that never come; the I/O side says when the line went quiet (`line_idle`) and the
# decoder then gives the candidate up and looks past it.
# Worst case: each byte of input starts at most one candidate frame, and a candidate costs
# at most one CRC over MAX_PAYLOAD + 3 bytes, so decoding is linear in the input (never
# quadratic), whatever a hostile line sends.
# The master's half (encoders of requests, decoders of replies, names and reprs for
# people) sits under `if MASTER:` and is left out when the device firmware loads this
# file: a device never uses it, and on MicroPython every function's code stays in RAM
# for good, about 4 KB of the 64 KB test heap, which an update over the bus needs. The
# firmware loads bus first through its config check (devmain reads the config before
# anything else), so "devconfig is loading" marks a device. CPython, and MicroPython
# scripts that play the master (tests/mp), get both halves.

import struct
import sys

MASTER = sys.implementation.name != "micropython" or "devconfig" not in sys.modules

SYNC = 0xA5
BROADCAST = 0
MAX_ADDRESS = 247
MAX_PAYLOAD = 128
HEADER = 4  # SYNC ADDR TYPE LEN
OVERHEAD = HEADER + 2  # + CRC16

# Message types. Bit 7 set marks a reply from a device; only the master sends requests.
REPLY = 0x80
POLL = 0x01  # master: "your oldest unacked event, or your status"; may carry an ack
GET_INFO = 0x02  # master: "who are you and how are you"
SET = 0x03  # master: desired state with a version
IDENTIFY = 0x04  # master: show yourself (blink, beep) for N seconds
OTA_BEGIN = 0x05  # master: an image of this size and sha256 follows (otawire.py)
OTA_DATA = 0x06  # master: image bytes at an offset
OTA_COMMIT = 0x07  # master: check the whole image, switch to it on reboot
OTA_QUERY = 0x08  # master: your update state
GET_LOG = 0x09  # master: your reset cause and kept crash text, from an offset
STATUS = 0x81  # device: nothing to report; the state version it shows
EVENT = 0x82  # device: one key event
INFO = 0x83  # device: role, firmware, window, uptime, error counters, board and its id
OTA_STATUS = 0x84  # device: update state, image bytes staged, running firmware
LOG = 0x85  # device: reset cause, the boot of the kept crash, a piece of its text
NAK = 0x8F  # device: request refused, with a reason

if MASTER:
    TYPE_NAMES = {
        POLL: "POLL",
        GET_INFO: "GET_INFO",
        SET: "SET",
        IDENTIFY: "IDENTIFY",
        OTA_BEGIN: "OTA_BEGIN",
        OTA_DATA: "OTA_DATA",
        OTA_COMMIT: "OTA_COMMIT",
        OTA_QUERY: "OTA_QUERY",
        GET_LOG: "GET_LOG",
        STATUS: "STATUS",
        EVENT: "EVENT",
        INFO: "INFO",
        OTA_STATUS: "OTA_STATUS",
        LOG: "LOG",
        NAK: "NAK",
    }

# NAK reasons
NAK_UNKNOWN_TYPE = 1
NAK_BAD_LENGTH = 2
NAK_BAD_VALUE = 3
NAK_WRONG_ROLE = 4

# Roles; a role's code is its index + 1.
ROLES = ("call-panel", "window-display", "feedback-pad")
ROLE_CALL_PANEL = 1
ROLE_WINDOW_DISPLAY = 2
ROLE_FEEDBACK_PAD = 3

# Keys; a key's code is its index in KEYS + VOTE_KEYS, plus 1: a call panel's operator
# keys (1-8), then a feedback pad's vote keys (9 like, 10 dislike). (No global for the
# joined tuple: bus.py's globals sit just under a step where their table grows.)
KEYS = ("call", "recall", "start", "finish", "noshow", "pause", "resume", "redirect")
VOTE_KEYS = ("like", "dislike")

# Key actions
PRESS = 1
LONG = 2
ACTIONS = ("press", "long")

# Call-panel modes; a mode's code is its index.
PANEL_MODES = ("idle", "called", "serving", "paused", "closed")

TEXT_MAX = 8  # characters of display text carried by SET

if MASTER:
    # Boards (INFO); a board's code is its index + 1, 0 unknown. The names are those of
    # a signed bundle's manifest "board" (gateway/bundle.py).
    BOARDS = ("unix", "rp2")

    # Reset causes (LOG); a cause's code is its index. "reboot": the firmware or its boot
    # loader restarted the board itself (a new image, a fall-back).
    RESET_CAUSES = ("unknown", "power-on", "watchdog", "reboot")


def crc16(data, crc=0xFFFF):
    """CRC-16/MODBUS (poly 0xA001 reflected, init 0xFFFF), the CRC every RS-485 tool knows."""
    for byte in data:
        crc ^= byte
        for _ in range(8):
            if crc & 1:
                crc = (crc >> 1) ^ 0xA001
            else:
                crc >>= 1
    return crc


class Frame:
    """One checked frame: destination (request) or source (reply) address, type, payload."""

    def __init__(self, addr, mtype, payload=b""):
        self.addr = addr
        self.mtype = mtype
        self.payload = bytes(payload)

    @property
    def is_reply(self):
        return bool(self.mtype & REPLY)

    if MASTER:
        def to_bytes(self):
            return encode(self.addr, self.mtype, self.payload)

        def __eq__(self, other):
            return (
                isinstance(other, Frame)
                and self.addr == other.addr
                and self.mtype == other.mtype
                and self.payload == other.payload
            )

        def __repr__(self):
            name = TYPE_NAMES.get(self.mtype, "0x%02X" % self.mtype)
            return "Frame(%d, %s, %s)" % (self.addr, name, self.payload.hex())


def encode(addr, mtype, payload=b""):
    """The bytes of one frame. Raises ValueError for an address or payload out of range."""
    if not 0 <= addr <= MAX_ADDRESS:
        raise ValueError("address %d out of range 0-%d" % (addr, MAX_ADDRESS))
    if not 0 <= mtype <= 0xFF:
        raise ValueError("message type %d out of range" % mtype)
    n = len(payload)
    if n > MAX_PAYLOAD:
        raise ValueError("payload of %d bytes exceeds %d" % (n, MAX_PAYLOAD))
    out = bytearray(n + OVERHEAD)
    out[0] = SYNC
    out[1] = addr
    out[2] = mtype
    out[3] = n
    out[HEADER : HEADER + n] = payload
    crc = crc16(memoryview(out)[1 : HEADER + n])
    out[HEADER + n] = crc & 0xFF
    out[HEADER + n + 1] = crc >> 8
    return bytes(out)


class Decoder:
    """Bytes in, checked frames out; resynchronises after garbage.

    >>> d = Decoder()
    >>> d.feed(b"\\x00\\xff" + encode(5, POLL))
    >>> d.maybe_extract_frame()
    Frame(5, POLL, )
    """

    def __init__(self):
        self._buf = bytearray()
        self._pos = 0  # bytes of _buf already consumed; compacted on the next feed
        self.crc_errors = 0  # candidate frames whose CRC failed
        self.discarded = 0  # bytes dropped while hunting for a frame

    def feed(self, data):
        if self._pos:
            # One copy per feed, not per dropped byte (MicroPython bytearrays cannot
            # delete a slice in place).
            self._buf = self._buf[self._pos :]
            self._pos = 0
        self._buf.extend(data)

    def pending(self):
        """Bytes held that are not yet part of a returned frame."""
        return len(self._buf) - self._pos

    def maybe_extract_frame(self, line_idle=False):
        """The next whole, checked frame, or None until more bytes arrive.

        line_idle: the caller saw the line go quiet after the last feed (a few character
        times without a byte). A candidate still waiting for bytes was then cut short, or
        was garbage whose LEN reached past the end: give it up and look past it, so a real
        frame behind it is not held back until the next traffic.
        """
        buf = self._buf
        size = len(buf)
        while True:
            pos = self._pos
            start = buf.find(_SYNC_BYTE, pos)
            if start < 0:
                self.discarded += size - pos
                self._pos = size
                return None
            self.discarded += start - pos
            self._pos = pos = start
            if size - pos < HEADER:
                if line_idle:
                    self.discarded += size - pos
                    self._pos = size
                return None
            addr, n = buf[pos + 1], buf[pos + 3]
            if addr > MAX_ADDRESS or n > MAX_PAYLOAD:
                self.discarded += 1
                self._pos = pos + 1
                continue
            end = pos + HEADER + n + 2
            if size < end:
                if not line_idle:
                    return None
                self.discarded += 1
                self._pos = pos + 1
                continue
            crc = crc16(memoryview(buf)[pos + 1 : end - 2])
            if buf[end - 2] != crc & 0xFF or buf[end - 1] != crc >> 8:
                self.crc_errors += 1
                self.discarded += 1
                self._pos = pos + 1
                continue
            self._pos = end
            return Frame(addr, buf[pos + 2], bytes(buf[pos + HEADER : end - 2]))


_SYNC_BYTE = bytes((SYNC,))


# ---- messages -------------------------------------------------------------------------
# Each message has an encoder returning frame bytes and, where it has a payload, a
# decoder taking a payload and returning a tuple or a small object. Decoders raise
# ValueError naming what is wrong, so the receiver can NAK or report it.


def _need(payload, sizes, what):
    if len(payload) not in sizes:
        raise ValueError("%s payload of %d bytes, expected %s" % (what, len(payload), sizes))


if MASTER:
    def _text(text):
        raw = text.encode()
        if len(raw) > TEXT_MAX:
            raise ValueError("text %r longer than %d bytes" % (text, TEXT_MAX))
        for c in raw:
            if c < 0x20 or c > 0x7E:
                raise ValueError("text %r has a byte outside printable ASCII" % text)
        return raw


def _untext(raw):
    for c in raw:
        if c < 0x20 or c > 0x7E:
            raise ValueError("text has a byte outside printable ASCII")
    return bytes(raw).decode()


if MASTER:
    def encode_poll(addr, ack=None):
        """POLL, optionally acking the event (boot, seq) the master has taken."""
        if ack is None:
            return encode(addr, POLL)
        return encode(addr, POLL, struct.pack("<BH", ack[0], ack[1]))


def decode_poll(payload):
    """The acked (boot, seq), or None for a plain poll."""
    _need(payload, (0, 3), "POLL")
    if not payload:
        return None
    return struct.unpack("<BH", payload)


if MASTER:
    def encode_get_info(addr):
        return encode(addr, GET_INFO)


    def encode_identify(addr, seconds):
        return encode(addr, IDENTIFY, bytes((min(max(seconds, 0), 255),)))


def decode_identify(payload):
    _need(payload, (1,), "IDENTIFY")
    return payload[0]


def encode_status(addr, version):
    return encode(addr, STATUS, struct.pack("<H", version))


if MASTER:
    def decode_status(payload):
        _need(payload, (2,), "STATUS")
        return struct.unpack("<H", payload)[0]


def encode_nak(addr, mtype, reason):
    return encode(addr, NAK, bytes((mtype & 0xFF, reason)))


if MASTER:
    def decode_nak(payload):
        """(refused message type, reason code)"""
        _need(payload, (2,), "NAK")
        return payload[0], payload[1]


class _State:
    """A record equal to another of its class with the same fields (its astuple): one
    __eq__ and __repr__ for the messages and states below, as each method costs every
    device RAM. (astuple is each subclass's: a stub here would cost RAM too.)"""

    def __eq__(self, other):
        return type(other) is type(self) and (
            self.astuple() == other.astuple())  # pyright: ignore[reportAttributeAccessIssue]

    if MASTER:
        def __repr__(self):
            return "%s%r" % (type(self).__name__, self.astuple())  # pyright: ignore


class Event(_State):
    """A key event as a device reports it.

    boot: the device's boot counter (low 8 bits), so sequence numbers restarted by a
    reboot are not mistaken for retransmissions; seq: 1-65535 per boot; key and action:
    codes; age_ds: tenths of a second since the press (saturating), so a press queued
    while the bus was cut keeps its real time; pending: events still queued after it.
    """

    def __init__(self, boot, seq, key, action=PRESS, age_ds=0, pending=0):
        self.boot = boot
        self.seq = seq
        self.key = key
        self.action = action
        self.age_ds = age_ds
        self.pending = pending

    if MASTER:
        @property
        def ident(self):
            return (self.boot, self.seq)

        @property
        def key_name(self):
            names = KEYS + VOTE_KEYS
            n = self.key
            return names[n - 1] if 1 <= n <= len(names) else "key%d" % n

        @property
        def action_name(self):
            return ACTIONS[self.action - 1] if 1 <= self.action <= len(ACTIONS) else "?"

        def astuple(self):
            return (self.boot, self.seq, self.key, self.action, self.age_ds, self.pending)

        def __repr__(self):
            return "Event(boot=%d, seq=%d, %s %s, age=%.1fs, pending=%d)" % (
                self.boot,
                self.seq,
                self.key_name,
                self.action_name,
                self.age_ds / 10,
                self.pending,
            )


_EVENT = "<BHBBHB"


def encode_event(addr, ev):
    return encode(
        addr,
        EVENT,
        struct.pack(
            _EVENT,
            ev.boot,
            ev.seq,
            ev.key,
            ev.action,
            min(ev.age_ds, 0xFFFF),
            min(ev.pending, 0xFF),
        ),
    )


if MASTER:
    def decode_event(payload):
        _need(payload, (8,), "EVENT")
        return Event(*struct.unpack(_EVENT, payload))


class Info(_State):
    """What a device says of itself in reply to GET_INFO.

    board: a code (BOARDS, 0 unknown); board_id: 8 bytes unique to the board (RP2040: its
    flash chip's unique id; unix: random, kept beside the state file), or None. A device
    whose firmware predates board identity reports board 0 and board_id None.
    """

    if MASTER:
        FIELDS = (
            "role",
            "firmware",
            "window",
            "uptime_s",
            "crc_errors",
            "overflows",
            "resets",
            "version",
            "queued",
            "board",
            "board_id",
        )

    def __init__(
        self,
        role,
        firmware,
        window,
        uptime_s=0,
        crc_errors=0,
        overflows=0,
        resets=0,
        version=0,
        queued=0,
        board=0,
        board_id=None,
    ):
        self.role = role  # role code
        self.firmware = firmware  # (major, minor, patch)
        self.window = window
        self.uptime_s = uptime_s
        self.crc_errors = crc_errors
        self.overflows = overflows  # events dropped because the device queue was full
        self.resets = resets  # boot counter
        self.version = version  # applied desired-state version
        self.queued = queued  # events waiting for the master
        self.board = board  # board code
        self.board_id = board_id  # 8 bytes, or None

    if MASTER:
        @property
        def role_name(self):
            return ROLES[self.role - 1] if 1 <= self.role <= len(ROLES) else "role%d" % self.role

        @property
        def board_name(self):
            n = self.board
            return BOARDS[n - 1] if 1 <= n <= len(BOARDS) else "board" + str(n) if n else "unknown"

        @property
        def firmware_text(self):
            return "%d.%d.%d" % tuple(self.firmware)

        def asdict(self):
            d = {}
            for name in self.FIELDS:
                d[name] = getattr(self, name)
            d["role"] = self.role_name
            d["firmware"] = self.firmware_text
            d["board"] = self.board_name
            d["board_id"] = self.board_id and self.board_id.hex()
            return d

        astuple = asdict  # what _State compares (its repr is the one below)

        def __repr__(self):
            return "Info(%r)" % self.asdict()


# INFO's payload: 28 bytes; firmware from before board identity sends the first 19 (up
# to queued). board_id None goes out as 8 zero bytes, and 8 zero bytes come back as None
# (no RP2040 id is all zeros; a random one, 1 in 2**64).
_INFO = "<BBBBHIHHHHBB8s"


def _u16(n):
    return min(n, 0xFFFF)


def encode_info(addr, info):
    major, minor, patch = info.firmware
    board_id = info.board_id or bytes(8)
    _need(board_id, (8,), "board_id")
    return encode(
        addr,
        INFO,
        struct.pack(
            _INFO,
            info.role,
            major,
            minor,
            patch,
            info.window,
            min(info.uptime_s, 0xFFFFFFFF),
            _u16(info.crc_errors),
            _u16(info.overflows),
            _u16(info.resets),
            info.version,
            min(info.queued, 0xFF),
            info.board,
            board_id,
        ),
    )


if MASTER:
    def decode_info(payload):
        """An Info from a 28-byte payload, or a 19-byte one (older firmware: board 0, no id)."""
        _need(payload, (19, 28), "INFO")
        if len(payload) == 19:
            payload = bytes(payload) + bytes(9)  # board 0, no id
        f = struct.unpack(_INFO, payload)
        return Info(f[0], (f[1], f[2], f[3]), f[4], f[5], f[6], f[7], f[8], f[9], f[10], f[11],
                    f[12] if f[12] != bytes(8) else None)


# ---- device log ---------------------------------------------------------------------
# GET_LOG asks for the kept crash text from an offset; LOG answers with the reset cause
# of the running boot, the boot count of the kept crash, the text's total length and up
# to 120 bytes of it, so a reply fits a frame. The master reads offset 0, then each
# offset + len(text), until total. All of it is the master's half: a device answers
# GET_LOG in this layout itself, reading its flash a piece at a time (appcore.Core._log).

if MASTER:
    class Log(_State):
        """A LOG reply: reset_cause (RESET_CAUSES) of the device's running boot;
        crash_boot, the boot count (INFO resets) in which the kept crash happened, 0 when
        none is kept; total, the kept text's length; text, its bytes from offset (at most
        120)."""

        def __init__(self, reset_cause, crash_boot=0, total=0, offset=0, text=b""):
            self.reset_cause = reset_cause
            self.crash_boot = crash_boot
            self.total = total
            self.offset = offset
            self.text = text

        @property
        def reset_cause_name(self):
            n = self.reset_cause
            return RESET_CAUSES[n] if n < len(RESET_CAUSES) else "cause%d" % n

        def astuple(self):
            return (self.reset_cause, self.crash_boot, self.total, self.offset, bytes(self.text))

    def encode_get_log(addr, offset=0):
        return encode(addr, GET_LOG, struct.pack("<H", offset))

    def decode_get_log(payload):
        """The offset asked for."""
        _need(payload, (2,), "GET_LOG")
        return payload[0] | payload[1] << 8

    def encode_log(addr, log):
        """LOG; ValueError as decode_log's, for text over 120 bytes or past the total."""
        payload = struct.pack("<BHHH", log.reset_cause, log.crash_boot, log.total, log.offset)
        payload += log.text
        decode_log(payload)  # the receiver's checks
        return encode(addr, LOG, payload)

    def decode_log(payload):
        n = len(payload) - 7
        if n < 0:
            raise ValueError("LOG payload of %d bytes is too short" % len(payload))
        cause, boot, total, offset = struct.unpack("<BHHH", payload[:7])
        if n > 120 or offset + n > total:
            raise ValueError("LOG text of %d bytes at %d: over 120, or past its total %d"
                             % (n, offset, total))
        return Log(cause, boot, total, offset, bytes(payload[7:]))


# ---- desired state ----------------------------------------------------------------------
# SET payload: version u16, then the role's state. The version is the master's; a device
# stores it with what it shows and reports it in every STATUS, so the master resends the
# state whenever the two differ (after a reboot the device reports 0).

class DisplayState(_State):
    """What a window display shows: text (empty = the device's idle text), blink, brightness."""

    def __init__(self, text="", blink_s=0, brightness=8):
        self.text = text
        self.blink_s = blink_s
        self.brightness = brightness  # 0-15, the MAX7219 intensity steps

    def astuple(self):
        return (self.text, self.blink_s, self.brightness)


PANEL_TEA = 1  # flag: the called visitor waited over the norm
PANEL_BEEP = 2  # flag: beep once when this state is applied


class PanelState(_State):
    """What an operator panel shows: ticket, mode, queue length, the called visitor's wait."""

    def __init__(self, text="", mode=0, queue=0, wait_s=0, tea=False, beep=False):
        self.text = text
        self.mode = mode  # index into PANEL_MODES
        self.queue = queue
        self.wait_s = wait_s
        self.tea = tea
        self.beep = beep

    def astuple(self):
        return (self.text, self.mode, self.queue, self.wait_s, self.tea, self.beep)


# A feedback pad's SET flags: bit 0 invite (both LEDs blink: voting is open), bit 1 thank
# like, bit 2 thank dislike (that key's LED steady for ack_ds after the state is applied;
# never both). Bits 3-7 are reserved (0).


def FeedbackState(invite=False, thank=None, ack_ds=0):
    """What a feedback pad's two LEDs show, as the tuple (invite, thank, ack_ds): the
    invitation while voting is open (invite: both blink), the thank-you after a counted
    vote (thank: "like" or "dislike", that key's LED steady for ack_ds tenths of a second
    from when the state is applied, then as invite says), or nothing.

    A plain tuple rather than a class like the other states: a class costs every device
    about 400 bytes of RAM (on the unix port), most of them not pads, and the heap an
    update over the bus needs has little more to spare than that.

    >>> FeedbackState(thank="like", ack_ds=15)
    (False, 'like', 15)
    """
    return (invite, thank, ack_ds)


if MASTER:
    def encode_set(addr, version, state):
        """SET carrying a DisplayState, PanelState or FeedbackState (tuple) under a version
        (1-65535)."""
        if not 1 <= version <= 0xFFFF:
            raise ValueError("state version %d out of range 1-65535" % version)
        if isinstance(state, DisplayState):
            if not 0 <= state.brightness <= 15:
                raise ValueError("brightness %d out of range 0-15" % state.brightness)
            body = struct.pack("<BHBB", ROLE_WINDOW_DISPLAY, version, min(state.blink_s, 255),
                               state.brightness)
        elif isinstance(state, PanelState):
            if not 0 <= state.mode < len(PANEL_MODES):
                raise ValueError("panel mode %d out of range" % state.mode)
            flags = (PANEL_TEA if state.tea else 0) | (PANEL_BEEP if state.beep else 0)
            body = struct.pack("<BHBBHH", ROLE_CALL_PANEL, version, state.mode, flags,
                               _u16(state.queue), _u16(state.wait_s))
        elif isinstance(state, tuple):
            invite, thank, ack_ds = state  # a FeedbackState
            flags = 1 if invite else 0  # (no text: the payload ends here)
            if thank is not None:
                flags |= 2 << VOTE_KEYS.index(thank)  # ValueError for another name
            return encode(addr, SET, struct.pack("<BHBB", ROLE_FEEDBACK_PAD, version, flags,
                                                 min(max(ack_ds, 0), 255)))
        else:
            raise ValueError("unknown state %r" % (state,))
        return encode(addr, SET, body + _text(state.text))


def decode_set(payload):
    """(role code, version, DisplayState, PanelState or FeedbackState tuple); ValueError
    if malformed."""
    if len(payload) < 3:
        raise ValueError("SET payload of %d bytes is too short" % len(payload))
    role = payload[0]
    version = payload[1] | payload[2] << 8
    if version == 0:
        raise ValueError("SET version 0 is reserved for 'nothing applied'")
    if role == ROLE_WINDOW_DISPLAY:
        if len(payload) < 5:
            raise ValueError("display SET payload too short")
        blink_s, brightness = payload[3], payload[4]
        if brightness > 15:
            raise ValueError("brightness %d out of range 0-15" % brightness)
        text = _untext(payload[5:])
        if len(text) > TEXT_MAX:
            raise ValueError("text longer than %d" % TEXT_MAX)
        return role, version, DisplayState(text, blink_s, brightness)
    if role == ROLE_CALL_PANEL:
        if len(payload) < 9:
            raise ValueError("panel SET payload too short")
        mode, flags = payload[3], payload[4]
        if mode >= len(PANEL_MODES):
            raise ValueError("panel mode %d out of range" % mode)
        queue = payload[5] | payload[6] << 8
        wait_s = payload[7] | payload[8] << 8
        text = _untext(payload[9:])
        if len(text) > TEXT_MAX:
            raise ValueError("text longer than %d" % TEXT_MAX)
        return role, version, PanelState(
            text, mode, queue, wait_s, bool(flags & PANEL_TEA), bool(flags & PANEL_BEEP)
        )
    if role == ROLE_FEEDBACK_PAD:
        _need(payload, (5,), "pad SET")
        flags = payload[3]
        if flags > 5:  # 6 and 7 would thank for both keys, 8 and up are reserved
            raise ValueError("pad flags %d out of range" % flags)
        thank = VOTE_KEYS[flags >> 2] if flags & 6 else None
        return role, version, (bool(flags & 1), thank, payload[4])  # a FeedbackState
    raise ValueError("SET for unknown role %d" % role)
