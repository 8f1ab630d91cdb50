"""The gateway daemon end to end: real mosquitto, real firmware on a paced bus, mock GPIO pins.

An independent paho subscriber is the witness: what it receives is what the central
service would receive.
"""

import contextlib
import json
import threading

import pytest
from conftest import PROTOCOLS, wait_for
from gpiozero.pins.mock import MockFactory
from hallgate.gateway.config import load_config
from hallgate.gateway.daemon import Gateway
from hallgate.sim.broker import Mosquitto
from hallgate.sim.device import FirmwareDevice
from hallgate.sim.hub import BusHub
from harness import Witness, write_hall_config
from jsonschema import Draft7Validator

pytestmark = pytest.mark.micropython

SITE, GW = "test-site", "gw-1"
BASE = f"hall/v1/{SITE}"
EVENT_SCHEMA = Draft7Validator(json.loads((PROTOCOLS / "schemas/event.schema.json").read_text()))
LIKE, DISLIKE = 5, 6
PANEL_CALL, PANEL_START, PANEL_LED = 20, 21, 16  # window 2: a call panel on GPIO


def write_config(tmp_path, broker, hub_path):
    """Window 1: a panel and a display on the bus, like / dislike on GPIO; window 2: a call
    panel on GPIO."""
    return load_config(write_hall_config(
        tmp_path, site=SITE, gateway=GW, broker_url=broker.url, hub_path=hub_path,
        devices=[(1, "call-panel", 1), (11, "window-display", 1)],
        timings="poll_timeout_ms = 200\nvote_min_interval_ms = 300",
        windows=f"""[[windows]]
number = 1
like_pin = {LIKE}
dislike_pin = {DISLIKE}

[[windows]]
number = 2
  [windows.panel]
  call = {PANEL_CALL}
  start = {PANEL_START}
  led_pin = {PANEL_LED}
"""))


@pytest.fixture
def hall(tmp_path):
    # ExitStack: every part is closed even if closing another one fails.
    with contextlib.ExitStack() as stack:
        broker = Mosquitto(tmp_path / "broker").start()
        stack.callback(broker.stop)
        hub = BusHub(baud=115200).start()
        stack.callback(hub.close)
        factory = MockFactory()
        devices = {
            1: FirmwareDevice(tmp_path / "p1", 1, "call-panel", 1, hub.add_port("p1"),
                              ready_timeout=30, lockout_ms=0),
        }
        stack.callback(devices[1].close)
        devices[11] = FirmwareDevice(tmp_path / "d11", 11, "window-display", 1,
                                     hub.add_port("d11"), ready_timeout=30)
        stack.callback(devices[11].close)
        witness = Witness(broker.port)
        stack.callback(witness.close)
        config = write_config(tmp_path, broker, hub.master_path)
        gw = Gateway(config, status_file=tmp_path / "status.json", pin_factory=factory)
        stack.callback(gw.stop, drain_s=2)
        gw.start()
        wait_for(lambda: gw.link.connected, what="gateway connected")
        wait_for(lambda: all(d["online"] for d in gw.masters["hall"].devices().values()),
                 what="bus devices online")
        yield gw, witness, devices, factory, hub


def press_pin(factory, pin, hold=0.08):
    factory.pin(pin).drive_low()
    threading.Event().wait(hold)
    factory.pin(pin).drive_high()


