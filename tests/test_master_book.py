"""The bus master's protocol bookkeeping (gateway.book.Book): no port, scripted replies."""

import pytest
from hallgate.gateway.book import GARBLED, TIMEOUT, Book
from hallgate.protocols import bus

DISPLAY = bus.ROLE_WINDOW_DISPLAY


def frame(data):
    d = bus.Decoder()
    d.feed(data)
    f = d.maybe_extract_frame()
    assert f is not None
    return f


def info(addr, version=0, resets=3, queued=0, role=DISPLAY, window=None):
    return bus.encode_info(
        addr,
        bus.Info(role, (0, 1, 0), window or addr, resets=resets, version=version, queued=queued),
    )


def status(addr, version):
    return bus.encode_status(addr, version)


def event(addr, boot, seq, key=1, pending=0):
    return bus.encode_event(addr, bus.Event(boot, seq, key, pending=pending))


class Recorder:
    def __init__(self):
        self.events = []
        self.devices = []
        self.naks = []
        self.refuse = 0  # refuse this many events (raise) before taking

    def on_event(self, addr, ev):
        if self.refuse:
            self.refuse -= 1
            raise RuntimeError("outbox full")
        self.events.append((addr, ev.ident))

    def on_device(self, addr, online, inf):
        self.devices.append((addr, online, inf.window if inf else None))

    def on_nak(self, addr, mtype, reason):
        self.naks.append((addr, mtype, reason))


@pytest.fixture
def rec():
    return Recorder()


@pytest.fixture
def book(rec):
    return Book(on_event=rec.on_event, on_device=rec.on_device, on_nak=rec.on_nak)


def turn(book, addr, replies):
    """Serve `addr`'s turn, answering each request with the next scripted reply (bytes,
    TIMEOUT or GARBLED); the requests sent, as frames. Fails if the script runs out."""
    sent = []
    replies = list(replies)
    while (request := book.next_request(addr)) is not None:
        sent.append(frame(request))
        assert replies, f"no scripted reply for request {sent[-1]!r}"
        r = replies.pop(0)
        if r in (TIMEOUT, GARBLED):
            book.handle_failure(addr, garbled=r is GARBLED)
        else:
            book.handle_reply(addr, frame(r))
    assert not replies, f"turn ended with replies left: {replies}"
    return sent


def cycle(book, script, now=0.0):
    """One cycle; script: {addr: [replies]}. Returns ({addr: requests}, plan)."""
    plan = book.start_cycle(now)
    return {a: turn(book, a, script.get(a, [])) for a in plan}, plan


def poll(addr, ack=None):
    return frame(bus.encode_poll(addr, ack))


def online(book, addr, version=0, resets=3):
    book.add(addr)
    plan = book.start_cycle(0.0)
    assert addr in plan
    turn(book, addr, [info(addr, version, resets)])
    assert book.devices[addr].online


# ---- online, offline ---------------------------------------------------------------------


def test_probe_brings_a_device_online_with_its_info_then_one_poll_per_cycle(book, rec):
    book.add(5)
    sent, _ = cycle(book, {5: [info(5)]})
    assert sent[5] == [frame(bus.encode_get_info(5))]
    assert rec.devices == [(5, True, 5)]
    sent, _ = cycle(book, {5: [status(5, 0)]})
    assert sent[5] == [poll(5)]
    assert book.stats.exchanges == 2


def test_offline_after_n_misses_one_timeout_per_cycle(book, rec):
    online(book, 5)
    for n in range(1, 4):
        sent, _ = cycle(book, {5: [TIMEOUT]})
        assert sent[5] == [poll(5)]  # one timed-out try per cycle, never a second one
        assert book.devices[5].misses == n
    assert not book.devices[5].online
    assert rec.devices == [(5, True, 5), (5, False, 5)]
    assert book.devices[5].stats.timeouts == 3


def test_a_good_reply_resets_the_misses(book):
    online(book, 5)
    cycle(book, {5: [TIMEOUT]})
    cycle(book, {5: [TIMEOUT]})
    cycle(book, {5: [status(5, 0)]})
    cycle(book, {5: [TIMEOUT]})
    assert book.devices[5].online and book.devices[5].misses == 1


def test_offline_devices_are_probed_one_per_cycle_round_robin(book):
    online(book, 1)
    for a in (7, 3, 9):
        book.add(a)
    probes = []
    for _ in range(6):
        plan = book.start_cycle(0.0)
        assert plan[0] == 1 and len(plan) == 2  # every online device, plus one probe
        probes.append(plan[1])
        turn(book, 1, [status(1, 0)])
        assert turn(book, plan[1], [TIMEOUT]) == [frame(bus.encode_get_info(plan[1]))]
    assert probes == [3, 7, 9, 3, 7, 9]


