"""A real mosquitto broker on a free loopback port, for the tests and the simulator; an
embedded amqtt broker where mosquitto is not installed.

Design note
-----------
Choice: `start_broker(workdir, prefer="auto")` is what `hallgate sim` calls: mosquitto when
`mosquitto_binary()` finds one, else `EmbeddedBroker` (amqtt, the `sim` extra); "mosquitto"
or "amqtt" force one (ValueError for anything else). Both have `start(timeout)`, `stop()`,
`port`, `url`, `running`, a context manager and a class attribute `protocol`: "5" for
mosquitto, "3.1.1" for amqtt, which speaks MQTT 3.1.1 ONLY (a v5 CONNECT is refused), so a
caller picks the client's protocol from it. The tests keep using `Mosquitto`.

Mosquitto operations: `Mosquitto(workdir)` writes `workdir/mosquitto.conf`, `start()` runs
the Debian broker on it and returns once the port accepts connections; `stop()` is SIGTERM (the
broker saves its state), `kill()` is SIGKILL (it does not), `restart()` comes back on the same port
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

EmbeddedBroker (amqtt 0.12):
- One thread per broker with its own asyncio loop; `start()` returns once the port accepts
  (amqtt's own start returned: its listener is bound), `stop()` shuts amqtt down (bounded),
  stops the loop, joins the thread and the port is free again. amqtt is imported lazily (in
  `start()`), so importing this module never needs it.
- Config: one tcp listener on `host:port`; `plugins` given explicitly, which replaces amqtt's
  defaults (event and packet loggers, `AnonymousAuthPlugin`, `BrokerSysPlugin` every 20 s):
  no `$SYS` plugin at all (its `sys_interval: 0` warns "'sys_interval' key is not set"; absent,
  nothing is published, not even `$SYS/broker/version`), and `OpenAuthPlugin` below instead of
  `AnonymousAuthPlugin`: amqtt marks the sessions that plugin admits "anonymous", and drops an
  anonymous session within a second of its disconnect and never queues QoS 1 messages for it,
  even with clean_session=False; the gateway and central rely on a persistent session getting
  what was sent while they were away, as with mosquitto. Open auth accepts every client
  (with or without a username) as a normal session.
- amqtt 0.12.1 differs from mosquitto in three more ways, repaired by a subclass of its
  Broker (`_amqtt_classes()`; private methods, so the tests check the behaviour): on every
  CONNECT it sent the client the retained messages matching ANY client's subscriptions;
  messages queued for an offline session arrived with the retain flag set; a connection
  closed before its CONNECT (a TCP probe such as `port_accepts`) was never closed. amqtt
  still logs an ERROR for such a probe, so `start()` does not probe: amqtt's `start()`
  returning means the listener is bound.
- All in memory: retained messages and sessions die with `stop()` (no persistence file, no
  `kill()`), sessions never expire (`session_expiry_interval` unset) and the queue of an
  offline session is unbounded (no `max_queued_messages`; payloads of 2 MB pass). amqtt's
  loggers (and those of its state machine library, `transitions`) are set to WARNING unless
  the caller set a level on them.

Example (starts a real broker, so not a doctest)::

    with start_broker(tmp_path) as broker:
        v5 = broker.protocol == "5"
        client.connect("127.0.0.1", broker.port)
"""

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

BINARY_PATHS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
START_TIMEOUT = 5.0  # seconds for the port to accept; measured ~12 ms here
STOP_TIMEOUT = 5.0


class BrokerError(RuntimeError):
    """The broker (mosquitto or amqtt) is missing, did not start, or died."""


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


class _Broker:
    """What both brokers share: a context manager that starts and stops, and a repr."""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self):
        state = "running" if self.running else "stopped"
        return f"{type(self).__name__}({self.url}, {state})"


class Mosquitto(_Broker):
    """One mosquitto process with its config, log and persistence in `workdir`."""

    protocol = "5"  # MQTT version the clients should speak (mosquitto 2 also takes 3.1.1)

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
            # Without it a burst of small messages to one client (a window's display,
            # panel and vote states) waits on Nagle for that client's delayed ACK: ~40 ms
            # (measured: a key's answer in 46 ms at p50 without, see README's figures).
            "set_tcp_nodelay true",
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



# -- embedded amqtt broker -------------------------------------------------------------------

