"""GPIO inputs debounced by sampling, and the one thread that samples them, woken by edges.

Design note
-----------
Operations: a `SampledButton` wraps one gpiozero `InputDevice` and a pure `Debouncer`;
`poll(now)` reads the pin once and says whether a press was counted (and when it began).
A `Sampler` runs one thread for any number of pollable objects (anything with `poll()`):
it sleeps until an edge (or another reason) wakes it, then calls each one every `period_s`
while any of them has a contact settling, then sleeps again.
Goals: one debounce, ours, the same on every pin factory (gpiozero's `bounce_time` is a
stability filter on lgpio, a lockout on other factories, and ignored by `MockPin`); a press
counted once however much the contact bounces; a spike shorter than the window counted
never; no CPU spent while nothing happens; stop prompt and bounded.
Plan: the approach of firmware/keypad.py (the device firmware), ported to CPython with
float seconds from a monotonic clock (no tick wrap to care about), plus edges to wake up.
The pin's edge callback (gpiozero's `when_changed`, in the pin factory's thread: lgpio's
alert thread on a Pi; the caller's thread for a MockPin) only sets an Event: it judges
nothing, so there is no callback racing a timer. The sampler then samples as before, every
period until every contact has settled (the debounce window passed with the contact
steady), and sleeps again. A missed edge cannot leave a button stuck: every `idle_s` (1 s)
the sampler samples anyway, 24 pin reads a second for a 12-window hall. A pin factory
without edge detection is sampled every period, as before.

Pollables tell the sampler what they need (both optional, duck-typed):
  `watch(wake)`  called once at start with a callable the object calls from any thread
                 when it needs a poll soon (a pin's edge, a vote opened);
  `poll_due()`   after each poll: seconds until it needs the next one without a wake,
                 0 for the next period (a contact settling), None for never.
An object without `poll_due` is polled every period.

The cost: while a contact settles, one pin read per button per period (5 ms, 20 ms
window: a press is seen 20 ms after its first edge); at rest, one pass a second.
"""

import logging
import threading
import time

from gpiozero import InputDevice
from gpiozero.exc import GPIOZeroError

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

    @property
    def settling(self):
        """True while the last sample differs from the debounced level: only more samples
        can tell whether it counts (at rest, samples that read the level change nothing)."""
        return self._raw != self.level


class SampledButton:
    """A push button on a GPIO pin, read by sampling and debounced by `Debouncer`.

    Wired as usual: between the pin and ground, with the Pi's pull-up (`pull_up=True`).
    The pin is read through gpiozero's `InputDevice`; whoever owns the button calls
    `poll(now)` every few milliseconds while `poll_due()` is 0. `watch(wake)` has the
    pin's edges call `wake()` (where the pin factory detects edges), so an owner may sleep
    between presses.

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
        self.edges = False  # True once watch() has the pin's edges wake the owner
        self._wake = None

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

    def poll_due(self):
        """0 while the contact settles (sample every period), else None: nothing can
        change until an edge. Always 0 on a pin whose edges cannot be watched."""
        if not self.edges or self.debouncer.settling:
            return 0.0
        return None

    def watch(self, wake):
        """Call `wake()` at every edge of the pin (in the pin factory's thread); False,
        and nothing changes, when the pin factory cannot detect edges."""
        self._wake = wake
        pin = self.device.pin
        try:
            pin.edges = "both"
            pin.when_changed = self._edge  # gpiozero keeps a weak reference: we hold it
        except (GPIOZeroError, NotImplementedError, AttributeError) as e:
            log.info("pin %s: no edge detection (%s); sampled every period", pin, e)
            self.edges = False
            return False
        self.edges = True
        return True

    def _edge(self, ticks=None, state=None):
        wake = self._wake
        if wake is not None:
            wake()

    def close(self):
        self._wake = None
        self.device.close()


class Sampler:
    """One thread that polls the registered objects: every `period_s` while any of them
    needs it, otherwise asleep until one wakes it (`wake()`, a pin's edge), its
    `poll_due()` comes, or `idle_s` passes (the safety sample).

    A poll that raises is logged and counted (`errors`), that object is polled again next
    period, and the thread goes on with the others. If a pass takes longer than the period,
    the next one starts at once and the schedule resynchronises instead of trying to catch
    up. `close()` stops the thread within one period plus the pass in progress.

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
    idle_s = 1.0  # at rest, a pass this often anyway: a missed edge is not a stuck button

    def __init__(self, pollables=(), period_s=None, name="gpio-sampler", idle_s=None):
        if period_s is not None:
            if not period_s > 0:
                raise ValueError(f"period_s must be > 0, not {period_s!r}")
            self.period_s = period_s
        if idle_s is not None:
            if not idle_s > 0:
                raise ValueError(f"idle_s must be > 0, not {idle_s!r}")
            self.idle_s = idle_s
        self._pollables = list(pollables)
        self._name = name
        self._stop = threading.Event()
        self._woken = threading.Event()
        self._thread = None
        self.passes = 0  # sampling passes done
        self.overruns = 0  # passes that took longer than the period
        self.errors = 0  # polls that raised
        self.sleeps = 0  # times the thread went to sleep with nothing settling
        self.wakes = 0  # wake() calls (edges, votes opened, ...)

    def add(self, pollable):
        """Register one more object; only before `start()`."""
        if self._thread is not None:
            raise RuntimeError("add() before start()")
        self._pollables.append(pollable)

    def wake(self):
        """Poll soon (now, if asleep). Any thread; cheap: an Event set."""
        self.wakes += 1
        self._woken.set()

    def start(self):
        if self._thread is not None:
            raise RuntimeError("sampler already started")
        for p in self._pollables:
            watch = getattr(p, "watch", None)
            if watch is not None:
                watch(self.wake)
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        return self

    @property
    def running(self):
        return self._thread is not None and self._thread.is_alive()

    def close(self, timeout=5.0):
        """Stop the thread and wait for it (at most `timeout` seconds); idempotent."""
        self._stop.set()
        self._woken.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.error("%s did not stop within %.1f s", self._name, timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def _pass(self):
        """Poll everything once; seconds until the next poll is needed (0: next period)."""
        wait = self.idle_s
        for p in self._pollables:
            try:
                p.poll()
                due = p.poll_due() if hasattr(p, "poll_due") else 0.0
            except Exception:
                self.errors += 1
                log.exception("poll of %r failed", p)
                due = 0.0
            if due is not None and due < wait:
                wait = due
        self.passes += 1
        return wait

    def _run(self):
        period = self.period_s
        due = time.monotonic()
        while not self._stop.is_set():
            self._woken.clear()  # a wake from here on is seen by the wait below
            wait = self._pass()
            now = time.monotonic()
            if wait <= 0:  # a contact settling: sample on the period's grid
                due += period
                if now >= due:
                    self.overruns += 1
                    due = now
                self._stop.wait(due - now)
            else:  # at rest: until a wake, the next thing due, or the safety sample
                self.sleeps += 1
                self._woken.wait(wait)
                due = time.monotonic()