def test_a_bus_press_and_a_gpio_vote_arrive_once_with_the_contract_fields(hall):
    gw, witness, devices, factory, _ = hall
    topic = f"{BASE}/window/1/event"

    mark = devices[1].mark()
    devices[1].press("call", hold_ms=60)
    devices[1].wait_kind("event", since=mark)
    wait_for(lambda: len(witness.on(topic)) == 1, what="the call event")

    witness.publish(f"{BASE}/window/1/vote", {"version": 1, "open": True, "ticket": "A001"})
    wait_for(lambda: gw.feedback[1].state()["open"], what="voting open")
    press_pin(factory, LIKE)
    wait_for(lambda: len(witness.on(topic)) == 2, what="the vote")
    threading.Event().wait(0.5)  # anything extra would show now

    key, vote = witness.on(topic)
    assert len(witness.on(topic)) == 2
    for event in (key, vote):
        EVENT_SCHEMA.validate(event)
        assert (event["gateway"], event["window"]) == (GW, 1)
    assert (key["type"], key["key"], key["action"]) == ("key", "call", "press")
    assert key["source"]["bus"] == "hall" and key["source"]["address"] == 1
    assert (vote["type"], vote["vote"], vote["ticket"], vote["misuse"]) == (
        "vote", "like", "A001", False)
    assert vote["seq"] > key["seq"] and vote["id"] != key["id"]
    wait_for(lambda: gw.outbox.depth() == 0, what="outbox emptied by the PUBACKs")


def test_desired_state_reaches_the_display_stale_is_ignored_and_a_restart_gets_it_back(hall):
    gw, witness, devices, _, hub = hall
    display = devices[11]
    topic = f"{BASE}/window/1/display"
    witness.publish(topic, {"version": 5, "text": "A001", "blink_s": 0})
    wait_for(lambda: (display.shown() or {}).get("text") == "A001", what="A001 shown")
    witness.publish(topic, {"version": 4, "text": "OLD"})
    witness.publish(topic, {"version": 6, "text": "A002"})
    wait_for(lambda: (display.shown() or {}).get("text") == "A002", what="A002 shown")
    texts = [m["display"]["text"] for m in display.messages if "display" in m]
    assert "OLD" not in texts
    assert gw.reconciler.stale == 1

    hub.reset_port(display.config["uart"])
    display.restart(timeout=30)
    wait_for(lambda: (display.shown() or {}).get("text") == "A002", what="A002 after restart")


def test_a_recall_with_the_same_content_blinks_and_beeps_again(hall):
    # The central's recall republishes the same ticket with a new version: the display
    # must blink again and the panel beep again (a bug the hall simulator found).
    _, witness, devices, _, _ = hall
    panel, display = devices[1], devices[11]
    for version in (1, 2):
        mark_p, mark_d = panel.mark(), display.mark()
        witness.publish(f"{BASE}/window/1/panel", {"version": version, "text": "A001",
                                                   "mode": "called", "beep": True})
        witness.publish(f"{BASE}/window/1/display", {"version": version, "text": "A001 > 1",
                                                     "blink_s": 3})
        assert panel.wait_kind("beep", timeout=10, since=mark_p) > 0
        shown = display.wait_kind("display", timeout=10, since=mark_d)
        assert shown["text"] == "A001 > 1" and shown["blink"]


def test_a_malformed_command_is_answered_on_the_errors_topic_and_the_gateway_goes_on(hall):
    gw, witness, devices, _, _ = hall
    errors = f"{BASE}/gw/{GW}/errors"
    witness.publish(f"{BASE}/window/1/panel", "{not json", retain=False)
    witness.publish(f"{BASE}/window/1/display", {"version": 1, "text": "TOO-LONG-TEXT"},
                    retain=False)
    wait_for(lambda: len(witness.on(errors)) >= 2, what="two error reports")
    reports = witness.on(errors)
    assert {r["topic"] for r in reports} == {f"{BASE}/window/1/panel", f"{BASE}/window/1/display"}
    assert all(r["kind"] == "bad-command" and r["reason"] for r in reports)
    witness.publish(f"{BASE}/window/1/display", {"version": 2, "text": "B7"})
    wait_for(lambda: (devices[11].shown() or {}).get("text") == "B7", what="later command works")


def test_status_and_birth_and_offline(hall, tmp_path):
    gw, witness, _, _, _ = hall
    status = f"{BASE}/gw/{GW}/status"
    wait_for(lambda: witness.on(status) and witness.on(status)[-1]["state"] == "online",
             what="birth")
    wait_for(lambda: any(len(t["devices"]) == 2 and all(d["online"] for d in t["devices"])
                         for t in witness.on(f"{BASE}/gw/{GW}/devices")), what="device table")
    gw.write_status()
    st = json.loads((tmp_path / "status.json").read_text())
    assert st["broker"]["connected"] is True
    assert st["devices"] == {"online": 2, "total": 2, "table": st["devices"]["table"]}
    gw.stop(drain_s=2)
    wait_for(lambda: witness.on(status)[-1]["state"] == "offline", what="offline on stop")


