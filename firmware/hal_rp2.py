# Board support for the Raspberry Pi Pico (RP2040): every machine.* call lives here.
#
# Bus: a UART through an RS-485 transceiver (MAX3485 or similar) whose DE pin we drive
# high only while sending a reply, and low again the moment the last stop bit is out:
# the master starts its next request right after our reply, and a transceiver still
# driving the line would garble it. Keys: contacts to ground on pull-up inputs (active
# low: a broken wire reads "open", never a stuck press). Display: MAX7219 on SPI (none
# when the config's digits is 0, as on a feedback pad). Panel outputs: status LED on a
# GPIO, piezo buzzer on PWM. Feedback pad outputs: an LED in each key ("like_led",
# "dislike_led"), active high.
#
# An ESP32 HAL is this file with other default pins (and UART ids): the core and the
# roles only see the methods below.

import select
import time

from machine import PWM, SPI, UART, WDT, Pin
from micropython import const

# Default GPIOs (see hardware/ for the wiring); the config's "pins" overrides any of them.
PINS = {
    "tx": 0,  # UART0 TX
    "rx": 1,  # UART0 RX
    "sck": 18,  # SPI0
    "mosi": 19,
    "cs": 17,
    "led": 14,
    "buzzer": 15,
    "call": 6,
    "recall": 7,
    "start": 8,
    "finish": 9,
    "noshow": 10,
    "pause": 11,
    "resume": 12,
    "redirect": 13,
    # a feedback pad: its keys where a panel has call and recall, its key LEDs where a
    # panel has its LED and buzzer (a pad has no display: sck, mosi and cs stay free)
    "like": 6,
    "dislike": 7,
    "like_led": 14,
    "dislike_led": 15,
}
_BUZZ_HZ = const(2700)  # the resonance of common piezo discs: loudest for the current
_TX_DONE_MS = const(20)  # a reply (<= 134 bytes) takes 12 ms at 115200 baud; more is a fault


class Board:
    running = True  # a board runs until it loses power
    BOARD = 2  # bus.BOARDS: rp2

    def __init__(self, cfg):
        pins = dict(PINS)
        pins.update(cfg["pins"])
        self._pins = pins
        self._uart = UART(
            cfg["uart_id"],
            baudrate=cfg["baud"],
            tx=Pin(pins["tx"]),
            rx=Pin(pins["rx"]),
            rxbuf=256,  # two whole frames: the loop may be busy for a few ms
            timeout=0,  # never wait inside read: the loop waits in poll
        )
        self._de = Pin(cfg["de_pin"], Pin.OUT, value=0)  # listen until we reply
        self.display = None
        if cfg["digits"]:
            from max7219 import Max7219  # only a board with digits pays for the driver

            spi = SPI(
                cfg["spi_id"], baudrate=1_000_000, sck=Pin(pins["sck"]), mosi=Pin(pins["mosi"])
            )
            self.display = Max7219(spi, Pin(pins["cs"], Pin.OUT, value=1), cfg["digits"])
        self._poll = select.poll()
        self._poll.register(self._uart, select.POLLIN)
        self._names = ()
        self._keys = []
        self._led = None  # created on first use: a display board may use these GPIOs
        self._buzzer = None
        self._key_leds = None
        self._wdt = None
        import machine

        # (board id, reset cause): the RP2040's unique id (its flash chip's, 8 bytes;
        # another chip's padded or cut to 8), and 2 watchdog or 1 power-on. An RP2040
        # reports its own machine.reset() as a watchdog reset: a restart the firmware
        # asks for leaves a marker first (devlog). Attributes, not methods: RAM.
        self.identity = ((machine.unique_id() + bytes(8))[:8],
                         2 if machine.reset_cause() == machine.WDT_RESET else 1)

    # ---- identity and the watchdog ------------------------------------------------

    def watchdog(self, ms):
        """Start the hardware watchdog (ms, at most 8388 on an RP2040; 0: none). Once
        started it cannot be stopped by its API (slots.py does, for the USB console);
        a chip reset stops it."""
        self._wdt = WDT(timeout=min(ms, 8388)) if ms else None

    def feed(self):
        if self._wdt is not None:
            self._wdt.feed()

    # ---- bus ----------------------------------------------------------------------

    def uart_read(self, buf):
        n = self._uart.any()
        if not n:
            return 0
        return self._uart.readinto(buf, min(n, len(buf))) or 0

    def uart_write(self, data):
        self._de.value(1)
        self._uart.write(data)
        self._uart.flush()  # returns when the TX FIFO has drained
        start = time.ticks_ms()
        while not self._uart.txdone():  # ... and the shift register too (last stop bit)
            if time.ticks_diff(time.ticks_ms(), start) > _TX_DONE_MS:
                break
        self._de.value(0)

    # ---- keys and outputs ---------------------------------------------------------

    def close(self):
        self._uart.deinit()  # the boot loader resets the board next

    def setup_keys(self, names):
        self._names = names
        self._keys = [Pin(self._pins[name], Pin.IN, Pin.PULL_UP) for name in names]

    def key_level(self, i, now):
        return 0 if self._keys[i].value() else 1  # active low: closed contact reads 0

    def led(self, on, key=-1):
        """The status LED (pin "led"), or the LED in key `key`, an index into the role's
        KEYS (pin "<key name>_led"). Pins are made on first use."""
        if key < 0:
            if self._led is None:
                self._led = Pin(self._pins["led"], Pin.OUT, value=0)
            pin = self._led
        else:
            leds = self._key_leds
            if leds is None:
                leds = self._key_leds = [
                    Pin(self._pins[name + "_led"], Pin.OUT, value=0) for name in self._names
                ]
            pin = leds[key]
        pin.value(1 if on else 0)

    def buzzer(self, on):
        if self._buzzer is None:
            self._buzzer = PWM(Pin(self._pins["buzzer"]), freq=_BUZZ_HZ, duty_u16=0)
        self._buzzer.duty_u16(32768 if on else 0)

    def emit(self, kind, value):
        pass  # no observer on a board; the USB console stays quiet

    def wait(self, core, ms, now):
        self._poll.poll(ms)  # wakes at once when a request starts arriving
