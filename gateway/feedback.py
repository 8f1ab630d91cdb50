"""Like / dislike feedback buttons at each window: on the Pi's GPIO, or on a feedback pad
on the RS-485 bus.

Design note
-----------
Operations: the central service opens voting on a window for a ticket (retained `vote`
topic, with a version) and closes it; the MQTT side calls `open_vote` / `close_vote` on that
window's `FeedbackPanel` (buttons on GPIO) or `FeedbackPad` (a feedback-pad device on a
bus: firmware/role_feedback.py). Visitors press like or dislike. Every press is handed to
`on_vote(window, record)`, the gateway's way to the durable outbox.
Goals: the rules of the best rating keypads - a vote only while voting is open; the buffer
cleared when it opens; the first press is THE vote for the ticket; later and too-fast presses
kept but flagged `misuse`, never dropped; an LED that invites and one that thanks. The same
rules, records and LED looks whichever way a window's buttons are wired. No press lost
when the outbox refuses one for a while (full disk). Our own debounce (gateway/gpio.py),
the same on every pin factory.
Plan: a ladder of small pieces, each one concern.
  `Timings`        the tunables, in the units of the hall config.
  `Ballot`         the voting rules of one window: pure, no pins, no clock of its own.
  `Delivery`       hands records to `on_vote` in order; keeps a bounded retry list.
  `FeedbackLights` the GPIO LEDs: blink to invite, a short light to thank.
  `PadLights`      the same looks as a pad's desired state (bus.FeedbackState).
  `FeedbackWindow` one window's rules, counters and records: the three above, no inputs.
  `FeedbackPanel`  a FeedbackWindow whose buttons are two `SampledButton`s on GPIO;
                   `poll()` samples them.
  `FeedbackPad`    a FeedbackWindow whose buttons are a pad on the bus: the bus master
                   hands its events to `take()`; `poll()` sends the LED state down.
  `FeedbackButtons` every window of the gateway and the one `Sampler` thread polling them;
                   it sleeps between presses, woken by the buttons' edges, by voting
                   opening or closing, and by what each window says is due next
                   (`poll_due`: voting to close, a retry, a pad's thank-you to end).

Only the input and the output differ. A GPIO press is dated by its first sample and
delivered through the retry list (the button cannot press again). A pad's press is dated
by its bus event's age, and handed to `on_vote` at once, inside the bus master's callback:
the master acks the event only when `on_vote` has returned (the outbox committed it), so
if it raises the pad keeps the event and sends it again - the pad's own queue is its retry
list - and the record judged the first time is handed again, never judged twice.

Threads: `poll()` runs in the sampler thread and calls `on_vote` there, outside the
panel's lock, so `open_vote`, `close_vote` and `state` (from the MQTT thread or anywhere)
never wait for the outbox. But `on_vote` holds up sampling of every window while it runs:
one taking a few ms (an SQLite WAL commit) costs only timestamp resolution; one that
blocks longer than a quick jab lasts (~80 ms) can miss that jab. Keep it short.
A pad's `take()` runs in the bus master's thread, under the master's lock; so nothing
here calls the master while holding a window's lock (the MQTT thread holds that one in
`open_vote`): the LED state is handed to the master by `poll()`, in the sampler thread.

The record handed to `on_vote` is the event of the MQTT contract (protocols/MQTT.md,
schemas/event.schema.json) without the fields the outbox adds (`id`, `gateway`, `seq`):
    {"type": "vote", "window": 5,
     "vote": "like",                  # the button pressed: "like" or "dislike"
     "ticket": "A042",                # the ticket voting is open for; None when not open
     "misuse": True,
     "misuse_reason": "too-fast",     # only with misuse: "closed", "too-fast", "already-voted"
     "ts": "2026-11-23T18:11:58.123Z",  # UTC, ms: when the contact first closed
     "source": {"gpio": 17}}          # BCM number of the button's pin; from a pad:
                                      # {"bus", "address", "boot", "seq"} of its event
`ts` is the first sample that saw the contact closed (so within one sample period of the
real edge), not the moment the debounce window ended; a bouncing press is dated by its
first bounce. A pad's press is dated by the age its event carries (tenths of a second,
counted from when the pad's debounce took it). A record handed again after `on_vote`
raised is the same dict, unchanged.
"""

import collections
import dataclasses
import logging
import threading
import time

