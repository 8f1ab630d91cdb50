"""Like / dislike buttons on a feedback pad on the bus (role "feedback-pad").

Four layers, each on the real parts:
- the role (firmware/role_feedback.py) with the real appcore on a synthetic clock and a
  fake HAL: the cases in tests/mp/check_role_feedback.py, on CPython and on MicroPython;
- the firmware as a process (sim/device.py, MicroPython unix port) on a pty, played by a
  tiny master here: keys pressed on its control channel, LEDs read from what it reports;
- gateway/feedback.py's FeedbackPad with a fake clock and the master's Book: the same
  rules and records as buttons on GPIO (checked side by side with a FeedbackPanel);
- the daemon end to end: real mosquitto, the real firmware on a paced bus hub, a witness
  counting the vote events.
"""

import contextlib
import importlib
import json
import sys
import threading
import time
from datetime import datetime

import pytest
from conftest import FIRMWARE, PROTOCOLS, ROOT, run_micropython, wait_for
from gpiozero.pins.mock import MockFactory
from hallgate.gateway.book import Book
from hallgate.gateway.config import load_config
from hallgate.gateway.daemon import Gateway
from hallgate.gateway.feedback import (
    ALREADY_VOTED,
    CLOSED,
    DISLIKE,
    LIKE,
    TOO_FAST,
    FeedbackPad,
    Timings,
)
from hallgate.gateway.outbox import OutboxError
from hallgate.protocols import bus
from hallgate.sim.broker import Mosquitto
from hallgate.sim.device import FirmwareDevice
from hallgate.sim.hub import BusHub
from harness import Witness, write_hall_config
from jsonschema import Draft7Validator

MP_TESTS = ROOT / "tests" / "mp"
for path in (FIRMWARE, MP_TESTS):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
sys.modules.setdefault("bus", bus)  # the firmware imports the codec as `bus`, as on a board
check_role_feedback = importlib.import_module("check_role_feedback")

EVENT_SCHEMA = Draft7Validator(json.loads((PROTOCOLS / "schemas/event.schema.json").read_text()))
EPOCH = 1_800_000_000.0  # the fake wall clock at fake monotonic 0


# ---- the role, on both interpreters ---------------------------------------------------


@pytest.mark.parametrize("case", check_role_feedback.CASES, ids=lambda c: c.__name__[5:])
def test_role_on_cpython(case):
    case()


