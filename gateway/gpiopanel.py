"""An operator call panel wired straight to the Pi's GPIO, for a small site with no bus.

Keys are debounced by sampling (gateway/gpio.py, the firmware's approach; the sampler
sleeps until a key's edge wakes it), with the same one-second lockout per key as the
firmware, so a double click on "call" calls one visitor. A counted press is handed to
`on_key(window, record)` through the ordered, retrying `Delivery` the feedback buttons
use: the press is taken when the callback (the outbox) returns, and kept and retried if it
raises. The LED shows the panel's mode (called: blinking, serving: on, otherwise off) and
the buzzer beeps when a command asks.

    >>> from gpiozero.pins.mock import MockFactory
    >>> pins = MockFactory()
    >>> got = []
    >>> now = [0.0]
    >>> panel = GpioCallPanel(2, {"call": 20}, on_key=lambda w, r: got.append(r),
    ...                       clock=lambda: now[0], pin_factory=pins)
    >>> pins.pin(20).drive_low()
    >>> for t in (0.01, 0.02, 0.03, 0.04):
    ...     now[0] = t; panel.poll()
    >>> [(r["key"], r["source"]) for r in got]
    [('call', {'gpio': 20})]
    >>> panel.close()
"""

import time

from gpiozero import LED, Buzzer
from hallgate.gateway.commands import utc_ts
from hallgate.gateway.feedback import Delivery
from hallgate.gateway.gpio import SampledButton


class GpioCallPanel:
    """One window's call-panel keys on GPIO, its LED and buzzer."""

    lockout_s = 1.0  # a second press of a key within this is a double click: counted once
    beep_s = 0.15
    blink_s = 0.5

    def __init__(self, window, keys, led_pin=None, buzzer_pin=None, *, on_key,
                 debounce_ms=20, clock=time.monotonic, wallclock=time.time, pin_factory=None,
                 retry_s=1.0):
        self.window = window
        self._clock = clock
        self._wallclock = wallclock
        self.delivery = Delivery(on_key, window, retry_s=retry_s)
        self.buttons = {}
        self.led = self.buzzer = None
        self._last = {}  # key -> time of its last counted press
        self.presses = 0
        self.locked_out = 0
        try:
            for name, pin in keys.items():
                self.buttons[name] = SampledButton(pin, debounce_s=debounce_ms / 1000,
                                                   pin_factory=pin_factory)
            if led_pin is not None:
                self.led = LED(led_pin, pin_factory=pin_factory)
            if buzzer_pin is not None:
                self.buzzer = Buzzer(buzzer_pin, pin_factory=pin_factory)
        except BaseException:
            self.close()
            raise

    def poll(self):
        """Sample every key once and deliver what came of it (the sampler thread calls it)."""
        now = self._clock()
        for name, button in self.buttons.items():
            onset = button.poll(now)
            if onset is None:
                continue
            last = self._last.get(name)
            if last is not None and onset - last < self.lockout_s:
                self.locked_out += 1
                continue
            self._last[name] = onset
            self.presses += 1
            pressed = self._wallclock() - (now - onset)
            self.delivery.add({"type": "key", "key": name, "action": "press",
                               "ts": utc_ts(pressed), "source": {"gpio": button.gpio}})
        self.delivery.flush(now)

    def watch(self, wake):
        """Wake the sampler at every edge of the keys (gateway/gpio.py)."""
        for button in self.buttons.values():
            button.watch(wake)

    def poll_due(self):
        """0 while a key settles, the time to the next retry of on_key, else None."""
        dues = [b.poll_due() for b in self.buttons.values()]
        dues.append(self.delivery.due_in(self._clock()))
        dues = [d for d in dues if d is not None]
        return min(dues) if dues else None

    def show(self, mode, beep=False):
        """Reflect a panel command: the LED by mode, one beep if asked."""
        if self.led is not None:
            if mode == "called":
                self.led.blink(on_time=self.blink_s, off_time=self.blink_s)
            elif mode == "serving":
                self.led.on()
            else:
                self.led.off()
        if beep and self.buzzer is not None:
            self.buzzer.beep(on_time=self.beep_s, off_time=0, n=1)

    def state(self):
        return {"window": self.window, "presses": self.presses, "locked_out": self.locked_out,
                "delivered": self.delivery.delivered, "pending": self.delivery.pending,
                "dropped": self.delivery.dropped,
                "led": None if self.led is None or self.led.closed else bool(self.led.is_lit)}

    def close(self):
        self.delivery.drain()
        for device in [*self.buttons.values(), self.led, self.buzzer]:
            if device is not None:
                device.close()
