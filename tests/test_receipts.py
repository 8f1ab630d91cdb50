"""Receipts (protocols/MQTT.md section 4a): the gateway's link lets an event go only when the
central service's receipt names it, with a real mosquitto, the real central service (queue,
SQLite store, MQTT) and an independent witness.

The fault loops (broker, central and gateway SIGKILLed while presses stream from firmware
devices) are tests/test_receipts_faults.py."""

import json
import sqlite3
import time

import paho.mqtt.client as mqtt
import pytest
from conftest import wait_for
from hallgate.central.mqtt import CentralService
from hallgate.central.queue import QueueConfig
from hallgate.central.service import Central
from hallgate.gateway.mqtt import MqttLink
from hallgate.gateway.outbox import Outbox
from hallgate.protocols.receipts import parse_receipt
from hallgate.sim.broker import Mosquitto
from test_mqtt_link import Recorder, Witness, check_schema

SITE, GW = "s1", "gw-1"  # as test_mqtt_link's Witness and Recorder expect
RECEIPT = f"hall/v1/{SITE}/gw/{GW}/receipt"
ERRORS = f"hall/v1/{SITE}/gw/{GW}/errors"
QCFG = {"services": {"A": "Passports"}, "windows": [{"n": 1, "services": ["A"]},
                                                      {"n": 2, "services": ["A"]}]}


def vote(outbox, window=1):
    """An event in the outbox, as the daemon makes it (a vote with voting closed: the
    central journals it whatever its state)."""
    return outbox.add(window, {"ts": "2026-12-04T10:00:00.000Z", "type": "vote",
                               "vote": "like", "ticket": None, "misuse": True,
                               "misuse_reason": "voting closed", "source": {"gpio": 17}})


class CentralInProcess:
    """The reference central service in this process, on its own SQLite file."""

    def __init__(self, tmp_path, broker, **kw):
        self.db = tmp_path / "central.db"
        self.broker = broker
        self.kw = kw
        self.service = None

    def start(self):
        central = Central(QueueConfig.from_dict(QCFG), self.db)
        self.service = CentralService(central, SITE, self.broker.url, tick_s=0.2, stats_s=5,
                                      reconnect_max=0.5, **self.kw).start()
        assert self.service.wait_connected(10)
        return self

    def stop(self):
        if self.service is not None:
            self.service.stop(timeout=2)
            self.service.central.close()
            self.service = None

    def journal(self):
        """{event id: times applied} from the central's database."""
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True) as db:
            return dict(db.execute("SELECT id, COUNT(*) FROM journal GROUP BY id"))


@pytest.fixture
def hall(tmp_path):
    broker = Mosquitto(tmp_path / "broker").start()
    witness = Witness(broker)
    central = CentralInProcess(tmp_path, broker)
    outbox = Outbox(tmp_path / "outbox.sqlite", GW)
    links = []

    def link(**kw):
        rec = Recorder()

        def delivered(seqs):
            outbox.delete(*seqs)
            rec.on_delivered(seqs)

        made = MqttLink(SITE, GW, [broker.url], windows=[1, 2], on_delivered=delivered,
                        reconnect_max=0.5, **kw)
        made.rec = rec
        links.append(made)
        made.start()
        assert made.wait_connected(10)
        return made

    yield broker, witness, central, outbox, link
    for made in links:
        made.stop(timeout=2)
    central.stop()
    witness.close()
    outbox.close()
    broker.stop()


def feed(link, entries):
    for e in entries:
        link.publish_event(e.window, e.payload, token=e.seq, event_id=e.id)


