"""A simulated multi-drop RS-485 line over pseudo-terminals.

Design note
-----------
Operations: the gateway opens `hub.master_path` with pyserial; each device process opens a
path from `hub.add_port()`. A thread moves bytes like one shared half-duplex line: what the
master sends reaches every device, what a device sends reaches the master and every other
device (never its own sender), and `inject()` puts noise on the line for everyone.
Goals: timings measured through the hub are the wire's, not the pty's; a dead, restarting or
hung device never stalls or crashes the hub; collisions are visible, so a test of a correct
master and firmware can assert there were none.
Plan:
- One pty pair per talker. The hub reads and writes the pty master side (non-blocking) and
  keeps the slave side open itself for the port's lifetime, raw from the start (no echo), so
  a device process that dies or restarts never turns reads on the master fd into EIO.
- Pacing (baud set): a chunk read from a talker occupies the line for len * 10 / baud
  seconds, starting when that talker's previous bytes are out (a UART sends in order). It is
  cut into pieces of about PIECE_S of wire time (at least one byte), each delivered when its
  last byte has crossed the wire, so receivers see the bytes at wire speed, and the gaps
  inside a frame stay short: a receiver that gives up a partial frame after a few quiet
  character times (BUS.md, 2) sees at most one piece's time between deliveries (plus the
  machine's scheduling jitter). Byte by byte would be truer, and too costly in Python.
  Without baud, bytes are forwarded at once (and no collision can be seen).
- Collisions: a talker that starts while another talker's bytes are still on the line (real
  devices have no carrier sense) collides with them: both are counted once per overlap and
  the overlapping bytes are OR-ed together in both pieces, which a receiver sees as garbage
  with a failing CRC, as on a real line. Injected noise waits for the bytes already on the
  line, so it never garbles what was sent before it; a talker that starts while noise is on
  the line collides with the noise (counted apart, in `noise_collisions`).
- Writes that do not fit (a device that stopped reading) are dropped and counted, like bytes
  on a wire to an unplugged device. A port whose reader has read nothing for `stale_after`
  seconds while bytes waited is flushed (counted), so a restarted device does not answer a
  backlog of stale requests; `reset_port(path)` flushes at once (call it just before
  (re)starting a device process: MicroPython has no tcflush).
- A USB adapter's latency timer (`latency_timer_ms`, None: a plain UART): the master's
  end of a real line is often an FTDI chip, which holds what it receives until it has a
  full USB packet (62 bytes) or its latency timer runs out (16 ms by default on Linux,
  1 ms once gateway/adapter.py or the udev rule set it), and restarts the timer whenever
  it sends a packet (with nothing to send it sends a status packet, so the timer ticks
  steadily). Bytes for the master are held so, then delivered at once; what the master
  sends goes out at once (USB OUT has no such timer). A poll loop in lock step with the
  ticks then pays about one timer period per exchange, as on the real adapter.
- Routing (`route=True`, the simulated hall's choice): a master write that is exactly one
  frame to one address goes only to the drop(s) registered with that address (`add_port(
  name, address=...)`), and a device's bytes only to the master. A correct device ignores
  frames for other addresses and replies from other devices anyway, so nothing it does
  changes; what changes is the cost: on a shared line every device process wakes for
  every frame, N x N wake-ups per poll cycle of N devices (measured: 66 devices on one line
  took ~5% of a core each). Anything else (broadcasts, noise, a write that is not one
  whole frame) goes to everyone. Fault tests keep the shared line (the default).
Cost: per chunk, one read, a few small pieces, and one write per receiver.

Example (makes ptys, so not a doctest)::

    with BusHub(baud=115200) as hub:
        dev = hub.add_port("display-7")       # path for the device process
        master = serial.Serial(hub.master_path, 115200, timeout=0.1)
"""

import collections
import errno
import fcntl
import os
import select
import struct
import termios
import threading
import time
import tty