def test_garbled_reply_is_a_miss_retried_once_at_once(book):
    online(book, 5)
    sent, _ = cycle(book, {5: [GARBLED, status(5, 0)]})
    assert sent[5] == [poll(5), poll(5)]
    dev = book.devices[5]
    assert dev.stats.garbled == 1 and dev.stats.retries == 1 and dev.misses == 0
    sent, _ = cycle(book, {5: [GARBLED, GARBLED]})  # retried once, not twice
    assert len(sent[5]) == 2 and dev.misses == 2


def test_a_reply_that_is_no_answer_counts_as_garbled(book):
    online(book, 5)
    sent, _ = cycle(book, {5: [info(5), status(5, 0)]})  # INFO is no answer to POLL
    assert book.devices[5].stats.garbled == 1 and len(sent[5]) == 2


# ---- events: ack after taking, dedupe ----------------------------------------------------


def test_ack_only_after_on_event_returned(book):
    online(book, 5)
    seen = []

    def on_event(addr, ev):
        seen.append(book.devices[5].ack)  # nothing acked while the callback runs

    book.on_event = on_event
    sent, _ = cycle(book, {5: [event(5, 3, 17), status(5, 0)]})
    assert seen == [None]
    # Acked at once, on the next POLL of the same turn; then the device is idle.
    assert sent[5] == [poll(5), poll(5, (3, 17))]
    assert book.devices[5].ack is None
    assert book.devices[5].stats.events == 1


def test_a_raising_on_event_means_no_ack_and_the_retransmission_is_taken(book, rec):
    online(book, 5)
    rec.refuse = 1
    sent, _ = cycle(book, {5: [event(5, 3, 17)]})
    assert sent[5] == [poll(5)]  # turn over: no ack, no hammering
    assert rec.events == [] and book.devices[5].stats.callback_errors == 1
    sent, _ = cycle(book, {5: [event(5, 3, 17), status(5, 0)]})
    assert sent[5] == [poll(5), poll(5, (3, 17))]
    assert rec.events == [(5, (3, 17))]


def test_duplicate_is_dropped_and_acked_again(book, rec):
    online(book, 5)
    # The POLL carrying the ack gets no reply: the ack waits for the next poll.
    sent, _ = cycle(book, {5: [event(5, 3, 17), TIMEOUT]})
    assert sent[5] == [poll(5), poll(5, (3, 17))]
    # The ack was lost on the way: the device sends the event again.
    sent, _ = cycle(book, {5: [event(5, 3, 17), status(5, 0)]})
    assert sent[5] == [poll(5, (3, 17)), poll(5, (3, 17))]
    assert rec.events == [(5, (3, 17))]
    assert book.devices[5].stats.duplicates == 1 and book.stats.duplicates == 1


def test_a_new_boot_with_seq_1_is_not_a_duplicate(book, rec):
    online(book, 5, resets=3)
    cycle(book, {5: [event(5, 3, 1), status(5, 0)]})
    # Rebooted: boot 4, seq restarts at 1. Taken, and its INFO is fetched again.
    sent, _ = cycle(book, {5: [event(5, 4, 1), info(5, resets=4), status(5, 0)]})
    assert rec.events == [(5, (3, 1)), (5, (4, 1))]
    assert [f.mtype for f in sent[5]] == [bus.POLL, bus.GET_INFO, bus.POLL]
    assert sent[5][2] == poll(5, (4, 1))


def test_pending_events_drain_in_bursts_bounded_per_cycle(rec):
    book = Book(on_event=rec.on_event, max_burst=4)
    online(book, 5)
    online(book, 6)
    queue = [event(5, 3, s, pending=10 - s) for s in range(1, 11)]
    sent, _ = cycle(book, {5: queue[:4], 6: [status(6, 0)]})
    assert len(sent[5]) == 4 and len(sent[6]) == 1  # the other device is not starved
    sent, _ = cycle(book, {5: queue[4:8], 6: [status(6, 0)]})
    sent, _ = cycle(book, {5: queue[8:] + [status(5, 0)], 6: [status(6, 0)]})
    assert [i for a, i in rec.events if a == 5] == [(3, s) for s in range(1, 11)]
    assert sent[5][-1] == poll(5, (3, 10))


def test_info_with_queued_events_polls_in_the_same_turn(book, rec):
    book.add(5)
    sent, _ = cycle(book, {5: [info(5, queued=2), event(5, 3, 1, pending=1), event(5, 3, 2),
                               status(5, 0)]})  # fmt: skip
    assert [f.mtype for f in sent[5]] == [bus.GET_INFO, bus.POLL, bus.POLL, bus.POLL]
    assert rec.events == [(5, (3, 1)), (5, (3, 2))]


# ---- desired state -------------------------------------------------------------------------