from gpiozero import LED
from hallgate.gateway.commands import utc_ts
from hallgate.gateway.gpio import SampledButton, Sampler
from hallgate.protocols import bus

log = logging.getLogger(__name__)

LIKE, DISLIKE = bus.VOTE_KEYS  # "like", "dislike": the pad's key names too
VOTES = (LIKE, DISLIKE)
PAD_ROLE = bus.ROLES[bus.ROLE_FEEDBACK_PAD - 1]  # "feedback-pad", as the hall config says

# Why a press is flagged misuse (the record's "misuse_reason").
CLOSED = "closed"  # voting is not open on this window (never opened, closed, timed out)
TOO_FAST = "too-fast"  # within vote_min_interval_ms of the previous press while open
ALREADY_VOTED = "already-voted"  # the open ticket already has its vote
REASONS = (CLOSED, TOO_FAST, ALREADY_VOTED)


@dataclasses.dataclass(frozen=True)
class Timings:
    """The feedback tunables, named and measured as in the hall config's [timings].

    >>> Timings(vote_window_s=30).vote_window_s
    30
    """

    debounce_ms: float = 20  # contact must read the same this long (mechanical: 5-10 ms)
    sample_ms: float = 5  # sampling period: four samples per debounce window
    vote_window_s: float = 120  # safety net: voting closes by itself if central never does
    vote_min_interval_ms: float = 1500  # presses closer than this are "too-fast"
    vote_ack_ms: float = 1500  # the pressed button's LED stays on this long (0: no thanks)
    invite_on_ms: float = 500  # invite blink: on ...
    invite_off_ms: float = 500  # ... and off
    retry_ms: float = 1000  # on_vote raised: try again after this long
    retry_max: int = 32  # records kept for retry per window; beyond, one is dropped

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"Timings.{f.name} must be a number, not {value!r}")
            if f.name in ("debounce_ms", "vote_min_interval_ms", "vote_ack_ms"):
                ok = value >= 0
            elif f.name == "retry_max":
                ok = value >= 1 and value == int(value)
            else:
                ok = value > 0
            if not ok:
                raise ValueError(f"Timings.{f.name} out of range: {value!r}")

    @classmethod
    def from_config(cls, timings, **overrides):
        """Take the fields the hall config's timings has (debounce_ms, vote_window_s,
        vote_min_interval_ms, vote_ack_ms, ...); defaults for the rest."""
        names = [f.name for f in dataclasses.fields(cls)]
        values = {n: getattr(timings, n) for n in names if hasattr(timings, n)}
        return cls(**{**values, **overrides})


class Ballot:
    """The voting rules of one window, as the best rating keypads have them. Pure: fed the
    time, owns no pins and no clock.

    - Voting is open only between `open` and `close` (or `expire`, after its timeout).
    - Desired state carries a version: an `open` is applied only if its version is newer
      than the current one (a redelivered retained message changes nothing, an older one
      is ignored); a `close` also applies at the same version (closing twice is harmless,
      and central may close with the version it opened with).
    - Opening clears the buffer: nothing pressed before counts, the interval starts afresh.
      A press is judged at the time its contact closed, so one that began before the
      opening and was debounced after it is still "closed".
    - While open, the first press is THE vote for the ticket. Every later press is misuse:
      "too-fast" within min_interval_s of the previous press (a double click or mashing),
      else "already-voted". A press while not open is misuse "closed".

    >>> b = Ballot(min_interval_s=1.0, window_s=60)
    >>> b.press(LIKE, now=0.0)
    (True, 'closed')
    >>> b.open("A042", version=1, now=1.0)
    True
    >>> b.press(LIKE, now=2.0), b.press(DISLIKE, now=2.5), b.press(LIKE, now=4.0)
    ((False, None), (True, 'too-fast'), (True, 'already-voted'))
    >>> b.open("A042", version=1, now=5.0)     # the same retained message again: no-op
    False
    """

    def __init__(self, min_interval_s=1.0, window_s=60.0):
        self.min_interval_s = min_interval_s
        self.window_s = window_s
        self.is_open = False
        self.ticket = None  # the open ticket, or the last one opened
        self.version = None  # the newest version applied (None: nothing yet)
        self.voted = None  # LIKE or DISLIKE once the open ticket has its vote
        self.closes_at = None  # when voting closes by itself (while open)
        self.opened_at = None  # when voting last opened
        self._last_press = None  # time of the previous press since voting opened

    def open(self, ticket, version, now, timeout_s=None):
        """Open voting for `ticket`; False (nothing changes) unless `version` is newer."""
        if version is None:
            raise ValueError("a vote command needs a version")
        if self.version is not None and version <= self.version:
            return False
        self.version = version
        self.is_open = True
        self.ticket = ticket
        self.voted = None
        self.opened_at = now
        self.closes_at = now + (self.window_s if timeout_s is None else timeout_s)
        self._last_press = None
        return True

    def close(self, version):
        """Close voting; False (nothing changes) if `version` is older than the current one.
        version None closes whatever the version (the retained state was cleared) and
        keeps the current version, so an older open still cannot reopen."""
        if version is not None:
            if self.version is not None and version < self.version:
                return False
            self.version = version
        self.is_open = False
        self.closes_at = None
        return True

    def expire(self, now):
        """Close voting if its time is up; True when it closed now."""
        if self.is_open and now >= self.closes_at:
            self.is_open = False
            self.closes_at = None
            return True
        return False

    def press(self, vote, now):
        """Judge one press whose contact closed at `now` (call `expire` first with the
        current time): returns (misuse, reason); a counted vote is
        (False, None), after which `voted` holds it."""
        if vote not in VOTES:
            raise ValueError(f"vote must be {LIKE!r} or {DISLIKE!r}, not {vote!r}")
        if not self.is_open or now < self.opened_at:
            return True, CLOSED
        last, self._last_press = self._last_press, now
        if last is not None and now - last < self.min_interval_s:
            return True, TOO_FAST
        if self.voted is not None:
            return True, ALREADY_VOTED
        self.voted = vote
        return False, None


