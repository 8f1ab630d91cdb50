"""The bus master: polls the devices on the RS-485 line, takes their events, keeps them in
their desired state (spec: protocols/BUS.md).

Design note
-----------
Operations: `BusMaster` owns the serial port and runs the poll loop in its own thread;
other threads call `set_state`, `identify`, `scan`, `read_log` and read counters, and get
callbacks (`on_event`, `on_device`, `on_nak`, `on_board`) in the master's thread.
Goals: no event lost or passed up twice (ack only after `on_event` returned, dedupe by
(boot, seq)); every device converges to its desired state whatever reboots; a dead device
costs the others at most one timeout per cycle; stop is prompt.
Plan: two layers, as in h11. `Book` (gateway/book.py) is the protocol, with no I/O, no
threads and no clock of its own: what to send each device, what its reply means, the cycle
plan, board identity. `BusMaster` is the thin I/O loop on top: write the request, read
until a reply from that address or the deadline, hand the outcome to the book. At every open
of its port it asks the adapter for a 1 ms latency timer (gateway/adapter.py): an FTDI left
at Linux's 16 ms holds every reply that long.

Jobs (`run_job`, a firmware transfer for one) get the bus between cycles, for at most
`job_share` of its time: each cycle of T seconds earns them T * share / (1 - share) seconds
of credit, and they run while they have some; an exchange that overruns (one OTA chunk takes
longer than a short cycle) is paid back by the cycles after it. So over any stretch the
polling keeps 1 - share of the bus (half at the default 0.5), and a press waits at most
one job exchange longer than without the job.
"""

import concurrent.futures
import logging
import os
import queue
import select
import threading
import time

import serial
from hallgate.gateway import adapter
from hallgate.gateway.book import GARBLED, TIMEOUT, Book
from hallgate.protocols import bus

log = logging.getLogger(__name__)

LOG_TRIES = 3  # GET_LOGs for one piece of a device's log, when no good answer comes
# Bytes a reply may take on the wire, added to the response deadline: the longest ordinary
# reply (INFO: 6 of framing, 28 of payload), and a whole frame (a LOG piece, an OTA_STATUS
# with its reason) for the requests that get one.
REPLY_ROOM = 34
FULL_REPLY = 6 + bus.MAX_PAYLOAD


class NoReply(Exception):
    """A device did not answer a request made outside the cycle (or not with a reply
    that fits it)."""

    def __init__(self, addr, why):
        super().__init__(f"device {addr}: {why}")
        self.addr = addr
        self.why = why


class DeviceRefused(Exception):
    """A device answered a request with NAK."""

    def __init__(self, addr, refused, reason):
        name = bus.TYPE_NAMES.get(refused, refused)
        why = {bus.NAK_UNKNOWN_TYPE: "unknown message type"}.get(reason, f"reason {reason}")
        super().__init__(f"device {addr} refused {name} ({why})")
        self.addr = addr
        self.refused = refused
        self.reason = reason

    @property
    def unknown_type(self):
        """The device's firmware does not know the request (it predates it)."""
        return self.reason == bus.NAK_UNKNOWN_TYPE


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
    sysfs = adapter.SYSFS  # where the adapter's latency timer is looked for (tests: a fake)

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
        on_board=None,
        boards=None,
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
        # The adapter under the port (gateway/adapter.py): set to low latency at every
        # open of a port we own; a port handed in says its own (direct.open_port's).
        self.adapter = None
        if isinstance(port, str):
            self._url = port
            self._port = None
            self.baudrate = baudrate
        else:
            self._port = port
            self.baudrate = getattr(port, "baudrate", None) or baudrate
            port.timeout = self.read_slice
            given = getattr(port, "adapter", None)
            self.adapter = given if isinstance(given, adapter.Adapter) else None
        if tx_enable is not None and not callable(tx_enable):
            pin = tx_enable
            tx_enable = lambda on: pin.on() if on else pin.off()  # noqa: E731
        self._tx = tx_enable
        self._char = 10.0 / self.baudrate
        self.quiet = max(3 * self._char, 0.01)  # silence after bytes that ends a partial frame
        self.book = Book(on_event, on_device, on_nak, offline_after, max_burst, nak_backoff,
                         on_board=on_board, boards=boards)
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

    def read_log(self, addr, offset=0):
        """One GET_LOG to `addr` from `offset`: a Future of the bus.Log chunk it answers,
        or of DeviceRefused (a NAK: firmware without GET_LOG says "unknown type") or
        NoReply. Sent by the master's thread between cycles (or by the next run_cycle()).
        `fetch_log` reads a whole log with it."""
        future = concurrent.futures.Future()
        self._commands.put((self._get_log, (addr, offset), future))
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
        """The bus counters (a dict snapshot; cycle times in seconds), and "adapter": what
        the port is and its latency timer (gateway/adapter.py; None before the first
        open)."""
        with self._lock:
            stats = self.book.stats.asdict()
        a = self.adapter
        stats["adapter"] = a.asdict() if a is not None else None
        return stats

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
                outcome = self._exchange(job.addr, request, self.timeout, room=FULL_REPLY)
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

    def _get_log(self, addr, offset):
        request = bus.encode_get_log(addr, offset)
        # A technician waits for it, the poll cycle does not: a request lost or garbled
        # is sent again, twice (a device short of heap may drop one: it then reports a
        # fault and answers the next).
        for _ in range(LOG_TRIES):
            reply = self._exchange(addr, request, self.timeout, room=FULL_REPLY)
            if reply is GARBLED or reply is TIMEOUT:
                continue
            if reply.mtype == bus.NAK:
                refused, reason = bus.decode_nak(reply.payload)
                raise DeviceRefused(addr, refused, reason)
            if reply.mtype == bus.LOG:
                try:
                    return bus.decode_log(reply.payload)
                except ValueError as e:
                    log.warning("device %d: bad LOG %r: %s", addr, reply, e)
                    reply = GARBLED
                    continue
            raise NoReply(addr, f"answered GET_LOG with "
                          f"{bus.TYPE_NAMES.get(reply.mtype, hex(reply.mtype))}")
        raise NoReply(addr, "no answer" if reply is TIMEOUT else "garbled answers")

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
                self.adapter = adapter.prepare(self._port, self._url, self.sysfs)
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

    def _exchange(self, addr, request, timeout, expect_reply=True, room=REPLY_ROOM):
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
            deadline = sent + timeout + (len(request) + room) * self._char
            outcome = TIMEOUT
            last_rx = None
            read = self._reader(port)
            while outcome is TIMEOUT:
                idle = False
                data = read()
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

    def _reader(self, port):
        """A function reading what has arrived on `port`, waiting at most read_slice.

        On a POSIX serial port (the adapter, a pty): one select() and one read() of all
        that came, where pyserial's `read(in_waiting or 1)` makes two of each and an ioctl
        per reply piece: this loop runs for every exchange, hundreds a second, and its
        CPU is the gateway's largest while polling. Any other port object: its read()."""
        posix = getattr(serial, "serialposix", None)
        fd = getattr(port, "fd", None)
        if posix is None or not isinstance(port, posix.Serial) or fd is None:
            return lambda: port.read(port.in_waiting or 1)
        wait = self.read_slice

        def read():
            if not select.select((fd,), (), (), wait)[0]:
                return b""
            try:
                data = os.read(fd, 4096)
            except BlockingIOError:
                return b""
            if not data:  # readable but empty: the device is gone (as pyserial says)
                raise serial.SerialException("device reports readiness to read but returned "
                                             "no data (device disconnected?)")
            return data

        return read

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
