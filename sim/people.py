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
        try:
            self.pad.wait_for(lambda m: "feedback" in m and m["feedback"].get("open"),
                              timeout)
            return True
        except DeviceError:
            return False

    def press(self, vote):
        if self.pad is not None:
            self.pad.press(vote, KEY_MS)
        else:
            self.gateway.press(self.pins[0 if vote == "like" else 1], KEY_MS)


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
        self._free_at = 0.0  # when (monotonic) the last pressed key is up again

    # ---- the panel ------------------------------------------------------------------------

    def shown(self):
        return self.panel.shown() or {}

    def press(self, key, hold_ms=KEY_MS, *, until):
        """Press `key`; wait until the panel shows `until(shown)` (True), the central
        rejects the press (False: the operator looks at the panel again), or WAIT_S passes
        (False). Hall time stands still meanwhile (this operator is awake)."""
        hall = self.hall
        # A key still held from the last press cannot be pressed again: hall time does not
        # pass while the chain answers, so the next press can come sooner than a release.
        time.sleep(max(0.0, self._free_at - time.monotonic()))
        mark = self.panel.mark()
        t0 = time.monotonic()
        self._free_at = t0 + (hold_ms + RELEASE_MS) / 1000
        self.panel.press(key, hold_ms)
        self.doing = f"pressed {key}, waiting for the panel to answer"
        deadline = t0 + WAIT_S
        while True:
            try:
                self.panel.wait_for(lambda m: "panel" in m and until(m["panel"]),
                                    min(ANSWER_SLICE_S, max(0.0, deadline - time.monotonic())),
                                    mark)
                break
            except DeviceError:
                reason = hall.observer.rejection(self.window, t0)
                if reason is not None:
                    hall.press_rejected(self.window, key, reason)
                    return False
                if time.monotonic() < deadline:
                    continue
            if not self.hall.stopping.is_set():
                said = self.panel.messages[mark:]
                other = [m for m in said if "panel" not in m]
                last = [m["panel"] for m in said if "panel" in m][-1:]
                self.hall.problem(f"window {self.window}: {key} not answered "
                                  f"within {WAIT_S:.0f} s (the panel said {other}, and "
                                  f"{len(said) - len(other)} panel updates, the last {last})")
            return False
        hall.measured("press_to_panel", time.monotonic() - t0)
        seen = hall.observer.key_seen(self.window, key, t0)
        if seen is not None:
            hall.measured("press_to_broker", seen - t0)
        self.pressed_at = t0
        return True

    def mode_is(self, mode):
        return lambda p: p["mode"] == mode

    # ---- the day --------------------------------------------------------------------------

    def run(self):
        """Look at the panel and do what it calls for, until the day is over. The panel is
        the truth: a call that was answered late (an outage) is served when it shows."""
        hall = self.hall
        while not hall.stopping.is_set() and not hall.day_over():
            s = self.shown()
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
                self.shown().get("mode") == "paused"):
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
        shown = self.display_shows(ticket, self.seen)
        hall.record("call", window=self.window, ticket=ticket, shown=shown)
        v = hall.visitor_for(ticket)
        if v is None:
            hall.problem(f"window {self.window}: called {ticket}, which no kiosk issued")
            self.press("noshow", self.long_ms, until=self.mode_is("idle"))
            return
        for _ in range(v.recalls if v.shows_up else max(1, v.recalls)):
            hall.sleep_sim(RECALL_AFTER_S)
            version = self.shown().get("version")
            self.press("recall", until=lambda p, old=version: p["version"] != old)
        if not v.shows_up:
            hall.sleep_sim(RECALL_AFTER_S)
            if self.press("noshow", self.long_ms, until=self.mode_is("idle")):
                hall.record("noshow", window=self.window, ticket=ticket)
            return
        hall.sleep_sim(self.rng.uniform(*WALK_S))
        if not self.press("start", until=self.mode_is("serving")):
            return
        if v.redirect and hall.first_redirect(self.window, ticket, v.service):
            hall.sleep_sim(v.service_s / 3)
            if self.press("redirect", until=self.mode_is("idle")):
                hall.record("redirect", window=self.window, ticket=ticket)
                hall.panels_settle()  # the visitor now waits elsewhere: their panels say so
            return
        hall.sleep_sim(v.service_s)
        self.finish(ticket, v.vote, v.presses)

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