def test_an_event_leaves_the_outbox_on_the_receipt_not_on_the_puback(hall):
    broker, witness, central, outbox, make_link = hall
    link = make_link()
    entries = [vote(outbox, w) for w in (1, 2, 1)]
    feed(link, entries)
    wait_for(lambda: len(witness.payloads(f"hall/v1/{SITE}/window/1/event")) == 2,
             what="the events at the witness (PUBACKed)")
    time.sleep(0.5)
    assert outbox.depth() == 3 and link.rec.delivered == [], "gone without a receipt"
    assert link.unconfirmed() == (0, 3)

    central.start()  # its first `online`: the link sends everything unconfirmed again
    wait_for(lambda: outbox.depth() == 0, what="the receipts")
    assert sorted(link.rec.delivered) == [e.seq for e in entries]
    assert central.journal() == {e.id: 1 for e in entries}
    receipts = [json.loads(p) for p in witness.payloads(RECEIPT)]
    assert receipts and all(check_schema("receipt", r)["gateway"] == GW for r in receipts)
    assert {i for r in receipts for i in r["ids"]} == {e.id for e in entries}
    assert link.stats.resent_central == 3 and link.central_online is True

    # more while the central is up: one receipt for several events (batched)
    more = [vote(outbox) for _ in range(20)]
    feed(link, more)
    wait_for(lambda: outbox.depth() == 0, what="receipts of the second batch")
    batches = [json.loads(p)["ids"] for p in witness.payloads(RECEIPT)][len(receipts):]
    assert sum(map(len, batches)) >= 20 and len(batches) < 20, batches
    assert link.stats.delivered == 23


def test_a_receipt_for_an_unknown_id_is_ignored_and_a_malformed_one_reported(hall):
    broker, witness, central, outbox, make_link = hall
    link = make_link()
    entry = vote(outbox)
    feed(link, [entry])
    wait_for(lambda: link.unconfirmed() == (0, 1), what="the event sent")
    witness.publish(RECEIPT, {"ids": ["gw-1-00000000-99", "other"]})
    for bad in (b"{not json", b'{"ids": []}', b'{"ids": [1]}', b"[" * 3000 + b"]" * 3000,
                json.dumps({"ids": ["x"] * 1001}).encode()):
        witness.publish(RECEIPT, bad)
    wait_for(lambda: link.stats.receipts_bad == 5, what="five malformed receipts counted")
    wait_for(lambda: len(witness.json(ERRORS)) == 5, what="five bad-receipt errors")
    errors = [check_schema("errors", e) for e in witness.json(ERRORS)]
    assert {e["kind"] for e in errors} == {"bad-receipt"}
    assert "not JSON" in errors[0]["reason"] and "1-1000 event ids" in errors[1]["reason"]
    assert link.stats.receipt_unknown == 2 and outbox.depth() == 1 and link.connected

    witness.publish(RECEIPT, {"ids": [entry.id]})  # the real one, twice
    witness.publish(RECEIPT, {"ids": [entry.id]})
    wait_for(lambda: outbox.depth() == 0, what="the receipt")
    wait_for(lambda: link.stats.receipt_unknown == 3, what="the repeat ignored")
    assert link.rec.delivered == [entry.seq]


def test_without_a_receipt_the_event_goes_again_after_the_timeout(hall):
    broker, witness, central, outbox, make_link = hall
    link = make_link(receipt_timeout=0.3)
    entry = vote(outbox)
    feed(link, [entry])
    event_topic = f"hall/v1/{SITE}/window/1/event"
    wait_for(lambda: len(witness.payloads(event_topic)) >= 3, what="two re-sends")
    copies = witness.payloads(event_topic)
    assert len(set(copies)) == 1, "a re-send is the same payload, same id"
    assert link.stats.resent_timeout >= 2
    # the wait doubles: 0.3, 0.6, 1.2 ... s, so 2 s see at most 4 more copies, not 7
    before = len(witness.payloads(event_topic))
    time.sleep(2.0)
    assert len(witness.payloads(event_topic)) - before <= 4

    # the central says it is offline: no re-sends meanwhile (the broker keeps them for it)
    witness.publish(f"hall/v1/{SITE}/central/status",
                    {"state": "offline", "boot_id": "b1", "ts": "2026-12-04T10:00:00.000Z"},
                    retain=True)
    wait_for(lambda: link.central_online is False, what="the central's status")
    time.sleep(1.0)  # what was already on its way arrives
    quiet = len(witness.payloads(event_topic))
    time.sleep(3.0)
    assert len(witness.payloads(event_topic)) == quiet
    central.start()
    wait_for(lambda: outbox.depth() == 0, what="the receipt once the central is back")
    assert central.journal() == {entry.id: 1}


