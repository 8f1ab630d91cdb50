# Keypad cases (firmware/keypad.py) on a synthetic clock, for both interpreters:
# tests/test_firmware_keys.py runs each case_* on CPython, and runs this file as a script
# on MicroPython, where it prints "keypad: N cases ok" (an AssertionError exits non-zero).
#
# Time starts 300 ms before the tick counter wraps, so every case also crosses the wrap.

from compat import ticks_add
from keypad import LOCKED, LONG, PRESS, SHORT, Debouncer, Key

T0 = ticks_add(0, -300)


def feed(key, changes, until, step=5):
    """Sample `key` every `step` ms from T0 to T0+until; `changes` is a list of
    (ms, level) contact changes. Returns [(ms, result)] for every non-zero result."""
    level = 0
    changes = sorted(changes)
    out = []
    ms = 0
    while ms <= until:
        while changes and changes[0][0] <= ms:
            level = changes.pop(0)[1]
        result = key.sample(level, ticks_add(T0, ms))
        if result:
            out.append((ms, result))
        ms += step
    return out


def press(at, hold):
    return [(at, 1), (at + hold, 0)]


def bouncy_press(at, hold, bounces=10):
    """A contact that chatters `bounces` times (1-2 ms apart) as it closes and as it opens."""
    changes = []
    t = at
    for i in range(bounces):
        changes.append((t, 1 - i % 2))  # 1, 0, 1, 0 ...
        t += 1 + i % 2
    changes.append((t, 1))
    t = at + hold
    for i in range(bounces):
        changes.append((t, i % 2))  # 0, 1, 0, 1 ...
        t += 2 - i % 2
    changes.append((t, 0))
    return changes


def case_clean_press_counts_once():
    got = feed(Key(1), press(100, 100), 600)
    assert [r for _, r in got] == [PRESS], got
    assert 120 <= got[0][0] <= 130, got  # counted once it read closed for 20 ms


def case_press_shorter_than_window_is_noise():
    for hold in (1, 5, 12, 15):
        assert feed(Key(1), press(100, hold), 400) == [], hold


def case_spikes_on_an_idle_line_are_noise():
    changes = []
    for at in range(50, 500, 37):
        changes += press(at, 3)
    assert feed(Key(1), changes, 600, step=1) == []


def case_bouncing_contact_counts_once():
    for bounces in (8, 9, 10):
        for step in (1, 2, 5):
            got = feed(Key(1), bouncy_press(100, 150, bounces), 800, step)
            assert [r for _, r in got] == [PRESS], (bounces, step, got)


def case_debouncer_reports_both_edges():
    d = Debouncer(debounce_ms=20)
    seen = []
    level = 0
    for ms in range(0, 200):
        level = 1 if 50 <= ms < 120 else 0
        if d.update(level, ticks_add(T0, ms)):
            seen.append((ms, d.level))
    assert seen == [(70, 1), (140, 0)], seen


def case_double_call_within_lockout_counts_once():
    got = feed(Key(1), press(100, 80) + press(500, 80), 1500)
    assert [r for _, r in got] == [PRESS, LOCKED], got


def case_second_call_after_lockout_counts_twice():
    got = feed(Key(1), press(100, 80) + press(1200, 80), 2000)
    assert [r for _, r in got] == [PRESS, PRESS], got


def case_lockout_is_per_key_instance_and_tunable():
    assert [r for _, r in feed(Key(1, lockout_ms=0), press(100, 50) + press(200, 50), 400)] == [
        PRESS,
        PRESS,
    ]


def case_long_press_emits_long_once_while_held():
    got = feed(Key(5, long=True), press(100, 2000), 3000)
    assert [r for _, r in got] == [LONG], got
    assert 100 + 20 + 800 <= got[0][0] <= 100 + 20 + 800 + 5, got  # at long_ms, not on release


def case_short_press_of_long_key_gives_no_event():
    got = feed(Key(5, long=True), press(100, 300), 1500)
    assert [r for _, r in got] == [SHORT], got


def case_long_key_respects_long_ms():
    got = feed(Key(5, long=True, long_ms=300), press(100, 400), 1000)
    assert [r for _, r in got] == [LONG], got


CASES = [
    case_clean_press_counts_once,
    case_press_shorter_than_window_is_noise,
    case_spikes_on_an_idle_line_are_noise,
    case_bouncing_contact_counts_once,
    case_debouncer_reports_both_edges,
    case_double_call_within_lockout_counts_once,
    case_second_call_after_lockout_counts_twice,
    case_lockout_is_per_key_instance_and_tunable,
    case_long_press_emits_long_once_while_held,
    case_short_press_of_long_key_gives_no_event,
    case_long_key_respects_long_ms,
]

if __name__ == "__main__":
    for case in CASES:
        case()
    print("keypad: %d cases ok" % len(CASES))