QUIET_LOGGERS = ("amqtt", "transitions")  # INFO for every connection and state change


def _quiet_amqtt_logs():
    """amqtt's loggers to WARNING, unless the caller set a level on them."""
    for name in QUIET_LOGGERS:
        log = logging.getLogger(name)
        if log.level == logging.NOTSET:
            log.setLevel(logging.WARNING)


def _amqtt_classes():
    """(broker class, auth plugin path), built on first use so that amqtt stays a lazy import.

    `OpenAuthPlugin` admits every client as a normal session (see the design note: amqtt's
    AnonymousAuthPlugin makes persistent sessions forget). amqtt loads plugins by dotted path,
    so the class is published as this module's `OpenAuthPlugin`.

    `HallgateAmqtt` is amqtt's Broker with three repairs (amqtt 0.12.1, private methods; the
    tests check the behaviour, so an amqtt that changes them fails there, not in the field):
    - on every CONNECT amqtt sends the connecting client the retained messages matching ANY
      client's subscriptions: here retained messages go out only in answer to the client's own
      SUBSCRIBE (MQTT 3.3.1-6; mosquitto does the same);
    - messages queued for an offline persistent session are delivered with the retain flag
      set: here without it, as forwarded messages (MQTT 3.3.1-9);
    - a connection that closes before its CONNECT is never closed by amqtt (ResourceWarning,
      and a socket held until the garbage collector runs): here every connection is closed
      when amqtt is done with it.
    """
    cached = globals().get("_AMQTT_CLASSES")
    if cached is not None:
        return cached
    from amqtt.broker import Broker
    from amqtt.plugins.base import BaseAuthPlugin

    class OpenAuthPlugin(BaseAuthPlugin):
        """Admits every client; its session is kept and queued for like mosquitto's."""

        async def authenticate(self, *, session):
            return True

    class HallgateAmqtt(Broker):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._subscribing = set()  # id() of the sessions whose SUBSCRIBE is being handled

        async def stream_connected(self, reader, writer, listener_name):
            try:
                await super().stream_connected(reader, writer, listener_name)
            finally:
                writer.close()

        async def _handle_subscription(self, client_session, *args, **kwargs):
            self._subscribing.add(id(client_session))
            try:
                return await super()._handle_subscription(client_session, *args, **kwargs)
            finally:
                self._subscribing.discard(id(client_session))

        async def _publish_retained_messages_for_subscription(self, subscription, session):
            if id(session) in self._subscribing:
                await super()._publish_retained_messages_for_subscription(subscription, session)

        async def _publish_session_retained_messages(self, session):
            handler = self._get_handler(session)
            tasks = []
            while handler is not None and not session.retained_messages.empty():
                m = session.retained_messages.get_nowait()
                publish = handler.mqtt_publish(m.topic, m.data, m.qos, retain=False)
                tasks.append(asyncio.ensure_future(publish))
            if tasks:
                await asyncio.wait(tasks)

    OpenAuthPlugin.__module__ = HallgateAmqtt.__module__ = __name__
    globals()["OpenAuthPlugin"] = OpenAuthPlugin
    cached = (HallgateAmqtt, f"{__name__}.OpenAuthPlugin")
    globals()["_AMQTT_CLASSES"] = cached
    return cached