class Delivery:
    """Hands records to `on_vote(window, record)` in order; a record is taken when the
    callback returns.

    When the callback raises (the outbox's disk is full, say), the record stays first in
    line and the callback is tried again `retry_s` later; records that come meanwhile
    queue behind it, so order is kept. The line holds at most `max_pending` records: past
    that one is dropped, counted and logged - the oldest misuse record if there is one
    (counted votes matter more: staff bonuses depend on them), else the oldest. Not
    thread-safe: one thread calls `add` and `flush` (the sampler's).

    >>> got = []
    >>> d = Delivery(lambda w, r: got.append(r), window=1, retry_s=1.0, max_pending=4)
    >>> d.add({"misuse": False}); d.flush(now=0.0)
    >>> got, d.delivered, d.pending
    ([{'misuse': False}], 1, 0)
    """

    def __init__(self, on_vote, window, *, retry_s=1.0, max_pending=32):
        self.on_vote = on_vote
        self.window = window
        self.retry_s = retry_s
        self.max_pending = max_pending
        self._line = collections.deque()
        self._retry_at = None  # set while the callback is failing
        self.delivered = 0  # records taken
        self.callback_errors = 0  # calls that raised
        self.dropped = 0  # records given up: retry list full, or still failing at close

    @property
    def pending(self):
        return len(self._line)

    def due_in(self, now):
        """Seconds until `flush` has something to do (0: now), None while nothing waits."""
        if not self._line:
            return None
        return 0.0 if self._retry_at is None else max(0.0, self._retry_at - now)

    def add(self, record):
        if len(self._line) >= self.max_pending:
            victim = next((r for r in self._line if r.get("misuse")), self._line[0])
            self._line.remove(victim)
            self._drop(victim, "retry list full")
        self._line.append(record)

    def flush(self, now):
        """Deliver what is waiting, unless a failed attempt was less than retry_s ago."""
        if self._retry_at is not None and now < self._retry_at:
            return
        while self._line:
            record = self._line[0]
            try:
                self.on_vote(self.window, record)
            except Exception:
                self.callback_errors += 1
                if self._retry_at is None:
                    log.warning("window %s: on_vote failed, will retry every %.1f s "
                                "(%d waiting)", self.window, self.retry_s, len(self._line),
                                exc_info=True)
                self._retry_at = now + self.retry_s
                return
            self._line.popleft()
            self.delivered += 1
            if self._retry_at is not None:
                log.info("window %s: on_vote works again", self.window)
                self._retry_at = None

    def hand(self, record):
        """Hand one record at once, past the retry line: for a bus device's press, which
        the device keeps (and sends again) until it is taken, so the retrying is the
        device's. Returns once taken; raises what `on_vote` raised."""
        try:
            self.on_vote(self.window, record)
        except Exception:
            self.callback_errors += 1
            raise
        self.delivered += 1

    def drain(self):
        """Last attempt (at close): try each waiting record once more; drop what fails."""
        self._retry_at = None
        while self._line:
            self.flush(float("inf"))
            if self._line:
                self._drop(self._line.popleft(), "on_vote still failing at close")

    def _drop(self, record, why):
        self.dropped += 1
        log.error("window %s: press dropped (%s; %d dropped so far): %r",
                  self.window, why, self.dropped, record)


