"""What the central takes in over MQTT, checked, and the answers it gives: pure functions.

Each check raises `Malformed` with a reason naming the field (it goes on
``central/errors``); the connection, batching and publishing are central/mqtt.py's.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from hallgate.protocols.jsonobject import load_object

from .clock import utc_ts
from .queue import Queue, Ticket

__all__ = ["MAX_PAYLOAD", "Malformed", "check_event", "decode", "issued_answer",
           "request_id", "ticket_request"]

MAX_PAYLOAD = 4096  # an event or a request larger than this is malformed
GATEWAY_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")  # a topic level (MQTT.md section 1)
_HHMM = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]")
_UTC_TS = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z")


class Malformed(ValueError):
    """Malformed input. `obj`: the JSON object, when the payload was one (a malformed event
    that names its id and gateway is kept and receipted, central/mqtt.py)."""

    def __init__(self, reason: str, obj: dict | None = None) -> None:
        super().__init__(reason)
        self.obj = obj


def decode(payload: bytes) -> dict:
    try:
        return load_object(payload, MAX_PAYLOAD)
    except ValueError as e:
        raise Malformed(str(e)) from None


def request_id(req: dict) -> str:
    rid = req.get("id")
    if not isinstance(rid, str) or not 1 <= len(rid) <= 128:
        raise Malformed("id: a string of 1-128 characters expected")
    return rid


def check_event(topic: str, payload: bytes) -> dict:
    """An event from ``window/{n}/event``, its fields checked against the topic."""
    event = decode(payload)
    parts = topic.split("/")
    if len(parts) != 6 or parts[3] != "window" or parts[5] != "event":
        raise Malformed("not an event topic", event)
    n = parts[4]
    if not n.isdigit() or n.startswith("0"):
        raise Malformed(f"window {n!r} in the topic: 1-999999 in plain decimal", event)
    if not isinstance(event.get("id"), str) or not 1 <= len(event["id"]) <= 128:
        raise Malformed("id: missing, or not a string of 1-128 characters")
    gateway = event.get("gateway")
    if not isinstance(gateway, str) or not GATEWAY_NAME.fullmatch(gateway):
        raise Malformed(f"gateway: {gateway!r} is not a gateway id (1-64 of A-Z a-z 0-9 . _ -)")
    if event.get("window") != int(n):
        raise Malformed(f"window: {event.get('window')!r} is not the topic's window {n}", event)
    if event.get("type") not in ("key", "vote"):
        raise Malformed(f"type: {event.get('type')!r} is not key or vote", event)
    return event


def ticket_request(payload: bytes, now: float, tz: str | None) -> tuple[str, dict]:
    """(request id, the keyword arguments of `Central.apply_issue`) from a request."""
    req = decode(payload)
    rid = request_id(req)
    service = req.get("service")
    if not isinstance(service, str):
        raise Malformed(f"service: {service!r} is not a string")
    appointment = req.get("appointment", False)
    if not isinstance(appointment, bool):
        raise Malformed(f"appointment: {appointment!r} is not true or false")
    priority = req.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 9:
        raise Malformed(f"priority: {priority!r} is not an integer 0-9")
    return rid, {"service": service, "appointment": appointment, "priority": priority,
                 "slot": slot(req.get("slot"), now, tz)}


def slot(value: Any, now: float, tz: str | None) -> float | None:
    """A request's slot: the contract's UTC timestamp, or HH:MM local today (in `tz`)."""
    if value is None:
        return None
    if isinstance(value, str) and _HHMM.fullmatch(value):
        today = datetime.fromtimestamp(now, ZoneInfo(tz) if tz else None)
        h, m = map(int, value.split(":"))
        return today.replace(hour=h, minute=m, second=0, microsecond=0).timestamp()
    if isinstance(value, str) and _UTC_TS.fullmatch(value):
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    raise Malformed(f"slot: {value!r} is not a UTC time like ts "
                    "(2026-11-23T10:30:00.000Z) or HH:MM local time")


def issued_answer(queue: Queue, rid: str, t: Ticket) -> dict:
    """The ``ticket/issued`` answer: the ticket, its place and a rough wait estimate."""
    svc = queue.config.service(t.issued_service)
    out: dict[str, Any] = {"request_id": rid, "ticket": t.number,
                           "service": t.issued_service, "service_name": svc.name,
                           "issued_ts": utc_ts(t.issued_at)}
    if t.slot is not None:
        out["slot_ts"] = utc_ts(t.slot)
    if t.late:
        out["late"] = True
    if t.state == "waiting":
        waiting = queue.waiting([t.service])
        out["queue_position"] = position = next(
            i for i, q in enumerate(waiting, 1) if q.tid == t.tid)
        windows = len(queue.windows_serving(t.service))
        if svc.expected_s and windows:
            out["expected_wait_s"] = int((position - 1) // windows * svc.expected_s)
    return out
