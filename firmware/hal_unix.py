# Board support for PCs and tests: the MicroPython unix port.
#
# The bus UART is a serial device or pty path from the config ("uart"). Keys, display,
# LED and buzzer live on a line-based CONTROL CHANNEL on stdin/stdout, so tests and the
# simulator press keys and watch what is shown while the real firmware runs:
#
#   in:  press KEY [HOLD_MS]            contact closed now, opened HOLD_MS later (100)
#        levels KEY MS:LEVEL ...        contact timeline from now, LEVEL 1 = closed
#        state                          -> {"state": {...what is shown now...}}
#        info                           -> {"info": {...counters, mem_free...}}
#        hang MS                        the main loop blocks MS in a sleep, as stuck in a
#                                       C call: the watchdog's test
#        fault [TEXT]                   the main loop raises RuntimeError(TEXT): a fault
#                                       it survives, kept in the device log
#        quit                           stop (as does end of input)
#   out: one JSON object per line, flushed: {"display"|"panel"|"feedback": ...} (the
#        applied state, at start and whenever it changes; a feedback pad's says what each
#        key LED does: "on", "blink" or "off"), {"ready": ...} (the last line of start-up),
#        {"event": ...}, {"dropped": ...}, {"ignored": ...}, {"identify": N},
#        {"beep": MS}, {"fault": ...} (an exception the loop survived), {"error": ...}
#        (a bad command line, or the bus gone).
#
# Key contacts are sampled exactly like pins on a board; a command only sets the level
# the sampler will read at a given time, so debouncing, lockout and long press are the
# real code.
#
# The watchdog (config watchdog_ms; off unless configured here, see devconfig) is a
# watcher thread (the port has _thread, and no signal module for an alarm): when feed()
# has not come for the timeout, it writes the watchdog reset marker (devlog.py) and ends
# the process with SIGALRM (-14 as a Popen returncode), as a board resets, whatever the
# main thread is doing: stuck in a sleep, a read, any C call. The port has no os.kill: a
# shell (os.system) sends the signal to its parent, this process. Whoever runs the device
# starts it again, as a board restarts itself. The board id (INFO) is devlog's random one:
# the port has no chip to read one from.

import gc
import json
import os
import select
import sys
import termios
import time

from compat import const, ticks_add, ticks_diff
from keypad import Debouncer

_VTIME = const(5)  # indexes into termios c_cc on Linux
_VMIN = const(6)
QUIET_MS = const(50)  # the loop's period with every key up and settled (see wait)
SETTLE_MS = const(200)  # after a contact change: ten debounce windows of sampling


class TextDisplay:
    """A display that only remembers what it was told (the role reports it)."""

    def __init__(self):
        self.text = ""
        self.on = True
        self.level = 8

    def show(self, text):
        self.text = text

    def light(self, on):
        self.on = on

    def intensity(self, level):
        self.level = level


