"""Simulated hardware: the real firmware on the MicroPython interpreter, joined by a pty bus hub."""


class SimError(RuntimeError):
    """A part of the simulated hall did not come up, or the day could not be finished."""