class EmbeddedBroker(_Broker):
    """An amqtt broker in a thread of this process (its own asyncio loop): MQTT 3.1.1 only,
    anonymous access, no $SYS, everything in memory. `workdir` is accepted for the same call
    as `Mosquitto` and not used (nothing is written). `amqtt` is the running amqtt Broker, for
    diagnostics (`amqtt.sessions`, `amqtt.retained_messages`): it belongs to the broker's
    thread, so read it only (a snapshot, not a consistent one)."""

    protocol = "3.1.1"  # amqtt 0.12 refuses an MQTT 5 CONNECT

    def __init__(self, workdir=None, port=None, *, host="127.0.0.1"):
        self.workdir = Path(workdir) if workdir is not None else None
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.thread = None
        self.amqtt = None
        self.starts = 0
        self._loop = None
        self._stop_requested = None  # asyncio.Event of the broker's loop: wakes it up
        self._stopping = threading.Event()  # set first: seen even before the loop exists
        self._ready = threading.Event()
        self._error = None

    @property
    def url(self):
        return f"mqtt://{self.host}:{self.port}"

    @property
    def running(self):
        return self.thread is not None and self.thread.is_alive() and self._error is None

    def config(self, auth_plugin):
        """amqtt's config dict. `plugins` replaces amqtt's default plugin set."""
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {auth_plugin: {}},
        }

    def start(self, timeout=START_TIMEOUT):
        """Runs the broker; returns once amqtt listens on the port (BrokerError with the reason
        if amqtt is missing, fails, or has not started within `timeout` seconds). No TCP probe:
        amqtt logs an ERROR for a connection that closes without a CONNECT."""
        if self.running:
            return self
        try:
            broker_class, auth_plugin = _amqtt_classes()
        except ImportError as e:
            raise BrokerError(
                f"amqtt is not installed ({e}): pip install 'hallgate[sim]', or install mosquitto"
            ) from e
        _quiet_amqtt_logs()
        self._error = None
        self._ready.clear()
        self._stopping.clear()
        self.thread = threading.Thread(
            target=self._run,
            args=(broker_class, self.config(auth_plugin), timeout),
            name=f"amqtt-{self.port}",
            daemon=True,
        )
        self.thread.start()
        self.starts += 1
        if not self._ready.wait(timeout):
            self.stop()
            raise BrokerError(f"amqtt did not start on {self.host}:{self.port} within {timeout} s")
        if self._error is not None:
            error = self._error
            self.stop()
            raise BrokerError(
                f"amqtt failed to start on {self.host}:{self.port}: {error}"
            ) from error
        return self

    def _run(self, broker_class, config, timeout):
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._stop_requested = asyncio.Event()  # binds to the loop at its first wait
        self._loop = loop
        try:
            loop.run_until_complete(self._serve(broker_class, config, timeout))
        except BaseException as e:  # the thread's only report is self._error
            if self._error is None:
                self._error = e
        finally:
            self._ready.set()
            try:
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.wait(pending, timeout=STOP_TIMEOUT))
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    async def _serve(self, broker_class, config, timeout):
        broker = self.amqtt = broker_class(config, loop=asyncio.get_running_loop())
        try:
            await asyncio.wait_for(broker.start(), timeout)
        except Exception as e:
            self._error = e
            return
        self._ready.set()
        if not self._stopping.is_set():
            await self._stop_requested.wait()
        # amqtt closes the client connections, then the listener
        await asyncio.wait_for(broker.shutdown(), STOP_TIMEOUT)

    def stop(self, timeout=STOP_TIMEOUT):
        """Shuts amqtt down, stops its loop and joins the thread: the port is free again and
        every retained message and session is gone. Idempotent. BrokerError if the thread
        does not end within `timeout` seconds."""
        thread = self.thread
        if thread is None:
            return
        self._stopping.set()  # before reading the loop: _serve checks it once started
        loop, event = self._loop, self._stop_requested
        if thread.is_alive() and loop is not None and event is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed in between
                loop.call_soon_threadsafe(event.set)
        thread.join(timeout)
        if thread.is_alive():
            raise BrokerError(f"amqtt on port {self.port} did not stop within {timeout} s")
        self.thread = self.amqtt = None
        self._loop = self._stop_requested = None

    def restart(self, timeout=START_TIMEOUT):
        """Stops and starts again on the same port; amqtt keeps nothing across (in memory)."""
        self.stop()
        return self.start(timeout=timeout)



BROKER_CHOICES = ("auto", "mosquitto", "amqtt")


def start_broker(workdir, *, prefer="auto", port=None, timeout=START_TIMEOUT):
    """A started broker for the simulator: `Mosquitto` when installed, else `EmbeddedBroker`
    ("auto"); "mosquitto" or "amqtt" force one. Check `.protocol` for the MQTT version."""
    if prefer not in BROKER_CHOICES:
        raise ValueError(f"prefer must be one of {', '.join(BROKER_CHOICES)}, not {prefer!r}")
    if prefer == "auto":
        try:
            mosquitto_binary()
            prefer = "mosquitto"
        except BrokerError:
            prefer = "amqtt"
    cls = Mosquitto if prefer == "mosquitto" else EmbeddedBroker
    return cls(workdir, port).start(timeout=timeout)
