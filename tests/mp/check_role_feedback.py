# Feedback-pad cases (firmware/role_feedback.py, with the real appcore) on a synthetic
# clock and a fake HAL, for both interpreters: tests/test_feedback_pad.py runs each case_*
# on CPython, and runs this file as a script on MicroPython, where it prints
# "role_feedback: N cases ok" (an AssertionError exits non-zero).
#
# Time starts 300 ms before the tick counter wraps, so the cases also cross the wrap.

import bus
from appcore import Core
from compat import ticks_add
from role_feedback import FeedbackPad

T0 = ticks_add(0, -300)
ADDR = 21
CFG = {
    "address": ADDR,
    "window": 41,
    "baud": 115200,
    "queue_len": 8,
    "long_keys": [],
    "debounce_ms": 20,
    "long_ms": 800,
    "lockout_ms": 0,  # a pad's default: every press goes to the gateway
}


class Hal:
    """Key levels set by the case; LED writes, emits and replies recorded."""

    display = None

    def __init__(self):
        self.levels = [0, 0]
        self.leds = [None, None]
        self.writes = 0  # LED writes
        self.emitted = []
        self.replies = []

    def key_level(self, i, now):
        return self.levels[i]

    def led(self, on, key=-1):
        assert key in (0, 1), key  # a pad has no status LED
        self.leds[key] = on
        self.writes += 1

    def emit(self, kind, value):
        self.emitted.append((kind, value))

    def uart_write(self, data):
        self.replies.append(bytes(data))


def at(ms):
    return ticks_add(T0, ms)


def pad():
    hal = Hal()
    role = FeedbackPad(hal, CFG, at(0))
    core = Core(hal, CFG, role, 3, 3, at(0))
    role.tick(at(0))
    return hal, role, core


def request(core, data, ms):
    """Feed one request's bytes at `ms`; the reply frame (or None)."""
    hal = core.hal
    before = len(hal.replies)
    core.feed(data, at(ms))
    if len(hal.replies) == before:
        return None
    d = bus.Decoder()
    d.feed(hal.replies[-1])
    return d.maybe_extract_frame()


def leds_at(core, ms):
    core.tick(at(ms))
    return tuple(core.hal.leds)


def shown(hal):
    """The last state the pad emitted."""
    for kind, value in reversed(hal.emitted):
        if kind == "feedback":
            return value
    return None


def case_leds_dark_and_nothing_applied_after_boot():
    hal, role, core = pad()
    assert hal.leds == [False, False], hal.leds
    assert role.version == 0 and role.shown()["like"] == "off"
    assert role.KEYS == ("like", "dislike")
    frame = request(core, bus.encode_poll(ADDR), 5)
    assert frame.mtype == bus.STATUS and bus.decode_status(frame.payload) == 0
    info = bus.decode_info(request(core, bus.encode_get_info(ADDR), 6).payload)
    assert info.role == bus.ROLE_FEEDBACK_PAD and info.role_name == "feedback-pad"
    assert info.window == 41


def case_invitation_blinks_both_leds_starting_lit():
    hal, role, core = pad()
    frame = request(core, bus.encode_set(ADDR, 3, bus.FeedbackState(invite=True)), 100)
    assert bus.decode_status(frame.payload) == 3
    assert shown(hal) == {"like": "blink", "dislike": "blink", "invite": True, "thank": None,
                          "version": 3}, shown(hal)
    assert tuple(hal.leds) == (True, True)
    assert leds_at(core, 599) == (True, True)
    assert leds_at(core, 600) == (False, False)
    assert leds_at(core, 1099) == (False, False)
    assert leds_at(core, 1100) == (True, True)
    writes = hal.writes
    for ms in range(1105, 1600, 5):  # steady within a half-period: nothing written
        core.tick(at(ms))
    assert hal.writes == writes


def case_thanks_light_the_voted_key_for_ack_then_go_dark():
    hal, role, core = pad()
    request(core, bus.encode_set(ADDR, 3, bus.FeedbackState(invite=True)), 0)
    state = bus.FeedbackState(thank="dislike", ack_ds=15)
    request(core, bus.encode_set(ADDR, 4, state), 700)  # mid-blink, LEDs off
    assert shown(hal) == {"like": "off", "dislike": "on", "invite": False,
                          "thank": "dislike", "version": 4}, shown(hal)
    assert tuple(hal.leds) == (False, True)
    assert leds_at(core, 2199) == (False, True)
    n = len(hal.emitted)
    assert leds_at(core, 2200) == (False, False)
    assert hal.emitted[n:] == [("feedback", {"like": "off", "dislike": "off", "invite": False,
                                             "thank": None, "version": 4})], hal.emitted[n:]
    assert leds_at(core, 5000) == (False, False)


