# MAX7219 driver for 7-segment LED digits, and the 7-segment font.
#
# The chip is used in no-decode mode (we send segment patterns, so letters and '-' work,
# not only BCD digits). Blinking is done by the shutdown register: the chip blanks the
# digits but keeps their registers, so blinking costs one SPI write per half-period and
# no redraw. Board-neutral: it takes any SPI object with write() and a CS pin object with
# value(), so it runs on every port that has machine.SPI.

from compat import const

_DIGIT0 = const(0x01)  # DIG0 is the rightmost digit on the common 8-digit modules
_DECODE_MODE = const(0x09)
_INTENSITY = const(0x0A)
_SCAN_LIMIT = const(0x0B)
_SHUTDOWN = const(0x0C)
_DISPLAY_TEST = const(0x0F)

# Segment bits in no-decode mode: DP A B C D E F G = bit 7 .. bit 0
# (A top, B upper right, C lower right, D bottom, E lower left, F upper left, G middle).
_DP = const(0x80)
_CHARS = "0123456789AbCcdEFGHhIJLnoOPqrStuUy-_= w"
_SEGS = bytes((
    0x7E, 0x30, 0x6D, 0x79, 0x33, 0x5B, 0x5F, 0x70, 0x7F, 0x7B,  # 0-9
    0x77, 0x1F, 0x4E, 0x0D, 0x3D, 0x4F, 0x47, 0x5E, 0x37, 0x17,  # A b C c d E F G H h
    0x06, 0x3C, 0x0E, 0x15, 0x1D, 0x7E, 0x67, 0x73, 0x05, 0x5B,  # I J L n o O P q r S
    0x0F, 0x1C, 0x3E, 0x3B, 0x01, 0x08, 0x09, 0x00,  # t u U y - _ = space
    0x2A,  # w: no true 7-segment form; upper sides and bottom read as one in "w 07"
))


def glyph(char):
    """Segment pattern of one character; a letter without its own case uses the other
    case's form, and a character with no form at all is blank."""
    i = _CHARS.find(char)
    if i < 0:
        i = _CHARS.find(char.upper())
    if i < 0:
        i = _CHARS.find(char.lower())
    return _SEGS[i] if i >= 0 else 0


def segments(text, out):
    """Fill bytearray `out` (one byte per digit, left to right) with `text`, left-aligned;
    a '.' lights the decimal point of the character before it instead of taking a digit.
    Text beyond the last digit is cut off."""
    n = 0
    for i in range(len(out)):
        out[i] = 0
    for char in text:
        if char == "." and 0 < n <= len(out) and not out[n - 1] & _DP:
            out[n - 1] |= _DP
            continue
        if n == len(out):
            break
        out[n] = _DP if char == "." else glyph(char)
        n += 1
    return out


class Max7219:
    """`digits` 7-segment digits behind one MAX7219, on an SPI bus with its own CS pin."""

    def __init__(self, spi, cs, digits=8):
        self._spi = spi
        self._cs = cs
        self.digits = digits
        self._cmd = bytearray(2)  # reused for every register write: no allocation
        self._segs = bytearray(digits)
        cs.value(1)
        self._write(_DISPLAY_TEST, 0)
        self._write(_SCAN_LIMIT, digits - 1)
        self._write(_DECODE_MODE, 0)
        self.intensity(8)
        self.show("")
        self.light(True)

    def _write(self, register, value):
        self._cmd[0] = register
        self._cmd[1] = value
        self._cs.value(0)
        self._spi.write(self._cmd)
        self._cs.value(1)

    def show(self, text):
        segs = segments(text, self._segs)
        last = self.digits - 1
        for i in range(self.digits):
            self._write(_DIGIT0 + last - i, segs[i])

    def intensity(self, level):
        """Brightness 0-15 (the chip's 16 duty-cycle steps)."""
        self._write(_INTENSITY, min(max(level, 0), 15))

    def light(self, on):
        """Digits on, or blanked by the shutdown register (contents kept)."""
        self._write(_SHUTDOWN, 1 if on else 0)