class FeedbackLights:
    """The LEDs of one window's buttons (either or both may be missing): blink both to
    invite a vote, light the pressed button's LED for a moment to thank.

    >>> from gpiozero import Device
    >>> from gpiozero.pins.mock import MockFactory
    >>> Device.pin_factory = MockFactory()
    >>> lights = FeedbackLights(like_pin=22, dislike_pin=23, ack_s=0.05)
    >>> lights.invite(); lights.mode
    'inviting'
    >>> lights.thank(LIKE); lights.mode
    'thanking'
    >>> lights.close()
    """

    def __init__(self, like_pin=None, dislike_pin=None, *, invite_on_s=0.5, invite_off_s=0.5,
                 ack_s=1.5, pin_factory=None):
        self.invite_on_s = invite_on_s
        self.invite_off_s = invite_off_s
        self.ack_s = ack_s
        self.leds = {}
        try:
            for vote, pin in ((LIKE, like_pin), (DISLIKE, dislike_pin)):
                if pin is not None:
                    self.leds[vote] = LED(pin, pin_factory=pin_factory)
        except BaseException:
            self.close()
            raise
        self._mode = "off"
        self._thank_until = 0.0  # time.monotonic(): gpiozero's blink runs on real time

    @property
    def mode(self):
        """What the LEDs are doing: "inviting", "thanking" or "off"."""
        if self._mode == "thanking" and time.monotonic() >= self._thank_until:
            self._mode = "off"
        return self._mode

    def invite(self):
        for led in self.leds.values():
            led.blink(on_time=self.invite_on_s, off_time=self.invite_off_s)
        self._mode = "inviting"

    def thank(self, vote):
        """Stop inviting; light the LED of the button pressed (or the only LED there is)
        for ack_s, then off."""
        self.off()
        led = self.leds.get(vote) or next(iter(self.leds.values()), None)
        if led is not None and self.ack_s > 0:
            led.blink(on_time=self.ack_s, off_time=0, n=1)
            self._mode = "thanking"
            self._thank_until = time.monotonic() + self.ack_s

    def off(self):
        for led in self.leds.values():
            led.off()
        self._mode = "off"

    def close(self):
        for led in self.leds.values():
            led.close()
        self._mode = "off"


class PadLights:
    """The LEDs in a feedback pad's keys, with the calls and modes of `FeedbackLights`:
    each call sets the pad's desired state (`state`, a bus.FeedbackState) and counts a
    change; the pad's owner hands the state to the bus master, which sends it with SET.
    The pad blinks and times the thank-you itself (firmware/role_feedback.py), as the GPIO
    LEDs look: both blink (0.5 s on, 0.5 s off) to invite, the voted key's LED steady for
    ack_s to thank. `clock` is the owner's: a thank-you ends on it.

    >>> lights = PadLights(ack_s=1.5, clock=lambda: 0.0)
    >>> lights.invite(); lights.state            # (invite, thank, ack_ds)
    (True, None, 0)
    >>> lights.thank(LIKE); lights.mode, lights.state
    ('thanking', (False, 'like', 15))
    """

    def __init__(self, *, ack_s=1.5, clock=time.monotonic):
        self.ack_s = ack_s
        self._clock = clock
        self.state = bus.FeedbackState()
        self.changes = 1  # bumped by every call that sets a state (the first: off)
        self._mode = "off"
        self._thank_until = 0.0

    @property
    def mode(self):
        """What the LEDs are doing: "inviting", "thanking" or "off"."""
        if self._mode == "thanking" and self._clock() >= self._thank_until:
            self._set("off", bus.FeedbackState())  # the pad went dark by itself; so do we
        return self._mode

    def tick(self):
        """End a thank-you whose time is up (the desired state then says off, so a pad
        that restarts later does not thank again)."""
        return self.mode

    def ends_in(self, now):
        """Seconds until the thank-you ends (0: due now), None when not thanking."""
        if self._mode != "thanking":
            return None
        return max(0.0, self._thank_until - now)

    def _set(self, mode, state):
        self._mode = mode
        self.state = state
        self.changes += 1

    def invite(self):
        self._set("inviting", bus.FeedbackState(invite=True))

    def thank(self, vote):
        """Stop inviting; the pressed key's LED steady for ack_s, then off."""
        ack_ds = min(round(self.ack_s * 10), 255)
        if ack_ds <= 0:
            self.off()
            return
        self._set("thanking", bus.FeedbackState(thank=vote, ack_ds=ack_ds))
        self._thank_until = self._clock() + self.ack_s

    def off(self):
        self._set("off", bus.FeedbackState())

    def close(self):
        self.off()