def case_the_same_set_again_does_not_thank_again():
    hal, role, core = pad()
    set_like = bus.encode_set(ADDR, 7, bus.FeedbackState(thank="like", ack_ds=5))
    request(core, set_like, 0)
    assert leds_at(core, 600) == (False, False)
    n = len(hal.emitted)
    frame = request(core, set_like, 700)  # the master repeats until STATUS says 7
    assert bus.decode_status(frame.payload) == 7
    assert leds_at(core, 710) == (False, False) and hal.emitted[n:] == []


def case_thanks_then_invitation_when_both_are_set():
    hal, role, core = pad()
    request(core, bus.encode_set(ADDR, 2, bus.FeedbackState(True, "like", 2)), 0)
    assert tuple(hal.leds) == (True, False)
    assert shown(hal)["like"] == "on" and shown(hal)["dislike"] == "off"
    assert leds_at(core, 200) == (True, True)  # the invitation, lit first
    assert shown(hal)["like"] == "blink"
    assert leds_at(core, 700) == (False, False)


def case_identify_flashes_both_then_back():
    hal, role, core = pad()
    request(core, bus.encode_set(ADDR, 1, bus.FeedbackState()), 0)
    frame = request(core, bus.encode_identify(ADDR, 1), 10)
    assert frame.mtype == bus.STATUS
    seen = set()
    for ms in range(10, 1000, 5):
        seen.add(leds_at(core, ms))
    assert seen == {(True, True), (False, False)}, seen
    assert leds_at(core, 1010) == (False, False) and not role.describe()["identify"]


def case_keys_become_vote_events_and_every_press_counts():
    hal, role, core = pad()
    ms = 0
    presses = [(0, 100), (1, 60), (0, 60)]  # like, dislike, like: 150 ms apart
    for key, hold in presses:
        hal.levels[key] = 1
        for _ in range(hold // 5):
            ms += 5
            core.tick(at(ms))
        hal.levels[key] = 0
        for _ in range(18):
            ms += 5
            core.tick(at(ms))
    events = [v for k, v in hal.emitted if k == "event"]
    assert [(e["seq"], e["key"]) for e in events] == [(1, "like"), (2, "dislike"),
                                                     (3, "like")], events
    assert core.lockouts == 0
    got = []
    ack = None
    for _ in range(3):
        frame = request(core, bus.encode_poll(ADDR, ack), ms)
        assert frame.mtype == bus.EVENT, frame
        ev = bus.decode_event(frame.payload)
        got.append((ev.seq, ev.key, ev.key_name, ev.action))
        ack = ev.ident
    assert got == [(1, 9, "like", bus.PRESS), (2, 10, "dislike", bus.PRESS),
                   (3, 9, "like", bus.PRESS)], got
    frame = request(core, bus.encode_poll(ADDR, ack), ms + 1)
    assert frame.mtype == bus.STATUS


def case_a_set_for_another_role_or_malformed_is_refused():
    hal, role, core = pad()
    request(core, bus.encode_set(ADDR, 5, bus.FeedbackState(invite=True)), 0)
    for data, reason in (
        (bus.encode_set(ADDR, 6, bus.DisplayState("A042")), bus.NAK_WRONG_ROLE),
        (bus.encode_set(ADDR, 6, bus.PanelState("A042")), bus.NAK_WRONG_ROLE),
        (bus.encode(ADDR, bus.SET, bytes((3, 6, 0, 6, 15))), bus.NAK_BAD_VALUE),  # both thanks
        (bus.encode(ADDR, bus.SET, bytes((3, 6, 0, 8, 15))), bus.NAK_BAD_VALUE),  # reserved bit
        (bus.encode(ADDR, bus.SET, bytes((3, 6, 0, 1))), bus.NAK_BAD_VALUE),  # short
    ):
        frame = request(core, data, 10)
        assert frame.mtype == bus.NAK, frame
        assert bus.decode_nak(frame.payload) == (bus.SET, reason), (data, frame)
    assert role.version == 5 and role.state == bus.FeedbackState(invite=True)


CASES = [
    case_leds_dark_and_nothing_applied_after_boot,
    case_invitation_blinks_both_leds_starting_lit,
    case_thanks_light_the_voted_key_for_ack_then_go_dark,
    case_the_same_set_again_does_not_thank_again,
    case_thanks_then_invitation_when_both_are_set,
    case_identify_flashes_both_then_back,
    case_keys_become_vote_events_and_every_press_counts,
    case_a_set_for_another_role_or_malformed_is_refused,
]

if __name__ == "__main__":
    for case in CASES:
        case()
    print("role_feedback: %d cases ok" % len(CASES))
