"""The people of a simulated hall: an operator at each window, and the visitors they call.

An operator only does what a person at a window can: press keys on the call panel (the
firmware's control channel, so debouncing, the event queue and the bus are the real ones)
and read what the panel shows. A visitor only looks at the window display and presses a
like / dislike button once the buttons invite a vote. What each visitor does comes from the
day's plan (sim/dayplan.py); what the operator must do next comes from the panel.

Every wait is bounded in real seconds, long enough to ride out a gateway restart or a
central restart (a key pressed meanwhile waits in the panel's event queue, as on a board).
"""

import random
import time

from hallgate.sim.device import DeviceError
from hallgate.sim.hallconfig import button_pins
from hallgate.sim.model import may_take_break

WAIT_S = 45.0  # real seconds for the hall to answer a key (outages included)
KEY_MS = 80  # a brisk press
WALK_S = (20, 90)  # simulated seconds from the call to the visitor at the window
RECALL_AFTER_S = 60  # simulated seconds the operator waits before recalling
VOTE_GAP_S = 0.25  # real seconds between the presses of a visitor who presses again
RESTART_GRACE_S = 3.0  # real seconds for a restarted gateway's outbox to send what it had
UNANSWERED_S = 10.0  # real seconds after which a visitor presses a silent button again
ANSWER_SLICE_S = 0.2  # real seconds between looks for the central's rejection
RELEASE_MS = 40  # after a key's hold, before it is pressed again: the firmware sees it up


class VoteButtons:
    """A window's like / dislike buttons as its visitor meets them: on the gateway's GPIO
    (pressed through the gateway child's mock pins) or on a feedback pad on the bus (the
    firmware's keys). `gateway` is the GatewayHost serving the window: its `ballots` say
    what voting is open for, and it may be restarted under the visitor's hand."""

    def __init__(self, hall, window):
        plan, self.gateway = hall.gateway_of(window)
        self.window = window
        self.pad = hall.pads.get(window)
        self.pins = None if self.pad else button_pins(plan.local(window))

    def wait_invite(self, ticket, timeout):
        """Until the buttons invite a vote for `ticket` (the gateway opened its ballot and,
        on a pad, the firmware lights the LEDs)."""
        if not self.gateway.wait_ballot(self.window, ticket, timeout):
            return False
        if self.pad is None:
            return True
        deadline = time.monotonic() + timeout
        while True:  # the pad's LEDs, as its firmware drives them
            mark = self.pad.mark()
            if (self.pad.shown() or {}).get("invite"):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                self.pad.wait_for(lambda m: "feedback" in m, min(ANSWER_SLICE_S, left), mark)
            except DeviceError:
                pass

    def press(self, vote):
        if self.pad is not None:
            self.pad.press(vote, KEY_MS)
        else:
            self.gateway.press(self.pins[0 if vote == "like" else 1], KEY_MS)


def _same(shown, want):
    """Does the firmware's panel show the central's state `want` (the panel's own version
    numbers are the gateway's, so the content is compared)?"""
    return (shown.get("mode") == want.get("mode") and shown.get("queue") == want.get("queue")
            and (not want.get("text") or shown.get("text") == want.get("text")))


