"""Feedback buttons (gateway/feedback.py, gateway/gpio.py) on gpiozero mock pins.

Three layers of tests:
- the pure Debouncer on synthetic time (exact);
- a FeedbackPanel polled by the test with a fake clock (voting rules, delivery, retries,
  timestamps: exact, no sleeping);
- FeedbackButtons with its sampler thread on real time (bouncing edges driven on mock
  pins, LEDs, auto-close): bounded waits only, never an assertion on speed. Where a test
  depends on how long the test thread slept (a spike shorter than the window), it checks
  the pin's recorded history first and tries again if the machine stretched the sleep.
"""

import json
import random
import re
import threading
import time
from datetime import datetime

import pytest
from conftest import PROTOCOLS, wait_for
from gpiozero import Device
from gpiozero.pins.mock import MockFactory
from hallgate.gateway.commands import utc_ts
from hallgate.gateway.feedback import (
    ALREADY_VOTED,
    CLOSED,
    DISLIKE,
    LIKE,
    REASONS,
    TOO_FAST,
    Ballot,
    FeedbackButtons,
    FeedbackPanel,
    Timings,
)
from hallgate.gateway.gpio import Debouncer, Sampler
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

LIKE_PIN, DISLIKE_PIN, LIKE_LED, DISLIKE_LED = 17, 27, 22, 23
PINS = {LIKE: LIKE_PIN, DISLIKE: DISLIKE_PIN}
EPOCH = 1_800_000_000.0  # the fake wall clock at fake monotonic 0
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def factory():
    old = Device.pin_factory
    f = Device.pin_factory = MockFactory()
    yield f
    f.reset()
    Device.pin_factory = old


# -- Debouncer, synthetic time ----------------------------------------------------------


def feed(d, segments):
    """Feed (level, ms) segments, one sample per ms, times in integer ms (the Debouncer
    takes any unit: here debounce_s is given in ms too, so time is exact); returns
    [(t, onset)] of every change to closed."""
    presses, t = [], 0
    for level, duration in segments:
        for _ in range(duration):
            onset = d.update(level, t)
            if onset is not None and d.level:
                presses.append((t, onset))
            t += 1
    return presses


def test_debouncer_clean_press_counts_once_dated_by_its_first_sample():
    presses = feed(Debouncer(20), [(0, 10), (1, 100), (0, 100)])
    assert presses == [(30, 10)]  # counted at 30 ms, dated 10 ms


def test_debouncer_bouncing_press_counts_once_dated_by_its_first_edge():
    bounces = [(1, 1), (0, 2), (1, 1), (0, 3), (1, 2), (0, 1)] * 2
    segments = [(0, 50)] + bounces + [(1, 100)] + bounces + [(0, 100)]
    presses = feed(Debouncer(20), segments)
    assert len(presses) == 1
    assert presses[0][1] == 50  # the first bounce, not the settling


def test_debouncer_spike_shorter_than_the_window_counts_zero():
    assert feed(Debouncer(20), [(0, 50), (1, 15), (0, 50), (1, 20)] * 5) == []


def test_debouncer_spike_then_press_is_dated_by_the_press():
    presses = feed(Debouncer(20), [(0, 50), (1, 5), (0, 50), (1, 100)])
    assert [onset for _, onset in presses] == [105]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=60), min_size=1, max_size=40),
       st.integers(min_value=0, max_value=30))
def test_debouncer_counts_exactly_the_runs_that_last_the_window(runs_ms, debounce_ms):
    """Reference model: starting open, a run of the other level lasting the window
    (observed by its samples: its last sample is (length - 1) ms after its first) changes
    the debounced level; each change to closed is one press."""
    segments = [(i % 2 == 0, ms) for i, ms in enumerate(runs_ms)]  # closed first
    presses = feed(Debouncer(debounce_ms), [(0, 1)] + segments)
    level, expected = False, 0
    for closed, ms in segments:
        if closed != level and ms - 1 >= debounce_ms:
            level = closed
            expected += closed
    assert len(presses) == expected


# -- Ballot, pure -------------------------------------------------------------------------