from hallgate.protocols.bus import HEADER, SYNC

PIECE_S = 0.001  # wire time per delivery when paced: 11 bytes at 115200, 1 byte at 9600
BITS_PER_BYTE = 10  # 8N1: start bit, 8 data bits, stop bit
USB_PACKET = 62  # data bytes in one FTDI USB packet (64, less 2 status bytes)

MASTER = "master"
NOISE = "noise"


class LineChunk:
    """Bytes that crossed the line: when (time.monotonic of the last byte), from whom, and
    whether a collision garbled them. What a tap receives."""

    __slots__ = ("t", "source", "data", "collided")

    def __init__(self, t, source, data, collided=False):
        self.t = t
        self.source = source
        self.data = data
        self.collided = collided

    def __repr__(self):
        collided = ", collided" if self.collided else ""
        return f"LineChunk({self.t:.6f}, {self.source!r}, {self.data.hex(' ')}{collided})"


class HubStats:
    """Counters of the line. Bytes are counted as read from each talker."""

    def __init__(self):
        self.from_master = 0
        self.from_devices = 0
        self.injected = 0
        self.collisions = 0  # overlaps between real talkers (master, devices)
        self.noise_collisions = 0  # overlaps of a talker with injected noise
        self.drops = 0  # bytes not delivered to a port whose buffer was full or gone
        self.stale_flushed = 0  # bytes flushed from ports whose reader read nothing
        self.tap_errors = 0
        self.adapter_ticks = 0  # held bytes delivered to the master at a latency tick
        self.adapter_full = 0  # full USB packets delivered to the master at once

    def asdict(self):
        return dict(self.__dict__)

    def __repr__(self):
        return f"HubStats({self.asdict()!r})"


class _Port:
    __slots__ = (
        "name", "fd", "slave_fd", "path", "bytes_in", "bytes_out", "drops",
        "written", "inq", "deaf_until", "address",
    )  # fmt: skip

    def __init__(self, name):
        self.name = name
        self.fd, self.slave_fd = os.openpty()
        tty.setraw(self.slave_fd)  # raw before anyone opens it: a new pty echoes otherwise
        os.set_blocking(self.fd, False)
        self.path = os.ttyname(self.slave_fd)
        self.bytes_in = 0  # read from this talker
        self.bytes_out = 0  # delivered to this port
        self.drops = 0
        self.written = 0  # delivered since the last stale check
        self.inq = 0  # unread bytes at the last stale check
        self.deaf_until = 0.0  # not read from before this time (after a read error)
        self.address = None  # the device's bus address, for routing (None: unknown)

    def unread(self):
        """Bytes delivered to this port that its reader has not read yet."""
        try:
            raw = fcntl.ioctl(self.slave_fd, termios.FIONREAD, b"\0\0\0\0")
        except OSError:
            return 0
        return struct.unpack("I", raw)[0]

    def close(self):
        for fd in (self.fd, self.slave_fd):
            try:
                os.close(fd)
            except OSError:
                pass


class _Piece:
    __slots__ = ("start", "end", "port", "data", "collided", "dest")

    def __init__(self, start, end, port, data, dest=None):
        self.start = start
        self.end = end
        self.port = port  # the talker's _Port, or None for noise
        self.data = data  # bytearray: a collision garbles it in place
        self.collided = False
        self.dest = dest  # routed: the ports it goes to (None: everyone else)


