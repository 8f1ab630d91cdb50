"""GPIO inputs debounced by sampling, and the one thread that samples them.

Design note
-----------
Operations: a `SampledButton` wraps one gpiozero `InputDevice` and a pure `Debouncer`;
`poll(now)` reads the pin once and says whether a press was counted (and when it began).
A `Sampler` runs one thread for any number of pollable objects (anything with `poll()`),
calling each one every `period_s`.
Goals: one debounce, ours, the same on every pin factory (gpiozero's `bounce_time` is a
stability filter on lgpio, a lockout on other factories, and ignored by `MockPin`); a press
counted once however much the contact bounces; a spike shorter than the window counted
never; stop prompt and bounded.
Plan: the approach of firmware/keypad.py (the device firmware), ported to CPython with
float seconds from a monotonic clock (no tick wrap to care about). Sampling rather than
edge callbacks: the state is one level and two times per pin, there is no callback thread
racing a timer, and a missed edge cannot leave a button stuck: the next sample corrects it.

The cost is one pin read per button per period: with the defaults (5 ms, 20 ms window) a
press is seen 20-25 ms after the contact settles, and a 12-window hall (24 buttons) costs
about 5,000 reads a second on the Pi, each a few microseconds with lgpio.
"""

import logging
import threading
import time

from gpiozero import InputDevice

log = logging.getLogger(__name__)


class Debouncer:
    """One contact, debounced by sampling: a change counts only after the contact has read
    the same for `debounce_s`.

    A change shorter than the window is noise; a contact that bounces restarts the window at
    every bounce, so it counts once, when it has settled. `update` returns the time the
    change *began*: the first sample that saw the contact leave its old level, where the
    bounces that followed were each shorter than the window (so a bouncing press is dated
    by its first edge, not by the moment it settled). Pure: no pins, no clock of its own.

    >>> d = Debouncer(debounce_s=0.020)
    >>> [d.update(raw, t) for raw, t in [(1, 0.000), (0, 0.002), (1, 0.004), (1, 0.020)]]
    [None, None, None, None]
    >>> d.update(1, 0.025), d.level      # read closed since 0.004 for 20 ms; began at 0.000
    (0.0, True)
    """

    debounce_s = 0.020  # mechanical keys settle within 5-10 ms; 20 covers worn ones

    def __init__(self, debounce_s=None, level=False):
        if debounce_s is not None:
            if debounce_s < 0:
                raise ValueError(f"debounce_s must be >= 0, not {debounce_s!r}")
            self.debounce_s = debounce_s
        self.level = bool(level)  # the debounced level: True = closed
        self._raw = self.level  # level of the last sample
        self._since = None  # when the raw level last changed
        self._back = float("-inf")  # when the raw level last returned to self.level
        self._onset = None  # when the current attempt to change began

    def update(self, raw, now):
        """Feed one sample (truthy = closed) taken at `now` (seconds).

        Returns None, or, when the debounced level has just changed, the time the change
        began (see the class note); the new level is then in `level`.
        """
        raw = bool(raw)
        if raw != self._raw:
            self._raw = raw
            self._since = now
            if raw == self.level:
                self._back = now
            elif self._onset is None or now - self._back >= self.debounce_s:
                # Left the resting level after resting there a full window: a new attempt.
                # Otherwise it is a bounce of the attempt already running.
                self._onset = now
        if raw != self.level and now - self._since >= self.debounce_s:
            self.level = raw
            onset, self._onset = self._onset, None
            self._back = self._since
            return onset
        return None


