"""Receipts: the central service tells a gateway which of its events it has committed.

Design note
-----------
Operations: the central service, after committing a batch of events to its store, sends
each gateway one message on ``hall/v1/{site}/gw/{gateway}/receipt`` (QoS 1, not retained)
made by `make_receipt`; the gateway reads it with `parse_receipt` and deletes those events
from its outbox. Contract: protocols/MQTT.md section 4a.
Goals: a receipt is the one end of the chain that is durable (a broker's PUBACK is not: it
may come before the broker's disk has the event), so it must name exactly the events
committed, be cheap to check, and be safe to lose or repeat: a lost receipt costs the
gateway a resend, which the central dedupes by id and receipts again; a repeated receipt, or
one for an id the gateway no longer holds, changes nothing.
Plan: the payload lists the event ids themselves, opaque strings, as the events carry them.
Why ids and not "epoch + highest contiguous seq": the central would have to know how a
gateway makes its ids, and the outbox's seq has gaps by design (events dropped at its cap),
so a contiguous high-water mark could stall for ever; and ids are what the central already
dedupes by. A batch of MAX_IDS ids of ~20 characters is ~5 KB: one receipt message per
batch keeps the broker's message count near one per event, not two.

    >>> payload = make_receipt("gw-1", ["gw-1-3fa9c2d4-41", "gw-1-3fa9c2d4-42"],
    ...                        ts="2026-11-23T10:15:02.123Z")
    >>> payload
    b'{"ts":"2026-11-23T10:15:02.123Z","gateway":"gw-1","ids":["gw-1-3fa9c2d4-41","gw-1-3fa9c2d4-42"]}'
    >>> parse_receipt(payload)
    ['gw-1-3fa9c2d4-41', 'gw-1-3fa9c2d4-42']
    >>> parse_receipt(b'{"ids": [42]}')
    Traceback (most recent call last):
    ...
    ValueError: ids[0]: 42 is not a string of 1-128 characters
"""

import json

from hallgate.protocols.jsonobject import load_object

MAX_IDS = 1000  # ids one receipt may carry
MAX_ID_CHARS = 128  # the contract's limit for an event id
MAX_PAYLOAD = MAX_IDS * (MAX_ID_CHARS + 3) + 256  # bytes: the largest valid receipt


def make_receipt(gateway, ids, ts):
    """The receipt payload (UTF-8 JSON bytes) for `ids` (at most MAX_IDS) of `gateway`."""
    if not 1 <= len(ids) <= MAX_IDS:
        raise ValueError(f"a receipt carries 1-{MAX_IDS} ids, not {len(ids)}")
    return json.dumps({"ts": ts, "gateway": gateway, "ids": list(ids)},
                      separators=(",", ":"), ensure_ascii=False).encode()


def parse_receipt(payload):
    """The ids a receipt confirms; ValueError naming what is wrong with a malformed one
    (protocols/jsonobject.py: linear in the payload's size, whatever the bytes)."""
    obj = load_object(payload, MAX_PAYLOAD)
    ids = obj.get("ids")
    if not isinstance(ids, list) or not 1 <= len(ids) <= MAX_IDS:
        raise ValueError(f"ids: a list of 1-{MAX_IDS} event ids expected")
    for i, event_id in enumerate(ids):
        if not isinstance(event_id, str) or not 1 <= len(event_id) <= MAX_ID_CHARS:
            raise ValueError(f"ids[{i}]: {json.dumps(event_id)[:40]} is not a string of "
                             f"1-{MAX_ID_CHARS} characters")
    return ids
