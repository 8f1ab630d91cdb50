# Role "window-display": the ticket called to a window, on 7-segment LED digits.
#
# Shows the last applied DisplayState: its text (or the configured idle text when the
# text is empty), blinking for blink_s seconds after a NEW version is applied so people
# notice the change, then steady. IDENTIFY flashes every segment, so a technician can
# find the device with a given address on the wall.
#
# A role talks to the board only through hal.display (show/light/intensity) and
# hal.emit (the observer channel); it writes to the display only when what should be
# seen changes, so a blink costs one register write per half-period.

import bus
from compat import ticks_add, ticks_diff

ALL_SEGMENTS = "8.8.8.8.8.8.8.8."


class WindowDisplay:
    ROLE = bus.ROLE_WINDOW_DISPLAY
    KIND = "display"  # name of its state on the control channel
    KEYS = ()  # a window display has no keys

    blink_ms = 500  # half-period: 1 Hz, noticed from across a hall, not frantic
    flash_ms = 250  # identify flashes faster than any blink: it is not content

    def __init__(self, hal, cfg, now):
        self._hal = hal
        self._display = hal.display
        self._idle = cfg["idle_text"]
        self.state = bus.DisplayState(brightness=cfg["brightness"])
        self.version = 0  # applied version; 0 = nothing applied since boot
        self._blink_from = None  # when the current blink began; None = steady
        self._identify_end = None
        # what the digits show now, so only changes are written
        self._face = None
        self._lit = None
        self._level = -1

    def apply(self, version, state, now, fresh):
        """Show `state`. A fresh version starts the blink; the same version again (the
        master repeats SETs until STATUS reports it) changes nothing visible."""
        self.state = state
        self.version = version
        if fresh:
            self._blink_from = now if state.blink_s else None
        self._hal.emit(self.KIND, self.shown())
        self.tick(now)

    def identify(self, seconds, now):
        self._identify_end = ticks_add(now, seconds * 1000) if seconds else None
        self.tick(now)

    def key_feedback(self, result, now):
        pass  # no keys

    def tick(self, now):
        if self._blink_from is not None:
            if ticks_diff(now, self._blink_from) >= self.state.blink_s * 1000:
                self._blink_from = None
                self._hal.emit(self.KIND, self.shown())
        if self._identify_end is not None and ticks_diff(now, self._identify_end) >= 0:
            self._identify_end = None
        if self._identify_end is not None:
            face, level = ALL_SEGMENTS, 15
            lit = (now // self.flash_ms) % 2 == 0  # a phase jump at a ticks wrap is harmless
        else:
            face, level = self.state.text or self._idle, self.state.brightness
            # the blink starts lit, so a new ticket is seen at once
            lit = (
                self._blink_from is None
                or (ticks_diff(now, self._blink_from) // self.blink_ms) % 2 == 0
            )
        self._draw(face, lit, level)

    def _draw(self, face, lit, level):
        display = self._display
        if face != self._face:
            display.show(face)
            self._face = face
        if level != self._level:
            display.intensity(level)
            self._level = level
        if lit != self._lit:
            display.light(lit)
            self._lit = lit

    def shown(self):
        """The applied state as the control channel reports it."""
        return {
            "text": self.state.text or self._idle,
            "blink": self._blink_from is not None,
            "brightness": self.state.brightness,
            "version": self.version,
        }

    def describe(self):
        """shown() plus what the digits show at this instant."""
        return {
            self.KIND: self.shown(),
            "face": self._face,
            "lit": self._lit,
            "identify": self._identify_end is not None,
        }

