"""The gateway daemon for the simulator: the real `Gateway` on gpiozero mock pins, whose
feedback buttons are pressed through a control channel on stdin/stdout
(`hallgate sim gateway --config FILE`).

The simulator runs the gateway as a child process, so it can be killed with SIGKILL mid-day
like a Pi losing power, and its like / dislike buttons are mock pins inside it, so they are
pressed here. Nothing else differs from `hallgate run`: the same config, bus master,
outbox, MQTT link and voting rules.

Control channel, one line each way (as the firmware's, firmware/hal_unix.py):
    in:  press PIN MS       close the button on BCM pin PIN for MS ms, and on until the
                            gateway has taken the press (at most HOLD_MAX_S): a process
                            starved of CPU must not sleep through a short press that a
                            Pi would have seen, as the firmware's contact timeline does
    out: {"ready": {"pid": ..., "outbox": N}}   once started (N events waiting from before)
         {"ballot": {"window": n, "ticket": "A042" or null}}   voting opened or closed at
                                a window: what the button LEDs show; a visitor waits for it
         {"error": "..."}   a bad command line
SIGTERM or the end of stdin: a clean stop (the outbox is drained for a moment first).
`GatewayHost` is the simulator's side: it starts the child, reads its lines, presses.
"""

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

from hallgate.sim import SimError

log = logging.getLogger(__name__)

WATCH_S = 0.005  # how often voting state is compared: one feedback sample period
HOLD_MAX_S = 2.0  # a press held this long and still not taken is let go (and reported)


class Host:
    def __init__(self, config, out=sys.stdout, status_file=None):
        from gpiozero.pins.mock import MockFactory  # the child's imports: not the parent's
        from hallgate.gateway.daemon import Gateway

        self.factory = MockFactory()
        self.gateway = Gateway(config, pin_factory=self.factory, status_file=status_file)
        self._out = out
        self._out_lock = threading.Lock()
        self._stop = threading.Event()
        self._ballots = {}
        self._panel_of = {}  # button pin -> its FeedbackPanel
        if self.gateway.feedback is not None:
            for w in config.windows:
                for pin in (w.like_pin, w.dislike_pin):
                    if pin is not None:
                        self._panel_of[pin] = self.gateway.feedback[w.number]

    def emit(self, kind, value):
        with self._out_lock:
            self._out.write(json.dumps({kind: value}) + "\n")
            self._out.flush()

    def command(self, line):
        words = line.split()
        if not words:
            return
        try:
            if words[0] != "press" or len(words) != 3:
                raise ValueError("expected: press PIN MS")
            number, ms = int(words[1]), int(words[2])
            panel = self._panel_of[number]
        except (ValueError, LookupError) as e:
            self.emit("error", f"bad command {line.strip()!r}: not a feedback button ({e})")
            return
        threading.Thread(target=self._hold, args=(number, panel, ms), daemon=True).start()

    def _hold(self, number, panel, ms):
        pin = self.factory.pin(number)
        taken = panel.presses
        pin.drive_low()  # buttons pull up: a closed contact reads low
        time.sleep(ms / 1000)
        deadline = time.monotonic() + HOLD_MAX_S
        while panel.presses == taken and time.monotonic() < deadline:
            time.sleep(WATCH_S)
        if panel.presses == taken:
            self.emit("error", f"press on pin {number} not taken within {HOLD_MAX_S} s")
        pin.drive_high()

    def _read_commands(self):
        for line in sys.stdin:
            self.command(line)
        self._stop.set()  # nobody is driving any more

    def _watch_ballots(self):
        fb = self.gateway.feedback
        if fb is None:
            return
        for s in fb.state().values():
            ticket = s["ticket"] if s["open"] else None
            if self._ballots.get(s["window"], "-") != ticket:
                self._ballots[s["window"]] = ticket
                self.emit("ballot", {"window": s["window"], "ticket": ticket})

    def run(self):
        signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        self.gateway.start()
        self.emit("ready", {"pid": os.getpid(),
                            "outbox": self.gateway.outbox.depth()})
        threading.Thread(target=self._read_commands, name="control", daemon=True).start()
        try:
            while not self._stop.wait(WATCH_S):
                self._watch_ballots()
        finally:
            self.gateway.stop()
        return 0


class GatewayHost:
    """The `hallgate sim gateway` child: start, kill (SIGKILL), press a button, and the
    voting state it reports (`ballots`: window -> ticket open, or None)."""

    def __init__(self, config, log_path, on_error=None, status_file=None):
        self.config = config
        self.status_file = status_file  # and its control socket beside it
        self.on_error = on_error
        self.log_path = log_path
        self.proc = None
        self.starts = 0
        self.started_at = 0.0  # time.monotonic() of the last start
        self.cond = threading.Condition()
        self.ballots = {}

    def start(self, timeout):
        cmd = [sys.executable, "-m", "hallgate.cli", "sim", "gateway", "--config",
               str(self.config)]
        if self.status_file is not None:
            cmd += ["--status-file", str(self.status_file)]
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET",
                                                                 "WATCHDOG_USEC")}
        with open(self.log_path, "ab") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=err, env=env, text=True, bufsize=1)
        self.starts += 1
        self.started_at = time.monotonic()
        ready = threading.Event()
        threading.Thread(target=self._read, args=(self.proc, ready), daemon=True).start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                why = (f"exited ({self.proc.returncode})" if self.proc.poll() is not None
                       else f"did not start within {timeout:.0f} s")
                tail = self.log_path.read_text(errors="replace").splitlines()[-5:]
                raise SimError(f"the gateway {why}; the end of its log {self.log_path}:\n"
                               + "\n".join(tail))
        return self

    def _read(self, proc, ready):
        for line in proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if "ready" in msg:
                ready.set()
            elif "ballot" in msg:
                with self.cond:
                    self.ballots[msg["ballot"]["window"]] = msg["ballot"]["ticket"]
                    self.cond.notify_all()
            elif "error" in msg and self.on_error is not None:
                self.on_error(f"gateway host: {msg['error']}")

    def press(self, pin, ms):
        try:
            self.proc.stdin.write(f"press {pin} {int(ms)}\n")
            self.proc.stdin.flush()
            return True
        except (OSError, ValueError):  # the gateway is down: the visitor's press is lost
            return False

    def wait_ballot(self, window, ticket, timeout):
        with self.cond:
            return self.cond.wait_for(lambda: self.ballots.get(window) == ticket, timeout)

    def kill(self):
        self.proc.kill()
        self.proc.wait(10)
        with self.cond:
            self.ballots.clear()

    def stop(self, timeout=15):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def main(config, status_file=None):
    return Host(config, status_file=status_file).run()
