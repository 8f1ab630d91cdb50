"""subscribe = "site": the whole site's desired state in one retained snapshot on
hall/v1/{site}/desired. gateway/desired.py alone (plain calls), then MqttLink against a real
mosquitto (sim/broker.py) with plain paho clients as the central and the witness.

Time bounds here are liveness checks (something must happen), never speed tests."""

import json
import threading

import paho.mqtt.client as mqtt
import pytest
from conftest import wait_for
from hallgate.gateway import desired
from hallgate.gateway.commands import KINDS, DisplayCommand, PanelCommand, VoteCommand
from hallgate.gateway.config import ConfigError, load_config
from hallgate.gateway.desired import (
    MAX_SNAPSHOT,
    Apply,
    Count,
    DesiredSubscription,
    Reject,
    Unsubscribe,
)
from hallgate.gateway.mqtt import MAX_PACKET, MqttLink
from paho.mqtt.enums import CallbackAPIVersion

SITE = "s1"
GW = "gw-1"
DESIRED = f"hall/v1/{SITE}/desired"
ERRORS = f"hall/v1/{SITE}/gw/{GW}/errors"


def topic(window, kind):
    return f"hall/v1/{SITE}/window/{window}/{kind}"


def state(n, version=1):
    """Window n's display, panel and vote, as the central would publish them."""
    return {
        "display": {"version": version, "text": f"A{n:03d}"},
        "panel": {"version": version, "mode": "called", "text": f"A{n:03d}", "queue": n},
        "vote": {"version": version, "open": False},
    }


def expected(n, version=1):
    return {
        (n, "display"): DisplayCommand(version, f"A{n:03d}"),
        (n, "panel"): PanelCommand(version, "called", f"A{n:03d}", queue=n),
        (n, "vote"): VoteCommand(version, False),
    }


def snapshot(windows, **extra):
    """The payload: {window number: {kind: payload}} -> JSON bytes."""
    return json.dumps({"ts": "2026-12-05T10:15:02.123Z", **extra,
                       "windows": {str(w): kinds for w, kinds in windows.items()}}).encode()


def applied(results):
    return {(r.window, r.kind): r.command for r in results if isinstance(r, Apply)}


def rejects(results):
    return [r for r in results if isinstance(r, Reject)]


def counts(results):
    out = {}
    for r in results:
        if isinstance(r, Count):
            out[r.stat] = out.get(r.stat, 0) + r.n
    return out


# -- gateway/desired.py alone -------------------------------------------------------------------


def test_topics_and_leftovers_per_mode():
    site = DesiredSubscription(SITE, "site", [1, 2])
    assert site.topics() == {DESIRED}
    wildcards = {topic("+", k) for k in KINDS}
    per_window = {topic(w, k) for w in (1, 2) for k in KINDS}
    assert site.leftovers() == per_window | wildcards
    assert site.leftovers() == set()  # once per link
    assert DesiredSubscription(SITE, "site", []).topics() == set()

    kinds = DesiredSubscription(SITE, "kinds", [1, 2])
    assert kinds.topics() == wildcards and kinds.leftovers() == per_window
    windows = DesiredSubscription(SITE, "windows", [1, 2])
    assert windows.topics() == per_window and windows.leftovers() == set()
    with pytest.raises(ValueError, match="site"):
        DesiredSubscription(SITE, "sites")
    assert MAX_SNAPSHOT == MAX_PACKET == 256 * 1024


def test_snapshot_applied_for_served_windows_only():
    d = DesiredSubscription(SITE, "site", [1, 2])
    results = d.take(DESIRED, snapshot({1: state(1), 2: state(2), 3: state(3)}))
    assert applied(results) == expected(1) | expected(2)
    assert [(r.window, r.kind) for r in results if isinstance(r, Apply)] == \
        [(w, k) for w in (1, 2) for k in KINDS]  # window order, then kind order
    assert counts(results) == {"snapshots": 1, "foreign": 3}  # window 3's three commands
    assert rejects(results) == []


