# Role "feedback-pad": a window's like / dislike buttons on the bus, an LED in each.
#
# For the windows past what the gateway's GPIO header can wire. The pad judges nothing:
# its two keys become events like any panel key (codes 9 and 10), and the gateway judges
# them with the same rules as buttons on its own GPIO (voting open? the first press?
# too fast?). What the LEDs show comes back as desired state (bus.FeedbackState, the
# tuple (invite, thank, ack_ds); BUS.md section 4), and looks as the gateway's GPIO LEDs
# do (gateway/feedback.py, FeedbackLights): both blink while voting is open, the voted
# key's LED lights steady for ack_ds after a counted vote, then they follow `invite`
# again (off, as a vote ends the invitation). IDENTIFY flashes both, faster than any
# invitation.
#
# The LEDs are driven through hal.led(on, i), i the key's index in KEYS; the role writes
# a level only when it changes. No display, no buzzer: a pad has neither.

import bus
from compat import const, ticks_add, ticks_diff

_LIKE = const(0)  # index of the like key and its LED in KEYS
_DISLIKE = const(1)
_INVITE = const(0)  # indexes into a FeedbackState
_THANK = const(1)


class FeedbackPad:
    ROLE = bus.ROLE_FEEDBACK_PAD
    KIND = "feedback"  # name of its state on the control channel
    KEYS = bus.VOTE_KEYS

    invite_ms = 500  # half-period of the invitation, as the gateway's GPIO LEDs blink
    flash_ms = 100  # identify flashes faster than the invitation: it is not content

    def __init__(self, hal, cfg, now):
        self._hal = hal
        self.state = bus.FeedbackState()
        self.version = 0  # applied version; 0 = nothing applied since boot
        self._since = now  # when the current look began: an invitation starts lit
        self._thank_end = None  # when the thank-you ends; None = not thanking
        self._identify_end = None
        self._leds = None  # (like, dislike) levels written last

    def apply(self, version, state, now, fresh):
        """Show `state`. A fresh version starts its thank-you (and the invitation lit);
        the same version again (the master repeats a SET until STATUS reports it)
        changes nothing visible."""
        self.state = state
        self.version = version
        if fresh:
            _, thank, ack_ds = state
            self._since = now
            self._thank_end = None
            if thank is not None and ack_ds:
                self._thank_end = ticks_add(now, ack_ds * 100)
        self._hal.emit(self.KIND, self.shown())
        self.tick(now)

    def identify(self, seconds, now):
        self._identify_end = ticks_add(now, seconds * 1000) if seconds else None
        self.tick(now)

    def key_feedback(self, result, now):
        pass  # the gateway answers a counted vote with the thank-you

    def tick(self, now):
        end = self._thank_end
        if end is not None and ticks_diff(now, end) >= 0:
            self._thank_end = None
            self._since = now  # an invitation after the thanks starts lit too
            self._hal.emit(self.KIND, self.shown())
        if self._identify_end is not None and ticks_diff(now, self._identify_end) >= 0:
            self._identify_end = None
        if self._identify_end is not None:
            like = dislike = (now // self.flash_ms) % 2 == 0  # a phase jump at a wrap is harmless
        elif self._thank_end is not None:
            like = self.state[_THANK] == bus.VOTE_KEYS[_LIKE]
            dislike = not like
        elif self.state[_INVITE]:
            like = dislike = (ticks_diff(now, self._since) // self.invite_ms) % 2 == 0
        else:
            like = dislike = False
        leds = (like, dislike)
        if leds != self._leds:
            old = self._leds
            hal = self._hal
            if old is None or old[_LIKE] != like:
                hal.led(like, _LIKE)
            if old is None or old[_DISLIKE] != dislike:
                hal.led(dislike, _DISLIKE)
            self._leds = leds

    def _look(self, i):
        """What LED i does now, as a word: "on", "blink" or "off"."""
        if self._thank_end is not None:
            return "on" if self.state[_THANK] == bus.VOTE_KEYS[i] else "off"
        return "blink" if self.state[_INVITE] else "off"

    def shown(self):
        """The applied state as the control channel reports it: what each LED does
        (steady "on", "blink" or "off"), reported again when a thank-you ends."""
        s = self.state
        return {
            "like": self._look(_LIKE),
            "dislike": self._look(_DISLIKE),
            "invite": s[_INVITE],
            "thank": s[_THANK] if self._thank_end is not None else None,
            "version": self.version,
        }

    def describe(self):
        """shown() plus the LED levels at this instant (1 = lit)."""
        leds = self._leds or (False, False)
        return {
            self.KIND: self.shown(),
            "like_led": int(leds[_LIKE]),
            "dislike_led": int(leds[_DISLIKE]),
            "identify": self._identify_end is not None,
        }