def test_ballot_versions():
    b = Ballot(min_interval_s=1.0, window_s=60)
    assert b.open("A1", version=5, now=0)
    assert not b.open("A0", version=4, now=1)  # older: ignored
    assert not b.open("A1", version=5, now=2)  # redelivered: ignored, nothing reset
    assert b.ticket == "A1" and b.opened_at == 0
    assert not b.close(version=4)
    assert b.is_open
    assert b.close(version=5)  # central may close with the version it opened with
    assert not b.is_open
    assert not b.open("A1", version=5, now=3)  # the old open again: stays closed
    assert b.open("A2", version=6, now=4) and b.ticket == "A2"
    with pytest.raises(ValueError):
        b.open("A3", version=None, now=5)


def test_timings_reject_nonsense():
    with pytest.raises(ValueError, match="vote_window_s"):
        Timings(vote_window_s=0)
    with pytest.raises(TypeError, match="debounce_ms"):
        Timings(debounce_ms="20")
    with pytest.raises(ValueError, match="retry_max"):
        Timings(retry_max=0)


# -- FeedbackPanel, polled with a fake clock ----------------------------------------------


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class Rig:
    """One panel, a fake clock, an on_vote that records or raises on demand."""

    STEP = 0.002  # the fake sampling period

    def __init__(self, factory, leds=True, **timings):
        self.factory = factory
        self.clock = Clock()
        self.got = []
        self.calls = 0
        self.failing = False
        self.made = 0  # presses made by the test
        leds = (LIKE_LED, DISLIKE_LED) if leds else (None, None)
        timings = {"vote_min_interval_ms": 1000, **timings}  # the tests' presses assume it
        self.panel = FeedbackPanel(
            5, LIKE_PIN, DISLIKE_PIN, *leds, on_vote=self.on_vote,
            timings=Timings(**timings), clock=self.clock,
            wallclock=lambda: EPOCH + self.clock.t)

    def on_vote(self, window, record):
        self.calls += 1
        if self.failing:
            raise OSError(28, "No space left on device")
        assert window == 5
        self.got.append(record)

    def run(self, seconds, step=STEP):
        for _ in range(max(1, round(seconds / step))):
            self.clock.t += step
            self.panel.poll()

    def idle(self, seconds):
        """Let time pass with the buttons at rest: coarser steps, same polls."""
        self.run(seconds, step=0.05)

    def press(self, vote, hold=0.05, after=0.05, bounces=0):
        """Press and release; returns the fake time of the first sample that saw it."""
        pin = self.factory.pin(PINS[vote])
        first = self.clock.t + self.STEP
        for _ in range(bounces):
            pin.drive_low()
            self.run(0.002)
            pin.drive_high()
            self.run(0.002)
        pin.drive_low()
        self.run(hold)
        pin.drive_high()
        self.run(min(after, 0.05))
        if after > 0.05:
            self.idle(after - 0.05)
        self.made += 1
        return first

    def records(self):
        return [(r["vote"], r["ticket"], r["misuse"], r.get("misuse_reason"))
                for r in self.got]

    def close(self):
        self.panel.close()


@pytest.fixture
def rig(factory):
    r = Rig(factory)
    yield r
    r.close()


def test_press_while_closed_is_kept_as_misuse(rig):
    rig.press(LIKE)
    assert rig.records() == [(LIKE, None, True, CLOSED)]


def test_first_press_while_open_is_the_vote_then_misuse(rig):
    assert rig.panel.open_vote("A042", version=1)
    rig.press(DISLIKE)
    rig.press(LIKE)  # 0.1 s later: double click / mashing
    rig.run(1.0)
    rig.press(LIKE)  # a deliberate second vote
    rig.run(1.0)
    rig.press(DISLIKE)
    assert rig.records() == [
        (DISLIKE, "A042", False, None),
        (LIKE, "A042", True, TOO_FAST),
        (LIKE, "A042", True, ALREADY_VOTED),
        (DISLIKE, "A042", True, ALREADY_VOTED),
    ]
    s = rig.panel.state()
    assert s["open"] and s["voted"] == DISLIKE and s["ticket"] == "A042"
    assert (s["presses"], s["votes"], s["misuse"]) == (4, 1, 3)
    assert s["misuse_by_reason"] == {CLOSED: 0, TOO_FAST: 1, ALREADY_VOTED: 2}