class SampledButton:
    """A push button on a GPIO pin, read by sampling and debounced by `Debouncer`.

    Wired as usual: between the pin and ground, with the Pi's pull-up (`pull_up=True`).
    The pin is read through gpiozero's `InputDevice`, which needs no edge detection and
    no thread; whoever owns the button calls `poll(now)` every few milliseconds.

    A contact already closed when the button is created is taken as its resting state
    (logged): a stuck or miswired button then does not make a phantom press on every
    restart; it counts again once it has been released.

    >>> from gpiozero import Device
    >>> from gpiozero.pins.mock import MockFactory
    >>> Device.pin_factory = MockFactory()
    >>> b = SampledButton(17, debounce_s=0.020)
    >>> Device.pin_factory.pin(17).drive_low()       # pressed (pulled up, active low)
    >>> b.poll(0.000), b.poll(0.010), b.poll(0.020)   # counted once the window has passed
    (None, None, 0.0)
    >>> b.close()
    """

    def __init__(self, pin, *, debounce_s=None, pull_up=True, active_state=None,
                 pin_factory=None):
        self.device = InputDevice(
            pin, pull_up=pull_up, active_state=active_state, pin_factory=pin_factory
        )
        try:
            level = self.device.is_active
        except BaseException:
            self.device.close()
            raise
        if level:
            log.warning("button on %s reads pressed at start: taken as released until it "
                        "opens (stuck or miswired?)", self.device.pin)
        self.debouncer = Debouncer(debounce_s, level=False)
        self._held_at_start = level

    @property
    def gpio(self):
        """The BCM number of the pin (17 for "GPIO17", "BOARD11" or 17), or None if the pin
        factory does not know one."""
        names = getattr(getattr(self.device.pin, "info", None), "names", ())
        return next((n for n in names if isinstance(n, int)), None)

    @property
    def pressed(self):
        """The debounced level: True while the button is held down."""
        return self.debouncer.level

    def poll(self, now):
        """Read the pin once; returns the time the press began when a press is counted now,
        otherwise None (releases and noise return None)."""
        raw = self.device.is_active
        if self._held_at_start:
            if raw:
                return None
            self._held_at_start = False
        onset = self.debouncer.update(raw, now)
        if onset is not None and self.debouncer.level:
            return onset
        return None

    def close(self):
        self.device.close()


class Sampler:
    """One thread that calls `poll()` on every registered object every `period_s`.

    A poll that raises is logged and counted (`errors`); the thread goes on with the others.
    If a pass takes longer than the period, the next one starts at once and the schedule
    resynchronises instead of trying to catch up. `close()` stops the thread within one
    period plus the pass in progress.

    >>> class Ticker:
    ...     n = 0
    ...     def poll(self):
    ...         self.n += 1
    >>> t = Ticker()
    >>> with Sampler([t], period_s=0.002) as s:
    ...     time.sleep(0.05)
    >>> t.n > 0
    True
    """

    period_s = 0.005  # several samples per 20 ms debounce window

    def __init__(self, pollables=(), period_s=None, name="gpio-sampler"):
        if period_s is not None:
            if not period_s > 0:
                raise ValueError(f"period_s must be > 0, not {period_s!r}")
            self.period_s = period_s
        self._pollables = list(pollables)
        self._name = name
        self._stop = threading.Event()
        self._thread = None
        self.passes = 0  # sampling passes done
        self.overruns = 0  # passes that took longer than the period
        self.errors = 0  # polls that raised

    def add(self, pollable):
        """Register one more object; only before `start()`."""
        if self._thread is not None:
            raise RuntimeError("add() before start()")
        self._pollables.append(pollable)

    def start(self):
        if self._thread is not None:
            raise RuntimeError("sampler already started")
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        return self

    @property
    def running(self):
        return self._thread is not None and self._thread.is_alive()

    def close(self, timeout=5.0):
        """Stop the thread and wait for it (at most `timeout` seconds); idempotent."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.error("%s did not stop within %.1f s", self._name, timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def _run(self):
        period = self.period_s
        due = time.monotonic()
        while not self._stop.is_set():
            for p in self._pollables:
                try:
                    p.poll()
                except Exception:
                    self.errors += 1
                    log.exception("poll of %r failed", p)
            self.passes += 1
            due += period
            now = time.monotonic()
            if now >= due:
                self.overruns += 1
                due = now
            self._stop.wait(due - now)
