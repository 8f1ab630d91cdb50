"""The bus master's protocol bookkeeping, with no I/O: which request each device needs
next, what its reply or silence means (spec: protocols/BUS.md).

Design note
-----------
Operations: `Book` is the protocol as a pure state machine, as in h11: per device it decides
the next request (`next_request`) and digests the reply or the failure (`handle_reply`,
`handle_failure`), and per cycle which devices to serve (`start_cycle`). No threads, no
port, no clock of its own: `BusMaster` (gateway/master.py) is the thin I/O loop on top, and
tests script the replies.
Goals: no event passed up twice (dedupe by (boot, seq), ack only after `on_event`
returned); every device converges to its desired state whatever reboots; a dead device
costs the others at most one timeout per cycle.

A cycle serves every online device, then probes ONE offline device (round robin, with
GET_INFO, so a device coming online brings its INFO). A device's turn is a short burst of
exchanges, at most `max_burst`: SET when its STATUS shows a version other than the desired
one, POLL again at once after an event (carrying the ack, which also drains a backlog), a
single immediate retry after a garbled reply; a timeout ends the turn. So an idle device
costs one POLL and its STATUS per cycle.

Board identity: a device's INFO names its board (the kind, and an id unique to the board).
The book keeps the id known for each address (seeded by the caller, who keeps them across
restarts: gateway/boards.py); an INFO with another id means the board at that address was
swapped: its counters and its event dedupe start fresh, and `on_board` says so. A reboot of
the same board keeps its id and is no swap.
"""

import logging

from hallgate.protocols import bus

log = logging.getLogger("hallgate.gateway.master")

TIMEOUT = "timeout"  # no reply from the device before the deadline
GARBLED = "garbled"  # bytes came, but no good reply from the device: CRC, cut short, bad payload


class Stats:
    """Counters of the exchanges with one device, or of the whole bus. Cheap: plain ints."""

    __slots__ = (
        "exchanges",  # requests that expected a reply
        "timeouts",  # ... that got none
        "garbled",  # ... that got bytes but no good reply
        "crc_errors",  # candidate frames whose CRC failed (the decoder's count)
        "retries",  # immediate retries after a garbled reply
        "events",  # events taken (on_event returned)
        "duplicates",  # retransmitted events dropped and acked again
        "callback_errors",  # on_event raised: not acked, taken on retransmission
        "naks",
        "last_seen",  # time.monotonic() of the last good reply (None: never)
    )

    def __init__(self):
        for name in Stats.__slots__:
            setattr(self, name, 0)
        self.last_seen = None

    def asdict(self):
        return {name: getattr(self, name) for name in Stats.__slots__}

    def __repr__(self):
        return f"Stats({self.asdict()!r})"


class BusStats(Stats):
    """The bus as a whole: the device counters summed, plus the poll cycle."""

    __slots__ = ("cycles", "cycle_last", "cycle_total", "port_errors", "line_busy",
                 "poll_time", "job_time", "job_exchanges")

    def __init__(self):
        super().__init__()
        self.poll_time = 0.0  # seconds spent in poll cycles
        self.job_time = 0.0  # ... and in jobs' exchanges (a firmware transfer)
        self.job_exchanges = 0
        self.line_busy = 0  # requests held back: bytes were still arriving (a late reply)
        self.cycles = 0
        self.cycle_last = 0.0  # seconds the last cycle took
        self.cycle_total = 0.0
        self.port_errors = 0

    @property
    def cycle_mean(self):
        return self.cycle_total / self.cycles if self.cycles else 0.0

    def asdict(self):
        d = super().asdict()
        for name in BusStats.__slots__:
            d[name] = getattr(self, name)
        d["cycle_mean"] = self.cycle_mean
        return d