def test_presses_faster_than_the_min_interval_are_too_fast(factory):
    rig = Rig(factory, vote_min_interval_ms=500)
    try:
        rig.panel.open_vote("B7", version=1)
        rig.press(LIKE, hold=0.03, after=0.03)
        for _ in range(3):  # every 60 ms
            rig.press(LIKE, hold=0.03, after=0.03)
        rig.run(0.6)
        rig.press(DISLIKE)
        reasons = [r.get("misuse_reason") for r in rig.got]
        assert reasons == [None, TOO_FAST, TOO_FAST, TOO_FAST, ALREADY_VOTED]
    finally:
        rig.close()


def test_opening_clears_earlier_presses(rig):
    rig.press(LIKE)
    rig.press(DISLIKE)
    rig.panel.open_vote("C1", version=1)
    rig.press(LIKE)  # 50 ms after the last press, but the buffer was cleared
    assert rig.records() == [
        (LIKE, None, True, CLOSED),
        (DISLIKE, None, True, CLOSED),
        (LIKE, "C1", False, None),
    ]


def test_a_press_that_began_before_opening_does_not_count(rig):
    rig.factory.pin(LIKE_PIN).drive_low()
    rig.run(0.010)  # closed, not yet debounced
    rig.panel.open_vote("C2", version=1)
    rig.run(0.050)
    rig.factory.pin(LIKE_PIN).drive_high()
    rig.run(0.050)
    rig.press(DISLIKE)
    assert rig.records() == [(LIKE, None, True, CLOSED), (DISLIKE, "C2", False, None)]


def test_a_new_ticket_gets_its_own_vote_and_stale_versions_are_ignored(rig):
    assert rig.panel.open_vote("D1", version=10)
    rig.press(LIKE)
    assert not rig.panel.open_vote("D1", version=10)  # retained message redelivered
    assert not rig.panel.open_vote("D0", version=9)  # older
    rig.run(1.0)
    rig.press(LIKE)
    assert rig.panel.close_vote(version=11)
    assert not rig.panel.open_vote("D1", version=10)  # late copy of the old open
    assert not rig.panel.state()["open"]
    rig.press(DISLIKE)
    assert rig.panel.open_vote("D2", version=12)
    rig.press(DISLIKE)
    assert not rig.panel.close_vote(version=11)
    assert rig.panel.state()["open"]
    assert rig.records() == [
        (LIKE, "D1", False, None),
        (LIKE, "D1", True, ALREADY_VOTED),
        (DISLIKE, None, True, CLOSED),
        (DISLIKE, "D2", False, None),
    ]
    assert rig.panel.close_vote(version=None)  # empty retained payload: closed, any version
    assert not rig.panel.open_vote("D2", version=12)
    assert rig.panel.state()["version"] == 12 and not rig.panel.state()["open"]


def test_voting_closes_by_itself_after_the_vote_window(factory):
    rig = Rig(factory, vote_window_s=2)
    try:
        rig.panel.open_vote("E1", version=1)
        rig.run(1.0)
        assert rig.panel.state()["closes_in_s"] == pytest.approx(1.0, abs=0.01)
        rig.run(1.1)
        assert not rig.panel.state()["open"]
        rig.press(LIKE)
        rig.panel.open_vote("E2", version=2, timeout_s=5)  # per-open timeout
        rig.run(4.0)
        rig.press(DISLIKE)
        rig.run(1.5)
        rig.press(LIKE)
        assert rig.records() == [
            (LIKE, None, True, CLOSED),
            (DISLIKE, "E2", False, None),
            (LIKE, None, True, CLOSED),
        ]
    finally:
        rig.close()