def test_byte_identical_inner_payload_skipped_until_a_new_connection():
    d = DesiredSubscription(SITE, "site", [1, 2])
    first = {1: state(1), 2: state(2), 3: state(3)}
    d.take(DESIRED, snapshot(first))
    again = d.take(DESIRED, snapshot(first))
    assert applied(again) == {} and counts(again)["unchanged"] == 6

    # The same objects, differently spaced and ordered keys aside: still unchanged.
    spaced = json.dumps({"windows": {"2": state(2), "1": state(1)}}, indent=2).encode()
    assert applied(d.take(DESIRED, spaced)) == {}

    changed = {1: state(1), 2: {**state(2), "panel": {"version": 2, "mode": "paused"}}}
    results = d.take(DESIRED, snapshot(changed))
    assert applied(results) == {(2, "panel"): PanelCommand(2, "paused")}
    assert counts(results)["unchanged"] == 5

    d.new_connection()  # the retained snapshot after a reconnect is taken in full
    results = d.take(DESIRED, snapshot(changed))
    assert applied(results) == {**expected(1), **expected(2),
                                (2, "panel"): PanelCommand(2, "paused")}
    assert "unchanged" not in counts(results)


def test_an_entry_that_disappears_is_cleared_once():
    d = DesiredSubscription(SITE, "site", [1, 2])
    d.take(DESIRED, snapshot({1: state(1)}))  # window 2 served, never in a snapshot
    no_panel = {1: {k: v for k, v in state(1).items() if k != "panel"}}
    results = d.take(DESIRED, snapshot(no_panel))
    assert applied(results) == {(1, "panel"): None}  # window 2 never cleared: never had any
    assert applied(d.take(DESIRED, snapshot(no_panel))) == {}  # once, not every snapshot
    # A window gone from the snapshot: each kind it had is cleared.
    assert applied(d.take(DESIRED, snapshot({}))) == {(1, "display"): None, (1, "vote"): None}
    assert applied(d.take(DESIRED, snapshot({}))) == {}
    # Back with the very bytes it had before the clear: applied again.
    assert applied(d.take(DESIRED, snapshot({1: state(1)}))) == expected(1)
    # An empty payload (the retained snapshot cleared) is a snapshot without windows.
    results = d.take(DESIRED, b"")
    assert applied(results) == dict.fromkeys(expected(1)) and rejects(results) == []


GOOD = {"1": state(1), "2": state(2)}
MALFORMED = [  # (payload, part of the reason)
    (b"{not json", "payload is not JSON"),
    (b"[1, 2]", "payload is a JSON list, not an object"),
    (b"\xff\xfe", "not UTF-8"),
    (json.dumps({"ts": "x"}).encode(), "windows: missing"),
    (json.dumps({"windows": [state(1)]}).encode(), "windows: a JSON array, not an object"),
    (json.dumps({"windows": {**GOOD, "05": state(5)}}).encode(),
     "windows key '05' is not a window number"),
    (json.dumps({"windows": {**GOOD, "0": state(5)}}).encode(),
     "windows key '0' is not a window number"),
    (json.dumps({"windows": {**GOOD, "1000000": state(5)}}).encode(),
     "windows key '1000000' is not a window number"),
    (json.dumps({"windows": {**GOOD, "+5": state(5)}}).encode(),
     "windows key '+5' is not a window number"),
    (json.dumps({"windows": {**GOOD, "3": [state(3)]}}).encode(),
     "windows['3']: a JSON array, not an object"),
    (json.dumps({"windows": {**GOOD, "3": None}}).encode(),
     "windows['3']: a JSON null, not an object"),
    (b'{"windows": ' + b"[" * 40 + b"]" * 40 + b"}", "nests deeper than"),
]


@pytest.mark.parametrize(("payload", "reason"), MALFORMED)
def test_a_malformed_snapshot_is_rejected_whole(payload, reason):
    d = DesiredSubscription(SITE, "site", [1, 2])
    earlier = snapshot({1: state(1)})
    d.take(DESIRED, earlier)
    results = d.take(DESIRED, payload)
    assert len(results) == 1, results  # nothing applied, nothing cleared, nothing counted
    (reject,) = results
    assert reject.topic == DESIRED and reject.payload == payload
    assert reason in reject.reason and reject.reason.endswith("the snapshot is not applied")
    # The earlier snapshot is still the last accepted one: taken again, nothing changes.
    assert applied(d.take(DESIRED, earlier)) == {}


