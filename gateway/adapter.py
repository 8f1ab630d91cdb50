"""The serial adapter under a bus port: what it is, and its latency timer set to 1 ms.

Design note
-----------
Operations: `prepare(port)` runs once an RS-485 port is open (the bus master at every
(re)open, the technician's direct tools): it asks for low latency and returns an `Adapter`
saying what the port is and what its latency timer is now. `inspect(path)` only looks.
Goals: a USB adapter's receive latency is the bus's, not the adapter's default. An FTDI
chip (the example configs' adapter, driver `ftdi_sio`) holds what it receives until 62
bytes or its latency timer, 16 ms by default on Linux: every reply of a poll cycle waits
for it, so 32 idle devices take about half a second instead of 40 ms. Nothing here may stop
the bus: what cannot be set is said (a warning above 1 ms), and the port is used anyway.
Plan, in order, each step harmless where it does not apply:
  1. pyserial's low-latency mode (the ASYNC_LOW_LATENCY flag, TIOCSSERIAL): a user flag, so
     the sandboxed, unprivileged daemon may set it, and ftdi_sio then runs the chip's
     timer at 1 ms (its sysfs `latency_timer` reads 1). A pty or a UART refuses or ignores
     it: nothing lost.
  2. sysfs `bus/usb-serial/devices/ttyUSBn/latency_timer` (ftdi_sio only): read; above 1,
     write 1 where the file is writable (root, no sandbox); otherwise say so and how to fix
     it for good (hardware/udev/99-hallgate-ftdi.rules sets it when the adapter is plugged).
  3. read the timer back: that is what the status and `hallgate bus stats` show.
The sysfs root is an argument (`sysfs=`), so the tests lay out a fake tree.
Costs: a few small file reads per open; nothing per exchange.
"""

import dataclasses
import logging
import os

log = logging.getLogger(__name__)

SYSFS = "/sys"
WANT_MS = 1  # the FTDI's shortest latency timer; 0 is not valid
UDEV_RULE = "hardware/udev/99-hallgate-ftdi.rules"


@dataclasses.dataclass
class Adapter:
    """What a bus port is. `kind`: "usb-serial" (a USB adapter, ttyUSBn), "pty" (a
    pseudo-terminal: the simulated line), "serial" (another tty: a UART, CDC-ACM), "url"
    (a pyserial URL such as socket://) or "unknown". `latency_timer_ms` is None where the
    port has no such timer (nothing to set)."""

    port: str
    kind: str = "unknown"
    tty: str | None = None  # ttyUSB0, the kernel's name
    driver: str | None = None  # ftdi_sio, ch341, cp210x, cdc_acm, ...
    usb: str | None = None  # "0403:6001 FTDI FT232R USB UART"
    latency_timer_ms: int | None = None
    low_latency: bool | None = None  # pyserial's low-latency mode took (None: not tried)
    done: str | None = None  # what prepare() changed, if anything
    warning: str | None = None  # above WANT_MS, or could not be read: why and the fix

    @property
    def slow(self):
        """True when the adapter holds replies longer than 1 ms."""
        return self.latency_timer_ms is not None and self.latency_timer_ms > WANT_MS

    def asdict(self):
        return dataclasses.asdict(self)

    def text(self):
        """One line for a technician: what the adapter is and its latency timer."""
        return describe(self.asdict())


def describe(a):
    """The one-line text of an Adapter's asdict() (as the status file holds it)."""
    if not a:
        return "adapter unknown"
    what = {"usb-serial": "USB serial adapter", "pty": "pty (simulated line)",
            "serial": "serial port", "url": "pyserial URL"}.get(a.get("kind"), "port")
    parts = [p for p in (a.get("tty"), a.get("driver"), a.get("usb")) if p]
    head = what + (f" ({', '.join(parts)})" if parts else "")
    ms = a.get("latency_timer_ms")
    if ms is None:
        tail = "no latency timer"
    else:
        tail = f"latency timer {ms} ms" + (" (want 1 ms)" if ms > WANT_MS else "")
    return f"{head}, {tail}"


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _usb_ids(device_dir):
    """"vvvv:pppp manufacturer product" of the USB device above a usb-serial port, or
    None (sysfs: the port's folder sits in the interface's, which sits in the device's)."""
    try:
        here = os.path.realpath(device_dir)
    except OSError:
        return None
    for _ in range(4):
        here = os.path.dirname(here)
        vendor = _read(os.path.join(here, "idVendor"))
        if vendor is not None:
            product = _read(os.path.join(here, "idProduct")) or "?"
            names = [_read(os.path.join(here, n)) for n in ("manufacturer", "product")]
            return " ".join([f"{vendor}:{product}", *[n for n in names if n]])
    return None


