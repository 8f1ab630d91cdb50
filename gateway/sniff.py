"""The bus as a protocol analyser sees it: bytes with timestamps in, decoded records out.

Design note
-----------
Operations: `Sniffer.feed(data, t)` takes whatever bytes a passive listener read (a second
RS-485 adapter, or the daemon's frame tap) with the time they arrived, and returns the
records they completed; `tick(t)` gives up a partial frame once the line has been quiet
(a frame cut short), `finish(t)` at the end. `format_record` and `format_summary` turn
records into the lines `hallgate bus sniff` prints.
Goals: sans-I/O (no port, no clock, no thread), so it is tested on byte strings; every byte
accounted for: each one ends up in a good frame or in a bad record.
Plan: protocols/bus.py's `Decoder` finds the good frames (and counts CRC failures). This
module keeps its own copy of the bytes not yet returned as part of a frame, so whatever the
decoder skipped between two good frames (a "gap") can be shown and classified: a SYNC with a
plausible header and all its bytes is a frame whose CRC failed ("crc"), one whose LEN
reaches past the end of the gap is a frame cut short ("cut-short"), and anything else is
"garbage". A gap is closed by the next good frame, by a quiet line or by the end.
A listener that starts mid-frame sees that frame's tail before the first good frame, and
one that stops mid-frame sees a frame cut short at the end: neither is a fault of the line,
so those two pieces (the first, if it starts the capture, and the last, if it ends it) are
"partial" records, counted apart from the bad ones.

Record (a dict; JSON as is):
    {"t": 12.3456, "kind": "frame", "dir": "request" | "reply", "addr": 5,
     "type": "POLL", "fields": {...}, "len": 6, "hex": "a5 05 01 00 60 51"}
    {"t": ..., "kind": "bad", "error": "crc" | "cut-short" | "garbage" | "payload",
     "len": 11, "hex": "...", "detail": "..."}   (a "payload" error is a frame with a good
     CRC whose payload does not decode: it has dir, addr and type too)
    {"t": ..., "kind": "partial", "where": "start" | "end", "len": 3, "hex": "...",
     "detail": "..."}   (the capture began or ended inside a frame: not a line fault)
`t` is the time given with the bytes holding the record's first byte.
"""

import collections

from hallgate.protocols import bus
from hallgate.protocols import otawire as ow

QUIET_MIN = 0.01  # seconds; the bus master's floor for a quiet line (pty and USB latency)
MAX_GAP = 4096  # skipped bytes held at most: a line full of noise is reported in pieces


def quiet_for(baud):
    """Quiet time (s) that ends a partial frame: 3 character times, at least QUIET_MIN."""
    return max(3 * 10.0 / baud, QUIET_MIN)


# ---- payload decoders: type -> function(payload) -> fields (ValueError if malformed) ------


def _poll(p):
    ack = bus.decode_poll(p)
    return {} if ack is None else {"ack": {"boot": ack[0], "seq": ack[1]}}


def _empty(p):
    if p:
        raise ValueError(f"{len(p)} payload bytes, expected none")
    return {}


def _set(p):
    role, version, state = bus.decode_set(p)
    fields = {"role": bus.ROLES[role - 1], "version": version}
    if isinstance(state, tuple):  # a bus.FeedbackState
        invite, thank, ack_ds = state
        fields.update(invite=invite, thank=thank, ack_ds=ack_ds)
        return fields
    fields["text"] = state.text
    if isinstance(state, bus.DisplayState):
        fields.update(blink_s=state.blink_s, brightness=state.brightness)
    else:
        fields.update(mode=bus.PANEL_MODES[state.mode], queue=state.queue,
                      wait_s=state.wait_s, tea=state.tea, beep=state.beep)
    return fields


def _event(p):
    ev = bus.decode_event(p)
    return {"boot": ev.boot, "seq": ev.seq, "key": ev.key_name, "action": ev.action_name,
            "age_s": ev.age_ds / 10, "pending": ev.pending}