class FeedbackWindow:
    """One window's votes: the rules (`Ballot`), the records and their hand-over
    (`Delivery`), the counters and the LEDs (`lights`), whatever the wiring. Subclasses
    say where presses come from (`FeedbackPanel`: GPIO; `FeedbackPad`: a bus device) and
    make `lights`; both are polled by `FeedbackButtons`' sampler.

    `open_vote` / `close_vote` / `state` may be called from any thread.
    """

    def __init__(self, window, *, on_vote, timings=None, clock=time.monotonic,
                 wallclock=time.time):
        if not callable(on_vote):
            raise TypeError("on_vote must be callable(window, record)")
        self.window = window
        self.timings = t = timings if timings is not None else Timings()
        self._clock = clock
        self._wallclock = wallclock
        self._lock = threading.Lock()  # the ballot, the lights, the counters
        self._poll_lock = threading.Lock()  # one poll at a time (delivery is not shared)
        self._closed = False
        self.ballot = Ballot(min_interval_s=t.vote_min_interval_ms / 1000,
                             window_s=t.vote_window_s)
        self.delivery = Delivery(on_vote, window, retry_s=t.retry_ms / 1000,
                                 max_pending=t.retry_max)
        self.lights = None  # made by the subclass: FeedbackLights or PadLights
        self.presses = 0
        self.votes = 0
        self.misuse = dict.fromkeys(REASONS, 0)
        self._wake = None  # the sampler's wake(), once watched

    def __repr__(self):
        return f"<{type(self).__name__} window={self.window!r}>"

    def watch(self, wake):
        """The sampler's `wake`: called when voting opens or closes, so a sleeping
        sampler polls at once (a pad's LEDs go down; the auto-close is rescheduled)."""
        self._wake = wake

    def _woken(self):
        if self._wake is not None:
            self._wake()

    def poll_due(self):
        """Seconds until this window needs a poll without a wake (the sampler's
        question, gpio.py): voting to close by itself, a retry of on_vote; None if
        nothing is due."""
        with self._lock:
            now = self._clock()
            dues = [self.delivery.due_in(now)]
            if self.ballot.is_open:
                dues.append(max(0.0, self.ballot.closes_at - now))
            dues += self._dues(now)
        dues = [d for d in dues if d is not None]
        return min(dues) if dues else None

    def _dues(self, now):
        """More due times a subclass knows of (called with the lock held)."""
        return []

    def open_vote(self, ticket, version, timeout_s=None):
        """Open voting for `ticket` (clears the buffer, LEDs invite). Returns False, and
        changes nothing, when `version` is not newer than the current one.
        Voting closes by itself after timeout_s (default: timings.vote_window_s)."""
        with self._lock:
            if not self.ballot.open(ticket, version, self._clock(), timeout_s):
                log.debug("window %s: vote open v%s ignored (have v%s)",
                          self.window, version, self.ballot.version)
                return False
            self.lights.invite()
            log.info("window %s: voting open for %s (v%s)", self.window, ticket, version)
        self._woken()
        return True

    def close_vote(self, version):
        """Close voting. Returns False, and changes nothing, when `version` is older than
        the current one; version None closes whatever the version (an empty retained
        payload). An acknowledgement already lit is left to finish."""
        with self._lock:
            if not self.ballot.close(version):
                log.debug("window %s: vote close v%s ignored (have v%s)",
                          self.window, version, self.ballot.version)
                return False
            if self.lights.mode == "inviting":
                self.lights.off()
        self._woken()
        return True

    def poll(self):
        raise NotImplementedError

    def state(self):
        """A snapshot for status and debugging (a plain dict)."""
        with self._lock:
            b = self.ballot
            now = self._clock()
            return {
                "window": self.window,
                "open": b.is_open and now < b.closes_at,
                "ticket": b.ticket,
                "version": b.version,
                "voted": b.voted,
                "closes_in_s": None if not b.is_open else max(0.0, b.closes_at - now),
                "lights": self.lights.mode,
                "presses": self.presses,
                "votes": self.votes,
                "misuse": sum(self.misuse.values()),
                "misuse_by_reason": dict(self.misuse),
                "delivered": self.delivery.delivered,
                "pending": self._pending(),
                "callback_errors": self.delivery.callback_errors,
                "dropped": self.delivery.dropped,
            }

    def _pending(self):
        return self.delivery.pending

    def close(self, timeout=5.0):
        """Stop polling this window, make a last delivery attempt (what still fails is
        dropped, counted and logged), LEDs off, pins released. Idempotent.

        Bounded: if a poll is still inside `on_vote` after `timeout` seconds, the pins are
        released anyway and the records still waiting are left where they are (logged)."""
        if not self._poll_lock.acquire(timeout=timeout):
            with self._lock:
                if self._closed:
                    return
                self._closed = True
            log.error("window %s: on_vote has not returned for %.1f s; closing anyway, "
                      "%d records undelivered", self.window, timeout, self.delivery.pending)
            self._close_devices()
            return
        try:
            with self._lock:
                if self._closed:
                    return
                self._closed = True
            self.delivery.drain()
            self._close_devices()
        finally:
            self._poll_lock.release()

    def _expire(self, now):
        """Close voting if its time is up (call with the lock held)."""
        if self.ballot.expire(now):
            log.info("window %s: voting for %s timed out", self.window, self.ballot.ticket)
            if self.lights.mode == "inviting":
                self.lights.off()

    def _judge(self, vote, onset, now, source):
        """The record of one press whose contact closed at `onset` (call with the lock
        held): judged by the ballot, counted, thanked if it is the vote."""
        misuse, reason = self.ballot.press(vote, onset)
        self.presses += 1
        if misuse:
            self.misuse[reason] += 1
        else:
            self.votes += 1
            self.lights.thank(vote)
            log.info("window %s: %s for %s", self.window, vote, self.ballot.ticket)
        record = {
            "type": "vote",
            "window": self.window,
            "vote": vote,
            "ticket": None if reason == CLOSED else self.ballot.ticket,
            "misuse": misuse,
            "ts": utc_ts(self._wallclock() - (now - onset)),
            "source": source,
        }
        if misuse:
            record["misuse_reason"] = reason
        return record

    def _close_devices(self):
        if self.lights is not None:
            self.lights.off()
            self.lights.close()