def test_a_bad_inner_payload_is_rejected_alone():
    d = DesiredSubscription(SITE, "site", [1, 2])
    bad = {
        1: {**state(1), "panel": {"version": 1, "mode": "lunch"},
            "session": {"whatever": True}},  # an unknown kind: ignored silently
        2: {**state(2), "display": {"version": 1, "text": "x" * 12},
            "vote": {"version": 1, "open": True, "ticket": "B1", "pad": "p" * 5000}},
    }
    results = d.take(DESIRED, snapshot(bad))
    assert applied(results) == {(1, "display"): DisplayCommand(1, "A001"),
                                (1, "vote"): VoteCommand(1, False),
                                (2, "panel"): PanelCommand(1, "called", "A002", queue=2)}
    got = {r.reason.split(":")[0]: r for r in rejects(results)}
    assert set(got) == {"window 1 panel", "window 2 display", "window 2 vote"}
    assert 'mode: "lunch" is not one of' in got["window 1 panel"].reason
    assert "at most 8 allowed" in got["window 2 display"].reason
    assert "at most 4096 allowed" in got["window 2 vote"].reason  # its compact re-encoding
    assert got["window 1 panel"].topic == DESIRED
    assert json.loads(got["window 1 panel"].payload) == bad[1]["panel"]  # the bad part
    # The same bad payload again is not reported again (until a new connection).
    assert rejects(d.take(DESIRED, snapshot(bad))) == []
    d.new_connection()
    assert len(rejects(d.take(DESIRED, snapshot(bad)))) == 3


def test_an_oversize_snapshot_is_rejected_whole_and_999_windows_fit():
    d = DesiredSubscription(SITE, "site", [1, 999999])
    big = {w: state(w) for w in range(1, 1000)}
    payload = snapshot(big)
    assert 100_000 < len(payload) <= MAX_SNAPSHOT
    results = d.take(DESIRED, payload)
    assert applied(results) == expected(1)
    assert counts(results) == {"snapshots": 1, "foreign": 998 * 3}

    over = snapshot({1: state(1, version=2)}, pad=" " * MAX_SNAPSHOT)
    results = d.take(DESIRED, over)
    assert results == [Reject(DESIRED, over, f"payload is {len(over)} bytes, at most "
                                             f"{MAX_SNAPSHOT} allowed; the snapshot is not "
                                             f"applied")]


def test_set_windows_brings_a_new_windows_state_from_the_last_snapshot():
    d = DesiredSubscription(SITE, "site", [1])
    d.take(DESIRED, snapshot({1: state(1), 2: state(2), 3: state(3)}))
    assert d.set_windows([]) == []  # an empty served set changes nothing held
    assert applied(d.set_windows([1, 2])) == expected(1) | expected(2)
    assert d.topics() == {DESIRED}
    assert d.set_windows([2]) == []
    assert applied(d.set_windows([2, 3])) == expected(3)
    # Dropped then served again: its state is passed on again, not taken for "unchanged".
    d.set_windows([3])
    assert applied(d.set_windows([2, 3])) == expected(2)
    # A window not in the last snapshot: nothing to give yet.
    assert d.set_windows([2, 3, 4]) == []
    # Not in "site" mode: the subscription brings the state, set_windows gives nothing.
    kinds = DesiredSubscription(SITE, "kinds", [1])
    assert kinds.set_windows([1, 2]) == [] and kinds.windows == {1, 2}


def test_a_topic_of_another_mode_is_unsubscribed_and_reported():
    for mode in ("windows", "kinds"):
        d = DesiredSubscription(SITE, mode, [1], gateway=GW)
        payload = snapshot({1: state(1)})
        unsub, reject = d.take(DESIRED, payload)
        assert unsub == Unsubscribe(frozenset({DESIRED}))
        assert reject.topic == DESIRED and reject.payload == payload
        assert f'not subscribed here (subscribe = "{mode}")' in reject.reason

    d = DesiredSubscription(SITE, "site", [1])
    payload = json.dumps(state(1)["display"]).encode()
    unsub, reject = d.take(topic(1, "display"), payload)  # a served window's: still not
    assert unsub.topics == {topic(1, k) for k in KINDS} | {topic("+", k) for k in KINDS}
    assert f"desired state comes on {DESIRED} here" in reject.reason
    assert d.take(f"hall/v1/{SITE}/elsewhere", b"x") == []  # not a desired-state topic

    # "windows" and "kinds" as before.
    d = DesiredSubscription(SITE, "windows", [1], gateway=GW)
    assert applied(d.take(topic(1, "display"), payload)) == \
        {(1, "display"): DisplayCommand(1, "A001")}
    assert "window 9 is not served by gateway gw-1 (serves 1)" in \
        d.take(topic(9, "display"), payload)[1].reason
    assert DesiredSubscription(SITE, "kinds", [1]).take(topic(9, "display"), payload) == \
        [Count("foreign", 1)]


