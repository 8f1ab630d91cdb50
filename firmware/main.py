# hallgate device firmware: entry point, the boot loader (slots.py) in two lines. A board
# compiles main.py from source at every start, so the code lives in precompiled modules.
# main.py and slots.mpy stay in the root of the flash and are never changed over the bus;
# the firmware itself runs from a slot folder (see slots.py).
import slots

slots.start()
