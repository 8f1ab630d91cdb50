# A stand-in for MicroPython's `machine` module, so hal_rp2 runs on the unix port in tests.
# Every call that reaches "hardware" is appended to LOG as a tuple, in order.

import io

LOG = []


class Pin:
    IN = 0
    OUT = 1
    PULL_UP = 1

    def __init__(self, id, mode=None, pull=None, value=None):
        self.id = id
        self.level = 1 if pull == Pin.PULL_UP else 0
        if value is not None:
            self.value(value)

    def value(self, level=None):
        if level is None:
            return self.level
        self.level = level
        LOG.append(("pin", self.id, level))


class UART(io.IOBase):  # IOBase: select.poll() takes only stream objects
    def __init__(self, id, baudrate=9600, tx=None, rx=None, rxbuf=None, timeout=None):
        self.rx = bytearray()
        self.busy = 0  # txdone() answers False this many times after a write

    def any(self):
        return len(self.rx)

    def readinto(self, buf, n):
        n = min(n, len(self.rx))
        buf[:n] = self.rx[:n]
        self.rx = self.rx[n:]
        return n

    def write(self, data):
        LOG.append(("write", bytes(data)))
        self.busy = 2

    def flush(self):
        LOG.append(("flush",))

    def txdone(self):
        LOG.append(("txdone", self.busy == 0))
        if self.busy:
            self.busy -= 1
            return False
        return True

    def ioctl(self, request, arg):  # select.poll support: nothing ever pending
        return 0


class SPI:
    def __init__(self, id, baudrate=None, sck=None, mosi=None):
        pass

    def write(self, data):
        LOG.append(("spi", data[0], data[1]))


class PWM:
    def __init__(self, pin, freq=0, duty_u16=0):
        self.pin = pin
        LOG.append(("pwm", pin.id, freq, duty_u16))

    def duty_u16(self, duty):
        LOG.append(("duty", self.pin.id, duty))


# Identity and the watchdog (hal_rp2's): an RP2040's 8-byte id, its two reset causes (a case
# sets CAUSE[0]), and a WDT that logs its start and each feed.
PWRON_RESET = 1
WDT_RESET = 3
CAUSE = [PWRON_RESET]
UNIQUE_ID = b"\xe6\x61\x38\x52\x83\x4b\x2c\x2f"


def unique_id():
    return UNIQUE_ID


def reset_cause():
    return CAUSE[0]


class WDT:
    def __init__(self, id=0, timeout=5000):
        if timeout > 8388:  # the RP2040's longest, as the real one refuses
            raise ValueError("timeout exceeds 8388")
        LOG.append(("wdt", timeout))

    def feed(self):
        LOG.append(("feed",))