def test_config_takes_site_and_lists_the_choices(tmp_path):
    base = ('[gateway]\nsite = "test"\nid = "gw-1"\n\n[mqtt]\nurls = ["mqtt://localhost"]\n'
            'subscribe = "{}"\n\n[[windows]]\nnumber = 1\nlike_pin = 5\ndislike_pin = 6\n')
    path = tmp_path / "hall.toml"
    path.write_text(base.format("site"))
    assert load_config(path).mqtt.subscribe == "site"
    path.write_text(base.format("sites"))
    with pytest.raises(ConfigError, match='"sites" is not allowed; expected one of '
                                          '"windows", "kinds", "site"'):
        load_config(path)
    with pytest.raises(ValueError, match="'site'"):
        MqttLink(SITE, GW, ["mqtt://h"], subscribe="sites")


# -- MqttLink against a real mosquitto ----------------------------------------------------------


class Recorder:
    def __init__(self):
        self.commands = []
        self.lock = threading.Lock()

    def on_command(self, window, kind, command):
        with self.lock:
            self.commands.append((window, kind, command))

    def got(self):
        with self.lock:
            return list(self.commands)


class Client:
    """A plain paho client: the central (publishes) and the witness of the errors topic."""

    def __init__(self, broker, watch=None):
        self.messages = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        if watch:
            c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(watch, qos=1)
        c.on_subscribe = lambda *a: subscribed.set()
        c.on_message = self._on_message
        c.connect("127.0.0.1", broker.port)
        c.loop_start()
        self.client = c
        assert not watch or subscribed.wait(5), "could not subscribe"

    def _on_message(self, client, userdata, msg):
        with self._lock:
            self.messages.append((msg.topic, json.loads(msg.payload)))

    def errors(self):
        with self._lock:
            return [m for t, m in self.messages if t == ERRORS]

    def publish(self, topic_name, payload, retain=True):
        if not isinstance(payload, bytes):
            payload = json.dumps(payload).encode()
        self.client.publish(topic_name, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def central(broker):
    c = Client(broker, watch=ERRORS)
    yield c
    c.close()


@pytest.fixture
def make_link(broker):
    links = []

    def make(subscribe, windows, **kw):
        rec = Recorder()
        link = MqttLink(SITE, GW, [broker.url], windows=windows, subscribe=subscribe,
                        on_command=rec.on_command, delivery="puback", **kw)
        link.rec = rec
        links.append(link)
        link.start()
        assert link.wait_connected(5)
        return link

    yield make
    for link in links:
        link.stop(timeout=2)


def marker(link, central, n_errors):
    """An error published after everything before it: once it is at the witness, what the
    link was going to report before it has been reported too."""
    link.publish_error("device-nak", f"marker {n_errors}")
    wait_for(lambda: len(central.errors()) == n_errors
             and central.errors()[-1]["reason"] == f"marker {n_errors}", what="marker")


def test_site_snapshots_through_a_real_broker(broker, central, make_link):
    central.publish(DESIRED, snapshot({1: state(1), 2: state(2), 3: state(3)}))
    link = make_link("site", [1, 2])
    rec = link.rec
    wait_for(lambda: len(rec.got()) == 6, what="windows 1 and 2 from the retained snapshot")
    assert {(w, k): c for w, k, c in rec.got()} == expected(1) | expected(2)
    assert link.stats.foreign == 3 and link.stats.snapshots == 1

    # Only window 2's panel changed: only it is passed on.
    central.publish(DESIRED, snapshot({1: state(1), 2: {**state(2), "panel": {
        "version": 2, "mode": "paused", "text": "BREAK"}}, 3: state(3, version=7)}))
    wait_for(lambda: len(rec.got()) == 7, what="window 2's new panel")
    assert rec.got()[-1] == (2, "panel", PanelCommand(2, "paused", "BREAK"))
    wait_for(lambda: link.stats.snapshots == 2, what="the 2nd snapshot counted")
    assert link.stats.unchanged == 5

    # Malformed: rejected whole on the errors topic, nothing applied (not retained).
    bad = json.dumps({"windows": {"1": state(1, version=9), "05": state(5)}}).encode()
    central.publish(DESIRED, bad, retain=False)
    wait_for(lambda: central.errors(), what="the bad-command error")
    (err,) = central.errors()
    assert err["kind"] == "bad-command" and err["topic"] == DESIRED
    assert "windows key '05' is not a window number" in err["reason"]
    assert err["payload_size"] == len(bad)
    marker(link, central, 2)
    assert len(rec.got()) == 7 and link.stats.rejected == 1

    # A new connection (the broker restarted; it kept the retained snapshot): taken in full.
    before = link.stats.connects
    broker.restart()
    wait_for(lambda: link.stats.connects == before + 1, what="the link reconnected")
    wait_for(lambda: len(rec.got()) == 13, what="the retained snapshot again, in full")
    assert {(w, k): c for w, k, c in rec.got()[7:]} == {
        **expected(1), **expected(2), (2, "panel"): PanelCommand(2, "paused", "BREAK")}


def test_switching_to_site_leaves_nothing_on_the_old_topics(broker, central, make_link):
    """windows [1, 9], then kinds [1], then site [1] on the same client id (a persistent
    session): "site" unsubscribes window 1's topics and the kinds wildcards up front; window
    9's, unknown to it, it unsubscribes and reports when a message comes on them."""
    for mode, windows in (("windows", [1, 9]), ("kinds", [1])):
        make_link(mode, windows).stop(timeout=2)
    central.publish(DESIRED, snapshot({1: state(1)}))
    link = make_link("site", [1])
    rec = link.rec
    wait_for(lambda: len(rec.got()) == 3, what="window 1 from the snapshot")
    # Subscribed after its UNSUBSCRIBE on the same connection: the old topics are gone now.
    central.publish(topic(1, "display"), {"version": 5, "text": "OLD 1"})
    central.publish(topic(5, "panel"), {"version": 5, "mode": "idle"})  # was under window/+
    central.publish(topic(9, "display"), {"version": 5, "text": "OLD 9"})
    wait_for(lambda: central.errors(), what="window 9's leftover reported")
    (err,) = central.errors()
    assert err["kind"] == "bad-command" and err["topic"] == topic(9, "display")
    assert f"desired state comes on {DESIRED} here" in err["reason"]
    central.publish(topic(9, "display"), {"version": 6, "text": "OLD 9"})  # unsubscribed now
    marker(link, central, 2)
    assert len(rec.got()) == 3 and link.stats.rejected == 1
    assert all(c.text != "OLD 1" for w, k, c in rec.got() if k == "display")

    # Still on the snapshot: a change arrives.
    central.publish(DESIRED, snapshot({1: {**state(1), "display": {"version": 2, "text": "NEW"}}}))
    wait_for(lambda: len(rec.got()) == 4, what="the new display")
    assert rec.got()[-1] == (1, "display", DisplayCommand(2, "NEW"))


def test_back_from_site_to_windows_unsubscribes_the_snapshot(broker, central, make_link):
    make_link("site", [1]).stop(timeout=2)
    central.publish(topic(1, "display"), {"version": 3, "text": "PER WIN"})
    link = make_link("windows", [1])
    wait_for(lambda: link.rec.got() == [(1, "display", DisplayCommand(3, "PER WIN"))],
             what="the retained per-window display")
    central.publish(DESIRED, snapshot({1: state(1, version=4)}), retain=False)
    wait_for(lambda: central.errors(), what="the leftover snapshot subscription reported")
    (err,) = central.errors()
    assert err["topic"] == DESIRED and 'subscribe = "windows"' in err["reason"]
    central.publish(DESIRED, snapshot({1: state(1, version=5)}), retain=False)
    marker(link, central, 2)
    assert link.rec.got() == [(1, "display", DisplayCommand(3, "PER WIN"))]


def test_set_windows_on_a_site_link_applies_the_last_snapshot_at_once(central, make_link):
    central.publish(DESIRED, snapshot({1: state(1), 2: state(2)}))
    link = make_link("site", [1])
    wait_for(lambda: len(link.rec.got()) == 3, what="window 1")
    link.set_windows([1, 2])
    wait_for(lambda: len(link.rec.got()) == 6, what="window 2 from the snapshot held")
    assert {(w, k): c for w, k, c in link.rec.got()[3:]} == expected(2)
    assert link.stats.snapshots == 1  # no new message was needed
    assert desired.MODES == ("windows", "kinds", "site")