NAK_REASONS = {bus.NAK_UNKNOWN_TYPE: "unknown type", bus.NAK_BAD_LENGTH: "bad length",
               bus.NAK_BAD_VALUE: "bad value", bus.NAK_WRONG_ROLE: "wrong role"}


def _nak(p):
    refused, reason = bus.decode_nak(p)
    return {"refused": bus.TYPE_NAMES.get(refused, f"0x{refused:02x}"),
            "reason": NAK_REASONS.get(reason, reason)}


# More message types (OTA) plug in here with one line each.
def _ota_begin(p):
    size, digest = ow.decode_begin(p)
    return {"size": size, "sha256": digest.hex()}


def _ota_data(p):
    offset, data = ow.decode_data(p)
    return {"offset": offset, "bytes": len(data)}


def _ota_status(p):
    st = ow.decode_status(p)
    return {"state": st.state_name, "have": st.have,
            "firmware": ".".join(map(str, st.firmware)), "reason": st.reason}


DECODERS = {
    bus.POLL: _poll,
    bus.GET_INFO: _empty,
    bus.SET: _set,
    bus.IDENTIFY: lambda p: {"seconds": bus.decode_identify(p)},
    bus.STATUS: lambda p: {"version": bus.decode_status(p)},
    bus.EVENT: _event,
    bus.INFO: lambda p: bus.decode_info(p).asdict(),
    bus.NAK: _nak,
    bus.OTA_BEGIN: _ota_begin,
    bus.OTA_DATA: _ota_data,
    bus.OTA_COMMIT: lambda p: {"sha256": ow.decode_commit(p).hex()},
    bus.OTA_QUERY: _empty,
    bus.OTA_STATUS: _ota_status,
}


def type_name(mtype):
    return bus.TYPE_NAMES.get(mtype, f"0x{mtype:02x}")


def _hex(data):
    return bytes(data).hex(" ")


class Summary:
    """Counts over a sniff: frames, bad records by error, per address and type."""

    def __init__(self):
        self.frames = 0
        self.requests = 0
        self.replies = 0
        self.bad = collections.Counter()  # error -> records
        self.bad_bytes = 0
        self.partial = 0  # pieces of frames cut by the capture's start or end
        self.bytes = 0
        self.by_address = {}  # addr -> Counter of type names

    def count(self, rec):
        self.bytes += rec["len"]
        if rec["kind"] == "partial":
            self.partial += 1
        elif rec["kind"] == "bad":
            self.bad[rec["error"]] += 1
            self.bad_bytes += rec["len"]
        else:
            self.frames += 1
            if rec["dir"] == "request":
                self.requests += 1
            else:
                self.replies += 1
        if "addr" in rec:
            self.by_address.setdefault(rec["addr"], collections.Counter())[rec["type"]] += 1

    def asdict(self):
        return {
            "frames": self.frames, "requests": self.requests, "replies": self.replies,
            "bad_frames": sum(self.bad.values()), "bad": dict(self.bad),
            "bad_bytes": self.bad_bytes, "partial": self.partial, "bytes": self.bytes,
            "by_address": {str(a): dict(c) for a, c in sorted(self.by_address.items())},
        }