@pytest.mark.micropython
def test_role_on_micropython():
    from hallgate.sim.device import compile_firmware

    # 96k: the cases' own 230 lines compile on the interpreter's heap beside the firmware,
    # which left 48k at the edge (a MemoryError in one whole-suite run, and with other
    # argv/env layouts). The firmware's own 48k budget is test_firmware_soak's.
    done = run_micropython(MP_TESTS / "check_role_feedback.py", heapsize="96k",
                           path=(compile_firmware(), FIRMWARE, PROTOCOLS), timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith(
        f"role_feedback: {len(check_role_feedback.CASES)} cases ok"), done.stdout


def test_device_config_of_a_pad():
    devconfig = importlib.import_module("devconfig")
    cfg = devconfig.check({"address": 21, "role": "feedback-pad", "window": 41})
    assert cfg["lockout_ms"] == 0 and cfg["digits"] == 0  # every press passed on; no display
    cfg = devconfig.check({"address": 21, "role": "feedback-pad", "window": 41,
                           "lockout_ms": 300, "pins": {"like": 3, "like_led": 4}})
    assert cfg["lockout_ms"] == 300 and cfg["pins"] == {"like": 3, "like_led": 4}
    assert devconfig.check({"address": 1, "role": "call-panel", "window": 1})["lockout_ms"] == 1000
    with pytest.raises(devconfig.ConfigError, match="'pins'"):
        devconfig.check({"address": 21, "role": "feedback-pad", "window": 41,
                         "pins": {"like_lamp": 4}})
    example = devconfig.load(str(FIRMWARE / "example-feedback-pad.json"))
    assert example["role"] == "feedback-pad"


# ---- the firmware as a process ----------------------------------------------------------


@pytest.fixture
def pad_rig(tmp_path):
    from test_firmware_device import Rig

    rig = Rig(tmp_path, "feedback-pad")
    yield rig
    rig.close()


def press_event(dev, key, hold_ms=60):
    mark = dev.mark()
    dev.press(key, hold_ms)
    return dev.wait_kind("event", since=mark)


@pytest.mark.micropython
def test_firmware_pad_shows_the_state_it_is_set_and_its_keys_are_vote_events(pad_rig):
    from test_firmware_device import ADDR

    m, dev = pad_rig.master, pad_rig.dev
    assert dev.ready["role"] == "feedback-pad"
    assert dev.shown() == {"like": "off", "dislike": "off", "invite": False, "thank": None,
                           "version": 0}
    info = bus.decode_info(m.request(bus.encode_get_info(ADDR)).payload)
    assert (info.role_name, info.window) == ("feedback-pad", 3)

    mark = dev.mark()
    frame = m.request(bus.encode_set(ADDR, 3, bus.FeedbackState(invite=True)))
    assert (frame.mtype, bus.decode_status(frame.payload)) == (bus.STATUS, 3)
    assert dev.wait_kind("feedback", since=mark) == {
        "like": "blink", "dislike": "blink", "invite": True, "thank": None, "version": 3}
    levels = set()
    deadline = time.monotonic() + 5
    while len(levels) < 2 and time.monotonic() < deadline:  # it does blink
        now = dev.state()
        levels.add((now["like_led"], now["dislike_led"]))
        time.sleep(0.1)
    assert levels == {(0, 0), (1, 1)}

    # No lockout on a pad: two presses 100 ms apart are two events (the gateway judges).
    assert press_event(dev, "like") == {"seq": 1, "key": "like", "action": "press"}
    assert press_event(dev, "dislike")["key"] == "dislike"
    first = m.event()
    second = m.event(first.ident)
    assert (first.key, first.key_name, second.key, second.key_name) == (
        9, "like", 10, "dislike")
    assert m.status(second.ident) == 3

    mark = dev.mark()
    m.request(bus.encode_set(ADDR, 4, bus.FeedbackState(thank="like", ack_ds=3)))
    assert dev.wait_kind("feedback", since=mark)["like"] == "on"
    assert dev.state()["like_led"] == 1
    after = dev.wait_kind("feedback", timeout=3, since=mark + 1)
    assert (after["like"], after["dislike"], after["thank"]) == ("off", "off", None)

    assert m.nak(bus.encode_set(ADDR, 5, bus.PanelState("A1"))) == (bus.SET, bus.NAK_WRONG_ROLE)
    assert m.status() == 4
    assert dev.info()["mem_free"] > 16 * 1024  # 64 KB heap, everything loaded


# ---- the gateway's rules for a pad: as for GPIO buttons -------------------------------


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class PadRig:
    """A FeedbackPad on a Book (the master's protocol side, no port), a fake clock, an
    on_vote that records or raises on demand. `press` makes the bus event the pad sends
    and hands it to take() `delay` seconds after the press, as the master would."""

    def __init__(self, **timings):
        self.clock = Clock()
        self.book = Book()
        self.got = []
        self.calls = 0
        self.failing = False
        self.seq = 0
        timings = {"vote_min_interval_ms": 1000, "vote_ack_ms": 1500, **timings}
        self.pad = FeedbackPad(5, self.book, "hall", 21, on_vote=self.on_vote,
                               timings=Timings(**timings), clock=self.clock,
                               wallclock=lambda: EPOCH + self.clock.t)

    def on_vote(self, window, record):
        self.calls += 1
        if self.failing:
            raise OutboxError("disk full")
        assert window == 5
        self.got.append(record)

    def run(self, seconds):
        self.clock.t += seconds
        self.pad.poll()

    def event(self, vote, delay=0.05):
        self.seq += 1
        code = (bus.KEYS + bus.VOTE_KEYS).index(vote) + 1
        return bus.Event(7, self.seq, code, bus.PRESS, age_ds=int(delay * 10))

    def press(self, vote, delay=0.05, after=0.05):
        """Press at now; the event reaches the gateway `delay` later; returns the press time."""
        pressed = self.clock.t
        self.run(delay)
        self.pad.take(self.event(vote, delay))
        self.run(after)
        return pressed

    def desired(self):
        return self.book.devices[21].desired

    def records(self):
        return [(r["vote"], r["ticket"], r["misuse"], r.get("misuse_reason")) for r in self.got]


def test_pad_presses_follow_the_gpio_rules():
    rig = PadRig()
    rig.press(LIKE)  # voting closed
    assert rig.pad.open_vote("A042", version=1)
    rig.press(DISLIKE)  # THE vote
    rig.press(LIKE)  # 0.1 s later: too fast
    rig.run(1.0)
    rig.press(LIKE)  # a deliberate second press
    assert rig.records() == [
        (LIKE, None, True, CLOSED),
        (DISLIKE, "A042", False, None),
        (LIKE, "A042", True, TOO_FAST),
        (LIKE, "A042", True, ALREADY_VOTED),
    ]
    s = rig.pad.state()
    assert (s["presses"], s["votes"], s["misuse"], s["voted"]) == (4, 1, 3, DISLIKE)
    assert s["source"] == {"bus": "hall", "address": 21} and s["delivered"] == 4
    for seq, record in enumerate(rig.got, 1):
        assert record["source"] == {"bus": "hall", "address": 21, "boot": 7, "seq": seq}
        EVENT_SCHEMA.validate({"id": f"gw-1.{seq}", "gateway": "gw-1", "seq": seq, **record})


def test_pad_and_gpio_buttons_give_the_same_records():
    """One script of presses and ballots, on GPIO buttons and on a pad: the same records,
    but for their source."""
    from gpiozero import Device
    from test_feedback import Rig

    old, factory = Device.pin_factory, MockFactory()
    Device.pin_factory = factory
    gpio = Rig(factory, vote_min_interval_ms=1000)
    pad = PadRig(vote_min_interval_ms=1000)
    try:
        for rig in (gpio, pad):
            panel = rig.panel if rig is gpio else rig.pad
            rig.press(LIKE)
            panel.open_vote("B7", version=1)
            rig.press(LIKE)
            rig.press(DISLIKE)
            if rig is pad:
                rig.run(1.2)
            else:
                rig.idle(1.2)
            rig.press(DISLIKE)
            panel.close_vote(version=2)
            rig.press(LIKE)
            panel.open_vote("B8", version=3)
            rig.press(DISLIKE)
        assert pad.records() == gpio.records() == [
            (LIKE, None, True, CLOSED),
            (LIKE, "B7", False, None),
            (DISLIKE, "B7", True, TOO_FAST),
            (DISLIKE, "B7", True, ALREADY_VOTED),
            (LIKE, None, True, CLOSED),
            (DISLIKE, "B8", False, None),
        ]
        assert {k for r in pad.got for k in r} == {k for r in gpio.got for k in r}
    finally:
        gpio.close()
        factory.reset()
        Device.pin_factory = old


def test_a_pad_press_is_dated_by_its_event_age_and_judged_at_that_time():
    rig = PadRig()
    rig.run(10.0)
    rig.pad.open_vote("C1", version=1)
    # Pressed 0.2 s before the opening, reported 0.3 s after it: not a vote.
    rig.run(0.3)
    rig.pad.take(bus.Event(7, 1, 9, age_ds=5))
    rig.run(2.0)
    rig.pad.take(bus.Event(7, 2, 10, age_ds=12))  # pressed 1.2 s ago
    assert rig.records() == [(LIKE, None, True, CLOSED), (DISLIKE, "C1", False, None)]
    ts = [datetime.fromisoformat(r["ts"].replace("Z", "+00:00")).timestamp() for r in rig.got]
    assert ts == [pytest.approx(EPOCH + 9.8, abs=0.0011), pytest.approx(EPOCH + 11.1, abs=0.0011)]


def test_the_pad_leds_invite_thank_and_go_dark_as_the_gpio_leds():
    rig = PadRig(vote_ack_ms=1500)
    rig.run(0.01)
    assert rig.desired() == bus.FeedbackState()  # off at start: a pad left inviting stops
    version = rig.book.devices[21].version
    rig.pad.open_vote("D1", version=1)
    rig.run(0.01)
    assert rig.desired() == bus.FeedbackState(invite=True)
    assert rig.pad.state()["lights"] == "inviting"
    rig.press(DISLIKE)
    assert rig.desired() == bus.FeedbackState(thank=DISLIKE, ack_ds=15)
    assert rig.pad.state()["lights"] == "thanking"
    rig.press(LIKE)  # misuse: no second thanks
    assert rig.desired() == bus.FeedbackState(thank=DISLIKE, ack_ds=15)
    rig.pad.close_vote(version=2)  # the thanks is left to finish
    rig.run(0.01)
    assert rig.desired() == bus.FeedbackState(thank=DISLIKE, ack_ds=15)
    rig.run(1.5)
    assert rig.desired() == bus.FeedbackState() and rig.pad.state()["lights"] == "off"
    # A new ballot after an identical one blinks afresh: a new version, not the same one.
    rig.pad.open_vote("D2", version=3)
    rig.run(0.01)
    v = rig.book.devices[21].version
    rig.pad.open_vote("D3", version=4)
    rig.run(0.01)
    assert rig.book.devices[21].version == v + 1 > version
    # Voting that times out stops inviting.
    rig.run(Timings().vote_window_s + 1)
    assert rig.desired() == bus.FeedbackState() and not rig.pad.state()["open"]


def test_a_refused_press_is_judged_once_and_taken_once_when_the_pad_sends_it_again():
    rig = PadRig()
    rig.pad.open_vote("E1", version=1)
    rig.failing = True
    ev = rig.event(LIKE)
    for _ in range(3):  # the master does not ack; the pad sends the same event again
        with pytest.raises(OutboxError):
            rig.pad.take(ev)
        rig.run(0.3)
    s = rig.pad.state()
    assert (s["presses"], s["votes"], s["pending"], s["callback_errors"]) == (1, 1, 1, 3)
    rig.failing = False
    rig.pad.take(ev)
    assert rig.records() == [(LIKE, "E1", False, None)]
    s = rig.pad.state()
    assert (s["presses"], s["pending"], s["delivered"]) == (1, 0, 1)
    rig.run(1.0)
    rig.press(DISLIKE)  # the next event is judged on its own: already voted
    assert rig.records()[-1] == (DISLIKE, "E1", True, ALREADY_VOTED)
    with pytest.raises(ValueError, match="not a like or dislike"):
        rig.pad.take(bus.Event(7, 99, 1))  # "call"


# ---- end to end: the daemon, mosquitto, the firmware on a paced bus -------------------

SITE, GW = "test-site", "gw-1"
BASE = f"hall/v1/{SITE}"
LIKE_PIN, DISLIKE_PIN = 5, 6  # window 1: buttons on GPIO
PAD_ADDR, PAD_WINDOW = 21, 41  # window 41: a feedback pad on the bus


@pytest.fixture
def hall(tmp_path):
    with contextlib.ExitStack() as stack:
        broker = Mosquitto(tmp_path / "broker").start()
        stack.callback(broker.stop)
        hub = BusHub(baud=115200).start()
        stack.callback(hub.close)
        pad = FirmwareDevice(tmp_path / "pad", PAD_ADDR, "feedback-pad", PAD_WINDOW,
                             hub.add_port("pad"), ready_timeout=30)
        stack.callback(pad.close)
        witness = Witness(broker.port)
        stack.callback(witness.close)
        config = load_config(write_hall_config(
            tmp_path, site=SITE, gateway=GW, broker_url=broker.url, hub_path=hub.master_path,
            devices=[(PAD_ADDR, "feedback-pad", PAD_WINDOW)],
            timings="poll_timeout_ms = 200\nvote_min_interval_ms = 3000\nvote_ack_ms = 800",
            windows=f"[[windows]]\nnumber = 1\nlike_pin = {LIKE_PIN}\n"
                    f"dislike_pin = {DISLIKE_PIN}\n\n[[windows]]\nnumber = {PAD_WINDOW}\n"))
        factory = MockFactory()
        gw = Gateway(config, status_file=tmp_path / "status.json", pin_factory=factory)
        stack.callback(gw.stop, drain_s=2)
        gw.start()
        wait_for(lambda: gw.link.connected, what="gateway connected")
        wait_for(lambda: gw.masters["hall"].device(PAD_ADDR)["online"], what="pad online")
        yield gw, witness, pad, factory


def votes(witness, window):
    return [e for e in witness.on(f"{BASE}/window/{window}/event") if e["type"] == "vote"]


def pad_press(pad, key):
    """Press a key on the pad; returns once the pad has queued the event."""
    mark = pad.mark()
    pad.press(key, hold_ms=60)
    return pad.wait_kind("event", timeout=10, since=mark)


def gpio_press(factory, pin, hold=0.25):
    factory.pin(pin).drive_low()
    threading.Event().wait(hold)
    factory.pin(pin).drive_high()


@pytest.mark.micropython
def test_a_vote_on_a_pad_arrives_once_by_the_gpio_rules_and_the_leds_follow(hall):
    gw, witness, pad, factory = hall
    # At start the gateway sets the pad dark (version 1), whatever it showed before.
    wait_for(lambda: (pad.shown() or {}).get("version", 0) >= 1, what="the first SET")

    # Ballot closed: kept as misuse, as on GPIO.
    pad_press(pad, "dislike")
    wait_for(lambda: len(votes(witness, PAD_WINDOW)) == 1, what="the closed-ballot press")

    witness.publish(f"{BASE}/window/{PAD_WINDOW}/vote",
                    {"version": 1, "open": True, "ticket": "A001"})
    witness.publish(f"{BASE}/window/1/vote", {"version": 1, "open": True, "ticket": "B001"})
    wait_for(lambda: (pad.shown() or {}).get("like") == "blink", what="the pad inviting")
    assert pad.shown()["dislike"] == "blink" and gw.feedback[PAD_WINDOW].state()["open"]

    mark = pad.mark()
    pad_press(pad, "like")  # THE vote
    pad_press(pad, "dislike")  # within vote_min_interval_ms: too fast
    msg = pad.wait_for(lambda m: m.get("feedback", {}).get("like") == "on", timeout=10,
                       since=mark)
    thanks = msg["feedback"]
    assert (thanks["dislike"], thanks["thank"]) == ("off", "like")
    after = next(i for i, m in enumerate(pad.messages) if m is msg) + 1
    wait_for(lambda: len(votes(witness, PAD_WINDOW)) == 3, what="the vote and the misuse")
    # The thanks ends by itself, and the invitation with it (a vote ends it, as on GPIO).
    dark = pad.wait_for(lambda m: "feedback" in m, timeout=10, since=after)["feedback"]
    assert (dark["like"], dark["dislike"], dark["thank"]) == ("off", "off", None)

    # The same on the GPIO window, for comparison.
    gpio_press(factory, LIKE_PIN)
    threading.Event().wait(0.1)
    gpio_press(factory, DISLIKE_PIN)
    wait_for(lambda: len(votes(witness, 1)) == 2, what="the GPIO votes")

    witness.publish(f"{BASE}/window/{PAD_WINDOW}/vote", {"version": 2, "open": False})
    threading.Event().wait(0.5)  # anything extra would show now

    got = votes(witness, PAD_WINDOW)
    assert [(e["vote"], e["ticket"], e["misuse"], e.get("misuse_reason")) for e in got] == [
        ("dislike", None, True, CLOSED),
        ("like", "A001", False, None),
        ("dislike", "A001", True, TOO_FAST),
    ]
    gpio = votes(witness, 1)
    assert [(e["ticket"], e["misuse"], e.get("misuse_reason")) for e in gpio] == [
        ("B001", False, None), ("B001", True, TOO_FAST)]
    boot = pad.ready["boot"]
    for seq, e in enumerate(got, 1):
        EVENT_SCHEMA.validate(e)
        assert (e["window"], e["gateway"]) == (PAD_WINDOW, GW)
        assert e["source"] == {"bus": "hall", "address": PAD_ADDR, "boot": boot, "seq": seq}
    assert set(gpio[0]) - {"source"} == set(got[1]) - {"source"}  # the same event fields
    assert len({e["id"] for e in got}) == 3
    wait_for(lambda: pad.info()["queued"] == 0, what="every pad event acked")
    wait_for(lambda: gw.outbox.depth() == 0, what="outbox emptied by the PUBACKs")

    s = gw.status()
    row = next(r for r in s["devices"]["table"] if r["address"] == PAD_ADDR)
    assert (row["role"], row["window"], row["online"]) == ("feedback-pad", PAD_WINDOW, True)
    fb = s["feedback"][PAD_WINDOW]
    assert (fb["presses"], fb["votes"], fb["misuse"], fb["open"]) == (3, 1, 2, False)
    assert fb["source"] == {"bus": "hall", "address": PAD_ADDR}


@pytest.mark.micropython
def test_a_pad_vote_refused_by_the_outbox_is_kept_by_the_pad_and_arrives_once(hall):
    gw, witness, pad, _ = hall
    witness.publish(f"{BASE}/window/{PAD_WINDOW}/vote",
                    {"version": 1, "open": True, "ticket": "A002"})
    wait_for(lambda: (pad.shown() or {}).get("like") == "blink", what="the pad inviting")
    add, refused = gw.outbox.add, []

    def full_disk(window, fields, **kw):
        if len(refused) < 3:
            refused.append(kw)
            raise OutboxError("disk full (test)")
        return add(window, fields, **kw)

    gw.outbox.add = full_disk
    pad_press(pad, "like")
    wait_for(lambda: len(votes(witness, PAD_WINDOW)) == 1, timeout=20, what="the vote")
    threading.Event().wait(0.5)
    [vote] = votes(witness, PAD_WINDOW)
    assert (vote["vote"], vote["ticket"], vote["misuse"]) == ("like", "A002", False)
    assert len(refused) == 3 and len({kw["source"] for kw in refused}) == 1
    fb = gw.feedback[PAD_WINDOW].state()
    assert (fb["presses"], fb["votes"], fb["callback_errors"], fb["pending"]) == (1, 1, 3, 0)
    assert any(e["kind"] == "outbox-error" for e in witness.on(f"{BASE}/gw/{GW}/errors"))
    wait_for(lambda: pad.info()["queued"] == 0, what="the event acked at last")


@pytest.mark.micropython
def test_an_operator_key_code_from_a_pad_is_reported_not_taken_as_a_vote(hall):
    gw, witness, _, _ = hall
    gw.on_bus_event("hall", PAD_ADDR, bus.Event(1, 500, 1))  # "call" from a pad
    wait_for(lambda: witness.on(f"{BASE}/gw/{GW}/errors"), what="the error report")
    assert "not a known key event" in witness.on(f"{BASE}/gw/{GW}/errors")[0]["reason"]
    assert gw.event_rejects == 1 and gw.feedback[PAD_WINDOW].state()["presses"] == 0
