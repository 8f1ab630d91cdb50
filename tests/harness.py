"""Test harness shared by the daemon tests: the daemon as a child process, and a witness.

The witness is an independent MQTT client with a persistent session: what a central
service would see, including what was published while it reconnected to a restarted broker.
"""

import json
import os
import signal
import subprocess
import sys
import threading

import paho.mqtt.client as mqtt
from conftest import wait_for

EVENTS = "hall/v1/+/window/+/event"


def daemon_env(**extra):
    """The test's environment without a systemd of its own (pytest might run under one)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "RUNTIME_DIRECTORY")}
    env.update(extra)
    return env


def hallgate(*args, timeout=30):
    """`hallgate ARGS` as a child process; the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "hallgate.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env=daemon_env())


class Child:
    """A `hallgate` command as a child process that can be started again after a kill;
    its output goes to `log_path`."""

    def __init__(self, cmd, log_path, env=None):
        self.cmd = cmd
        self.env = daemon_env(**(env or {}))
        self.log_path = log_path
        self.proc = None
        self.starts = 0

    def start(self):
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT,
                                         env=self.env)
        self.starts += 1
        return self

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        """SIGKILL: a power cut, as far as the process can tell."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def close(self):
        if self.running:
            self.proc.kill()
            self.proc.wait(10)

    def log(self, lines=40):
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Daemon(Child):
    """`hallgate run` as a child process; its log goes to tmp_path/daemon.log."""

    def __init__(self, tmp_path, config, env=None, prefix=()):
        self.status_file = tmp_path / "status.json"
        super().__init__([*prefix, sys.executable, "-m", "hallgate.cli", "run", "--config",
                          str(config), "--status-file", str(self.status_file)],
                         tmp_path / "daemon.log", env)

    def status(self):
        """The status file as this run of the daemon last wrote it, else None."""
        try:
            st = json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return None
        return st if st.get("pid") == self.proc.pid else None

    def wait_status(self, cond, what, timeout=20):
        def check():
            assert self.running, f"the daemon exited ({self.proc.returncode}):\n{self.log()}"
            st = self.status()
            return st is not None and cond(st)

        wait_for(check, timeout, what)
        return self.status()

    def terminate(self, timeout=30):
        """SIGTERM and wait for the exit; returns the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"no exit within {timeout} s of SIGTERM:\n{self.log()}") from None


class Witness:
    """Logs every message on `topics` (MQTT filters), with a persistent session."""

    def __init__(self, port, topics=("hall/#",), client_id="witness"):
        self.messages = []  # (topic, payload, retain); payload parsed JSON, else raw bytes
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=False)
        self.subscribed = threading.Event()
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, *a: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.reconnect_delay_set(0.1, 1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        # Until the broker has the subscription, its session would not keep what comes.
        if not self.subscribed.wait(10):
            raise AssertionError("witness: no SUBACK from the broker within 10 s")

    def _on_message(self, client, userdata, msg):
        try:
            payload = json.loads(msg.payload) if msg.payload else None
        except ValueError:
            payload = msg.payload  # a malformed command a test sent on purpose
        with self.lock:
            self.messages.append((msg.topic, payload, msg.retain))

    def on(self, topic_filter):
        with self.lock:
            return [p for t, p, _ in self.messages if mqtt.topic_matches_sub(topic_filter, t)]

    def events(self):
        return self.on(EVENTS)

    def sources(self):
        """{(address, boot, seq): {ids}} of the bus key events received."""
        out = {}
        for e in self.events():
            s = e["source"]
            if "address" in s:
                out.setdefault((s["address"], s["boot"], s["seq"]), set()).add(e["id"])
        return out

    def publish(self, topic, payload, retain=True):
        data = payload if isinstance(payload, str | bytes) else json.dumps(payload)
        self.client.publish(topic, data, qos=1, retain=retain).wait_for_publish(5)

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


def write_hall_config(tmp_path, *, site, gateway, broker_url, hub_path=None, devices=(),
                      windows="", timings="poll_timeout_ms = 200", outbox=None,
                      delivery="puback"):
    """A hall.toml in tmp_path: `devices` [(address, role, window)] on one bus named "hall"
    at `hub_path`, `windows` the [[windows]] tables as TOML text. Returns its path.
    `delivery`: "puback" by default, as these tests run no central service to send
    receipts; the receipt tests (test_receipts*.py) run one and pass "receipt"."""
    bus = "" if hub_path is None else f'\n[[buses]]\nname = "hall"\nport = "{hub_path}"\n'
    for address, role, window in devices:
        bus += (f'\n  [[buses.devices]]\n  address = {address}\n  role = "{role}"\n'
                f"  window = {window}\n")
    path = tmp_path / "hall.toml"
    path.write_text(f"""
[gateway]
site = "{site}"
id = "{gateway}"

[mqtt]
urls = ["{broker_url}"]

[outbox]
path = "{outbox or tmp_path / 'outbox.sqlite'}"
delivery = "{delivery}"

[timings]
{timings}
{bus}
{windows}""")
    return path


class CentralProcess(Child):
    """`hallgate central run` as a child process, on its own SQLite file, serving windows
    `windows` (service A); its log goes to tmp_path/central.log. `journal()` reads what
    its database holds, beside it (read-only)."""

    def __init__(self, tmp_path, site, broker_url, windows):
        self.db = tmp_path / "central.db"
        config = tmp_path / "central.toml"
        config.write_text(
            f'site = "{site}"\nbroker = "{broker_url}"\ndatabase = "{self.db}"\n'
            "tick_s = 0.5\n\n[services]\nA = \"Passports\"\n"
            + "".join(f'\n[[windows]]\nn = {w}\nservices = ["A"]\n' for w in windows))
        super().__init__([sys.executable, "-m", "hallgate.cli", "central", "run", "--config",
                          str(config)], tmp_path / "central.log")

    def journal(self):
        """[(id, event payload)] of every event the database holds as applied, in order;
        [] before the service made its file."""
        import sqlite3

        if not self.db.exists():
            return []
        try:
            with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5) as db:
                rows = db.execute("SELECT id, data FROM journal ORDER BY rowid").fetchall()
        except sqlite3.OperationalError:  # no table yet
            return []
        return [(i, json.loads(d)) for i, d in rows]
