"""Nothing lost to the central's database, nothing counted twice: the broker, the central
service and the gateway SIGKILLed in loops while presses stream from firmware devices, with
receipts on (the default delivery).

Counted at the sources, at an independent subscriber and in the central's database: a press
is made when the firmware queues it (keyed address, boot, seq, as in tests/test_faults.py);
it is committed when the central's journal holds an event with that source. Lost = made and
never committed; double-counted = an event id applied twice, or a press applied under two
ids. The witness (a subscriber with a persistent session on the same broker) shows what the
broker alone would have delivered: with the production persistence settings a SIGKILLed
broker forgets what it acknowledged since its last save, and only the receipts bring those
events to the central.

Short runs here; the long ones (HALLGATE_SOAK_CYCLES) are in test_receipts_soak.py.
"""

import random
import time

import pytest
from conftest import read_retained, wait_for
from hallgate.sim.faults import Tally
from harness import CentralProcess, hallgate
from test_faults import SITE, Hall, Operators, seed

pytestmark = pytest.mark.micropython

CENTRAL_STATUS = f"hall/v1/{SITE}/central/status"
# hardware/mosquitto/mosquitto.conf: persistence true, autosave_interval 60
PRODUCTION = {"autosave_interval": 60}


class ReceiptHall(Hall):
    """test_faults' hall (a broker, firmware call panels on a bus hub, a witness, the
    gateway daemon) with delivery = "receipt" and the central service as a process."""

    def __init__(self, tmp_path, panels=(1, 2), broker_kw=None, delivery="receipt"):
        self.central = None
        super().__init__(tmp_path, panels, broker_kw=broker_kw, delivery=delivery)
        self.central = CentralProcess(tmp_path, SITE, self.broker.url, panels)

    def start_central(self, timeout=30):
        """Starts the central and waits for its new `online` (after its SUBACK)."""
        before = read_retained(self.broker.port, CENTRAL_STATUS, 0.3)
        self.central.start()

        def online():
            assert self.central.running, f"the central exited:\n{self.central.log()}"
            now = read_retained(self.broker.port, CENTRAL_STATUS, 0.3)
            return now is not None and now != before and b'"online"' in now

        wait_for(online, timeout, "the central online")

    def committed(self):
        """{(address, boot, seq): [ids applied]} from the central's journal, and the
        number of ids applied more than once."""
        by_source, times = {}, {}
        for event_id, event in self.central.journal():
            times[event_id] = times.get(event_id, 0) + 1
            s = event.get("source", {})
            if "address" in s:
                by_source.setdefault((s["address"], s["boot"], s["seq"]), []).append(event_id)
        return by_source, sum(1 for n in times.values() if n > 1)

    def in_database(self, made):
        return lambda: made <= set(self.committed()[0])

    def finish(self, tally, operators, timeout=120, check=True):
        """Stops the presses, waits for every one in the central's database, counts;
        `check`: and asserts that none was lost or counted twice."""
        operators.stop()
        time.sleep(0.3)
        self.take(tally)
        try:
            wait_for(self.in_database(tally.made), timeout, "every press in the database")
        except AssertionError:
            pass  # reported below with the counts
        by_source, twice = self.committed()
        at_witness = self.witness.sources()
        counts = {
            "made": len(tally.made),
            "committed": len(set(by_source) & tally.made),
            "lost": len(tally.made - set(by_source)),
            "double_counted": twice + sum(1 for ids in by_source.values() if len(ids) > 1),
            "invented": len(set(by_source) - tally.made),
            "at_witness": len(set(at_witness) & tally.made),
            "witness_duplicates": len(self.witness.events()) - len(at_witness),
        }
        print(f"{tally.name}: {counts}; recoveries "
              f"{[round(r, 2) for r in tally.recoveries]} s")
        if not check:
            return counts
        assert counts["lost"] == 0, f"{counts}\n{self.daemon.log()}\n{self.central.log()}"
        assert counts["double_counted"] == 0 and counts["invented"] == 0, counts
        for a, d in self.devices.items():
            assert d.info()["overflows"] == 0, f"device {a} dropped presses"
        # ... and the gateway let every one go: its outbox is empty
        self.daemon.wait_status(lambda s: s["outbox"]["depth"] == 0, "an empty outbox", 60)
        return counts

    def close(self):
        if self.central is not None:
            self.central.close()
        super().close()


