"""A real mosquitto broker on a free loopback port, for the tests and the simulator.

Design note
-----------
Operations: `Mosquitto(workdir)` writes `workdir/mosquitto.conf`, `start()` runs the Debian
broker on it and returns once the port accepts connections; `stop()` is SIGTERM (the broker
saves its state), `kill()` is SIGKILL (it does not), `restart()` comes back on the same port
with the same persistence file, `pause()`/`resume()` freeze it (SIGSTOP/SIGCONT) to play a hung
broker whose TCP connections stay open.
Goals: the tests run against the broker the halls run, not a fake; every wait is bounded and
a broker that fails to start says why (the tail of its log).
Plan:
- One config per broker: `listener PORT 127.0.0.1`, anonymous access, persistence in the
  work folder with `autosave_interval 1`, so a SIGKILLed broker keeps the sessions and retained
  messages of its last save (FIELD-NOTES: the default 1800 s forgets them all). Measured
  here: 2.0.11 saves when MORE than the interval has passed, so every 2 s; what changed since
  (sessions, retained, messages queued for offline clients) is lost on SIGKILL, as on a real
  server: mosquitto acks a QoS 1 PUBLISH before anything reaches the disk.
  `autosave_on_changes=True` saves after every change instead (about 1,650 QoS 1 msg/s here
  instead of 5,700), `saves()` counts the saves in the log so a test can wait for one.
- `user root` when running as root (else mosquitto drops to user `mosquitto`, which cannot
  write a root-owned folder). Logs go to `workdir/mosquitto.log` (`log_text()` reads them).
- `max_queued_messages` is raised from mosquitto's 1000 to 100000: past the limit mosquitto
  silently drops QoS 1 messages for a slow or offline subscriber, and a test witness must
  see every message the gateway sent.
- `extra_config` lines are appended after the listener (so listener options such as
  `cafile`, `certfile`, `require_certificate` apply to it), with `allow_anonymous` a separate
  argument: room for the ACL and TLS set-ups of a later issue.

Example (starts a real broker, so not a doctest)::

    with Mosquitto(tmp_path) as broker:
        client.connect("127.0.0.1", broker.port)
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

BINARY_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
START_TIMEOUT = 5.0  # seconds for the port to accept; measured ~12 ms here
STOP_TIMEOUT = 5.0


class BrokerError(RuntimeError):
    """mosquitto is missing, did not start, or died."""


def mosquitto_binary():
    """The mosquitto executable: the Debian path, else PATH; BrokerError if none."""
    for path in BINARY_PATHS:
        if os.access(path, os.X_OK):
            return path
    found = shutil.which("mosquitto")
    if found:
        return found
    raise BrokerError(
        "mosquitto not found (looked in /usr/sbin and PATH): run `make test`, which installs "
        "mosquitto (or: apt-get install mosquitto)"
    )


def free_port(host="127.0.0.1"):
    """A TCP port that was free a moment ago (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_accepts(host, port, timeout=0.2):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class Mosquitto:
    """One mosquitto process with its config, log and persistence in `workdir`."""

    def __init__(
        self,
        workdir,
        port=None,
        *,
        host="127.0.0.1",
        allow_anonymous=True,
        extra_config=(),
        autosave_interval=1,
        autosave_on_changes=False,
        max_queued_messages=100000,
    ):
        self.workdir = Path(workdir)
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.allow_anonymous = allow_anonymous
        self.extra_config = list(extra_config)
        self.autosave_interval = autosave_interval
        self.autosave_on_changes = autosave_on_changes
        self.max_queued_messages = max_queued_messages
        self.binary = mosquitto_binary()
        self.proc = None
        self.starts = 0

    # -- paths and config ------------------------------------------------------------------

    @property
    def config_path(self):
        return self.workdir / "mosquitto.conf"

    @property
    def log_path(self):
        return self.workdir / "mosquitto.log"

    @property
    def data_dir(self):
        return self.workdir / "data"

    @property
    def url(self):
        return f"mqtt://{self.host}:{self.port}"

    def config_text(self):
        lines = [
            f"listener {self.port} {self.host}",
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            "persistence true",
            f"persistence_location {self.data_dir}/",
            f"autosave_interval {self.autosave_interval}",
            f"autosave_on_changes {'true' if self.autosave_on_changes else 'false'}",
            f"max_queued_messages {self.max_queued_messages}",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "log_timestamp_format %H:%M:%S",
        ]
        if os.geteuid() == 0:
            lines.append("user root")
        lines.extend(self.extra_config)
        return "\n".join(lines) + "\n"

    def write_config(self):
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        self.config_path.write_text(self.config_text())

    # -- process ---------------------------------------------------------------------------

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout=START_TIMEOUT):
        """Runs the broker; returns when its port accepts connections (BrokerError if not
        within `timeout` seconds, or if it exits)."""
        if self.running:
            return self
        self.write_config()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerError(
                    f"mosquitto exited with code {self.proc.returncode} on port {self.port}:\n"
                    + self.log_tail()
                )
            if port_accepts(self.host, self.port):
                return self
            time.sleep(0.01)
        self._signal(signal.SIGKILL)
        raise BrokerError(
            f"mosquitto did not accept on {self.host}:{self.port} within {timeout} s:\n"
            + self.log_tail()
        )

    def _signal(self, sig, wait=STOP_TIMEOUT):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=wait)
        self.proc = None

    def stop(self):
        """SIGTERM: the broker saves sessions and retained messages, then exits."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)  # a paused broker cannot handle SIGTERM
        self._signal(signal.SIGTERM)

    def kill(self):
        """SIGKILL: what the broker saved (every autosave_interval seconds) survives, no more."""
        self._signal(signal.SIGKILL)

    def restart(self, kill=False, timeout=START_TIMEOUT):
        """Stops (or kills) and starts again on the same port and persistence file."""
        self.kill() if kill else self.stop()
        return self.start(timeout=timeout)

    def pause(self):
        """SIGSTOP: connections stay open but nothing is answered (a hung broker)."""
        if self.running:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        if self.running:
            self.proc.send_signal(signal.SIGCONT)

    # -- diagnostics -----------------------------------------------------------------------

    def log_text(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def saves(self):
        """How many times the broker wrote its database (per the log), all starts counted."""
        return self.log_text().count("Saving in-memory database")

    def _db_identity(self):
        try:
            st = (self.data_dir / "mosquitto.db").stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def wait_saved(self, timeout=5.0):
        """Waits for the next database save (autosave): after it a SIGKILL loses nothing
        that came before the call. BrokerError if none within `timeout` seconds.
        mosquitto logs "Saving" before it writes, and writes a new file that it renames
        over the old one: the file's identity changing is the save done."""
        before = self._db_identity()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = self._db_identity()
            if now is not None and now != before:
                return
            time.sleep(0.02)
        raise BrokerError(f"mosquitto did not save its database within {timeout} s")

    def log_tail(self, lines=20):
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self):
        state = "running" if self.running else "stopped"
        return f"Mosquitto({self.url}, {state})"
