"""The technician's tools directly on a serial port, without the daemon.

Design note
-----------
Operations: `open_port` opens a port for exclusive use (pyserial's exclusive=True, a flock
on POSIX; the daemon's bus master opens its port the same way), so a tool and the daemon
never share a line: the second opener gets `PortBusy`. `PlainPoller` polls devices for a
while to measure the bus (cycle time, timeouts, CRC errors) with plain POLLs that carry no
ack, so it never takes a key event away from the central service: a device keeps its
event until the daemon's master acks it (BUS.md, 5). A port opened here gets the same
low-latency adapter settings as the daemon's (gateway/adapter.py).
Goals: small and independent of the bus master's book (which acks every event it takes).
"""

import errno
import os
import time

import serial
from hallgate.gateway import adapter
from hallgate.gateway.master import REPLY_ROOM
from hallgate.protocols import bus

MIN_CYCLE = 0.005  # seconds between cycle starts, at least (as the bus master)


class PortError(Exception):
    """A port that cannot be opened or used; the message says why."""


class PortBusy(PortError):
    """Another process holds the port (its flock)."""

    def __init__(self, port):
        super().__init__(f"{port} is in use by another program")
        self.port = port


def open_port(path, baud=115200, timeout=0.005, sysfs=adapter.SYSFS):
    """The serial port (or pyserial URL) `path`, for this process alone, its adapter set to
    low latency; `port.adapter` says what it is (gateway/adapter.py)."""
    try:
        port = serial.serial_for_url(path, baud, timeout=timeout, exclusive=True)
    except serial.SerialException as e:
        if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES) and (
                "lock" in str(e).lower()):
            raise PortBusy(path) from None
        raise PortError(f"cannot open {path}: {e}") from None
    except OSError as e:
        raise PortError(f"cannot open {path}: {e}") from None
    port.adapter = adapter.prepare(port, path, sysfs)
    return port


def lock_holder(path):
    """(pid, command line) of the process holding the flock on `path` (Linux /proc/locks),
    or None if it cannot be told."""
    try:
        st = os.stat(path)
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    want = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    for line in lines:
        # "1: FLOCK  ADVISORY  WRITE 1234 00:1a:5 0 EOF" (major and minor in hex)
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK":  # "-> FLOCK": a waiter, not a holder
            continue
        try:
            pid = int(fields[4])
            major, minor, inode = fields[5].split(":")
            where = (int(major, 16), int(minor, 16), int(inode))
        except ValueError:
            continue
        if where == want:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                cmdline = ""
            return pid, cmdline
    return None


