# What the pure parts of the firmware (keys, queue, roles) need from MicroPython, with
# stand-ins from cpython.py on CPython, so they run and are unit-tested unchanged on both.
#
# ticks: time.ticks_ms() wraps (on the rp2 every 2**30 ms, about 12.4 days), so every
# duration in the firmware is ticks_diff(later, earlier), never a plain subtraction; on
# CPython the rp2's wrap-around arithmetic is reproduced, so synthetic clocks may cross
# the wrap too.
# const: MicroPython's compiler folds `_NAME = const(value)` into the code that uses it,
# so a private constant costs no RAM (no global, no interned name); CPython just gets the
# value.

try:
    from time import ticks_add, ticks_diff

    from micropython import const
except ImportError:
    from cpython import const, ticks_add, ticks_diff
