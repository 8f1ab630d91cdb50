# Stand-ins for the MicroPython built-ins that compat.py provides, for running the pure
# parts of the firmware on CPython (unit tests). Never imported on a board, so its names
# cost the board nothing. The ticks arithmetic is the rp2's: a 2**30 ms period.


def ticks_add(ticks, delta):
    return (ticks + delta) & 0x3FFFFFFF


def ticks_diff(ticks1, ticks2):
    return ((ticks1 - ticks2 + 0x20000000) & 0x3FFFFFFF) - 0x20000000


def const(value):
    return value
