"""Operator sessions: logging in on the call panel's keys, and the record of who worked.

The panel has eight keys and four 7-segment digits, no keypad. A window with nobody
logged in is "closed"; there each key is a PIN digit, in the order the keys are printed:

    call=1  recall=2  start=3  finish=4  noshow=5  pause=6  resume=7  redirect=8

The panel shows ``PIn``, then a dash per digit entered (``P--``); four digits that are an
operator's PIN log them in (the panel beeps and shows the window's queue), any other four
show ``Err`` until the next key. After `MAX_FAILURES` wrong PINs in a row the window takes
no PIN for `LOCK_S` seconds (``LOC``): 4,096 PINs cannot be tried from one panel in a day.
Logging out: pause, then pause again while paused (a window with someone's visitor at it
cannot log out: finish first). A staff app does both over MQTT (``staff/session``).

A PIN's keys travel as ordinary key events, so they are in the central's journal like
every key: the journal is as private as the config file that holds the PINs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .clock import local_day
from .queueconfig import KEYS, OPERATOR, PIN_DIGITS, PIN_LENGTH, Operator
from .state import CALLED, SERVING, Outcome, SessionRecord, Window

__all__ = ["LOCK_S", "MAX_FAILURES", "OperatorSessions", "PinPad", "key_digit"]

MAX_FAILURES = 5
LOCK_S = 300


def key_digit(key: str) -> str:
    """The PIN digit of a panel key.

    >>> key_digit("call"), key_digit("redirect")
    ('1', '8')
    """
    return PIN_DIGITS[KEYS.index(key)]


class PinPad:
    """PIN entry at a closed window. State lives on the `Window` (entered digits, failures,
    the lock), so it survives a restart like the rest of the window."""

    def __init__(self, operators: dict[str, Operator]) -> None:
        self._by_pin = {op.pin: op.id for op in operators.values() if op.pin}

    def press(self, w, key: str, now: float) -> tuple[str | None, str | None]:
        """Key `key` at closed window `w`: (operator logged in or None, refusal or None)."""
        if w.pin_locked_until is not None and now < w.pin_locked_until:
            return None, (f"window {w.n}: PIN entry locked for {int(w.pin_locked_until - now)}"
                          f" s after {MAX_FAILURES} wrong PINs")
        w.pin_locked_until = None
        w.pin_error = False
        w.pin += key_digit(key)
        if len(w.pin) < PIN_LENGTH:
            return None, None
        entered, w.pin = w.pin, ""
        operator = self._by_pin.get(entered)
        if operator is not None:
            w.pin_failures = 0
            return operator, None
        w.pin_failures += 1
        w.pin_error = True
        if w.pin_failures >= MAX_FAILURES:
            w.pin_failures = 0
            w.pin_locked_until = now + LOCK_S
            return None, f"window {w.n}: wrong PIN, {MAX_FAILURES} in a row: locked {LOCK_S} s"
        return None, f"window {w.n}: wrong PIN"

    @staticmethod
    def text(w, now: float | None) -> str:
        """What the closed panel shows."""
        if w.pin_locked_until is not None and (now is None or now < w.pin_locked_until):
            return "LOC"
        if w.pin_error:
            return "Err"
        return "P" + "-" * len(w.pin) if w.pin else "PIn"


class OperatorSessions:
    """The queue's login and logout (a mixin of `central.queue.Queue`, whose state,
    config, dirty set and desired-state refresh it uses)."""

    def session(self, request: Mapping[str, Any], *, now: float) -> Outcome:
        """A staff app's login or logout: ``{"id", "window", "action": "login" | "logout",
        "operator"}`` (deduped by id like an event). Logging in where someone else is
        logged in hands the window over; an operator logged in elsewhere is logged out
        there first. A window whose visitor is at it cannot change hands: finish first."""
        seen = self._first_sight(request.get("id"), "session request", now)
        if seen is not None:
            return seen
        n = request.get("window")
        w = self.state.windows.get(n) if isinstance(n, int) else None
        if w is None:
            return Outcome(False, f"window {n!r} is not configured")
        action, operator = request.get("action"), request.get("operator")
        if action == "logout":
            if w.operator is None:
                return Outcome(False, f"window {w.n}: nobody is logged in")
            if w.mode in (CALLED, SERVING):
                return Outcome(False, self._busy(w) + ": finish first")
            self._logout(w, now, "app")
            self._refresh([w.n], now=now)
            return Outcome(True)
        if action != "login":
            return Outcome(False, f"action {action!r}: login or logout")
        return self._login_checked(w, operator, now, "app")

    def _pin_key(self, w: Window, key: str, now: float) -> Outcome:
        operator, refusal = self._pinpad.press(w, key, now)
        self._dirty.windows.add(w.n)
        out = (self._login_checked(w, operator, now, "panel") if operator is not None
               else Outcome(refusal is None, refusal))
        self._refresh([w.n], now=now, announce=operator is not None and out.ok)
        return out

    def _login_checked(self, w: Window, operator: Any, now: float, via: str) -> Outcome:
        cfg = self.config
        if not isinstance(operator, str) or not OPERATOR.fullmatch(operator):
            return Outcome(False, f"operator {operator!r}: 1-64 of A-Z a-z 0-9 . _ -")
        if cfg.operators and operator not in cfg.operators:
            return Outcome(False, f"operator {operator!r} is not configured")
        if w.mode in (CALLED, SERVING):
            return Outcome(False, self._busy(w) + ": finish first")
        other = next((x for x in self.state.windows.values()
                      if x.operator == operator and x.n != w.n), None)
        if other is not None:
            if other.mode in (CALLED, SERVING):
                return Outcome(False, f"{operator} is at window {other.n}: "
                                      + self._busy(other) + ": finish there first")
            self._logout(other, now, "login-elsewhere")
            self._refresh([other.n], now=now)
        if w.operator == operator:
            return Outcome(True)  # already here
        if w.operator is not None:
            self._logout(w, now, via)
        self._login(w, operator, now, via)
        self._refresh([w.n], now=now)
        return Outcome(True)

    def _login(self, w: Window, operator: str, now: float | None, via: str) -> None:
        w.operator, w.pin, w.pin_error = operator, "", False
        if w.mode == "closed":
            w.mode = "idle"
        self._dirty.windows.add(w.n)
        if now is None:
            return
        s = self.state
        s.session_seq += 1
        rec = SessionRecord(sid=s.session_seq, day=local_day(now, self.config.tz),
                            operator=operator, window=w.n, start=now, via=via)
        s.sessions[rec.sid] = rec
        w.session = rec.sid
        self._dirty.sessions.add(rec.sid)

    def _logout(self, w: Window, now: float | None, via: str) -> None:
        rec = self.state.sessions.get(w.session) if w.session is not None else None
        if rec is not None and now is not None:
            rec.end, rec.end_via = now, via
            self._dirty.sessions.add(rec.sid)
        w.operator, w.session = None, None
        if self.config.sessions and w.mode in ("idle", "paused"):
            w.mode = "closed"
        self._dirty.windows.add(w.n)