class PlainPoller:
    """Polls `addresses` on an open `port` with plain POLLs (never an ack) and counts.

    tx_enable: as BusMaster's (a callable taking True / False around each write).
    """

    def __init__(self, port, addresses, *, baudrate=115200, timeout=0.02, tx_enable=None):
        self.port = port
        self.addresses = list(addresses)
        self.timeout = timeout
        self.char = 10.0 / (getattr(port, "baudrate", None) or baudrate)
        self.quiet = max(3 * self.char, 0.01)
        self.tx = tx_enable
        self.bus = {"cycles": 0, "cycle_last": 0.0, "cycle_min": None, "cycle_max": 0.0,
                    "cycle_total": 0.0, "exchanges": 0, "replies": 0, "timeouts": 0,
                    "garbled": 0, "retries": 0, "crc_errors": 0, "event_replies": 0,
                    "naks": 0, "port_errors": 0, "seconds": 0.0}
        self.devices = {a: {"exchanges": 0, "replies": 0, "timeouts": 0, "garbled": 0,
                            "retries": 0, "crc_errors": 0, "event_replies": 0, "naks": 0,
                            "online": False, "last_seen": None, "version": None,
                            "pending_event": None}
                        for a in self.addresses}

    def run(self, seconds, stop=None):
        """Poll cycles for `seconds` (or until stop.is_set()); returns self.report()."""
        started = time.monotonic()
        end = started + seconds
        while time.monotonic() < end and not (stop is not None and stop.is_set()):
            t0 = time.monotonic()
            self.cycle()
            pause = t0 + MIN_CYCLE - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        self.bus["seconds"] = time.monotonic() - started
        return self.report()

    def cycle(self):
        t0 = time.monotonic()
        for addr in self.addresses:
            outcome = self.exchange(addr)
            if outcome == "garbled":  # the device is evidently there: once more, at once
                self._count(addr, "retries")
                self.exchange(addr)
        elapsed = time.monotonic() - t0
        b = self.bus
        b["cycles"] += 1
        b["cycle_last"] = elapsed
        b["cycle_total"] += elapsed
        b["cycle_max"] = max(b["cycle_max"], elapsed)
        b["cycle_min"] = elapsed if b["cycle_min"] is None else min(b["cycle_min"], elapsed)

    def _count(self, addr, name, n=1):
        self.devices[addr][name] += n
        self.bus[name] += n

    def exchange(self, addr):
        """One plain POLL to `addr`: "reply", "timeout" or "garbled"."""
        request = bus.encode_poll(addr)  # no ack, ever
        decoder = bus.Decoder()
        self._count(addr, "exchanges")
        port = self.port
        outcome = "timeout"
        try:
            if port.in_waiting:
                port.reset_input_buffer()
            self._write(request)
            sent = time.monotonic()
            deadline = sent + self.timeout + (len(request) + REPLY_ROOM) * self.char
            last_rx = None
            while True:
                data = port.read(port.in_waiting or 1)
                now = time.monotonic()
                idle = False
                if data:
                    decoder.feed(data)
                    last_rx = now
                elif last_rx is not None:
                    idle = now - last_rx >= self.quiet
                frame = self._reply(decoder, addr, idle or now >= deadline)
                if frame is not None:
                    outcome = self._digest(addr, frame)
                    break
                if now >= deadline:
                    break
        except (serial.SerialException, OSError):
            self.bus["port_errors"] += 1
            time.sleep(0.05)
        if outcome == "timeout" and (decoder.crc_errors or decoder.discarded
                                     or decoder.pending()):
            outcome = "garbled"
        if decoder.crc_errors:
            self._count(addr, "crc_errors", decoder.crc_errors)
        if outcome in ("timeout", "garbled"):
            self._count(addr, "timeouts" if outcome == "timeout" else "garbled")
            self.devices[addr]["online"] = False
        time.sleep(self.char)  # the inter-frame gap
        return outcome

    @staticmethod
    def _reply(decoder, addr, line_idle):
        while True:
            frame = decoder.maybe_extract_frame(line_idle)
            if frame is None or (frame.is_reply and frame.addr == addr):
                return frame

    def _digest(self, addr, frame):
        dev = self.devices[addr]
        try:
            if frame.mtype == bus.STATUS:
                dev["version"] = bus.decode_status(frame.payload)
                dev["pending_event"] = None
            elif frame.mtype == bus.EVENT:
                ev = bus.decode_event(frame.payload)
                self._count(addr, "event_replies")
                dev["pending_event"] = {"boot": ev.boot, "seq": ev.seq, "key": ev.key_name,
                                        "action": ev.action_name, "pending": ev.pending}
            elif frame.mtype == bus.NAK:
                bus.decode_nak(frame.payload)
                self._count(addr, "naks")
            else:
                return "garbled"
        except ValueError:
            return "garbled"
        self._count(addr, "replies")
        dev["online"] = True
        dev["last_seen"] = time.time()
        return "reply"

    def _write(self, data):
        if self.tx is None:
            self.port.write(data)
            return
        self.tx(True)
        try:
            self.port.write(data)
            self.port.flush()
        finally:
            self.tx(False)

    def report(self):
        b = dict(self.bus)
        b["cycle_mean"] = b["cycle_total"] / b["cycles"] if b["cycles"] else 0.0
        return {"bus": b, "devices": {a: dict(d) for a, d in self.devices.items()}}