class FeedbackPanel(FeedbackWindow):
    """One window's like / dislike buttons on GPIO and their LEDs, with the voting rules.

    Buttons between their pin and ground (the Pi's pull-ups are used); LEDs optional.
    `poll()` samples the buttons once and delivers what came of it; `FeedbackButtons`
    calls it from its sampler thread, tests may call it directly with a fake clock.

    >>> from gpiozero import Device
    >>> from gpiozero.pins.mock import MockFactory
    >>> Device.pin_factory = MockFactory()
    >>> got = []
    >>> now = [0.0]
    >>> panel = FeedbackPanel(5, like_pin=17, dislike_pin=27,
    ...                       on_vote=lambda w, r: got.append(r), clock=lambda: now[0])
    >>> panel.open_vote("A042", version=1)
    True
    >>> Device.pin_factory.pin(17).drive_low()       # like, held
    >>> for t in (0.01, 0.02, 0.03, 0.04):
    ...     now[0] = t; panel.poll()
    >>> [(r["vote"], r["ticket"], r["misuse"]) for r in got]
    [('like', 'A042', False)]
    >>> panel.close()
    """

    def __init__(self, window, like_pin, dislike_pin, like_led_pin=None, dislike_led_pin=None,
                 *, on_vote, timings=None, clock=time.monotonic, wallclock=time.time,
                 pin_factory=None):
        super().__init__(window, on_vote=on_vote, timings=timings, clock=clock,
                         wallclock=wallclock)
        t = self.timings
        self.buttons = {}
        try:
            for vote, pin in ((LIKE, like_pin), (DISLIKE, dislike_pin)):
                self.buttons[vote] = SampledButton(pin, debounce_s=t.debounce_ms / 1000,
                                                   pin_factory=pin_factory)
            self.lights = FeedbackLights(
                like_led_pin, dislike_led_pin, invite_on_s=t.invite_on_ms / 1000,
                invite_off_s=t.invite_off_ms / 1000, ack_s=t.vote_ack_ms / 1000,
                pin_factory=pin_factory)
        except BaseException:
            self._close_devices()
            raise

    def poll(self):
        """Sample both buttons once, judge any press, deliver what is waiting."""
        with self._poll_lock:
            if self._closed:
                return
            now = self._clock()
            with self._lock:
                self._expire(now)
                pressed = []
                for vote, button in self.buttons.items():
                    onset = button.poll(now)
                    if onset is not None:
                        pressed.append((onset, vote))
                for onset, vote in sorted(pressed):
                    source = {"gpio": self.buttons[vote].gpio}
                    self.delivery.add(self._judge(vote, onset, now, source))
            self.delivery.flush(now)

    def watch(self, wake):
        """Wake the sampler at every edge of the buttons, and when voting opens or
        closes."""
        super().watch(wake)
        for button in self.buttons.values():
            button.watch(wake)

    def _dues(self, now):
        return [button.poll_due() for button in self.buttons.values()]

    def _close_devices(self):
        for button in self.buttons.values():
            button.close()
        super()._close_devices()


