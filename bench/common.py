"""Shared by the benchmarks (not a benchmark itself): percentiles, a hall config, firmware
devices on a paced line, a gateway child process and a subscriber that time-stamps what
it receives.

Times are time.monotonic() of this process; a child's output is read here too, so every
latency is measured on one clock.
"""

import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from hallgate.sim.device import FirmwareDevice

EVENTS = "hall/v1/+/window/+/event"


def percentile(values, q):
    """The q-th percentile (0-100) of values, nearest rank; None for no values.

    >>> percentile(range(1, 101), 99), percentile(range(1, 101), 50), percentile([7], 99)
    (99, 50, 7)
    """
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def ms(seconds, digits=2):
    return None if seconds is None else round(seconds * 1000, digits)


def child_env(**extra):
    """This environment without a systemd of our own (make may run under one)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
    env.update(extra)
    return env


def hall_config(path, *, broker_port, hub_path=None, devices=(), windows=(), gpio=None,
                outbox=None):
    """A hall.toml: `devices` [(address, role, window)] on bus "hall" at hub_path,
    `windows` the window numbers, `gpio` {window: (like_pin, dislike_pin)}."""
    gpio = gpio or {}
    text = (f'[gateway]\nsite = "bench"\nid = "gw-bench"\n\n'
            f'[mqtt]\nurls = ["mqtt://127.0.0.1:{broker_port}"]\n\n'
            f'[outbox]\npath = "{outbox or Path(path).with_name("outbox.sqlite")}"\n'
            # no central service runs here to send receipts: measured to the broker
            f'delivery = "puback"\n\n')
    for w in windows:
        text += f"[[windows]]\nnumber = {w}\n"
        if w in gpio:
            text += f"like_pin = {gpio[w][0]}\ndislike_pin = {gpio[w][1]}\n"
        text += "\n"
    if hub_path is not None:
        text += f'[[buses]]\nname = "hall"\nport = "{hub_path}"\n'
        for address, role, window in devices:
            text += (f"\n  [[buses.devices]]\n  address = {address}\n  role = \"{role}\"\n"
                     f"  window = {window}\n")
    Path(path).write_text(text)
    return Path(path)


def start_devices(hub, tmp, specs, **config):
    """FirmwareDevice per (address, role, window) on the hub's line; closes the started
    ones if one fails."""
    devices = {}
    try:
        for address, role, window in specs:
            devices[address] = FirmwareDevice(
                Path(tmp) / f"dev-{address}", address, role, window,
                hub.add_port(f"{role}-{address}"), ready_timeout=60, **config)
    except BaseException:
        for d in devices.values():
            d.close()
        raise
    return devices


class GatewayProcess:
    """The gateway as a child process: `hallgate sim gateway` (mock pins pressed on its
    stdin) or `hallgate run` (the daemon itself; GPIO on gpiozero's MockFactory)."""

    def __init__(self, config, log_path, *, run=False, status_file=None):
        if run:
            cmd = [sys.executable, "-m", "hallgate.cli", "run", "--config", str(config)]
            env = child_env(GPIOZERO_PIN_FACTORY="mock")
        else:
            cmd = [sys.executable, "-m", "hallgate.cli", "sim", "gateway", "--config",
                   str(config)]
            env = child_env()
        if status_file is not None:  # and its control socket beside it
            cmd += ["--status-file", str(status_file)]
        self.log = open(log_path, "ab")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE,
                                     stdout=self.log if run else subprocess.PIPE,
                                     stderr=self.log, env=env, text=True, bufsize=1)
        self.log_path = log_path
        self.ready = None
        if not run:
            line = self.proc.stdout.readline()  # bounded: the child exits on failure
            try:
                self.ready = json.loads(line)["ready"]
            except (ValueError, KeyError):
                self.close()
                raise SystemExit(f"gateway did not start: {line!r}; see {log_path}") from None

    @property
    def pid(self):
        return self.proc.pid

    def send(self, line):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def close(self, timeout=15):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


class Subscriber:
    """A paho client on `topics` (QoS 1) that keeps (monotonic arrival, topic, payload)
    of every message; wait_for() returns the first one after an index matching a test."""

    def __init__(self, port, topics=(EVENTS,), client_id="bench-subscriber"):
        self.got = []
        self.cond = threading.Condition()
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *a: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise SystemExit("subscriber: no SUBACK within 10 s")

    def _on_message(self, client, userdata, msg):
        t = time.monotonic()
        try:
            payload = json.loads(msg.payload)
        except ValueError:
            payload = None
        with self.cond:
            self.got.append((t, msg.topic, payload))
            self.cond.notify_all()

    def mark(self):
        with self.cond:
            return len(self.got)

    def wait_for(self, test, since, timeout):
        """(arrival, topic, payload) of the first message from index `since` on with
        test(topic, payload) true, or None after `timeout` s."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for i in range(since, len(self.got)):
                    if test(self.got[i][1], self.got[i][2]):
                        return self.got[i]
                since = len(self.got)
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def count(self, test, since=0):
        with self.cond:
            return sum(1 for _, topic, p in self.got[since:] if test(topic, p))

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()