def run_broker_kills_central_away(tmp_path, cycles, up=(0.4, 1.2), down=(0.05, 0.5),
                                  delivery="receipt"):
    """The central has been there (its session exists) and is gone; the broker, on the
    production persistence settings, is SIGKILLed `cycles` times while presses stream.
    Each kill forgets what it acknowledged since its last save (60 s: all of it). When
    the central comes back, every press must reach its database. With delivery "puback"
    (the control) the counts are returned unchecked: that is the loss receipts prevent."""
    rng = random.Random(seed())
    hall = ReceiptHall(tmp_path, broker_kw=PRODUCTION, delivery=delivery)
    tally = Tally(f"broker-kill, central away, delivery {delivery}")
    try:
        hall.start_central()
        hall.central.kill()
        hall.start()
        ops = Operators(hall.devices).start()
        for _ in range(cycles):
            time.sleep(rng.uniform(*up))
            hall.broker.kill()
            time.sleep(rng.uniform(*down))
            hall.broker.start()
        time.sleep(1.0)
        hall.take(tally)
        assert hall.committed()[0] == {}, "the central was away: nothing may be committed"
        if delivery == "receipt":
            st = hall.daemon.wait_status(
                lambda s: s["outbox"]["depth"] > 0 and s["outbox"]["awaiting_receipt"] > 0,
                "events held, sent and awaiting their receipt", 10)
            o = st["outbox"]
            assert o["delivery"] == "receipt" and o["oldest_age_s"] > 0
            assert o["waiting_to_send"] + o["awaiting_receipt"] == o["depth"]
            text = hallgate("status", "--status-file", hall.daemon.status_file).stdout
            assert "sent awaiting the central's receipt, oldest" in text, text
        hall.start_central()
        if delivery == "puback":
            return hall.finish(tally, ops, timeout=10, check=False)
        counts = hall.finish(tally, ops)
        assert hall.broker.starts == cycles + 1
        # what the broker alone delivered is not all (it forgot); the receipts made it whole
        return counts
    finally:
        hall.close()


def run_kills(tmp_path, part, cycles, up=(0.5, 2.0), down=(0.05, 1.0)):
    """`part`, "central" or "gateway", SIGKILLed mid-stream `cycles` times and started
    again: the central between a commit and its PUBACK or its receipt, the gateway
    between an add and its send or its receipt, at random."""
    rng = random.Random(seed())
    hall = ReceiptHall(tmp_path)
    tally = Tally(f"{part}-kill")
    try:
        hall.start_central()
        hall.start()
        proc, restart = {"central": (hall.central, hall.start_central),
                         "gateway": (hall.daemon, hall.daemon.start)}[part]
        ops = Operators(hall.devices).start()
        for _ in range(cycles):
            time.sleep(rng.uniform(*up))
            proc.kill()
            time.sleep(rng.uniform(*down))
            restart()
            made = hall.take(tally)
            tally.recovered(hall.in_database(made), 120)
        counts = hall.finish(tally, ops)
        assert proc.starts == cycles + 1
        assert hall.daemon.terminate() == 0, hall.daemon.log()
        return counts
    finally:
        hall.close()


def test_broker_sigkill_loop_with_the_central_away_loses_nothing(tmp_path):
    counts = run_broker_kills_central_away(tmp_path, cycles=10)
    assert counts["made"] >= 40


def test_the_same_loop_without_receipts_loses_what_the_broker_acknowledged(tmp_path):
    """The control: the loop above is a real fault. With delivery = "puback" the gateway
    lets go at the broker's PUBACK, and the SIGKILLed broker forgets those events."""
    counts = run_broker_kills_central_away(tmp_path, cycles=3, delivery="puback")
    assert counts["made"] >= 10 and counts["lost"] > 0, counts


def test_central_sigkill_loop_loses_nothing_and_counts_nothing_twice(tmp_path):
    counts = run_kills(tmp_path, "central", cycles=3)
    assert counts["made"] >= 20


def test_gateway_sigkill_loop_with_receipts_loses_nothing(tmp_path):
    counts = run_kills(tmp_path, "gateway", cycles=3)
    assert counts["made"] >= 20