class Device:
    """What the master knows of one device. Plain data, changed only by the `Book`."""

    def __init__(self, addr):
        self.addr = addr
        self.online = False
        self.misses = 0  # failed exchanges in a row
        self.info = None  # bus.Info from the last GET_INFO
        self.need_info = False  # a reboot was seen: fetch INFO again
        self.desired = None  # DisplayState / PanelState / FeedbackState to show
        self.version = 0  # its version (1-65535; 0: nothing desired yet)
        self.applied = None  # the version the device last reported (None: unknown)
        self.confirmed = False  # the device answered a SET of `version` in this session
        self.nak_version = 0  # a SET of this version was refused ...
        self.nak_until = 0.0  # ... and is not sent again before this time
        self.boot = None  # the device's boot byte, from its INFO or events
        self.last_taken = None  # (boot, seq) of the last event taken, for dedupe
        self.ack = None  # (boot, seq) to carry on the next POLL
        self.poll_now = False  # events wait in the device: poll it in this turn
        self.stats = Stats()
        # This cycle's turn.
        self.left = 0  # exchanges left
        self.done = True
        self.retried = False
        self.sets = 0
        self.sent = None  # (type, ack, version) of the request in flight

    def snapshot(self):
        return {
            "addr": self.addr,
            "online": self.online,
            "misses": self.misses,
            "info": self.info,
            "desired": self.desired,
            "version": self.version,
            "applied": self.applied,
            "last_taken": self.last_taken,
            "stats": self.stats.asdict(),
        }

    def __repr__(self):
        state = "online" if self.online else "offline"
        return f"Device({self.addr}, {state}, version={self.version}, applied={self.applied})"


def _next_version(version):
    """1..65535, wrapping past 0 (0 means 'nothing applied')."""
    return version % 0xFFFF + 1