class Sniffer:
    """Bytes with timestamps in, records out (see the module docstring).

    >>> s = Sniffer()
    >>> [r["type"] for r in s.feed(bus.encode_poll(5) + bus.encode_status(5, 4), 1.0)]
    ['POLL', 'STATUS']
    >>> r = s.feed(b"\\xa5\\x05\\x01\\x02garbage" + bus.encode_poll(5), 2.0)
    >>> [(x["kind"], x.get("error")) for x in r]
    [('bad', 'crc'), ('bad', 'garbage'), ('frame', None)]

    Joined and left mid-frame: the edges are partial, not bad.

    >>> s = Sniffer()
    >>> r = s.feed(bus.encode_poll(5)[3:] + bus.encode_poll(6) + bus.encode_poll(7)[:4], 1.0)
    >>> r += s.finish()
    >>> [(x["kind"], x.get("where") or x.get("type")) for x in r]
    [('partial', 'start'), ('frame', 'POLL'), ('partial', 'end')]
    >>> s.summary.asdict()["bad_frames"], s.summary.partial
    (0, 2)
    """

    def __init__(self, quiet=QUIET_MIN):
        self.quiet = quiet
        self.decoder = bus.Decoder()
        self.summary = Summary()
        self._fed = 0  # bytes fed in all
        self._done = 0  # absolute offset of the first byte not yet in a record
        self._held = bytearray()  # bytes from _done on
        self._times = collections.deque()  # (absolute offset of a chunk's first byte, t)
        self._last_t = None
        self._framed = False  # a good frame seen: bytes before it are the capture's start

    def feed(self, data, t):
        """Bytes read at time `t` (seconds, any clock); the records they complete."""
        out = []
        if self._last_t is not None and t - self._last_t >= self.quiet:
            out += self._extract(True)  # the line was quiet before these bytes came
        if data:
            self._times.append((self._fed, t))
            self._fed += len(data)
            self._held += data
            self.decoder.feed(data)
            self._last_t = t
        out += self._extract(False)
        return out

    def tick(self, t):
        """No bytes came up to time `t`: a partial frame is given up once the line was
        quiet for `quiet` seconds. Returns the records that closes."""
        if self._last_t is None or t - self._last_t < self.quiet or self._done == self._fed:
            return []
        return self._extract(True)

    def finish(self):
        """The end of the capture: whatever is held becomes records (a frame it cut short
        is a partial record)."""
        return self._extract(True, last=True)

    # ---- internals ----------------------------------------------------------------------

    def _extract(self, idle, last=False):
        out = []
        while True:
            frame = self.decoder.maybe_extract_frame(idle)
            # Everything before the decoder's position is either this frame or skipped.
            end = self._fed - self.decoder.pending()
            if frame is None:
                if end > self._done and (idle or end - self._done > MAX_GAP):
                    out += self._gap(end - self._done, last=last and end == self._fed)
                return out
            size = bus.OVERHEAD + len(frame.payload)
            start = end - size
            if start > self._done:
                out += self._gap(start - self._done)
            out.append(self._frame(frame, size))

    def _take(self, n):
        """The next n held bytes, with the time of the first one."""
        data = bytes(self._held[:n])
        del self._held[:n]
        start = self._done
        self._done += n
        times = self._times
        while len(times) > 1 and times[1][0] <= start:
            times.popleft()
        return data, times[0][1]

    def _frame(self, frame, size):
        raw, t = self._take(size)
        rec = {"t": t, "kind": "frame", "dir": "reply" if frame.is_reply else "request",
               "addr": frame.addr, "type": type_name(frame.mtype), "fields": {},
               "len": size, "hex": _hex(raw)}
        decode = DECODERS.get(frame.mtype)
        if decode is None:
            rec["fields"] = {"payload": frame.payload.hex()}
        else:
            try:
                rec["fields"] = decode(frame.payload)
            except (ValueError, IndexError) as e:
                rec.update(kind="bad", error="payload", detail=str(e))
        self._framed = True
        self.summary.count(rec)
        return rec

    def _gap(self, n, last=False):
        """Records for n skipped bytes: frames with a bad CRC, a frame cut short, garbage;
        a piece cut by the capture's start (before any good frame) or, when `last`, by its
        end, is partial."""
        out = []
        base = self._done
        first = base == 0 and not self._framed
        raw = bytes(self._held[:n])
        i = junk = 0
        pieces = []  # (offset in raw, length, error, detail)

        def flush_junk(upto):
            if upto > junk:
                pieces.append((junk, upto - junk, "garbage", f"{upto - junk} byte(s) between "
                                                              "frames"))

        while i < n:
            if raw[i] == bus.SYNC and (n - i < bus.HEADER or (
                    raw[i + 1] <= bus.MAX_ADDRESS and raw[i + 3] <= bus.MAX_PAYLOAD)):
                if n - i < bus.HEADER:
                    flush_junk(i)
                    pieces.append((i, n - i, "cut-short",
                                   f"frame cut short after {n - i} byte(s) of its header"))
                    i = junk = n
                    break
                addr, mtype, length = raw[i + 1], raw[i + 2], raw[i + 3]
                whole = bus.OVERHEAD + length
                what = f"{type_name(mtype)} {'from' if mtype & bus.REPLY else 'to'} {addr}"
                if i + whole <= n:
                    flush_junk(i)
                    body = raw[i + 1 : i + whole - 2]
                    got = raw[i + whole - 2] | raw[i + whole - 1] << 8
                    pieces.append((i, whole, "crc", f"{what}, {length} payload byte(s): CRC "
                                   f"{got:04x}, computed {bus.crc16(body):04x}"))
                    i = junk = i + whole
                    continue
                flush_junk(i)
                pieces.append((i, n - i, "cut-short", f"{what}: {n - i} of {whole} bytes"))
                i = junk = n
                break
            i += 1
        flush_junk(n)
        for k, (offset, length, error, detail) in enumerate(pieces):
            part, t = self._take(length)
            assert self._done - length == base + offset
            rec = {"t": t, "kind": "bad", "error": error, "len": length, "hex": _hex(part),
                   "detail": detail}
            whole = length <= bus.OVERHEAD + bus.MAX_PAYLOAD  # at most one frame's bytes
            if first and k == 0 and offset == 0 and error != "crc" and whole:
                rec = {"t": t, "kind": "partial", "where": "start", "len": length,
                       "hex": _hex(part), "detail": "the capture began inside a frame"}
            elif last and k == len(pieces) - 1 and error == "cut-short":
                rec = {"t": t, "kind": "partial", "where": "end", "len": length,
                       "hex": _hex(part), "detail": "the capture ended inside a frame"}
            self.summary.count(rec)
            out.append(rec)
        return out