def inspect(path, sysfs=SYSFS):
    """An Adapter for the port at `path` (a device path, a /dev/serial/by-id link, or a
    pyserial URL); reads only."""
    a = Adapter(port=str(path))
    if "://" in str(path):
        a.kind = "url"
        return a
    try:
        real = os.path.realpath(path)
    except (OSError, ValueError):
        return a
    if real.startswith("/dev/pts/") or real == "/dev/ptmx":
        a.kind = "pty"
        return a
    name = os.path.basename(real)
    a.tty = name
    usb = os.path.join(sysfs, "bus", "usb-serial", "devices", name)
    if os.path.isdir(usb):
        a.kind = "usb-serial"
        a.driver = _link_name(os.path.join(usb, "driver"))
        a.usb = _usb_ids(usb)
        text = _read(os.path.join(usb, "latency_timer"))
        if text is not None:
            try:
                a.latency_timer_ms = int(text)
            except ValueError:
                a.warning = f"latency_timer of {name} reads {text!r}"
        return a
    tty = os.path.join(sysfs, "class", "tty", name)
    if os.path.exists(tty):
        a.kind = "serial"
        a.driver = _link_name(os.path.join(tty, "device", "driver"))
    return a


def _link_name(path):
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return None


def prepare(port, path=None, sysfs=SYSFS):
    """Ask the open pyserial `port` (its device at `path`, by default `port.port`) for low
    latency, set the FTDI latency timer to 1 ms where it can, and return the Adapter as it
    is now. Never raises for what it cannot do: it logs it and says it in `warning`."""
    path = path if path is not None else getattr(port, "port", None) or "?"
    low = _low_latency(port)
    a = inspect(path, sysfs)
    a.low_latency = low
    if a.latency_timer_ms is not None and a.latency_timer_ms > WANT_MS:
        timer = os.path.join(sysfs, "bus", "usb-serial", "devices", a.tty, "latency_timer")
        was = a.latency_timer_ms
        try:
            with open(timer, "w") as f:
                f.write(f"{WANT_MS}\n")
        except OSError as e:
            why = e.strerror or str(e)
        else:
            why = None
        a = inspect(path, sysfs)
        a.low_latency = low
        if a.latency_timer_ms is not None and a.latency_timer_ms <= WANT_MS:
            a.done = f"latency timer {was} -> {a.latency_timer_ms} ms"
        else:
            a.warning = (f"{a.tty}'s latency timer is {a.latency_timer_ms} ms: every reply "
                         f"waits up to that long (a poll cycle of 32 devices takes about "
                         f"{32 * (a.latency_timer_ms or 0)} ms instead of 40); writing 1 to "
                         f"{timer} failed ({why or 'it did not take'}). Install {UDEV_RULE} "
                         "(it sets 1 ms when the adapter is plugged in), then replug it")
    elif low and a.latency_timer_ms is not None:
        a.done = "low-latency mode"
    if a.warning:
        log.warning("bus port %s: %s", path, a.warning)
    else:
        log.info("bus port %s: %s", path, a.text())
    return a


def _low_latency(port):
    """pyserial's low-latency mode on `port`: True if it took, False if the port refused
    it (a pty, most UARTs), None if this port or platform has no such mode."""
    setter = getattr(port, "set_low_latency_mode", None)
    if setter is None:
        return None
    try:
        setter(True)
    except NotImplementedError:
        return None
    except (ValueError, OSError, AttributeError):
        return False
    return True
