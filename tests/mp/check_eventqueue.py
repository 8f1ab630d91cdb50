# Event queue cases (firmware/eventqueue.py), for both interpreters, like check_keypad.py:
# run case by case on CPython, or as a script on MicroPython ("eventqueue: N cases ok").

from compat import ticks_add
from eventqueue import EventQueue

T0 = ticks_add(0, -250)


def drain(q):
    seqs = []
    while len(q):
        seq = q.head()[0]
        assert q.ack(q.boot, seq)
        seqs.append(seq)
    return seqs


def case_order_is_kept():
    q = EventQueue(8, boot=3)
    for key in range(1, 6):
        q.add(key, 1, T0)
    keys = []
    while len(q):
        seq, key, action, at = q.head()
        keys.append(key)
        q.ack(3, seq)
    assert keys == [1, 2, 3, 4, 5], keys


def case_overflow_drops_newest_and_counts():
    q = EventQueue(3, boot=1)
    seqs = [q.add(k, 1, T0) for k in (1, 2, 3, 4, 5)]
    assert seqs == [1, 2, 3, 0, 0], seqs
    assert q.overflows == 2 and len(q) == 3
    assert drain(q) == [1, 2, 3]
    # a dropped event used up its seq, so the master sees the gap
    assert q.add(6, 1, T0) == 6


def case_ack_pops_only_the_matching_head():
    q = EventQueue(4, boot=9)
    q.add(1, 1, T0)
    q.add(2, 1, T0)
    assert not q.ack(9, 2)  # not the head
    assert not q.ack(8, 1)  # head's seq under another boot: a stale ack
    assert len(q) == 2
    assert q.ack(9, 1)
    assert not q.ack(9, 1)  # a repeated ack changes nothing
    assert q.head()[0] == 2 and len(q) == 1


def case_retransmission_keeps_seq_and_press_time():
    q = EventQueue(4, boot=2)
    q.add(1, 2, T0)
    first = q.head()
    assert q.head() == first == (1, 1, 2, T0)


def case_ring_wraps_around_its_buffer():
    q = EventQueue(3, boot=1)
    expected = []
    for i in range(10):
        seq = q.add(i % 8 + 1, 1, ticks_add(T0, i))
        expected.append(seq)
        assert q.head()[0] == expected[0]
        if len(q) == 3 or i == 9:
            assert drain(q) == expected
            expected = []
    assert q.overflows == 0


def case_seq_wraps_past_65535_skipping_zero():
    q = EventQueue(2, boot=1)
    q.last_seq = 65534
    assert [q.add(1, 1, T0), q.add(1, 1, T0)] == [65535, 1]


def case_age_in_tenths_saturates():
    q = EventQueue(1, boot=1)
    assert q.age_ds(T0, ticks_add(T0, 1999)) == 19
    assert q.age_ds(T0, ticks_add(T0, 7000 * 1000)) == 0xFFFF


def case_boot_is_one_byte():
    assert EventQueue(1, boot=0x1FF).boot == 0xFF


CASES = [
    case_order_is_kept,
    case_overflow_drops_newest_and_counts,
    case_ack_pops_only_the_matching_head,
    case_retransmission_keeps_seq_and_press_time,
    case_ring_wraps_around_its_buffer,
    case_seq_wraps_past_65535_skipping_zero,
    case_age_in_tenths_saturates,
    case_boot_is_one_byte,
]

if __name__ == "__main__":
    for case in CASES:
        case()
    print("eventqueue: %d cases ok" % len(CASES))