def test_a_central_killed_between_its_commit_and_the_receipt_loses_nothing(hall):
    """The central's first receipt never reaches the gateway (the central dies right after
    its commit): the event is sent again when the central is back, deduped, receipted."""
    broker, witness, central, outbox, make_link = hall
    central.start()
    link = make_link()
    wait_for(lambda: link.central_online, what="the central's status at the link")
    svc = central.service
    svc.receipt_delay_s = 3600  # holds its receipts back: they die with it
    svc.receipt_batch = 1000
    entries = [vote(outbox) for _ in range(5)]
    feed(link, entries)
    wait_for(lambda: len(central.journal()) == 5, what="the events committed")
    svc.client.loop_stop()  # the central dies without a word (its will: offline)
    svc.client.socket().close()
    svc._stop.set()  # ... and its threads with it, before its database is closed
    svc._messages.put(None)
    svc._worker.join(5)
    svc._thread.join(5)
    central.service = None
    svc.central.close()
    time.sleep(0.5)
    assert outbox.depth() == 5
    central.start()  # a new boot: online anew, so the link sends the 5 again
    wait_for(lambda: outbox.depth() == 0, what="the receipts of the duplicates")
    assert central.journal() == {e.id: 1 for e in entries}, "applied once each"
    # the resends (and any PUBACK the dead central had not yet written: redelivered)
    assert central.service.counters["duplicates"] >= 5


def test_the_central_keeps_and_receipts_a_malformed_event_that_names_its_id(hall, tmp_path):
    broker, witness, central, outbox, make_link = hall
    central.start()
    bad = {"id": "gw-1-x-1", "gateway": GW, "window": 1, "type": "nonsense"}
    witness.publish(f"hall/v1/{SITE}/window/1/event", bad)
    wait_for(lambda: witness.payloads(RECEIPT), what="a receipt for it")
    assert parse_receipt(witness.payloads(RECEIPT)[0]) == ["gw-1-x-1"]
    kept = central.service.central.store.bad_events()
    assert [(b["id"], b["gateway"]) for b in kept] == [("gw-1-x-1", GW)]
    assert "type" in kept[0]["reason"]
    errors = [json.loads(p) for p in witness.payloads(f"hall/v1/{SITE}/central/errors")]
    assert [e["kind"] for e in errors] == ["bad-event"]


def test_the_window_bounds_what_waits_at_the_broker_while_the_central_is_away(hall):
    """At most `max_unconfirmed` events go out while no receipt comes; the rest wait in
    the outbox, and all arrive, once each, when the central is back."""
    broker, witness, central, outbox, make_link = hall
    link = make_link(max_inflight=2, max_unconfirmed=5)
    entries = [vote(outbox, 1 + i % 2) for i in range(20)]
    fed = []

    def feed_room():  # as the daemon's sender: oldest first, as far as the link has room
        if link.in_flight == 0:
            fed.clear()
        rows = outbox.pending(limit=link.room, after_seq=fed[-1] if fed else None)
        for e in rows:
            link.publish_event(e.window, e.payload, token=e.seq, event_id=e.id)
            fed.append(e.seq)

    events = f"hall/v1/{SITE}/window/+/event"

    def at_witness():
        return len([t for t, _, _ in witness.messages if mqtt.topic_matches_sub(events, t)])

    feed_room()
    wait_for(lambda: at_witness() == 5, what="the window at the witness")
    feed_room()  # no room: nothing more goes out
    time.sleep(1.0)
    assert at_witness() == 5 and link.unconfirmed() == (0, 5)
    assert outbox.depth() == 20 and link.room == 0

    central.start()
    deadline = time.monotonic() + 30
    while outbox.depth() and time.monotonic() < deadline:
        feed_room()
        time.sleep(0.05)
    assert outbox.depth() == 0, f"{outbox.depth()} left"
    assert central.journal() == {e.id: 1 for e in entries}