def test_a_gpio_call_panel_press_arrives_and_its_led_follows_the_panel_command(hall):
    gw, witness, _, factory, _ = hall
    topic = f"{BASE}/window/2/event"
    # Held 250 ms: the sampler (a thread, every 5 ms) of a loaded machine can be starved
    # for longer than a short press, which it would then never see (CI did once).
    press_pin(factory, PANEL_CALL, hold=0.25)
    threading.Event().wait(0.15)
    press_pin(factory, PANEL_CALL, hold=0.25)  # a double click within the lockout: one call
    threading.Event().wait(0.15)
    press_pin(factory, PANEL_START, hold=0.25)
    wait_for(lambda: len(witness.on(topic)) >= 2, what="call and start from GPIO")
    threading.Event().wait(0.3)
    events = witness.on(topic)
    assert [(e["key"], e["source"]) for e in events] == [
        ("call", {"gpio": PANEL_CALL}), ("start", {"gpio": PANEL_START})]
    for e in events:
        EVENT_SCHEMA.validate(e)
    assert gw.gpio_panels[2].state()["locked_out"] == 1

    led = factory.pin(PANEL_LED)
    witness.publish(f"{BASE}/window/2/panel", {"version": 1, "mode": "called", "text": "A003"})
    wait_for(lambda: len({v for _, v in led.states}) == 2 and len(led.states) >= 4,
             what="the LED blinking while the visitor is invited")
    witness.publish(f"{BASE}/window/2/panel", {"version": 2, "mode": "serving", "text": "A003"})
    wait_for(lambda: gw.reconciler._current[(2, "panel")].version == 2, what="serving applied")
    blinks = len(led.states)
    threading.Event().wait(1.2)  # over two blink periods: a blinking LED would have toggled
    assert len(led.states) == blinks and gw.gpio_panels[2].led.is_lit


def test_past_the_outbox_cap_the_oldest_go_and_the_errors_topic_says_so(tmp_path):
    broker = Mosquitto(tmp_path / "broker").start()
    # The witness's persistent session keeps what comes while it reconnects.
    witness = Witness(broker.port)
    broker.stop()  # the broker is down while the presses come
    path = write_hall_config(
        tmp_path, site=SITE, gateway=GW, broker_url=broker.url,
        windows=f"[[windows]]\nnumber = 1\nlike_pin = {LIKE}\ndislike_pin = {DISLIKE}\n")
    path.write_text(path.read_text().replace("[outbox]\n", "[outbox]\nmax_events = 100\n"))
    config = load_config(path)
    gw = Gateway(config, pin_factory=MockFactory()).start()
    try:
        record = {"type": "vote", "vote": "like", "ticket": None, "misuse": True,
                  "misuse_reason": "closed", "ts": "2026-11-23T10:00:00.000Z",
                  "source": {"gpio": LIKE}}
        for _ in range(110):  # what the buttons' sampler hands over, press by press
            gw.on_gpio_press(1, dict(record))
        assert gw.outbox.depth() == 100
        broker.start()

        def overflow_reports():
            return [e["reason"] for e in witness.on(f"{BASE}/gw/{GW}/errors")
                    if e["kind"] == "outbox-overflow"]

        # Summed up, not one message per dropped event: the reports say 10 in all.
        wait_for(lambda: any("10 in all" in r for r in overflow_reports()),
                 what="the overflow report")
        assert len(overflow_reports()) <= 3, overflow_reports()
        wait_for(lambda: len(witness.events()) == 100, what="the 100 kept events")
        assert sorted(e["seq"] for e in witness.events()) == list(range(11, 111))
    finally:
        gw.stop(drain_s=1)
        witness.close()
        broker.stop()
