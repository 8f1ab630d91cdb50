# The device's queue of key events waiting for the master.
#
# A ring of fixed-size records in one bytearray allocated at start: queueing an event
# allocates nothing, and the memory it may take is known from the config (queue_len * 12
# bytes). Events leave only when the master acks them, so an event survives any number of
# lost replies and is retransmitted unchanged (same seq, same press time).
# When the ring is full the NEW event is dropped and counted (overflows, reported in
# INFO): the oldest events are the ones the master has been trying to fetch, and a
# dropped event still takes its seq, so the master also sees the gap.

import struct

from compat import const, ticks_diff

# seq, key code, action code, ticks_ms at the press (64 bits: the unix port's ticks have
# a period of 2**62, the rp2's 2**30)
_REC = "<HBBQ"
_SIZE = const(12)
_AGE_MAX = const(0xFFFF)  # tenths of a second; the bus field saturates here


class EventQueue:
    """Bounded FIFO of (seq, key, action, pressed_at) with per-boot sequence numbers.

    >>> q = EventQueue(4, boot=7)
    >>> q.add(1, 1, now=0)
    1
    >>> q.head()
    (1, 1, 1, 0)
    >>> q.ack(7, 1), len(q)
    (True, 0)
    """

    def __init__(self, capacity, boot):
        if capacity < 1:
            raise ValueError("queue capacity must be at least 1")
        self.capacity = capacity
        self.boot = boot & 0xFF
        self.overflows = 0  # events dropped because the queue was full
        self.last_seq = 0  # seq of the last event created (queued or dropped)
        self._buf = bytearray(capacity * _SIZE)
        self._first = 0  # record index of the head
        self._count = 0

    def __len__(self):
        return self._count

    def add(self, key, action, now):
        """Queue an event pressed at `now`; its seq, or 0 when it was dropped (full)."""
        seq = self.last_seq % 0xFFFF + 1  # 1..65535, then 1 again: 0 is never a seq
        self.last_seq = seq
        if self._count == self.capacity:
            self.overflows += 1
            return 0
        slot = (self._first + self._count) % self.capacity
        struct.pack_into(_REC, self._buf, slot * _SIZE, seq, key, action, now)
        self._count += 1
        return seq

    def head(self):
        """(seq, key, action, pressed_at) of the oldest event, or None."""
        if not self._count:
            return None
        return struct.unpack_from(_REC, self._buf, self._first * _SIZE)

    def ack(self, boot, seq):
        """Pop the head if (boot, seq) names it; True if it did. Any other ack is stale
        (a retransmitted ack, or one for an earlier boot) and changes nothing."""
        if not self._count or boot != self.boot:
            return False
        off = self._first * _SIZE
        if seq != self._buf[off] | self._buf[off + 1] << 8:  # the head's seq, read in place
            return False
        self._first = (self._first + 1) % self.capacity
        self._count -= 1
        return True

    def age_ds(self, pressed_at, now):
        """Tenths of a second since a press, saturating at the bus field's maximum."""
        age = ticks_diff(now, pressed_at)
        if age < 0:  # older than half the tick period: very old indeed
            return _AGE_MAX
        return min(age // 100, _AGE_MAX)
