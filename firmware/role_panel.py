# Role "call-panel": the operator's panel at a window.
#
# Eight keys (call, recall, start, finish, noshow, pause, resume, redirect), a small
# 7-segment display (4 digits by default), a status LED and a buzzer. It shows the last
# applied PanelState: 4 digits cannot hold everything at once, so the display rotates
# every rotate_ms through the ticket, the queue length ("q 12"), the called visitor's
# wait in minutes ("w 07", while one is called or served) and "tEA" when the wait went
# over the norm. The LED says the mode at a glance: blinking while a visitor is called,
# on while serving, off otherwise. A state with the beep flag beeps once, when its
# version is new.
#
# Like every role it reaches the board only through hal.display, hal.led, hal.buzzer and
# hal.emit.

import bus
from keypad import SHORT
from compat import const, ticks_add, ticks_diff

# indexes into bus.PANEL_MODES
_CALLED = const(1)
_SERVING = const(2)
_CLOSED = const(4)
# LED by mode (idle, called, serving, paused, closed): 0 off, 1 on, 2 blinking
_LED_BY_MODE = (0, 2, 1, 0, 0)


class CallPanel:
    ROLE = bus.ROLE_CALL_PANEL
    KIND = "panel"  # name of its state on the control channel
    KEYS = bus.KEYS

    led_blink_ms = 300  # half-period of the "called" LED: clearly not steady
    flash_ms = 100  # identify flashes faster than any mode does: it is not content
    beep_ms = 150  # a new state with the beep flag, and IDENTIFY
    hold_it_ms = 40  # short chirp: "that key wants a long press"

    def __init__(self, hal, cfg, now):
        self._hal = hal
        self._idle = cfg["idle_text"]
        self.rotate_ms = cfg["rotate_ms"]
        self.state = bus.PanelState()
        self.version = 0  # applied version; 0 = nothing applied since boot
        self._faces = [self._idle]  # what the display rotates through
        self._face_i = 0
        self._face_at = now  # when the current face came up
        self._buzz_end = None  # when the buzzer goes quiet; None = quiet
        self._identify_end = None
        # what the display and LED show now, so only changes are written
        self._face = None
        self._led = None
        hal.display.intensity(cfg["brightness"])

    def apply(self, version, state, now, fresh):
        """Show `state`. A fresh version starts the rotation at its ticket and beeps if
        asked; the same version again changes nothing visible."""
        self.state = state
        self.version = version
        faces = [state.text or self._idle]
        if state.mode != _CLOSED:  # closed: the queue is not this window's business
            faces.append("q%3d" % min(state.queue, 999))
        if state.mode in (_CALLED, _SERVING) and state.wait_s:
            faces.append("w %02d" % min(state.wait_s // 60, 99))
        if state.tea:
            faces.append("tEA")
        self._faces = faces
        if fresh:
            self._face_i = 0
            self._face_at = now
            if state.beep:
                self.beep(self.beep_ms, now)
        self._face_i %= len(faces)
        self._hal.emit(self.KIND, self.shown())
        self.tick(now)

    def identify(self, seconds, now):
        self._identify_end = ticks_add(now, seconds * 1000) if seconds else None
        if seconds:
            self.beep(self.beep_ms, now)
        self.tick(now)

    def key_feedback(self, result, now):
        if result == SHORT:  # a long-press key was let go too early
            self.beep(self.hold_it_ms, now)

    def beep(self, ms, now):
        self._buzz_end = ticks_add(now, ms)
        self._hal.buzzer(True)
        self._hal.emit("beep", ms)

    def tick(self, now):
        hal = self._hal
        if self._buzz_end is not None and ticks_diff(now, self._buzz_end) >= 0:
            self._buzz_end = None
            hal.buzzer(False)
        if ticks_diff(now, self._face_at) >= self.rotate_ms:
            self._face_i = (self._face_i + 1) % len(self._faces)
            self._face_at = now
        face = self._faces[self._face_i]
        led = _LED_BY_MODE[self.state.mode]
        if led == 2:  # blinking; the phase may jump when ticks wrap, which nobody sees
            led = (now // self.led_blink_ms) % 2 == 0
        if self._identify_end is not None:
            if ticks_diff(now, self._identify_end) >= 0:
                self._identify_end = None
            else:
                face = "8.8.8.8."
                led = (now // self.flash_ms) % 2 == 0
        led = bool(led)
        if face != self._face:
            hal.display.show(face)
            self._face = face
        if led != self._led:
            hal.led(led)
            self._led = led

    def shown(self):
        """The applied state as the control channel reports it."""
        s = self.state
        return {
            "text": s.text or self._idle,
            "mode": bus.PANEL_MODES[s.mode],
            "queue": s.queue,
            "wait_s": s.wait_s,
            "tea": s.tea,
            "version": self.version,
        }

    def describe(self):
        """shown() plus what the display and LED show at this instant."""
        return {
            self.KIND: self.shown(),
            "face": self._face,
            "led": self._led,
            "faces": self._faces,
            "identify": self._identify_end is not None,
        }