class FeedbackPad(FeedbackWindow):
    """One window's like / dislike keys on a feedback pad on the bus (role "feedback-pad",
    firmware/role_feedback.py), with the voting rules.

    `master` is the BusMaster of the pad's bus, `bus_name` and `address` where the pad is.
    The master hands the pad's key events to `take()` (the gateway's on_event does);
    `poll()`, from FeedbackButtons' sampler, closes voting when its time is up and hands
    the LEDs' state to the master, which sends it to the pad with SET.

    >>> from hallgate.gateway.book import Book
    >>> book, got, now = Book(), [], [10.0]
    >>> pad = FeedbackPad(41, book, "hall", 21, on_vote=lambda w, r: got.append(r),
    ...                   clock=lambda: now[0])
    >>> pad.open_vote("A042", version=1); pad.poll()
    True
    >>> book.devices[21].desired                 # bus.FeedbackState(invite=True)
    (True, None, 0)
    >>> now[0] = 12.0
    >>> pad.take(bus.Event(boot=1, seq=1, key=9, age_ds=5))   # like, pressed 0.5 s ago
    >>> [(r["vote"], r["ticket"], r["misuse"], r["source"]["address"]) for r in got]
    [('like', 'A042', False, 21)]
    >>> pad.poll(); book.devices[21].desired     # thanks for the like, 1.5 s
    (False, 'like', 15)
    """

    def __init__(self, window, master, bus_name, address, *, on_vote, timings=None,
                 clock=time.monotonic, wallclock=time.time):
        super().__init__(window, on_vote=on_vote, timings=timings, clock=clock,
                         wallclock=wallclock)
        self.master = master  # BusMaster (or a Book): its set_state(address, state, renew)
        self.bus = bus_name
        self.address = address
        self.lights = PadLights(ack_s=self.timings.vote_ack_ms / 1000, clock=clock)
        self._sent = 0  # lights.changes last handed to the master
        self._held = None  # (event ident, record): judged, not yet taken by on_vote

    def __repr__(self):
        return f"<FeedbackPad window={self.window!r} bus={self.bus!r} address={self.address}>"

    def take(self, ev):
        """A press on the pad: its bus.Event (key like or dislike). Judged by the rules as
        a GPIO press is, dated by the event's age, and handed to on_vote at once; returns
        once on_vote took it, and the master then acks the event. If on_vote raises, so
        does this: the pad keeps the event and sends it again, and the record judged the
        first time is handed again (the same dict), not judged a second time."""
        vote = ev.key_name
        if vote not in VOTES:
            raise ValueError(f"{ev!r} is not a like or dislike key event")
        with self._lock:
            if self._closed:
                raise RuntimeError(f"window {self.window}: feedback pad closed")
            held = self._held
            if held is None or held[0] != ev.ident:
                now = self._clock()
                self._expire(now)
                source = {"bus": self.bus, "address": self.address, "boot": ev.boot,
                          "seq": ev.seq}
                held = self._held = (ev.ident, self._judge(vote, now - ev.age_ds / 10, now,
                                                           source))
        self._woken()  # a thank-you for the LEDs: the sampler hands it to the master
        self.delivery.hand(held[1])
        with self._lock:
            if self._held is held:
                self._held = None

    def poll(self):
        """Close voting when its time is up, end a thank-you, and hand the LEDs' state to
        the bus master when it changed (a new version even for the same state: a new
        invitation starts its blink afresh)."""
        with self._poll_lock:
            if self._closed:
                return
            with self._lock:
                self._expire(self._clock())
                self.lights.tick()
                changes, state = self.lights.changes, self.lights.state
            if changes != self._sent:
                # Outside the window's lock: the master's thread holds the master's lock
                # when it calls take(), which takes the window's.
                self.master.set_state(self.address, state, renew=True)
                self._sent = changes

    def _dues(self, now):
        if self.lights.changes != self._sent:
            return [0.0]  # a state still to hand to the master
        return [self.lights.ends_in(now)]

    def state(self):
        out = super().state()
        out["source"] = {"bus": self.bus, "address": self.address}
        return out

    def _pending(self):
        return self.delivery.pending + (self._held is not None)


