"""The bus master: polls the devices on the RS-485 line, takes their events, keeps them in
their desired state (spec: protocols/BUS.md).

Design note
-----------
Operations: `BusMaster` owns the serial port and runs the poll loop in its own thread;
other threads call `set_state`, `identify`, `scan` and read counters, and get callbacks
(`on_event`, `on_device`, `on_nak`) in the master's thread.
Goals: no event lost or passed up twice (ack only after `on_event` returned, dedupe by
(boot, seq)); every device converges to its desired state whatever reboots; a dead device
costs the others at most one timeout per cycle; stop is prompt.
Plan: two layers, as in h11. `Book` is the protocol, with no I/O, no threads and no clock
of its own: per device it decides the next request (`next_request`) and digests the reply
or the failure (`handle_reply`, `handle_failure`), and per cycle which devices to serve
(`start_cycle`). `BusMaster` is the thin I/O loop on top: write the request, read until a
reply from that address or the deadline, hand the outcome to the book.

A cycle serves every online device, then probes ONE offline device (round robin, with
GET_INFO, so a device coming online brings its INFO). A device's turn is a short burst of
exchanges, at most `max_burst`: SET when its STATUS shows a version other than the desired
one, POLL again at once after an event (carrying the ack, which also drains a backlog), a
single immediate retry after a garbled reply; a timeout ends the turn. So an idle device
costs one POLL and its STATUS per cycle.

Jobs (`run_job`, a firmware transfer for one) get the bus between cycles, for at most
`job_share` of its time: each cycle of T seconds earns them T * share / (1 - share) seconds
of credit, and they run while they have some; an exchange that overruns (one OTA chunk takes
longer than a short cycle) is paid back by the cycles after it. So over any stretch the
polling keeps 1 - share of the bus (half at the default 0.5), and a press waits at most
one job exchange longer than without the job.
"""

import concurrent.futures
import logging
import queue
import threading
import time

import serial
from hallgate.protocols import bus

log = logging.getLogger(__name__)

TIMEOUT = "timeout"  # no reply from the device before the deadline
GARBLED = "garbled"  # bytes came, but no good reply from the device: CRC, cut short, bad payload

