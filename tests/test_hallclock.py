"""The simulator's hall time (sim/hallclock.py): it stands still while any actor is awake
(a press in flight through the chain), jumps to the earliest wake-up when all sleep, and
never runs ahead of max_speed."""

import threading
import time

from hallgate.sim.hallclock import HallClock


def test_time_stands_still_while_an_actor_is_awake():
    clock = HallClock(0.0)
    clock.join("operator")
    clock.join("kiosk")
    woke = []

    def kiosk():
        woke.append((clock.sleep("kiosk", 60), clock.now()))
        clock.leave("kiosk")  # done: the operator alone holds time now

    t = threading.Thread(target=kiosk)
    t.start()
    time.sleep(0.3)  # the operator is "waiting for the panel": hall time must not move
    assert clock.now() == 0.0 and not woke
    assert clock.sleep("operator", 600)  # now both sleep: the kiosk's wake-up comes first
    t.join(5)
    assert woke == [(True, 60.0)]
    assert clock.now() == 600.0
    clock.leave("operator")
    clock.stop()


def test_many_actors_wake_in_time_order():
    clock = HallClock(1000.0)
    seen, lock = [], threading.Lock()

    def actor(name, naps):
        for nap in naps:
            clock.sleep(name, nap)
            with lock:
                seen.append((clock.now(), name))
        clock.leave(name)

    plans = {"a": [10, 10, 10], "b": [15, 15], "c": [7, 7, 7, 7]}
    for name in plans:
        clock.join(name)
    threads = [threading.Thread(target=actor, args=(n, p)) for n, p in plans.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert [t for t, _ in seen] == sorted(t for t, _ in seen)
    assert sorted(seen) == sorted([(1010.0, "a"), (1020.0, "a"), (1030.0, "a"),
                                   (1015.0, "b"), (1030.0, "b"), (1007.0, "c"),
                                   (1014.0, "c"), (1021.0, "c"), (1028.0, "c")])
    clock.stop()


def test_max_speed_holds_hall_time_back_but_not_behind():
    clock = HallClock(0.0, max_speed=100.0)
    clock.join("a")
    t0 = time.monotonic()
    assert clock.sleep("a", 50)  # 0.5 s real at 100x
    assert time.monotonic() - t0 >= 0.45
    time.sleep(0.6)  # the chain held the clock: that real time counts
    t1 = time.monotonic()
    assert clock.sleep("a", 50)  # due at 1.0 s real since the start: already past
    assert time.monotonic() - t1 < 0.2 and clock.now() == 100.0
    clock.leave("a")
    clock.stop()


def test_stop_wakes_the_sleepers_and_an_actor_must_join():
    clock = HallClock(0.0)
    clock.join("a")
    clock.join("b")  # awake for ever: time cannot move
    out = []
    t = threading.Thread(target=lambda: out.append(clock.sleep("a", 10)))
    t.start()
    time.sleep(0.1)
    clock.stop()
    t.join(5)
    assert out == [False] and clock.now() == 0.0
    try:
        clock.sleep("nobody", 1)
    except ValueError as e:
        assert "without having joined" in str(e)
    else:
        raise AssertionError("an unknown actor slept")