class BusHub:
    """One shared RS-485 line joining a master pty and device ptys.

    baud: pace the line at 10 / baud seconds per byte (None: forward at once).
    tap: a callable taking a LineChunk, or a list that LineChunks are appended to, for
    everything delivered on the line (a bus sniffer's view).
    mangle: a callable taking a talker's port name ("master", ...) and the bytearray it
    just wrote, changing it in place before it goes on the line: a fault a test injects
    (a flipped bit in one frame, say).
    stale_after: seconds a port's reader may leave delivered bytes unread before they are
    flushed (None: never).
    latency_timer_ms: the master's adapter holds its received bytes up to this long (an
    FTDI's latency timer, 1-255 ms; None: no adapter). May be changed while running.
    """

    POLL_INTERVAL = 0.05  # housekeeping period while the line is idle

    def __init__(self, baud=None, tap=None, stale_after=0.5, mangle=None, route=False,
                 latency_timer_ms=None):
        self.baud = baud
        self.route = route
        self.mangle = mangle  # mangle(port name, bytearray): a fault on the line, in place
        self._byte_time = BITS_PER_BYTE / baud if baud else 0.0
        self._piece = max(1, int(PIECE_S * baud / BITS_PER_BYTE)) if baud else 0
        if tap is not None and not callable(tap):
            tap = tap.append
        self._tap = tap
        self.stale_after = stale_after
        self.stats = HubStats()
        self._lock = threading.Lock()
        self._ports = {}  # fd -> _Port
        self._by_path = {}
        self._inject = collections.deque()
        self._pieces = []  # on the line, not yet delivered; in order of scheduling
        self._busy_until = 0.0
        self._thread = None
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._closed = False
        self._held = bytearray()  # for the master, held by its adapter (hub thread only)
        self._tick_at = 0.0  # when the adapter's latency timer next runs out
        self.latency_timer_ms = latency_timer_ms
        self._master = self._add(MASTER)
        self.master_path = self._master.path

    # ---- public face ------------------------------------------------------------------

    def add_port(self, name=None, address=None):
        """A new device drop on the line; returns the pty path the device process opens.
        `address`: the bus address of the device on it, for routing."""
        with self._lock:
            name = name or f"port{len(self._ports)}"
        port = self._add(name)
        port.address = address
        return port.path

    def reset_port(self, path):
        """Flush what waits unread for the device on `path` (call before (re)starting it)."""
        port = self._by_path[path]
        with self._lock:
            termios.tcflush(port.slave_fd, termios.TCIFLUSH)
            port.inq = port.written = 0

    def ports(self):
        """{name: {"path", "bytes_in", "bytes_out", "drops"}} for every port, master first."""
        with self._lock:
            return {
                p.name: {
                    "path": p.path,
                    "bytes_in": p.bytes_in,
                    "bytes_out": p.bytes_out,
                    "drops": p.drops,
                }
                for p in self._ports.values()
            }

    @property
    def latency_timer_ms(self):
        """The master's adapter's latency timer in ms, or None (no adapter)."""
        return self._latency_ms

    @latency_timer_ms.setter
    def latency_timer_ms(self, ms):
        if ms is not None and not 1 <= ms <= 255:
            raise ValueError(f"latency_timer_ms must be 1-255 or None, not {ms!r}")
        self._latency_ms = ms
        self._latency_s = ms / 1000 if ms else 0.0
        self._tick_at = time.monotonic() + self._latency_s
        if self._thread is not None:
            self._wake()  # held bytes follow the new timer from the next pass

    def next_tick(self, t):
        """The first time at or after `t` when the adapter's timer runs out (if no full
        packet restarts it before): when bytes reaching it at `t` go to the master."""
        period = self._latency_s
        if not period or t <= self._tick_at:
            return max(t, self._tick_at) if period else t
        return self._tick_at + -(-(t - self._tick_at) // period) * period

    def inject(self, data):
        """Put `data` on the line as noise: paced like any talker, delivered to everyone."""
        self._inject.append(bytes(data))
        self._wake()

    def start(self):
        if self._thread is not None:
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="bus-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout=2.0):
        """Stop the thread (bytes still on the line are dropped); bounded by `timeout`."""
        thread = self._thread
        if thread is None:
            return
        self._stop.set()
        self._wake()
        thread.join(timeout)
        self._thread = None

    def close(self):
        self.stop()
        if self._closed:
            return
        self._closed = True
        with self._lock:
            for port in self._ports.values():
                port.close()
            self._ports.clear()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    # ---- the line -----------------------------------------------------------------------

    def _add(self, name):
        port = _Port(name)
        with self._lock:
            self._ports[port.fd] = port
            self._by_path[port.path] = port
        self._wake()  # the thread watches it from its next pass
        return port

    def _wake(self):
        try:
            os.write(self._wake_w, b"!")
        except OSError:  # pipe full (already woken) or closed
            pass

    def _wait(self, timeout, now):
        """The fds ready to read within `timeout` s. select() for its microsecond
        resolution (poll() rounds up to milliseconds, which would stretch every paced
        delivery); poll() only if an fd is beyond select's FD_SETSIZE."""
        with self._lock:
            fds = [p.fd for p in self._ports.values() if p.deaf_until <= now]
        fds.append(self._wake_r)
        try:
            return select.select(fds, [], [], timeout)[0]
        except ValueError:
            poller = select.poll()
            for fd in fds:
                poller.register(fd, select.POLLIN)
            return [fd for fd, _ in poller.poll(timeout * 1000.0)]

    def _run(self):
        next_check = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            wait = self.POLL_INTERVAL
            if self._pieces:
                wait = min(wait, max(0.0, min(p.end for p in self._pieces) - now))
            if self._held:
                wait = min(wait, max(0.0, self._tick_at - now))
            ready = self._wait(wait, now)
            now = time.monotonic()
            for fd in ready:
                if fd == self._wake_r:
                    try:
                        os.read(self._wake_r, 4096)
                    except OSError:
                        pass
                    continue
                self._read(fd, now)
            while self._inject:
                self._talk(None, bytearray(self._inject.popleft()), now)
            self._deliver_due(time.monotonic())
            self._adapter_tick(time.monotonic())
            if self.stale_after and now >= next_check:
                self._flush_stale()
                next_check = now + self.stale_after

    def _read(self, fd, now):
        port = self._ports.get(fd)
        if port is None:
            return
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError as e:
            # EIO: no slave open (cannot happen while the hub holds one; handled anyway).
            # Stop watching it for a moment, so a hung-up fd cannot spin the loop.
            if e.errno in (errno.EIO, errno.EBADF):
                port.deaf_until = now + 0.1
                return
            raise
        if not data:
            return
        port.bytes_in += len(data)
        if port is self._master:
            self.stats.from_master += len(data)
        else:
            self.stats.from_devices += len(data)
        data = bytearray(data)
        if self.mangle is not None:
            self.mangle(port.name, data)
        self._talk(port, data, now)

    def _destination(self, port, data):
        """With routing, the ports that need `data` from `port` (None: every other)."""
        if not self.route or port is None:
            return None
        if port is not self._master:
            return (self._master,)
        if len(data) >= HEADER and data[0] == SYNC and data[1] != 0 and (
                len(data) == HEADER + data[3] + 2):
            with self._lock:
                return tuple(p for p in self._ports.values() if p.address == data[1])
        return None

    def _talk(self, port, data, now):
        """`port` (None: noise) puts `data` on the line at `now`."""
        if port is None:
            self.stats.injected += len(data)
        bt = self._byte_time
        dest = self._destination(port, data)
        if not bt:
            self._send(LineChunk(now, port.name if port else NOISE, bytes(data)), port, dest)
            return
        mine = [p for p in self._pieces if p.port is port and p.end > now]
        if port is None:
            start = max(now, self._busy_until)  # noise waits for the bytes already on the line
        else:
            start = max([now] + [p.end for p in mine])
        end = start + len(data) * bt
        others = [p for p in self._pieces if p.port is not port and p.end > start and p.start < end]
        if others:
            starting = not mine  # a talker continuing its own collided transmission counts once
            if starting:
                if port is None or any(p.port is None for p in others):
                    self.stats.noise_collisions += 1
                else:
                    self.stats.collisions += 1
            for p in others:
                self._garble(p, data, start)
        pieces = []
        size = self._piece
        for i in range(0, len(data), size):
            part = data[i : i + size]
            t0 = start + i * bt
            piece = _Piece(t0, t0 + len(part) * bt, port, part, dest)
            piece.collided = bool(others) and any(
                o.start < piece.end and o.end > piece.start for o in others
            )
            pieces.append(piece)
        self._pieces.extend(pieces)
        self._busy_until = max(self._busy_until, end)

    def _garble(self, other, data, start):
        """OR the bytes that share wire time: both talkers' receivers get garbage."""
        bt = self._byte_time
        offset = round((start - other.start) / bt)  # index in `other` of data[0]'s slot
        for j in range(len(data)):
            k = offset + j
            if 0 <= k < len(other.data):
                both = other.data[k] | data[j]
                other.data[k] = both
                data[j] = both
        other.collided = True

    def _deliver_due(self, now):
        due = [p for p in self._pieces if p.end <= now]
        if not due:
            return
        self._pieces = [p for p in self._pieces if p.end > now]
        due.sort(key=lambda p: p.end)
        for p in due:
            name = p.port.name if p.port else NOISE
            self._send(LineChunk(p.end, name, bytes(p.data), p.collided), p.port,
                       None if p.collided else p.dest)

    def _send(self, chunk, source, dest=None):
        """Write a chunk to every port but its talker's (or to `dest`, routed); drop what
        does not fit."""
        data = chunk.data
        if dest is not None:
            targets = dest
        else:
            with self._lock:
                targets = [p for p in self._ports.values() if p is not source]
        for port in targets:
            if port is self._master and self._latency_s:
                if not self._held and self._tick_at < chunk.t:
                    self._tick_at = self.next_tick(chunk.t)  # the timer ran on meanwhile
                self._held += data  # the adapter holds it (_adapter_tick)
                self._adapter_full(chunk.t)
                continue
            self._write(port, data)
        if self._tap is not None:
            try:
                self._tap(chunk)
            except Exception:  # a broken sniffer must not take the line down
                self.stats.tap_errors += 1

    def _write(self, port, data):
        """Write to a port's reader; what does not fit is dropped and counted."""
        try:
            n = os.write(port.fd, data)
        except BlockingIOError:
            n = 0
        except OSError:  # EIO and the like: a port being closed; never stall the line
            n = 0
        port.bytes_out += n
        port.written += n
        if n < len(data):
            port.drops += len(data) - n
            self.stats.drops += len(data) - n

    def _adapter_full(self, now):
        """The adapter sends full packets at once, and its timer starts again."""
        full = len(self._held) // USB_PACKET * USB_PACKET
        if full:
            self._write(self._master, bytes(self._held[:full]))
            del self._held[:full]
            self.stats.adapter_full += full // USB_PACKET
            self._tick_at = now + self._latency_s

    def _adapter_tick(self, now):
        """At each run-out of the adapter's timer, what it holds goes to the master."""
        period = self._latency_s
        if not period:
            if self._held:  # the timer was switched off with bytes held
                self._write(self._master, bytes(self._held))
                self._held.clear()
            return
        if now < self._tick_at:
            return
        if self._held:
            self._write(self._master, bytes(self._held))
            self._held.clear()
            self.stats.adapter_ticks += 1
        self._tick_at = self.next_tick(now)
        if self._tick_at <= now:
            self._tick_at += period

    def _flush_stale(self):
        """Flush ports whose reader read nothing since the last check while bytes waited."""
        with self._lock:
            ports = list(self._ports.values())
        for port in ports:
            unread = port.unread()
            consumed = port.inq + port.written - unread
            if unread and port.inq and consumed <= 0:
                try:
                    termios.tcflush(port.slave_fd, termios.TCIFLUSH)
                except termios.error:
                    pass
                self.stats.stale_flushed += unread
                unread = 0
            port.inq = unread
            port.written = 0