class Book:
    """The master's side of the protocol for every device: no I/O, no threads, no clock.

    Driving it (what BusMaster does, and what the tests do with scripted replies):

        book = Book(on_event=...)
        book.add(5)
        for addr in book.start_cycle(now):
            while (request := book.next_request(addr)) is not None:
                ...write request, read...
                book.handle_reply(addr, frame)   # or book.handle_failure(addr, garbled)

    Callbacks run inside handle_reply / handle_failure: on_event(addr, event) (raise to
    refuse: the event is not acked and is taken again when the device resends it),
    on_device(addr, online, info) when a device goes online or offline, or its INFO shows
    another role, firmware or window; on_nak(addr, refused_type, reason);
    on_board(addr, old_id, new_id) when the board id known for an address changes (hex
    strings; old_id None: the first id known there, not a swap). `boards` seeds the known
    ids {addr: hex}, e.g. as kept across a restart; `board_ids` holds them.
    """

    def __init__(
        self,
        on_event=None,
        on_device=None,
        on_nak=None,
        offline_after=3,
        max_burst=8,
        nak_backoff=10.0,
        on_board=None,
        boards=None,
    ):
        self.on_event = on_event
        self.on_device = on_device
        self.on_nak = on_nak
        self.on_board = on_board
        self.board_ids = {int(a): str(i) for a, i in (boards or {}).items()}  # addr -> hex
        self.offline_after = offline_after
        self.max_burst = max_burst
        self.nak_backoff = nak_backoff  # seconds before a refused SET is sent again
        self.devices = {}
        self.stats = BusStats()
        self.now = 0.0
        self._probe = 0  # address of the last offline device probed

    # ---- devices and desired state ----------------------------------------------------

    def add(self, addr):
        if not 1 <= addr <= bus.MAX_ADDRESS:
            raise ValueError(f"device address {addr} out of range 1-{bus.MAX_ADDRESS}")
        dev = self.devices.get(addr)
        if dev is None:
            dev = self.devices[addr] = Device(addr)
        return dev

    def remove(self, addr):
        self.devices.pop(addr, None)

    def set_state(self, addr, state, renew=False):
        """Desire `state` on device `addr`; returns its version. The same state again
        keeps its version (so a display does not blink again for it), unless `renew`: a
        recall announces the same ticket again, and the device blinks and beeps for a new
        version only."""
        bus.encode_set(addr, 1, state)  # ValueError now, for the caller, if it cannot be sent
        dev = self.add(addr)
        if dev.desired == state and dev.version and not renew:
            return dev.version
        dev.desired = state
        dev.version = _next_version(dev.version)
        dev.confirmed = False
        return dev.version

    def need_set(self, dev):
        if dev.desired is None:
            return False
        if dev.applied == dev.version and dev.confirmed:
            return False
        return not (dev.nak_version == dev.version and self.now < dev.nak_until)

    # ---- the cycle ----------------------------------------------------------------------

    def start_cycle(self, now):
        """The addresses to serve this cycle: every online device, then one offline one."""
        self.now = now
        plan = sorted(a for a, d in self.devices.items() if d.online)
        offline = sorted(a for a, d in self.devices.items() if not d.online)
        if offline:
            probe = next((a for a in offline if a > self._probe), offline[0])
            self._probe = probe
            plan.append(probe)
        for addr in plan:
            dev = self.devices[addr]
            dev.left = self.max_burst
            dev.done = False
            dev.retried = False
            dev.sets = 0
        return plan

    def next_request(self, addr):
        """The bytes of the next request to `addr` in its turn, or None: turn over."""
        dev = self.devices.get(addr)
        if dev is None or dev.done or dev.left <= 0:
            if dev is not None:
                dev.done = True
            return None
        dev.left -= 1
        ack = version = None
        if not dev.online or dev.need_info:
            mtype, data = bus.GET_INFO, bus.encode_get_info(addr)
        elif dev.sets == 0 and self.need_set(dev):
            mtype, version = bus.SET, dev.version
            data = bus.encode_set(addr, version, dev.desired)
            dev.sets += 1
        else:
            mtype, ack = bus.POLL, dev.ack
            data = bus.encode_poll(addr, ack)
            dev.poll_now = False
        dev.sent = (mtype, ack, version)
        dev.stats.exchanges += 1
        self.stats.exchanges += 1
        return data

    def handle_failure(self, addr, garbled=False):
        """No good reply to the request in flight: nothing came, or garbage did."""
        dev = self.devices.get(addr)
        if dev is None or dev.sent is None:
            return
        dev.sent = None
        if garbled:
            dev.stats.garbled += 1
            self.stats.garbled += 1
        else:
            dev.stats.timeouts += 1
            self.stats.timeouts += 1
        dev.misses += 1
        if dev.online and dev.misses >= self.offline_after:
            dev.online = False
            dev.done = True
            self._announce(dev)
            return
        if garbled and not dev.retried:
            dev.retried = True  # the device is evidently there: once more, at once
            dev.left += 1
            dev.stats.retries += 1
            self.stats.retries += 1
            return
        dev.done = True  # a device that did not answer waits for the next cycle

    def handle_reply(self, addr, frame):
        """A checked reply frame from `addr` to the request in flight."""
        dev = self.devices.get(addr)
        if dev is None or dev.sent is None:
            return
        mtype, ack, version = dev.sent
        try:
            reply = self._decode(mtype, frame)
        except ValueError as e:
            log.warning("device %d: bad reply %r to %s: %s", addr, frame, bus.TYPE_NAMES[mtype], e)
            self.handle_failure(addr, garbled=True)
            return
        dev.sent = None
        if mtype == bus.POLL and ack is not None and dev.ack == ack:
            dev.ack = None  # the device got the poll that carried it
        if frame.mtype == bus.NAK:
            self._alive(dev)
            self._nak(dev, mtype, version, *reply)
        elif frame.mtype == bus.INFO:
            self._info(dev, reply)
        elif frame.mtype == bus.EVENT:
            self._alive(dev)
            self._event(dev, reply)
        else:  # STATUS
            self._alive(dev)
            if reply == 0 and dev.applied:
                dev.need_info = True  # it showed a version and now shows none: rebooted
            dev.applied = reply
            if mtype == bus.SET and reply == version:
                dev.confirmed = True
        if not dev.done:
            dev.done = not (
                dev.ack is not None
                or dev.poll_now
                or dev.need_info
                or (dev.sets == 0 and self.need_set(dev))
            )

    def found(self, addr, info):
        """A device answered GET_INFO outside the cycle (a scan): it is online."""
        self._info(self.add(addr), info)

    # ---- reply digestion ---------------------------------------------------------------

    @staticmethod
    def _decode(mtype, frame):
        """The reply's message, or ValueError if it is not an answer to `mtype`."""
        if frame.mtype == bus.NAK:
            return bus.decode_nak(frame.payload)
        if mtype == bus.POLL and frame.mtype == bus.EVENT:
            return bus.decode_event(frame.payload)
        if mtype in (bus.POLL, bus.SET) and frame.mtype == bus.STATUS:
            return bus.decode_status(frame.payload)
        if mtype == bus.GET_INFO and frame.mtype == bus.INFO:
            return bus.decode_info(frame.payload)
        raise ValueError(f"{bus.TYPE_NAMES.get(frame.mtype, frame.mtype)} is no answer")

    def _alive(self, dev):
        dev.misses = 0
        dev.stats.last_seen = self.stats.last_seen = self.now
        if not dev.online:
            dev.online = True
            dev.confirmed = False  # a device back from offline may be another one: SET once
            if dev.info is None:
                dev.need_info = True
            self._announce(dev)

    def _info(self, dev, info):
        old = dev.info
        self._board(dev, info)
        dev.info = info
        dev.need_info = False
        dev.applied = info.version
        dev.poll_now = info.queued > 0
        if info.resets < 0xFFFF:  # the counter saturates; the boot byte wraps
            dev.boot = info.resets & 0xFF
        was_online = dev.online
        self._alive(dev)
        changed = old is None or (old.role, old.firmware, old.window) != (
            info.role,
            info.firmware,
            info.window,
        )
        if was_online and changed:
            self._announce(dev)

    def _board(self, dev, info):
        """Another board at this address (both ids known, and they differ): what was
        counted and taken from the old one does not describe the new one."""
        new = info.board_id.hex() if getattr(info, "board_id", None) else None
        if new is None:
            return  # firmware that does not say its board: nothing to compare
        known = self.board_ids.get(dev.addr)
        if known == new:
            return
        self.board_ids[dev.addr] = new
        if known is not None:
            log.warning("device %d: board %s replaced by board %s; its counters start "
                        "fresh", dev.addr, known, new)
            dev.stats = Stats()
            dev.last_taken = None  # (boot, seq) of the old board's events mean nothing now
            dev.ack = None  # ... nor does an ack owed to it
            dev.boot = None
            dev.confirmed = False  # the new board gets its desired state again
        self._call(self.on_board, dev.addr, known, new)

    def _event(self, dev, ev):
        if dev.boot is not None and ev.boot != dev.boot:
            dev.need_info = True  # restarted since we last heard: refresh its INFO
        dev.boot = ev.boot
        if ev.ident == dev.last_taken:
            dev.ack = ev.ident  # our ack was lost: drop the copy, ack again
            dev.stats.duplicates += 1
            self.stats.duplicates += 1
            return
        try:
            if self.on_event is not None:
                self.on_event(dev.addr, ev)
        except Exception:
            # Not taken: no ack, so the device sends it again and it is offered again.
            log.warning("device %d: on_event refused %r", dev.addr, ev, exc_info=True)
            dev.stats.callback_errors += 1
            self.stats.callback_errors += 1
            dev.done = True  # not again in this turn
            return
        dev.last_taken = dev.ack = ev.ident
        dev.stats.events += 1
        self.stats.events += 1

    def _nak(self, dev, mtype, version, refused, reason):
        dev.stats.naks += 1
        self.stats.naks += 1
        if mtype == bus.SET:
            dev.nak_version = version
            dev.nak_until = self.now + self.nak_backoff
        elif mtype == bus.GET_INFO:
            dev.need_info = False  # it cannot tell; do not ask in a loop
        dev.done = True
        name = bus.TYPE_NAMES.get(refused, refused)
        log.warning("device %d refused %s: reason %d", dev.addr, name, reason)
        self._call(self.on_nak, dev.addr, refused, reason)

    def _announce(self, dev):
        log.info("device %d %s", dev.addr, "online" if dev.online else "offline")
        self._call(self.on_device, dev.addr, dev.online, dev.info)

    @staticmethod
    def _call(callback, *args):
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:
            log.exception("bus master callback %r failed", callback)