class Board:
    BOARD = 1  # bus.BOARDS: unix
    # (board id, reset cause): no chip id (devlog keeps a random one), and a process start
    # is a power-on (a restart's marker says otherwise). Attributes, not methods: RAM.
    identity = (None, 1)

    def __init__(self, cfg):
        path = cfg["uart"]
        if not path:
            raise ValueError("config field 'uart' is required on unix: a serial or pty path")
        try:
            self._uart = open(path, "r+b")
        except OSError as e:
            raise ValueError("config field 'uart': cannot open %s: %s" % (path, e))
        fd = self._uart.fileno()
        termios.setraw(fd)
        # VMIN 0, VTIME 0: a read returns what has arrived, at once (the port has no
        # O_NONBLOCK); poll() below does the waiting.
        attrs = termios.tcgetattr(fd)
        attrs[6][_VMIN] = 0
        attrs[6][_VTIME] = 0
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
        self._stdin = sys.stdin.buffer
        self._poll = select.poll()
        self._poll.register(self._uart, select.POLLIN)
        self._poll.register(self._stdin, select.POLLIN)
        self.display = TextDisplay()
        self.running = True
        self._names = ()
        self._levels = bytearray(0)
        self._whole_ms = 2 * Debouncer.debounce_ms  # see _advance
        # Contact steps, in the order given: [due ticks or None, key index, level, ms the
        # key's level before it lasts, seen: that level was sampled at its end (or need
        # not be, see _advance)]. Only a key's first pending step has a due time;
        # the next one's clock starts when it is applied, so a contact stays closed for its
        # hold time as the firmware lives it, even when the command was read late.
        self._timeline = []
        self._changed = None  # ticks of the last contact change (quiet keys: see wait)
        self._files = cfg["files"]  # (devlog's; the watchdog's reset marker goes there)
        self._dog = [0, 0, None]  # the watchdog: [last fed (ticks), ms (0: none), lock]

    # ---- identity and the watchdog ------------------------------------------------

    def watchdog(self, ms):
        """Start the watchdog thread (ms; 0: stop it, and wait until it has ended)."""
        dog = self._dog
        if dog[1]:
            dog[1] = 0
            dog[2].acquire()  # held by the thread while it watches: it has ended
            dog[2].release()  # (or, not started yet, it will see dog[1] and end)
        if ms:
            import _thread  # (the port's: without it, no unix device starts)

            dog = self._dog = [time.ticks_ms(), ms, _thread.allocate_lock()]
            _thread.start_new_thread(_watch, (dog, self._files))

    def feed(self):
        self._dog[0] = time.ticks_ms()  # a small int: one store, safe beside the thread

    # ---- bus ----------------------------------------------------------------------

    def uart_read(self, buf):
        try:
            return self._uart.readinto(buf) or 0
        except OSError:  # pty master closed: the bus hub is gone
            self.running = False
            self.emit("error", "uart closed")
            return 0

    def uart_write(self, data):
        self._uart.write(data)  # a pty has no direction pin to drive

    def close(self):
        """Let the UART and the watchdog go (before the boot loader starts the firmware
        again)."""
        self.watchdog(0)
        self._poll.unregister(self._uart)
        self._uart.close()

    # ---- keys and outputs ---------------------------------------------------------

    def setup_keys(self, names):
        self._names = names
        self._levels = bytearray(len(names))

    def key_level(self, i, now):
        if self._timeline:
            self._advance(i, now)
        return self._levels[i]

    def _advance(self, i, now):
        """Apply key i's steps that are due.

        A level held for two debounce windows or more is sampled at least once at or
        after its end before the next step replaces it: a board sampling every few ms
        would have seen it whole, and a test process starved of CPU for longer than a
        press (a loaded CI machine) must not turn a 100 ms press into a single sample.
        Shorter levels (bounces, spikes) end on time, so they stay what they are.
        """
        tl = self._timeline
        k = 0
        while k < len(tl):
            step = tl[k]
            if step[1] != i:
                k += 1
                continue
            if step[0] is None or ticks_diff(now, step[0]) < 0:
                return
            if not step[4]:
                step[4] = True  # this sample still reads the old level
                return
            self._levels[i] = step[2]
            self._changed = now
            tl.pop(k)
            for j in range(k, len(tl)):  # start the clock of the key's next step
                if tl[j][1] == i:
                    tl[j][0] = ticks_add(now, tl[j][3])
                    tl[j][4] = tl[j][3] < self._whole_ms
                    break

    def _schedule(self, i, steps, now):
        """Steps [(ms from now, level)] for key i; after the key's pending steps, if any."""
        pending = False
        for step in self._timeline:
            if step[1] == i:
                pending = True
        prev = 0
        for ms, level in steps:
            due = None if pending else ticks_add(now, ms)
            self._timeline.append([due, i, level, ms - prev, True])
            pending = True
            prev = ms

    def led(self, on, key=-1):
        pass  # the role reports its LEDs in `state`; a blinking LED would flood the channel

    def buzzer(self, on):
        pass  # beeps are reported by the role as {"beep": ms}

    def emit(self, kind, value):
        out = sys.stdout
        out.write(json.dumps({kind: value}))
        out.write("\n")
        out.flush()

    # ---- waiting and the control channel ------------------------------------------

    def wait(self, core, ms, now):
        """Sleep up to ms, less when the bus or the control channel has input. With every
        key up, settled and no contact change scheduled, no sample can see anything new:
        sleep QUIET_MS then (the bus and the control channel still wake it at once; the
        roles' timers, 100 ms and slower, run late by less than that)."""
        if (not self._timeline and not any(self._levels) and not core.waiting()
                and (self._changed is None or ticks_diff(now, self._changed) >= SETTLE_MS)):
            ms = max(ms, QUIET_MS)
        for obj, flags in self._poll.poll(ms):
            if obj is self._stdin:
                line = self._stdin.readline()
                if not line:
                    self.running = False  # nobody is watching any more
                    return
                self._command(core, line.decode(), now)
            elif flags & (select.POLLHUP | select.POLLERR):
                self.uart_read(bytearray(1))  # reports and stops if the bus is gone

    def _command(self, core, line, now):
        words = line.split()
        if not words:
            return
        try:
            cmd = words[0]
            if cmd == "press":
                i = self._key(words[1])
                hold = int(words[2]) if len(words) > 2 else 100
                self._schedule(i, ((0, 1), (hold, 0)), now)
            elif cmd == "levels":
                i = self._key(words[1])
                steps = []
                for step in words[2:]:
                    ms, level = step.split(":")
                    steps.append((int(ms), 1 if int(level) else 0))
                self._schedule(i, steps, now)
            elif cmd == "state":
                self.emit("state", core.role.describe())
            elif cmd == "info":
                gc.collect()
                counters = core.counters()
                counters["mem_free"] = gc.mem_free()
                counters["mem_alloc"] = gc.mem_alloc()
                self.emit("info", counters)
            elif cmd == "hang":
                time.sleep_ms(int(words[1]))
            elif cmd == "fault":
                raise RuntimeError(" ".join(words[1:]) or "fault")
            elif cmd == "quit":
                self.running = False
            else:
                raise ValueError("unknown command")
        except (ValueError, IndexError) as e:
            self.emit("error", "bad command %r: %s" % (line.strip(), e))

    def _key(self, name):
        if name not in self._names:
            raise ValueError("no key %r on this device" % name)
        return self._names.index(name)


def _watch(dog, files):
    """The watchdog thread: ends the process when dog[0] is older than dog[1] ms."""
    with dog[2]:
        while dog[1]:
            time.sleep_ms(20)
            if dog[1] and ticks_diff(time.ticks_ms(), dog[0]) > dog[1]:
                with open(files + ".rst", "w") as f:
                    f.write("2")  # devlog's reset marker: watchdog
                sys.stderr.write("watchdog: not fed, resetting\n")
                os.system("kill -ALRM $PPID")
                time.sleep_ms(1000)  # the signal ends this thread too