def test_version_mismatch_triggers_set(book):
    online(book, 7)
    state = bus.DisplayState("A042", blink_s=5)
    assert book.set_state(7, state) == 1
    sent, _ = cycle(book, {7: [status(7, 1)]})
    assert sent[7] == [frame(bus.encode_set(7, 1, state))]
    sent, _ = cycle(book, {7: [status(7, 1)]})
    assert sent[7] == [poll(7)]  # applied: idle polls only
    # The device rebooted: it shows version 0. SET again (and its INFO is refreshed).
    sent, _ = cycle(book, {7: [status(7, 0), info(7, version=0, resets=4), status(7, 1)]})
    assert [f.mtype for f in sent[7]] == [bus.POLL, bus.GET_INFO, bus.SET]
    # An old version (say after an outage) is corrected the same way.
    book.set_state(7, bus.DisplayState("A043"))
    cycle(book, {7: [status(7, 2)]})
    sent, _ = cycle(book, {7: [status(7, 1), status(7, 2)]})
    assert [f.mtype for f in sent[7]] == [bus.POLL, bus.SET]


def test_the_same_state_again_keeps_its_version(book):
    assert book.set_state(7, bus.DisplayState("A042")) == 1
    assert book.set_state(7, bus.DisplayState("A042")) == 1
    assert book.set_state(7, bus.DisplayState("A043")) == 2


def test_version_wraps_past_zero(book):
    book.set_state(7, bus.DisplayState("A"))
    book.devices[7].version = 0xFFFE
    assert book.set_state(7, bus.DisplayState("B")) == 0xFFFF
    assert book.set_state(7, bus.DisplayState("C")) == 1
    assert book.set_state(7, bus.DisplayState("D")) == 2


def test_a_state_that_cannot_be_sent_is_refused_at_once(book):
    with pytest.raises(ValueError, match="longer"):
        book.set_state(7, bus.DisplayState("TOO LONG TEXT"))
    with pytest.raises(ValueError, match="brightness"):
        book.set_state(7, bus.DisplayState("A", brightness=16))
    assert 7 not in book.devices or book.devices[7].desired is None


def test_a_device_coming_online_is_set_in_the_same_turn(book):
    book.set_state(7, bus.DisplayState("A042"))
    sent, _ = cycle(book, {7: [info(7, version=0), status(7, 1)]})
    assert [f.mtype for f in sent[7]] == [bus.GET_INFO, bus.SET]
    assert book.devices[7].applied == 1


def test_after_a_gateway_restart_the_state_is_sent_once_even_if_versions_match(book):
    # A device still showing version 1 from the previous gateway run: same number, maybe
    # other content. The new master sends its state once, then trusts the versions.
    book.set_state(7, bus.DisplayState("NEW"))
    sent, _ = cycle(book, {7: [info(7, version=1), status(7, 1)]})
    assert [f.mtype for f in sent[7]] == [bus.GET_INFO, bus.SET]
    sent, _ = cycle(book, {7: [status(7, 1)]})
    assert sent[7] == [poll(7)]


def test_nak_to_set_is_reported_and_not_retried_in_a_tight_loop(book, rec):
    online(book, 7)
    book.set_state(7, bus.PanelState("A1"))  # a panel state for a display
    nak = bus.encode_nak(7, bus.SET, bus.NAK_WRONG_ROLE)
    sent, _ = cycle(book, {7: [nak]}, now=100.0)
    assert [f.mtype for f in sent[7]] == [bus.SET]
    assert rec.naks == [(7, bus.SET, bus.NAK_WRONG_ROLE)]
    for now in (101.0, 105.0, 109.0):
        sent, _ = cycle(book, {7: [status(7, 0)]}, now=now)
        assert sent[7] == [poll(7)]
    sent, _ = cycle(book, {7: [nak]}, now=110.5)  # after the back-off: once more
    assert [f.mtype for f in sent[7]] == [bus.SET]
    # A new desired state is sent at once.
    book.set_state(7, bus.DisplayState("A1"))
    sent, _ = cycle(book, {7: [status(7, 2)]}, now=111.0)
    assert [f.mtype for f in sent[7]] == [bus.SET]
    assert book.devices[7].applied == 2


def test_a_device_back_from_offline_is_set_again(book, rec):
    book.set_state(7, bus.DisplayState("A042"))
    cycle(book, {7: [info(7), status(7, 1)]})
    for _ in range(3):
        cycle(book, {7: [TIMEOUT]})
    assert not book.devices[7].online
    sent, _ = cycle(book, {7: [info(7, version=1), status(7, 1)]})
    assert [f.mtype for f in sent[7]] == [bus.GET_INFO, bus.SET]
    assert [d[1] for d in rec.devices] == [True, False, True]


def test_on_device_reports_a_swapped_device(book, rec):
    online(book, 7)
    cycle(book, {7: [event(7, 3, 1), status(7, 0)]})
    # Another device now answers at 7 (a new boot byte, another window).
    cycle(book, {7: [event(7, 9, 1), info(7, resets=9, window=12), status(7, 0)]})
    assert rec.devices == [(7, True, 7), (7, True, 12)]


def test_failing_on_device_callback_does_not_break_the_book(book):
    def boom(*args):
        raise RuntimeError("broker down")

    book.on_device = boom
    book.add(5)
    cycle(book, {5: [info(5)]})
    assert book.devices[5].online