# ---- text --------------------------------------------------------------------------------


def _clock(t):
    import time

    whole = int(t)
    return time.strftime("%H:%M:%S", time.localtime(whole)) + f".{int((t - whole) * 1e6):06d}"


def format_fields(fields):
    return " ".join(f"{k}={v}" for k, v in fields.items())


def format_record(rec, prev_t=None):
    """One line: wall-clock time (t is epoch seconds), the gap to the previous record,
    direction, type, address and fields; bad records with their bytes."""
    delta = "" if prev_t is None else f"+{(rec['t'] - prev_t) * 1000:9.3f}ms"
    head = f"{_clock(rec['t'])} {delta:>12}"
    where = f"[{rec['bus']}] " if "bus" in rec else ""
    if rec["kind"] == "frame":
        arrow = "->" if rec["dir"] == "request" else "<-"
        return (f"{head}  {where}{arrow} {rec['type']:<10} {rec['addr']:>3}  "
                f"{format_fields(rec['fields'])}").rstrip()
    if rec["kind"] == "partial":
        return f"{head}  {where}~~ PARTIAL: {rec['detail']}  [{rec['hex']}]"
    what = rec["error"].upper()
    if rec["error"] == "payload":
        what += f" {rec['type']} {rec['addr']}"
    return f"{head}  {where}!! BAD {what}: {rec['detail']}  [{rec['hex']}]"


def format_summary(summary):
    """A few lines: totals, bad records by error, per address the frames by type."""
    s = summary if isinstance(summary, dict) else summary.asdict()
    lines = [f"{s['frames']} frame(s) ({s['requests']} request(s), {s['replies']} "
             f"repl{'y' if s['replies'] == 1 else 'ies'}), {s['bad_frames']} bad "
             f"({', '.join(f'{n} {e}' for e, n in sorted(s['bad'].items())) or 'none'}), "
             f"{s['bytes']} byte(s)"
             + (f"; {s['partial']} partial frame(s) at the capture's edges (not line faults)"
                if s.get("partial") else "")]
    for addr, types in s["by_address"].items():
        lines.append(f"  address {addr:>3}: "
                     + ", ".join(f"{n} {t}" for t, n in sorted(types.items())))
    return "\n".join(lines)
