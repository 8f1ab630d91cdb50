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

from dataclasses import dataclass

from .queueconfig import KEYS, PIN_DIGITS, PIN_LENGTH, Operator

__all__ = ["LOCK_S", "MAX_FAILURES", "PinPad", "SessionRecord", "key_digit"]

MAX_FAILURES = 5
LOCK_S = 300


def key_digit(key: str) -> str:
    """The PIN digit of a panel key.

    >>> key_digit("call"), key_digit("redirect")
    ('1', '8')
    """
    return PIN_DIGITS[KEYS.index(key)]


@dataclass
class SessionRecord:
    """One operator's time at one window: `end` None while logged in."""

    sid: int
    day: str  # local day it began
    operator: str
    window: int
    start: float
    via: str  # panel | app | config
    end: float | None = None
    end_via: str | None = None  # panel | app | login-elsewhere | config


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
