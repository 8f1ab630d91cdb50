# hallgate device firmware: entry point. On a Pico it runs at power-up and reads
# config.json from flash. Kept to two lines because a board compiles main.py from source
# at every start: the code lives in precompiled modules (devmain and what it imports).
# On a PC (MicroPython unix port) see README.md: the board image (build/mpy/main.py) runs in
# a 48 KB heap; this file with the sources beside it needs about 96 KB, because compiling
# the bus codec from source alone takes ~70 KB.
import devmain

devmain.main()
