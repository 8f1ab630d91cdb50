# hallgate device firmware: entry point. On a Pico it runs at power-up and reads
# config.json from flash. On a PC (the MicroPython unix port):
#     MICROPYPATH=build/mpy:firmware:protocols micropython -X heapsize=48k firmware/main.py CONFIG
# Kept to two lines because a board compiles main.py from source at every start: all the
# code lives in precompiled modules (devmain and what it imports).
import devmain

devmain.main()
