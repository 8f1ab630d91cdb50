"""Simulated hardware: the real firmware on the MicroPython interpreter, joined by a pty bus hub."""