class FeedbackButtons:
    """Every feedback window of the gateway (FeedbackPanel or FeedbackPad, one a window),
    polled by one thread.

    >>> from gpiozero import Device
    >>> from gpiozero.pins.mock import MockFactory
    >>> Device.pin_factory = MockFactory()
    >>> got = []
    >>> panels = [FeedbackPanel(1, 17, 27, 22, 23, on_vote=lambda w, r: got.append(r)),
    ...           FeedbackPanel(2, 5, 6, on_vote=lambda w, r: got.append(r))]
    >>> with FeedbackButtons(panels) as buttons:
    ...     buttons.open_vote(1, "A042", version=1)
    ...     Device.pin_factory.pin(17).drive_low(); time.sleep(0.2)
    True
    >>> [(r["window"], r["vote"], r["ticket"], r["misuse"]) for r in got]
    [(1, 'like', 'A042', False)]
    """

    def __init__(self, panels, *, sample_ms=None):
        self.panels = {}
        for p in panels:
            if p.window in self.panels:
                raise ValueError(f"window {p.window!r} has two feedback panels")
            self.panels[p.window] = p
        if sample_ms is None:
            sample_ms = min((p.timings.sample_ms for p in self.panels.values()),
                            default=Timings.sample_ms)
        self.sampler = Sampler(self.panels.values(), period_s=sample_ms / 1000,
                               name="feedback-sampler")

    def __getitem__(self, window):
        return self.panels[window]

    def open_vote(self, window, ticket, version, timeout_s=None):
        return self.panels[window].open_vote(ticket, version, timeout_s)

    def close_vote(self, window, version):
        return self.panels[window].close_vote(version)

    def state(self):
        """{window: FeedbackPanel.state() or FeedbackPad.state()} for every window."""
        return {w: p.state() for w, p in self.panels.items()}

    def start(self):
        self.sampler.start()
        return self

    def close(self, timeout=5.0):
        """Stop the sampler, then close every panel (last delivery attempt); each step
        waits at most `timeout` seconds for a poll stuck in `on_vote`."""
        self.sampler.close(timeout)
        for p in self.panels.values():
            p.close(timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()


def make_feedback(config, masters, on_vote, pin_factory=None):
    """FeedbackButtons for the windows of a hall config (gateway/config.py) that take
    votes: a like / dislike pair on GPIO (FeedbackPanel), or a feedback pad on a bus
    (FeedbackPad, driven through `masters`, {bus name: BusMaster}); None if none does.
    The config's check makes sure a window has at most one of them."""
    timings = Timings.from_config(config.timings)
    windows = []
    try:
        for w in config.windows:
            if w.like_pin is not None:
                windows.append(FeedbackPanel(
                    w.number, w.like_pin, w.dislike_pin, w.like_led_pin, w.dislike_led_pin,
                    on_vote=on_vote, timings=timings, pin_factory=pin_factory))
        for b, d in config.bus_devices():
            if d.role == PAD_ROLE:
                windows.append(FeedbackPad(d.window, masters[b.name], b.name, d.address,
                                           on_vote=on_vote, timings=timings))
        return FeedbackButtons(windows) if windows else None
    except BaseException:
        for w in windows:
            w.close()
        raise