def test_record_format_and_timestamp_of_the_first_edge(rig):
    rig.panel.open_vote("F1", version=3)
    rig.run(0.1)
    first = rig.press(LIKE, bounces=4)  # 16 ms of bouncing before it settles
    rig.press(DISLIKE)
    r, r2 = rig.got
    assert set(r) == {"type", "window", "vote", "ticket", "misuse", "ts", "source"}
    assert r["type"] == "vote" and r["window"] == 5 and r["vote"] == LIKE
    assert r["ticket"] == "F1" and r["misuse"] is False and r["source"] == {"gpio": LIKE_PIN}
    assert r2["misuse"] is True and r2["misuse_reason"] == TOO_FAST
    assert r2["source"] == {"gpio": DISLIKE_PIN}
    assert TS.match(r["ts"])
    # When the contact first closed (1 ms: the format), not when the debounce ended.
    ts = datetime.fromisoformat(r["ts"].replace("Z", "+00:00")).timestamp()
    assert abs(ts - (EPOCH + first)) < 0.0011
    assert utc_ts(0) == "1970-01-01T00:00:00.000Z"


def test_records_are_events_of_the_mqtt_contract(rig):
    """With the fields the outbox adds, every kind of record validates against the event
    schema in protocols/ (the contract this module feeds)."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((PROTOCOLS / "schemas" / "event.schema.json").read_text())
    rig.press(LIKE)  # closed
    rig.panel.open_vote("A042", version=1)
    rig.press(LIKE)  # the vote
    rig.press(DISLIKE)  # too fast
    rig.run(2.0)
    rig.press(DISLIKE)  # already voted
    assert [r.get("misuse_reason") for r in rig.got] == [CLOSED, None, TOO_FAST,
                                                         ALREADY_VOTED]
    for seq, record in enumerate(rig.got, 1):
        event = {"id": f"gw-1.{seq}", "gateway": "gw-1", "seq": seq, **record}
        jsonschema.validate(event, schema)
        json.dumps(event)


def test_timings_from_the_hall_config():
    from hallgate.gateway import config

    cfg = config.Timings()
    t = Timings.from_config(cfg, sample_ms=2)
    for name in ("debounce_ms", "vote_window_s", "vote_min_interval_ms", "vote_ack_ms"):
        assert getattr(t, name) == getattr(cfg, name)
    assert t.sample_ms == 2


def test_a_failing_callback_is_retried_and_delivers_exactly_once(factory):
    rig = Rig(factory, retry_ms=500)
    try:
        rig.panel.open_vote("G1", version=1)
        rig.failing = True
        rig.press(LIKE)
        calls = rig.calls
        assert calls >= 1 and rig.got == []
        rig.run(0.1)
        assert rig.calls == calls  # not hammered: waits retry_ms
        rig.run(1.0)
        rig.press(DISLIKE)  # queues behind the first
        rig.run(1.0)
        assert rig.calls > calls and rig.got == []
        s = rig.panel.state()
        assert s["pending"] == 2 and s["callback_errors"] == rig.calls and s["delivered"] == 0
        rig.failing = False
        rig.run(0.6)
        assert rig.records() == [(LIKE, "G1", False, None),
                                 (DISLIKE, "G1", True, ALREADY_VOTED)]
        rig.run(2.0)
        assert len(rig.got) == 2  # exactly once
        s = rig.panel.state()
        assert (s["pending"], s["delivered"], s["dropped"]) == (0, 2, 0)
    finally:
        rig.close()


def test_the_retry_list_is_bounded_and_keeps_the_votes(factory, caplog):
    rig = Rig(factory, retry_max=3, vote_min_interval_ms=0)
    try:
        rig.failing = True
        rig.press(LIKE)  # closed
        rig.panel.open_vote("H1", version=1)
        rig.press(DISLIKE)  # the vote
        for _ in range(3):
            rig.press(LIKE)  # already voted
        s = rig.panel.state()
        assert (s["pending"], s["dropped"]) == (3, 2)
        assert "press dropped" in caplog.text
        rig.failing = False
        rig.run(1.1)
        assert rig.records() == [(DISLIKE, "H1", False, None)] + [
            (LIKE, "H1", True, ALREADY_VOTED)] * 2
    finally:
        rig.close()


def test_close_makes_a_last_attempt_and_counts_what_it_drops(factory):
    rig = Rig(factory)
    rig.failing = True
    rig.press(LIKE)
    rig.press(LIKE)
    rig.close()
    assert rig.panel.state()["dropped"] == 2
    rig2 = Rig(factory)
    rig2.failing = True
    rig2.press(LIKE)
    rig2.failing = False
    rig2.close()  # before the retry was due
    assert len(rig2.got) == 1 and rig2.panel.state()["dropped"] == 0


OPS = st.one_of(
    st.tuples(st.just("press"), st.sampled_from((LIKE, DISLIKE)),
              st.integers(25, 150), st.integers(25, 1500), st.integers(0, 6)),
    st.tuples(st.just("open"), st.integers(-2, 3)),
    st.tuples(st.just("close"), st.integers(-1, 2)),
    st.tuples(st.just("fail"), st.booleans()),
    st.tuples(st.just("wait"), st.integers(0, 3000)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(OPS, max_size=25), st.integers(1, 3))
def test_randomized_presses_made_equal_records_delivered(ops, window_s):
    old = Device.pin_factory
    factory = Device.pin_factory = MockFactory()
    rig = Rig(factory, leds=False, vote_window_s=window_s, retry_max=64)
    try:
        version = opened = 0
        for op in ops:
            if op[0] == "press":
                _, vote, hold, gap, bounces = op
                rig.press(vote, hold=hold / 1000, after=gap / 1000, bounces=bounces)
            elif op[0] == "open":
                version += op[1]
                opened += rig.panel.open_vote(f"T{version}", version)
            elif op[0] == "close":
                version += op[1]
                rig.panel.close_vote(version)
            elif op[0] == "fail":
                rig.failing = op[1]
            else:
                rig.idle(op[1] / 1000)
        rig.failing = False
        rig.idle(1.1)
        s = rig.panel.state()
        assert len(rig.got) == rig.made == s["presses"] == s["delivered"]
        assert s["pending"] == s["dropped"] == 0
        assert [r["ts"] for r in rig.got] == sorted(r["ts"] for r in rig.got)
        votes = [r["ticket"] for r in rig.got if not r["misuse"]]
        # One vote per opening at most (each applied open has its own ticket here).
        assert len(votes) == len(set(votes)) == s["votes"] <= opened
        for r in rig.got:
            reason = r.get("misuse_reason")
            assert (reason is None) == (not r["misuse"])
            assert reason in (None, *REASONS)
            assert (r["ticket"] is None) == (reason == CLOSED)
    finally:
        rig.close()
        factory.reset()
        Device.pin_factory = old


# -- FeedbackButtons: the sampler thread on real time --------------------------------------

FAST = dict(debounce_ms=30, sample_ms=2, vote_min_interval_ms=100, vote_ack_ms=300,
            invite_on_ms=40, invite_off_ms=40, retry_ms=50)


class Live:
    """FeedbackButtons with one window (5) on real time."""

    def __init__(self, factory, **timings):
        self.factory = factory
        self.got = []
        self.failing = False
        self.lock = threading.Lock()
        self.timings = Timings(**{**FAST, **timings})
        panel = FeedbackPanel(5, LIKE_PIN, DISLIKE_PIN, LIKE_LED, DISLIKE_LED,
                              on_vote=self.on_vote, timings=self.timings)
        self.buttons = FeedbackButtons([panel]).start()
        self.panel = panel

    def on_vote(self, window, record):
        if self.failing:
            raise OSError(28, "No space left on device")
        with self.lock:
            self.got.append(record)

    def wait_records(self, n, what="records"):
        wait_for(lambda: len(self.got) >= n, timeout=5, what=f"{n} {what}")
        time.sleep(0.1)  # nothing more should come
        assert len(self.got) == n

    def pin(self, vote):
        return self.factory.pin(PINS[vote])

    def press(self, vote, hold=0.08, after=0.08):
        self.pin(vote).drive_low()
        time.sleep(hold)
        self.pin(vote).drive_high()
        time.sleep(after)

    def close(self):
        self.buttons.close()


@pytest.fixture
def live(factory):
    lv = Live(factory)
    yield lv
    lv.close()


def durations(pin, closed):
    """How long each closed (pulled-up pin low) or open stretch lasted, from the history
    MockPin records; the last, unfinished stretch is left out."""
    states = pin.states
    return [states[i + 1].timestamp for i in range(len(states) - 1)
            if (not states[i].state) == closed]


def test_live_clean_press_gives_one_vote(live):
    live.buttons.open_vote(5, "L1", version=1)
    live.press(LIKE)
    live.wait_records(1)
    assert (live.got[0]["vote"], live.got[0]["ticket"], live.got[0]["misuse"]) == (
        LIKE, "L1", False)


def test_live_bouncing_press_counts_once(live):
    debounce = live.timings.debounce_ms / 1000
    live.buttons.open_vote(5, "L2", version=1)
    for attempt in range(5):
        live.got.clear()
        presses = live.panel.state()["presses"]
        pin = live.pin(DISLIKE)
        pin.clear_states()
        rnd = random.Random(attempt)
        for _ in range(5):  # 10 edges, sub-ms to few-ms apart, then held
            pin.drive_low()
            time.sleep(rnd.uniform(0.0002, 0.003))
            pin.drive_high()
            time.sleep(rnd.uniform(0.0002, 0.003))
        pin.drive_low()
        time.sleep(0.1)
        gaps = durations(pin, closed=False)
        pin.drive_high()
        time.sleep(0.1)
        if max(gaps[1:]) < debounce / 2:  # the machine did not stretch a bounce
            break
    else:
        pytest.skip("the test thread's sleeps were stretched past the debounce window")
    wait_for(lambda: live.got, timeout=5, what="the press")
    time.sleep(0.1)
    assert len(live.got) == 1
    assert live.panel.state()["presses"] == presses + 1


def test_live_spike_shorter_than_the_window_counts_zero(live):
    debounce = live.timings.debounce_ms / 1000
    pin = live.pin(LIKE)
    for _ in range(5):
        pin.clear_states()
        pin.drive_low()
        time.sleep(0.001)
        pin.drive_high()
        spike = durations(pin, closed=True)[0]
        time.sleep(0.1)
        if spike < debounce / 2:
            break
        live.got.clear()  # stretched by the machine: a real press; try again
    else:
        pytest.skip("the test thread's sleeps were stretched past the debounce window")
    assert live.got == [] and live.panel.state()["presses"] == 0


def led_toggles(factory, pin):
    return len(factory.pin(pin).states) - 1


def test_live_leds_invite_thank_then_off(live):
    like_led, dislike_led = live.factory.pin(LIKE_LED), live.factory.pin(DISLIKE_LED)
    assert not like_led.state and not dislike_led.state
    live.buttons.open_vote(5, "L3", version=1)
    before = led_toggles(live.factory, LIKE_LED)
    wait_for(lambda: led_toggles(live.factory, LIKE_LED) >= before + 4, timeout=5,
             what="the like LED to blink")
    wait_for(lambda: led_toggles(live.factory, DISLIKE_LED) >= 4, timeout=5,
             what="the dislike LED to blink")
    assert live.panel.state()["lights"] == "inviting"
    live.pin(LIKE).drive_low()
    wait_for(lambda: live.got, timeout=5, what="the vote")
    assert live.panel.state()["lights"] == "thanking"
    # The thanks: the pressed button's LED steady on, the other off, no more blinking.
    wait_for(lambda: like_led.state, timeout=5, what="the like LED to thank")
    assert not dislike_led.state
    live.pin(LIKE).drive_high()
    wait_for(lambda: not like_led.state, timeout=5, what="the thanks to end")
    lit = [s.timestamp for s in like_led.states[1:] if not s.state][-1]
    assert lit >= live.timings.vote_ack_ms / 1000 * 0.9  # lit about vote_ack_ms, not a blink
    settled = len(like_led.states), len(dislike_led.states)
    time.sleep(0.2)
    assert (len(like_led.states), len(dislike_led.states)) == settled  # off and quiet
    assert not like_led.state and not dislike_led.state
    assert live.panel.state()["lights"] == "off"


def test_live_close_vote_stops_the_invitation(live):
    led = live.factory.pin(DISLIKE_LED)
    live.buttons.open_vote(5, "L4", version=1)
    wait_for(lambda: len(led.states) >= 4, timeout=5, what="blinking")
    assert live.buttons.close_vote(5, version=2)
    assert not led.state
    n = len(led.states)
    time.sleep(0.2)
    assert len(led.states) == n


def test_live_auto_close_after_the_vote_window(factory):
    live = Live(factory, vote_window_s=0.3)
    try:
        led = factory.pin(LIKE_LED)
        live.buttons.open_vote(5, "L5", version=1)
        assert live.panel.state()["open"]
        wait_for(lambda: not live.panel.state()["open"], timeout=5, what="auto-close")
        time.sleep(0.1)
        assert not led.state
        n = len(led.states)
        time.sleep(0.2)
        assert len(led.states) == n  # no longer blinking
        live.press(LIKE)
        live.wait_records(1)
        assert (live.got[0]["ticket"], live.got[0]["misuse_reason"]) == (None, CLOSED)
    finally:
        live.close()


def test_live_failing_callback_is_retried_until_it_recovers(live):
    live.buttons.open_vote(5, "L6", version=1)
    live.failing = True
    live.press(LIKE)
    wait_for(lambda: live.panel.state()["callback_errors"] >= 2, timeout=5,
             what="retries")
    assert live.got == [] and live.panel.state()["pending"] == 1
    live.failing = False
    live.wait_records(1)
    assert live.got[0]["misuse"] is False
    s = live.panel.state()
    assert (s["pending"], s["delivered"], s["dropped"]) == (0, 1, 0)


def test_live_randomized_presses_made_equal_records_delivered(live):
    rnd = random.Random(20261123)
    made = 0
    version = 0
    for i in range(24):
        if i % 6 == 0:
            version += 1
            live.buttons.open_vote(5, f"R{version}", version)
        if i % 6 == 4:
            live.buttons.close_vote(5, version)
        if i == 8:
            live.failing = True
        if i == 14:
            live.failing = False
        pin = live.pin(rnd.choice((LIKE, DISLIKE)))
        for _ in range(rnd.randrange(5)):  # bounces
            pin.drive_low()
            time.sleep(rnd.uniform(0.0002, 0.002))
            pin.drive_high()
            time.sleep(rnd.uniform(0.0002, 0.002))
        pin.drive_low()
        time.sleep(rnd.uniform(0.06, 0.1))
        pin.drive_high()
        time.sleep(rnd.uniform(0.06, 0.1))
        made += 1
    live.wait_records(made)
    s = live.panel.state()
    assert s["presses"] == s["delivered"] == made and s["dropped"] == 0
    assert s["votes"] == sum(not r["misuse"] for r in live.got) >= 1


def test_live_close_is_prompt_and_releases_the_pins(factory):
    live = Live(factory)
    thread = live.buttons.sampler._thread
    live.close()
    assert not thread.is_alive()
    live.close()  # idempotent
    Live(factory).close()  # the pins are free again


def test_close_is_bounded_when_on_vote_hangs(factory, caplog):
    release = threading.Event()
    entered = threading.Event()

    def on_vote(window, record):
        entered.set()
        release.wait(10)

    panel = FeedbackPanel(5, LIKE_PIN, DISLIKE_PIN, on_vote=on_vote,
                          timings=Timings(**FAST))
    buttons = FeedbackButtons([panel]).start()
    factory.pin(LIKE_PIN).drive_low()
    assert entered.wait(5)
    thread = buttons.sampler._thread
    buttons.close(timeout=0.2)  # returns although on_vote has not
    assert "closing anyway" in caplog.text
    release.set()
    thread.join(5)
    assert not thread.is_alive()
    assert panel.state()["delivered"] == 1
    FeedbackPanel(5, LIKE_PIN, DISLIKE_PIN, on_vote=on_vote).close()  # pins released


def test_sampler_survives_a_failing_poll():
    class Bad:
        def poll(self):
            raise RuntimeError("boom")

    class Good:
        n = 0

        def poll(self):
            self.n += 1

    good = Good()
    with Sampler([Bad(), good], period_s=0.002) as s:
        wait_for(lambda: good.n >= 5, timeout=5, what="polls")
    assert s.errors >= 5 and not s.running


def test_two_panels_on_one_window_are_refused(factory):
    a = FeedbackPanel(1, 5, 6, on_vote=lambda w, r: None)
    b = FeedbackPanel(1, 12, 13, on_vote=lambda w, r: None)
    try:
        with pytest.raises(ValueError, match="window 1"):
            FeedbackButtons([a, b])
    finally:
        a.close()
        b.close()