REPLY_ROOM = 25  # bytes of the longest ordinary reply (INFO), for the response deadline


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
    another role, firmware or window; on_nak(addr, refused_type, reason).
    """

    def __init__(
        self,
        on_event=None,
        on_device=None,
        on_nak=None,
        offline_after=3,
        max_burst=8,
        nak_backoff=10.0,
    ):
        self.on_event = on_event
        self.on_device = on_device
        self.on_nak = on_nak
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


class BusMaster:
    """The gateway's bus master: a thread that owns the port and polls the devices.

    port: a device path or pyserial URL (opened here, at `baudrate`, and reopened after an
    error), or an already open pyserial-like port object (read, write, in_waiting,
    reset_input_buffer, flush; its `timeout` is set to `read_slice`).
    timeout: seconds a device has to start its reply after the request left the wire; the
    wire time of request and reply is added (BUS.md, 7).
    tx_enable: the RS-485 direction seam: a callable taking True before a write and False
    after it has drained, or an object with on() / off() (a gpiozero OutputDevice);
    None when the adapter switches direction itself.
    Callbacks (see `Book`) run in the master's thread, between exchanges, under its lock:
    keep them short. They may call the master's methods, but must not wait for another
    thread that does (that thread would wait for the lock the callback holds).

    Example (needs a serial port, so not a doctest)::

        with BusMaster("/dev/ttyAMA0", on_event=print) as master:
            master.add_device(7)
            master.set_state(7, bus.DisplayState("A042"))
    """

    read_slice = 0.005  # longest single blocking read; bounds stop latency and deadline overrun
    min_cycle = 0.005  # shortest time between cycle starts, to leave the CPU some air
    reopen_delay = 1.0  # seconds between attempts to reopen a failed port

    def __init__(
        self,
        port,
        *,
        baudrate=115200,
        timeout=0.02,
        offline_after=3,
        max_burst=8,
        nak_backoff=10.0,
        on_event=None,
        on_device=None,
        on_nak=None,
        tx_enable=None,
        devices=(),
        job_share=0.5,
        tap=None,
    ):
        if not 0 < job_share < 1:
            raise ValueError(f"job_share must be between 0 and 1, not {job_share!r}")
        self.job_share = job_share
        self._jobs = []  # run between cycles, oldest first
        self._job_credit = 0.0  # seconds of bus time the jobs may still use
        # tap(direction, data, t): every request written ("tx") and every chunk of bytes
        # read ("rx"), with time.monotonic(), for a sniffer; called in the master's thread,
        # so it must be quick and must not raise. May be set or cleared at any time.
        self.tap = tap
        self.timeout = timeout
        self._url = None
        if isinstance(port, str):
            self._url = port
            self._port = None
            self.baudrate = baudrate
        else:
            self._port = port
            self.baudrate = getattr(port, "baudrate", None) or baudrate
            port.timeout = self.read_slice
        if tx_enable is not None and not callable(tx_enable):
            pin = tx_enable
            tx_enable = lambda on: pin.on() if on else pin.off()  # noqa: E731
        self._tx = tx_enable
        self._char = 10.0 / self.baudrate
        self.quiet = max(3 * self._char, 0.01)  # silence after bytes that ends a partial frame
        self.book = Book(on_event, on_device, on_nak, offline_after, max_burst, nak_backoff)
        self._lock = threading.RLock()  # guards the book; callbacks run under it
        self._commands = queue.Queue()
        self._stop = threading.Event()
        self._thread = None
        self._line_free_at = 0.0
        self._reopen_at = 0.0
        for addr in devices:
            self.book.add(addr)

    # ---- public, thread-safe ------------------------------------------------------------

    def add_device(self, addr):
        with self._lock:
            self.book.add(addr)

    def remove_device(self, addr):
        with self._lock:
            self.book.remove(addr)

    def set_state(self, addr, state, renew=False):
        """Desire `state` (a bus.DisplayState, PanelState or FeedbackState) on `addr`;
        returns its bus version (a new one for a new state, or when `renew`). Raises
        ValueError if the state cannot be sent. The next cycle sends it."""
        with self._lock:
            return self.book.set_state(addr, state, renew)

    def identify(self, addr, seconds):
        """Ask `addr` (0: all) to show itself for `seconds`. A Future: True once the device
        acknowledged (or the broadcast was sent), False if it refused or did not answer.
        Sent by the master's thread between cycles (or by the next run_cycle())."""
        future = concurrent.futures.Future()
        self._commands.put((self._identify, (addr, seconds), future))
        return future

    def run_job(self, job):
        """Give `job` the bus between cycles until `job.done`. A job is a sans-I/O
        exchanger with `addr`, `done`, `next_request()` (bytes, or None: nothing to send
        before the next cycle) and `handle(outcome)` (a reply Frame, TIMEOUT or GARBLED);
        both are called in the master's thread. Returns the job."""
        with self._lock:
            self._jobs.append(job)
        return job

    def scan(self, addresses, timeout=None, add=True):
        """GET_INFO to each address; {addr: Info} of those that answered, which become
        known, online devices if `add`. Runs in the master's thread if it is started."""
        args = (list(addresses), self.timeout if timeout is None else timeout, add)
        if self._thread is None or threading.current_thread() is self._thread:
            return self._scan(*args)
        future = concurrent.futures.Future()
        self._commands.put((self._scan, args, future))
        return future.result()

    def device(self, addr):
        """A snapshot (dict) of what the master knows of `addr`, or None."""
        with self._lock:
            dev = self.book.devices.get(addr)
            return dev.snapshot() if dev else None

    def devices(self):
        with self._lock:
            return {a: d.snapshot() for a, d in sorted(self.book.devices.items())}

    @property
    def stats(self):
        """The bus counters (a dict snapshot; cycle times in seconds)."""
        with self._lock:
            return self.book.stats.asdict()

    def start(self):
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="bus-master", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout=2.0):
        """Stop the loop: it ends within one exchange (one response deadline)."""
        thread = self._thread
        if thread is not None:
            self._stop.set()
            thread.join(timeout)
            self._thread = None
            if not thread.is_alive():
                self._stop.clear()  # run_cycle() may be called by hand again
        while not self._commands.empty():
            _, _, future = self._commands.get_nowait()
            future.cancel()

    def close(self):
        self.stop()
        if self._url is not None and self._port is not None:
            self._port.close()
            self._port = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    # ---- the loop ---------------------------------------------------------------------

    def _run(self):
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.run_cycle()
            except Exception:  # never let the bus die: log, breathe, go on
                log.exception("bus master cycle failed")
                self._stop.wait(self.reopen_delay)
            self._stop.wait(max(0.0, started + self.min_cycle - time.monotonic()))

    def run_cycle(self):
        """One poll cycle (the thread's body; callable directly while it is not started)."""
        started = time.monotonic()
        self._run_commands()
        with self._lock:
            plan = self.book.start_cycle(started)
        for addr in plan:
            while not self._stop.is_set():
                with self._lock:
                    request = self.book.next_request(addr)
                if request is None:
                    break
                outcome = self._exchange(addr, request, self.timeout)
                with self._lock:
                    if isinstance(outcome, bus.Frame):
                        self.book.handle_reply(addr, outcome)
                    else:
                        self.book.handle_failure(addr, garbled=outcome is GARBLED)
        elapsed = time.monotonic() - started
        with self._lock:
            stats = self.book.stats
            stats.cycles += 1
            stats.cycle_last = elapsed
            stats.cycle_total += elapsed
            stats.poll_time += elapsed
        # Nothing polled (a master used only for an update): the jobs have the bus.
        self._run_jobs(elapsed * self.job_share / (1 - self.job_share) if plan else None)

    def _run_jobs(self, earned):
        """Exchanges for the jobs, oldest first, while they have bus-time credit (all
        they want when `earned` is None)."""
        with self._lock:
            self._jobs = [job for job in self._jobs if not job.done]
            jobs = list(self._jobs)
        if not jobs:
            self._job_credit = 0.0  # credit is not saved up while no job runs
            return
        credit = float("inf") if earned is None else self._job_credit + earned
        for job in jobs:
            while not self._stop.is_set() and not job.done and credit > 0:
                request = job.next_request()
                if request is None:
                    break
                t0 = time.monotonic()
                outcome = self._exchange(job.addr, request, self.timeout)
                spent = time.monotonic() - t0
                credit -= spent
                with self._lock:
                    self.book.stats.job_time += spent
                    self.book.stats.job_exchanges += 1
                job.handle(outcome)
                if job.done:  # it may have changed the device (new firmware): ask again
                    with self._lock:
                        dev = self.book.devices.get(job.addr)
                        if dev is not None:
                            dev.need_info = True
        self._job_credit = 0.0 if earned is None else credit

    def _run_commands(self):
        while True:
            try:
                fn, args, future = self._commands.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except Exception as e:
                future.set_exception(e)

    def _identify(self, addr, seconds):
        request = bus.encode_identify(addr, seconds)
        if addr == bus.BROADCAST:
            return self._exchange(addr, request, 0.0, expect_reply=False) is None
        reply = self._exchange(addr, request, self.timeout)
        return isinstance(reply, bus.Frame) and reply.mtype == bus.STATUS

    def _scan(self, addresses, timeout, add):
        found = {}
        for addr in addresses:
            if self._stop.is_set():
                break
            reply = self._exchange(addr, bus.encode_get_info(addr), timeout)
            if isinstance(reply, bus.Frame) and reply.mtype == bus.INFO:
                try:
                    found[addr] = bus.decode_info(reply.payload)
                except ValueError as e:
                    log.warning("device %d: bad INFO %r: %s", addr, reply, e)
        if add:
            with self._lock:
                self.book.now = time.monotonic()
                for addr, info in found.items():
                    self.book.found(addr, info)
        return found

    # ---- one exchange -----------------------------------------------------------------

    def _open(self):
        """The port, (re)opening it if we own it; None while it cannot be opened."""
        if self._port is None and time.monotonic() >= self._reopen_at:
            try:
                self._port = serial.serial_for_url(
                    self._url, self.baudrate, timeout=self.read_slice, exclusive=True
                )
            except (serial.SerialException, OSError) as e:
                log.warning("cannot open %s: %s", self._url, e)
                self._reopen_at = time.monotonic() + self.reopen_delay
        return self._port

    def _port_failed(self, error):
        log.warning("bus port error: %s", error)
        with self._lock:
            self.book.stats.port_errors += 1
        if self._url is not None and self._port is not None:
            try:
                self._port.close()
            except Exception:
                pass
            self._port = None
            self._reopen_at = time.monotonic() + self.reopen_delay
        else:
            self._stop.wait(self.read_slice)  # a foreign port: do not spin on it

    def _exchange(self, addr, request, timeout, expect_reply=True):
        """Send `request`; the reply Frame from `addr`, or TIMEOUT or GARBLED.

        Stale input is discarded first, so a late reply cannot pass for this one; request
        frames (our own echo) and replies from other addresses are ignored.
        """
        port = self._open()
        if port is None:
            self._stop.wait(min(timeout, self.reopen_delay))
            return TIMEOUT
        decoder = bus.Decoder()
        try:
            wait = self._line_free_at - time.monotonic()
            if wait > 0:
                time.sleep(wait)  # the inter-frame gap: one character time
            if port.in_waiting:
                self._let_talk(port)
            port.reset_input_buffer()
            self._write(port, request)
            sent = time.monotonic()
            if not expect_reply:
                self._line_free_at = sent + (len(request) + 1) * self._char
                return None
            deadline = sent + timeout + (len(request) + REPLY_ROOM) * self._char
            outcome = TIMEOUT
            last_rx = None
            while outcome is TIMEOUT:
                idle = False
                data = port.read(port.in_waiting or 1)
                now = time.monotonic()
                if data:
                    decoder.feed(data)
                    last_rx = now
                    if self.tap is not None:
                        self.tap("rx", data, now)
                elif last_rx is not None:
                    idle = now - last_rx >= self.quiet
                frame = self._reply_in(decoder, addr, idle or now >= deadline)
                if frame is not None:
                    outcome = frame
                elif now >= deadline:
                    break
        except (serial.SerialException, OSError) as e:
            self._port_failed(e)
            outcome = TIMEOUT
        self._line_free_at = time.monotonic() + self._char
        if outcome is TIMEOUT and (decoder.crc_errors or decoder.discarded or decoder.pending()):
            outcome = GARBLED
        if decoder.crc_errors:
            with self._lock:
                dev = self.book.devices.get(addr)
                if dev is not None:
                    dev.stats.crc_errors += decoder.crc_errors
                self.book.stats.crc_errors += decoder.crc_errors
        return outcome

    def _let_talk(self, port):
        """Listen before talking: bytes arrived since the last exchange (a device answering
        late, or noise). Drop them and wait until the line has been quiet for `quiet`, at
        most one response timeout, so our request does not collide with them."""
        with self._lock:
            self.book.stats.line_busy += 1
        give_up = time.monotonic() + self.timeout
        while port.in_waiting and time.monotonic() < give_up:
            port.reset_input_buffer()
            self._stop.wait(self.quiet)

    @staticmethod
    def _reply_in(decoder, addr, line_idle):
        while True:
            frame = decoder.maybe_extract_frame(line_idle)
            if frame is None:
                return None
            if frame.is_reply and frame.addr == addr:
                return frame
            # an echo of a request, or another device's reply: not ours

    def _write(self, port, data):
        if self.tap is not None:
            self.tap("tx", bytes(data), time.monotonic())
        tx = self._tx
        if tx is None:
            port.write(data)
            return
        tx(True)
        try:
            port.write(data)
            port.flush()  # drained to the wire before the driver is released
        finally:
            tx(False)