class Operator:
    def __init__(self, hall, window, breaks):
        self.hall = hall
        self.window = window
        self.panel = hall.panels[window]
        self.display = hall.displays[window]
        self.buttons = VoteButtons(hall, window)
        self.breaks = list(breaks)
        self.doing = "starting"  # what the operator is waiting for: said if the day stalls
        self.seen = 0  # the display's messages from here on follow the last call
        self.busy = False  # with a visitor (until their vote is in)
        self.rng = random.Random(hall.options.seed * 1000 + window)
        self.long_ms = hall.panel_timings()["long_ms"] + 200  # no-show is a long press
        self.pressed_at = None  # when (monotonic) the last answered key was pressed
        self._answered = None  # (t0, panel mark, until) of that press, until look() sees it
        self._called = None  # a ticket called whose visitor has not looked up yet
        self._free_at = 0.0  # when (monotonic) the last pressed key is up again

    # ---- the panel ------------------------------------------------------------------------

    def shown(self):
        return self.panel.shown() or {}

    def look(self):
        """What the panel shows, once it shows what the central has decided for this
        window (a person reads a panel that is current; one still on its way through the
        gateway and the bus is a moment from current, and hall time stands still
        meanwhile). Bounded by WAIT_S: through an outage the operator reads what is there."""
        hall = self.hall
        deadline = time.monotonic() + WAIT_S
        while True:
            mark = self.panel.mark()
            s = self.shown()
            want = hall.desired_panel(self.window)
            if want is None or _same(s, want) or hall.stopping.is_set():
                break
            self.doing = f"waiting for the panel to show {want} (it shows {s})"
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                self.panel.wait_for(lambda m: "panel" in m, min(ANSWER_SLICE_S, left), mark)
            except DeviceError:
                pass
        self._measure_panel()
        return s

    def _measure_panel(self):
        """The chain's press -> panel latency of the last answered press: when the first
        panel state answering it came from the firmware."""
        if self._answered is None:
            return
        t0, mark, until = self._answered
        self._answered = None
        for m in self.panel.messages[mark:]:
            if "panel" in m and until(m["panel"]):
                self.hall.measured("press_to_panel", self.panel.arrival(m) - t0)
                return

    def press(self, key, hold_ms=KEY_MS, *, until):
        """Press `key`; wait until the central has answered: it published a new state for
        this window's panel and `until(state)` holds (True), or it rejected the press
        (False: the operator looks at the panel again), or WAIT_S passed (False). Hall
        time stands still meanwhile (this operator is awake); the way back to the panel
        through the gateway and the bus need not: `look()` waits for it when it matters."""
        hall, obs = self.hall, self.hall.observer
        # A key still held from the last press cannot be pressed again: hall time does not
        # pass while the chain answers, so the next press can come sooner than a release.
        time.sleep(max(0.0, self._free_at - time.monotonic()))
        v0 = obs.desired(self.window, "panel").get("version", 0)
        mark = self.panel.mark()
        t0 = time.monotonic()
        self._free_at = t0 + (hold_ms + RELEASE_MS) / 1000
        self.panel.press(key, hold_ms)
        self.doing = f"pressed {key}, waiting for the central to answer"

        def answered():
            p = obs.desired(self.window, "panel")
            return (p.get("version", 0) > v0 and until(p)) or (
                obs.rejection(self.window, t0) is not None) or hall.stopping.is_set()

        ok = obs.wait(answered, WAIT_S)
        reason = obs.rejection(self.window, t0)
        if reason is not None:
            hall.press_rejected(self.window, key, reason)
            return False
        if not ok or hall.stopping.is_set():
            if not hall.stopping.is_set():
                hall.problem(f"window {self.window}: {key} not answered within {WAIT_S:.0f} s"
                             f" (the central's panel state: {obs.desired(self.window, 'panel')};"
                             f" the panel shows {self.shown()})")
            return False
        hall.measured("press_to_central", time.monotonic() - t0)
        seen = obs.key_seen(self.window, key, t0)
        if seen is not None:
            hall.measured("press_to_broker", seen - t0)
        self.pressed_at = t0
        self._answered = (t0, mark, until)
        return True

    def mode_is(self, mode):
        return lambda p: p["mode"] == mode

    # ---- the day --------------------------------------------------------------------------

    def run(self):
        """Look at the panel and do what it calls for, until the day is over. The panel is
        the truth: a call that was answered late (an outage) is served when it shows."""
        hall = self.hall
        while not hall.stopping.is_set() and not hall.day_over():
            s = self.look()
            mode = s.get("mode")
            self.doing = f"looking at the panel: {s}"
            late = hall.sim_now() - self.breaks[0].start_s if self.breaks else -1
            if mode == "idle" and late >= 0 and may_take_break(s, late):
                self.take_break(self.breaks.pop(0))
            elif mode == "called":
                self.serve(s["text"])
            elif mode == "serving":  # a start answered after the operator gave up on it
                self.finish(s["text"], vote=None, presses=0)
            elif mode == "paused":
                self.press("resume", until=self.mode_is("idle"))
            elif mode == "idle" and s.get("queue"):
                self.seen = self.display.mark()  # the display may change before the panel
                self.press("call", until=lambda p: p["mode"] == "called" or not p["queue"])
            else:
                hall.sleep_sim(30)  # nothing to call (yet): look again in half a minute

    def take_break(self, brk):
        hall = self.hall
        # A call still on its way may win over the pause: the panel then shows the visitor.
        if self.press("pause", until=lambda p: p["mode"] != "idle") and (
                self.look().get("mode") == "paused"):
            hall.record("break", window=self.window, minutes=round(brk.duration_s / 60))
            hall.sleep_sim(brk.duration_s)
            self.press("resume", until=self.mode_is("idle"))

    def serve(self, ticket):
        self.busy = True
        try:
            self._serve(ticket)
        finally:
            self.busy = False

    def _serve(self, ticket):
        hall = self.hall
        self._called = ticket
        v = hall.visitor_for(ticket)
        if v is None:
            self.visitor_looks()
            hall.problem(f"window {self.window}: called {ticket}, which no kiosk issued")
            self.press("noshow", self.long_ms, until=self.mode_is("idle"))
            return
        for _ in range(v.recalls if v.shows_up else max(1, v.recalls)):
            hall.sleep_sim(RECALL_AFTER_S)
            self.visitor_looks()
            self.press("recall", until=lambda p: True)  # a new state: the call again
        if not v.shows_up:
            hall.sleep_sim(RECALL_AFTER_S)
            self.visitor_looks()
            if self.press("noshow", self.long_ms, until=self.mode_is("idle")):
                hall.record("noshow", window=self.window, ticket=ticket)
            return
        hall.sleep_sim(self.rng.uniform(*WALK_S))
        self.visitor_looks()
        if not self.press("start", until=self.mode_is("serving")):
            return
        if v.redirect and hall.first_redirect(self.window, ticket, v.service):
            hall.sleep_sim(v.service_s / 3)
            if self.press("redirect", until=self.mode_is("idle")):
                hall.record("redirect", window=self.window, ticket=ticket)
            return
        hall.sleep_sim(v.service_s)
        self.finish(ticket, v.vote, v.presses)

    def visitor_looks(self):
        """The called visitor has looked up at the display by the operator's next step:
        did it show their ticket (since the call)? Checked then, not at the call, so the
        way to the display never holds hall time unless nothing else is going on."""
        if self._called is None:
            return
        ticket, self._called = self._called, None
        shown = self.display_shows(ticket, self.seen)
        self.hall.record("call", window=self.window, ticket=ticket, shown=shown)

    def finish(self, ticket, vote, presses):
        if not self.press("finish", until=self.mode_is("idle")):
            return
        self.hall.record("served", window=self.window, ticket=ticket)
        if vote is not None:
            self.vote(ticket, vote, presses)

    def display_shows(self, ticket, since):
        """The visitor looks up: does the window's display show their ticket (since the
        operator pressed call)?"""
        self.doing = f"visitor of {ticket} looking for it on the display"
        try:
            msg = self.display.wait_for(
                lambda m: "display" in m and m["display"]["text"].startswith(ticket),
                WAIT_S, since)
            if self.pressed_at is not None:
                self.hall.measured("call_to_display",
                                   self.display.arrival(msg) - self.pressed_at)
            return True
        except DeviceError:
            self.hall.problem(f"window {self.window}: the display never showed {ticket}")
            return False

    def vote(self, ticket, vote, presses):
        """The visitor waits for the buttons to invite a vote, presses; the operator waits
        until the press has reached the broker before calling the next visitor."""
        hall = self.hall
        gw, buttons = self.buttons.gateway, self.buttons
        self.doing = f"visitor of {ticket} waiting for the buttons to invite a vote"
        if not buttons.wait_invite(ticket, WAIT_S):
            hall.problem(f"window {self.window}: voting never opened for {ticket}")
            return
        obs = hall.observer
        before, starts = obs.votes_at(self.window), gw.starts
        for i in range(presses):
            if i:
                hall.stopping.wait(VOTE_GAP_S)
            buttons.press(vote)
        hall.record("vote", window=self.window, ticket=ticket, vote=vote, presses=presses)
        self.doing = f"waiting for {presses} vote press(es) of {ticket} at the broker"
        # (the presses after the vote may name no ticket: voting closes on the vote)
        deadline = time.monotonic() + WAIT_S
        pressed_at = time.monotonic()
        while time.monotonic() < deadline and not hall.stopping.is_set():
            if obs.wait(lambda n=before + presses: obs.votes_at(self.window) >= n, 0.5):
                return
            restarted = gw.starts != starts
            if restarted and time.monotonic() - gw.started_at < RESTART_GRACE_S:
                continue
            arrived = obs.votes_at(self.window) - before
            if restarted and arrived and gw.ballots.get(self.window) != ticket:
                # The gateway lost power with the later presses in it, as a real one can.
                hall.record("lost-presses", window=self.window, ticket=ticket,
                            presses=presses - arrived)
                return
            if not arrived and gw.ballots.get(self.window) == ticket and (
                    restarted or time.monotonic() - pressed_at > UNANSWERED_S):
                # Nothing arrived and the buttons still invite: the press did not take
                # (lost with a gateway that lost power), so the visitor presses again.
                # Recorded: a day without faults must have none (tests/test_sim_hall.py).
                hall.record("pressed-again", window=self.window, ticket=ticket,
                            gateway_restarted=restarted)
                starts, presses, pressed_at = gw.starts, 1, time.monotonic()
                buttons.press(vote)
        if hall.stopping.is_set():
            return
        hall.problem(f"window {self.window}: {presses} vote press(es) for {ticket} did "
                     f"not all reach the broker ({obs.votes_at(self.window) - before} did; "
                     f"gateway starts {starts} -> {gw.starts}; voting open at the gateway "
                     f"for {gw.ballots.get(self.window)})")
