"""The GPIO sampler (gateway/gpio.py) woken by edges: asleep at rest, sampling every period
while a contact settles, and a safety sample that catches a missed edge.

Mock pins call their edge callback in the thread that drives them, as lgpio calls it in its
own. Counts of passes are upper bounds on work (a loaded machine only does fewer), never
assertions on speed; the debounce rules themselves are test_feedback.py's.
"""

import threading
import time

import pytest
from conftest import wait_for
from gpiozero import Device
from gpiozero.exc import PinEdgeDetectUnsupported
from gpiozero.pins.mock import MockFactory, MockPin
from hallgate.gateway.gpio import Debouncer, SampledButton, Sampler
from hallgate.gateway.gpiopanel import GpioCallPanel

PINS = (5, 6, 12, 13)


class NoEdgePin(MockPin):
    """A pin whose factory cannot detect edges (as some remote factories)."""

    def _set_edges(self, value):
        raise PinEdgeDetectUnsupported(f"no edges on {self!r}")

    def _set_when_changed(self, value):
        if value is not None:
            raise PinEdgeDetectUnsupported(f"no edges on {self!r}")


@pytest.fixture
def factory():
    old = Device.pin_factory
    f = Device.pin_factory = MockFactory()
    yield f
    f.reset()
    Device.pin_factory = old


class Buttons:
    """SampledButtons polled by a Sampler; counted presses with the time they began."""

    def __init__(self, pins, pin_factory=None, **sampler):
        self.buttons = [SampledButton(p, debounce_s=0.02, pin_factory=pin_factory)
                        for p in pins]
        self.pressed = []
        self.lock = threading.Lock()
        self.sampler = Sampler([self], period_s=0.005, **sampler)

    def poll(self):
        now = time.monotonic()
        for b in self.buttons:
            onset = b.poll(now)
            if onset is not None:
                with self.lock:
                    self.pressed.append((b.gpio, onset))

    def watch(self, wake):
        for b in self.buttons:
            b.watch(wake)

    def poll_due(self):
        dues = [d for d in (b.poll_due() for b in self.buttons) if d is not None]
        return min(dues) if dues else None

    def close(self):
        self.sampler.close()
        for b in self.buttons:
            b.close()


def settle(sampler, what):
    """Wait until the sampler has gone back to sleep (its pass count stops)."""
    def asleep():
        n = sampler.passes
        time.sleep(0.05)
        return sampler.passes == n
    wait_for(asleep, timeout=5, what=what)


def test_debouncer_settling_is_true_only_while_a_change_is_pending():
    d = Debouncer(debounce_s=0.02)
    assert not d.settling
    d.update(1, 0.000)
    assert d.settling  # closed, not yet for the whole window
    d.update(1, 0.020)
    assert d.level and not d.settling
    d.update(0, 0.030)
    assert d.settling
    d.update(1, 0.031)  # bounced back to the level: nothing pending
    assert not d.settling


def test_at_rest_the_sampler_sleeps(factory):
    b = Buttons(PINS)
    b.sampler.start()
    try:
        assert all(btn.edges for btn in b.buttons)
        time.sleep(0.3)
        # One pass at start, then asleep until an edge or the 1 s safety sample.
        assert b.sampler.passes <= 2 and b.sampler.sleeps >= 1
    finally:
        b.close()


def test_an_edge_wakes_it_the_press_counts_once_then_it_sleeps_again(factory):
    b = Buttons(PINS)
    b.sampler.start()
    try:
        settle(b.sampler, "the first sleep")
        pin = factory.pin(PINS[2])
        edge = time.monotonic()
        pin.drive_low()
        wait_for(lambda: b.pressed, timeout=5, what="the press")
        [(gpio, onset)] = b.pressed
        assert gpio == PINS[2] and onset >= edge  # dated by the first sample after the edge
        settle(b.sampler, "sleep after the press")
        woken = b.sampler.passes
        time.sleep(0.2)
        assert b.sampler.passes - woken <= 1  # held down: nothing settling, asleep
        pin.drive_high()  # the release: sampled, not counted
        settle(b.sampler, "sleep after the release")
        assert len(b.pressed) == 1 and b.sampler.wakes >= 2
    finally:
        b.close()


def test_a_missed_edge_is_caught_by_the_safety_sample(factory):
    b = Buttons(PINS, idle_s=0.05)
    b.sampler.start()
    try:
        wait_for(lambda: b.sampler.sleeps >= 1, timeout=5, what="the first sleep")
        pin = factory.pin(PINS[0])
        pin._change_state(False)  # closed without its edge callback: a lost edge
        wait_for(lambda: b.pressed, timeout=5, what="the press after a lost edge")
        assert b.pressed[0][0] == PINS[0]
    finally:
        b.close()


def test_a_pin_factory_without_edges_is_sampled_every_period():
    pins = MockFactory(pin_class=NoEdgePin)
    b = Buttons(PINS[:2], pin_factory=pins)
    b.sampler.start()
    try:
        assert not any(btn.edges for btn in b.buttons)
        wait_for(lambda: b.sampler.passes >= 10, timeout=5, what="periodic passes")
        pins.pin(PINS[1]).drive_low()
        wait_for(lambda: b.pressed, timeout=5, what="the press")
    finally:
        b.close()
        pins.reset()


def test_a_call_panel_on_gpio_wakes_on_its_keys(factory):
    got = []
    panel = GpioCallPanel(3, {"call": 20, "finish": 21}, on_key=lambda w, r: got.append(r))
    sampler = Sampler([panel], period_s=0.005).start()
    try:
        settle(sampler, "the first sleep")
        assert panel.poll_due() is None
        factory.pin(21).drive_low()
        wait_for(lambda: got, timeout=5, what="the key")
        assert [(r["key"], r["source"]) for r in got] == [("finish", {"gpio": 21})]
        settle(sampler, "sleep after the key")
    finally:
        sampler.close()
        panel.close()


def test_close_is_prompt_while_asleep(factory):
    b = Buttons(PINS, idle_s=30)
    b.sampler.start()
    settle(b.sampler, "the first sleep")
    thread = b.sampler._thread
    b.close()
    thread.join(5)
    assert not thread.is_alive()
