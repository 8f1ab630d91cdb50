# Operator keys: debounce by sampling, lockout against double presses, long press.
#
# Pure objects fed (level, now_ms) samples: no pins, no clock of their own, so the same
# code is unit-tested with synthetic time on CPython and on MicroPython, and any board's
# HAL only has to say whether a contact is closed. In the spirit of Peter Hinch's
# micropython-async primitives/pushbutton.py: tunables are class attributes (override
# them per instance or for every key at once), one small object per key.
#
# Usage: sample every Debouncer.sample_ms or so and act on what sample() returns:
#     key = Key(code=1)
#     result = key.sample(level, time.ticks_ms())   # 0, PRESS, LONG, LOCKED or SHORT
# A Key is a Debouncer (one object per key: RAM is counted in hundreds of bytes here).

from compat import const, ticks_diff

# What Key.sample() reports. PRESS and LONG are the bus action codes (bus.PRESS,
# bus.LONG), so a result goes on the wire as it is.
NOTHING = const(0)
PRESS = const(1)  # a counted press: queue an event
LONG = const(2)  # a long-press key held past long_ms: queue an event
LOCKED = const(3)  # a press within lockout_ms of the previous counted one: ignored, counted
SHORT = const(4)  # a long-press key let go too early: "hold it" feedback, no event


class Debouncer:
    """One contact, debounced by sampling: a change counts only after the contact has read
    the same for debounce_ms.

    A press shorter than the window is noise, and a contact that bounces while it closes
    restarts the window at each bounce, so it counts once, when it has settled. (Acting on
    the first edge, as pushbutton.py does, is quicker, but a single spike from a long cable
    in a hall would then be a press.)
    """

    debounce_ms = 20  # mechanical keys settle within 5-10 ms; 20 covers worn ones
    sample_ms = 5  # sample period the window is meant for (several samples per window)

    def __init__(self, debounce_ms=None):
        if debounce_ms is not None:
            self.debounce_ms = debounce_ms
        self.level = 0  # debounced level: 1 = closed
        self._raw = 0  # level of the last sample
        self._since = 0  # when the raw level last changed

    def update(self, raw, now):
        """Feed one sample (1 = closed); True when the debounced level changed."""
        if raw != self._raw:
            self._raw = raw
            self._since = now
        if raw != self.level and ticks_diff(now, self._since) >= self.debounce_ms:
            self.level = raw
            return True
        return False


class Key(Debouncer):
    """A debounced key that reports counted presses, with a lockout and an optional long
    press.

    Lockout: a second press within lockout_ms of the previous counted one is LOCKED, no
    event (the core counts it) - the classic double click on "call" that would call two
    visitors. Every key has its own lockout; lockout_ms 0 turns it off.
    Long press (long=True, for destructive keys such as "noshow"): holding past long_ms
    gives LONG, at that moment, without waiting for the release; letting go earlier gives
    SHORT, so the panel can say "hold it" instead of silently doing nothing.
    """

    long_ms = 800  # long enough not to happen by accident, short enough not to annoy
    lockout_ms = 1000  # a double click is 150-500 ms apart; a deliberate repeat is slower

    def __init__(self, code, long=False, debounce_ms=None, long_ms=None, lockout_ms=None):
        super().__init__(debounce_ms)
        self.code = code  # the key's bus code, carried for the caller
        self.long = long
        if long_ms is not None:
            self.long_ms = long_ms
        if lockout_ms is not None:
            self.lockout_ms = lockout_ms
        self._down = 0  # when the debounced press began
        self._fired = False  # the long press of the current hold was reported
        self._last = None  # when the last press was counted; None once the lockout ran out

    def sample(self, raw, now):
        """Feed one sample; returns NOTHING, PRESS, LONG, LOCKED or SHORT."""
        last = self._last
        # Forget an expired lockout at once: ticks wrap, and a timestamp days old could
        # otherwise look recent again.
        if last is not None and ticks_diff(now, last) >= self.lockout_ms:
            self._last = None
        if self.update(raw, now):
            if self.level:
                self._down = now
                self._fired = False
                return NOTHING if self.long else self._count(PRESS, now)
            if self.long and not self._fired:
                return SHORT
            return NOTHING
        if (
            self.long
            and self.level
            and not self._fired
            and ticks_diff(now, self._down) >= self.long_ms
        ):
            self._fired = True
            return self._count(LONG, now)
        return NOTHING

    def _count(self, action, now):
        if self._last is not None:
            return LOCKED
        self._last = now
        return action
