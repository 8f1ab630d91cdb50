"""The daemon as a process, for real: `python -m hallgate.cli run` as a child process, as
systemd starts it, with real mosquitto, a firmware call panel on MicroPython behind a pty bus
hub, and an independent paho witness.

- systemd's notify protocol, read from a unix datagram socket of the test's own: READY=1,
  then WATCHDOG=1 (at least twice), then on SIGTERM STOPPING=1 and exit code 0.
- SIGTERM drains: presses taken while the broker is down wait in the outbox (`hallgate
  status` shows it); a SIGTERM right after the broker is back loses none of them: each is at
  the witness before the exit or after the next start, with one id. A drain for sure: with
  presses unacknowledged (broker frozen) at SIGTERM, the outbox is empty at the exit.
  The retained status ends "offline".
- `hallgate status`: what it prints while the daemon runs; exit 1 with a clear message when
  the status file is missing or stale.
- `hallgate run` with a broken config: exit 1, every problem with file:line, nothing started.
- A full disk under the outbox (a small tmpfs in a private mount namespace of the daemon's):
  the press is refused and reported on the errors topic, the daemon keeps running, and once
  there is room the device's retransmission is taken: the press arrives once.

Two tests pin bugs found this way: `hallgate status` said "running" for 10 s after a clean
stop, and a full disk flooded the errors topic (a report per poll cycle).

GPIO: the bus configs have no GPIO at all; the bus-less ones have a like and a dislike button
and run the daemon with GPIOZERO_PIN_FACTORY=mock.
"""

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import read_retained, wait_for
from hallgate.gateway.outbox import read_stats
from hallgate.sim.broker import Mosquitto
from hallgate.sim.device import DeviceError, FirmwareDevice
from hallgate.sim.hub import BusHub
from harness import Daemon, Witness, daemon_env, hallgate, write_hall_config

SITE, GW = "proc-site", "gw-p"
BASE = f"hall/v1/{SITE}"
STATUS_TOPIC = f"{BASE}/gw/{GW}/status"
ERRORS_TOPIC = f"{BASE}/gw/{GW}/errors"
PANEL = 1  # the firmware call panel's address and window


def retained(port, topic, timeout=10):
    """The retained message on `topic` as a fresh client gets it; fails if there is none."""
    raw = read_retained(port, topic, timeout)
    assert raw, f"no retained message on {topic}"
    return json.loads(raw)


def write_config(tmp_path, broker_url, hub_path=None, outbox=None):
    """A one-window hall: the firmware call panel on the hub's bus, or (no hub) a like and
    a dislike button on GPIO, for a daemon run with GPIOZERO_PIN_FACTORY=mock."""
    inputs = "like_pin = 5\ndislike_pin = 6\n" if hub_path is None else ""
    return write_hall_config(
        tmp_path, site=SITE, gateway=GW, broker_url=broker_url, hub_path=hub_path,
        devices=[] if hub_path is None else [(PANEL, "call-panel", PANEL)],
        windows=f"[[windows]]\nnumber = {PANEL}\n{inputs}", outbox=outbox)


def press(device, key="call", tries=3):
    """Press a key on the firmware device; returns the press's source (address, boot, seq).

    The firmware samples its contacts: a device process starved of CPU for longer than the
    hold misses the press, as a board misses one shorter than its debounce. Such a press
    never became an event, so it is pressed again."""
    for _ in range(tries):
        mark = device.mark()
        device.press(key, hold_ms=250)
        try:
            ev = device.wait_kind("event", timeout=3, since=mark)
        except DeviceError:
            continue
        return (device.address, device.ready["boot"], ev["seq"])
    raise AssertionError(f"the firmware saw none of {tries} presses of {key}")


def made(device):
    """Every press the device turned into an event in this run: the ground truth (a press
    counted as missed that the firmware took late is in here too)."""
    with device._cond:
        messages = list(device.messages)
    return {(device.address, device.ready["boot"], m["event"]["seq"])
            for m in messages if "event" in m}


# ---- 1. systemd notify -----------------------------------------------------------------------


class NotifySocket:
    """A unix datagram socket where systemd would listen for the daemon's notifications.
    AF_UNIX paths are at most 107 bytes: a deep tmp_path falls back to a short folder."""

    def __init__(self, tmp_path):
        self.own_folder = len(str(tmp_path / "notify.sock")) > 100
        self.folder = Path(tempfile.mkdtemp(prefix="hg-")) if self.own_folder else tmp_path
        self.path = str(self.folder / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.1)
        self.received = []  # each datagram's text, in order

    def lines(self, line):
        return [m for m in self.received if line in m.split("\n")]

    def take(self, cond, what, daemon, timeout=20):
        """Reads datagrams until cond() holds; fails naming `what` after `timeout` s."""
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}; got "
                                     f"{self.received!r}\n{daemon.log()}")
            try:
                self.received.append(self.sock.recv(4096).decode())
            except TimeoutError:
                assert daemon.running or what.startswith("STOPPING"), (
                    f"the daemon exited before {what}:\n{daemon.log()}")

    def close(self):
        self.sock.close()
        if self.own_folder:
            shutil.rmtree(self.folder, ignore_errors=True)


def test_systemd_notify_ready_watchdog_stopping_and_exit_0(tmp_path):
    broker = Mosquitto(tmp_path / "broker").start()
    notify = NotifySocket(tmp_path)
    daemon = Daemon(tmp_path, write_config(tmp_path, broker.url),
                    env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000000",
                         "GPIOZERO_PIN_FACTORY": "mock"})
    try:
        daemon.start()
        notify.take(lambda: notify.lines("READY=1"), "READY=1", daemon)
        notify.take(lambda: len(notify.lines("WATCHDOG=1")) >= 2, "two WATCHDOG=1", daemon)
        assert daemon.running
        daemon.proc.send_signal(signal.SIGTERM)
        notify.take(lambda: notify.lines("STOPPING=1"), "STOPPING=1", daemon)
        assert daemon.proc.wait(30) == 0, daemon.log()
        with contextlib.suppress(TimeoutError):  # anything sent after STOPPING=1 shows now
            notify.received.append(notify.sock.recv(4096).decode())
        kinds = [m.split("\n")[0] for m in notify.received]
        assert kinds[0] == "READY=1" and kinds[-1] == "STOPPING=1", kinds
        assert set(kinds[1:-1]) == {"WATCHDOG=1"}, kinds
        assert "STATUS=running" in notify.received[0].split("\n")
        # the clean stop said so on the broker: retained offline, reason "stopped"
        assert retained(broker.port, STATUS_TOPIC)["reason"] == "stopped"
    finally:
        daemon.close()
        notify.close()
        broker.stop()


# ---- 2 and 3. SIGTERM drains; `hallgate status` ------------------------------------------


@pytest.fixture
def hall(tmp_path):
    """A broker, a bus hub with one firmware call panel, and the witness."""
    broker = Mosquitto(tmp_path / "broker").start()
    hub = BusHub(baud=115200).start()
    device = witness = None
    try:
        device = FirmwareDevice(tmp_path / "p1", PANEL, "call-panel", PANEL,
                                hub.add_port("p1"), ready_timeout=30, lockout_ms=0)
        witness = Witness(broker.port)
        wait_for(witness.client.is_connected, 10, "witness connected")
        yield broker, hub, device, witness
    finally:
        if witness is not None:
            witness.close()
        if device is not None:
            device.close()
        hub.close()
        broker.stop()


def status_text(daemon):
    out = hallgate("status", "--status-file", daemon.status_file)
    assert out.returncode == 0, (out.stdout, out.stderr)
    return out.stdout


@pytest.mark.micropython
def test_sigterm_drains_and_what_waits_in_the_outbox_goes_out_after_the_next_start(
        tmp_path, hall):
    broker, hub, device, witness = hall
    notify = NotifySocket(tmp_path)
    daemon = Daemon(tmp_path, write_config(tmp_path, broker.url, hub.master_path),
                    env={"NOTIFY_SOCKET": notify.path})
    try:
        daemon.start()
        daemon.wait_status(lambda s: s["broker"]["connected"] and s["devices"]["online"] == 1,
                           "daemon connected, panel online")
        first = press(device)
        wait_for(lambda: first in witness.sources(), 15, "a press while all is up")
        daemon.wait_status(lambda s: s["outbox"]["depth"] == 0, "the outbox emptied")
        text = status_text(daemon)
        assert f"broker:  connected to {broker.url}" in text, text
        assert "outbox:  0 held" in text and "devices: 1/1 online" in text, text

        # The broker goes away: the presses wait in the outbox, and `hallgate status` says so.
        broker.stop()
        daemon.wait_status(lambda s: not s["broker"]["connected"], "broker seen down")
        presses = [press(device, key) for key in ("call", "start", "finish", "call", "start")]
        daemon.wait_status(lambda s: s["outbox"]["depth"] == len(made(device)) - 1,
                           "the presses waiting in the outbox")
        out = hallgate("status", "--json", "--status-file", daemon.status_file)
        assert out.returncode == 0, out.stderr
        st = json.loads(out.stdout)
        assert st["running"] is True and st["pid"] == daemon.proc.pid
        assert st["broker"]["connected"] is False
        assert st["outbox"]["depth"] >= len(presses) > 0
        text = status_text(daemon)
        assert "broker:  DISCONNECTED" in text, text
        assert f"outbox:  {st['outbox']['depth']} held" in text, text
        assert f"{st['outbox']['depth']} waiting to send" in text, text
        assert "devices: 1/1 online" in text, text

        # The broker is back, and at once a SIGTERM: exit 0, nothing lost.
        broker.start()
        assert daemon.terminate() == 0, daemon.log()
        out_before_exit = len(set(presses) & set(witness.sources()))
        assert retained(broker.port, STATUS_TOPIC)["state"] == "offline"

        daemon.start()
        everything = made(device)
        assert {first, *presses} <= everything
        wait_for(lambda: everything <= set(witness.sources()), 30,
                 "every press at the witness after the next start")

        # A drain for sure: the broker stops answering (SIGSTOP) with presses on the wire, so
        # they are in the outbox when the daemon is told to stop; the broker answers again
        # only after the daemon said STOPPING=1. Everything must be out before the exit.
        daemon.wait_status(lambda s: s["broker"]["connected"] and s["outbox"]["depth"] == 0,
                           "connected again, outbox empty")
        broker.pause()
        late = [press(device, key) for key in ("finish", "call")]
        daemon.wait_status(lambda s: s["outbox"]["depth"] == len(made(device) - everything),
                           "the late presses unacknowledged in the outbox")
        notify.received.clear()
        daemon.proc.send_signal(signal.SIGTERM)
        notify.take(lambda: notify.lines("STOPPING=1"), "STOPPING=1", daemon)
        broker.resume()
        assert daemon.proc.wait(30) == 0, daemon.log()
        left = read_stats(tmp_path / "outbox.sqlite")
        assert left["depth"] == 0, (left, daemon.log())
        assert retained(broker.port, STATUS_TOPIC)["reason"] == "stopped"
        everything = made(device)
        assert set(late) <= everything
        wait_for(lambda: everything <= set(witness.sources()), 15, "the drained presses")

        sources = witness.sources()
        assert set(sources) == everything  # nothing lost, nothing invented
        assert all(len(ids) == 1 for ids in sources.values()), sources  # one id per press
        assert device.info()["overflows"] == 0
        print(f"{out_before_exit} of {len(presses)} presses out before the SIGTERM exit, the "
              f"rest after the next start; {len(late)} drained on SIGTERM")
    finally:
        daemon.close()
        notify.close()


def test_status_text_and_missing_or_stale_status_file(tmp_path):
    broker = Mosquitto(tmp_path / "broker").start()
    daemon = Daemon(tmp_path, write_config(tmp_path, broker.url),
                    env={"GPIOZERO_PIN_FACTORY": "mock"})
    try:
        daemon.start()
        daemon.wait_status(lambda s: s["broker"]["connected"], "daemon connected")
        text = status_text(daemon)
        assert f"gateway {SITE}/{GW}" in text and f"pid {daemon.proc.pid}" in text, text
        assert f"broker:  connected to {broker.url}" in text, text
        assert "outbox:  0 held" in text and "devices: 0/0 online" in text, text
        daemon.proc.kill()  # dies without a word: its last status stays behind
        daemon.proc.wait(10)
    finally:
        daemon.close()
        broker.stop()

    # stale: the daemon stopped writing it more than 10 s ago
    old = time.time() - 60
    os.utime(daemon.status_file, (old, old))
    out = hallgate("status", "--status-file", daemon.status_file)
    assert out.returncode == 1
    said = re.search(r"NOT RUNNING, status (\d+) s old", out.stdout)
    assert said and int(said.group(1)) >= 60, out.stdout
    out = hallgate("status", "--json", "--status-file", daemon.status_file)
    assert out.returncode == 1 and json.loads(out.stdout)["running"] is False

    # missing
    missing = tmp_path / "nowhere" / "status.json"
    out = hallgate("status", "--status-file", missing)
    assert out.returncode == 1
    assert f"no gateway status at {missing}" in out.stderr, out.stderr
    assert "is `hallgate run` running?" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_status_right_after_a_clean_stop_says_not_running(tmp_path):
    broker = Mosquitto(tmp_path / "broker").start()
    daemon = Daemon(tmp_path, write_config(tmp_path, broker.url),
                    env={"GPIOZERO_PIN_FACTORY": "mock"})
    try:
        daemon.start()
        daemon.wait_status(lambda s: s["broker"]["connected"], "daemon connected")
        assert daemon.terminate() == 0, daemon.log()
    finally:
        daemon.close()
        broker.stop()
    out = hallgate("status", "--status-file", daemon.status_file)
    assert out.returncode == 1, out.stdout
    assert "NOT RUNNING" in out.stdout or "stopped" in out.stdout.lower(), out.stdout


# ---- 4. config errors ------------------------------------------------------------------------


def test_run_with_a_broken_config_prints_every_problem_and_starts_nothing(tmp_path):
    config = tmp_path / "broken.toml"
    config.write_text(f"""[gateway]
site = "{SITE}"
id = "{GW}"
colour = "red"

[mqtt]
urls = ["mqtt://127.0.0.1:1883"]
keepalive_s = 2

[outbox]
path = "{tmp_path / 'outbox.sqlite'}"

[[windows]]
number = 1
like_pin = 5
dislike_pin = 6
""")
    status = tmp_path / "run" / "status.json"
    out = subprocess.run(
        [sys.executable, "-m", "hallgate.cli", "run", "--config", str(config),
         "--status-file", str(status)],
        capture_output=True, text=True, timeout=30,
        env=daemon_env(GPIOZERO_PIN_FACTORY="mock"))
    assert out.returncode == 1
    problems = out.stderr.strip().splitlines()
    assert problems == [
        f'{config}:4: gateway.colour: unknown key "colour"; allowed here: site, id',
        f"{config}:8: mqtt.keepalive_s: 2 is out of range 5-600",
    ], out.stderr
    assert not (tmp_path / "outbox.sqlite").exists()  # checked before anything started
    assert not status.exists()


# ---- 5. a full disk under the outbox ---------------------------------------------------------


SMALL_FS = "512k"


def small_fs_prefix(folder):
    """A command prefix that runs the daemon in a private mount namespace with a small
    tmpfs mounted on `folder` (gone with the daemon), or None if this machine cannot
    (needs root, or unprivileged user namespaces)."""
    mount = f'mount -t tmpfs -o size={SMALL_FS} hallgate-test "$0" && exec "$@"'
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    for userns in ([], ["--user", "--map-root-user"]):
        prefix = [unshare, *userns, "--mount", "--propagation", "private", "sh", "-c", mount,
                  str(folder)]
        probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=10)
        if probe.returncode == 0:
            return prefix
    return None


@contextlib.contextmanager
def daemon_on_a_small_fs(tmp_path, hall):
    """The daemon with its outbox on a small tmpfs of its own, connected, the panel online,
    one press delivered; yields (daemon, fill, free): fill() takes every free block of the
    filesystem, free() gives them back."""
    broker, hub, device, witness = hall
    small = tmp_path / "small"
    small.mkdir()
    prefix = small_fs_prefix(small)
    if prefix is None:
        pytest.skip("cannot mount a small tmpfs here (needs root or user namespaces)")
    daemon = Daemon(tmp_path, write_config(tmp_path, broker.url, hub.master_path,
                                           outbox=small / "outbox.sqlite"), prefix=prefix)
    try:
        daemon.start()
        daemon.wait_status(lambda s: s["broker"]["connected"] and s["devices"]["online"] == 1,
                           "daemon connected, panel online")
        first = press(device)
        wait_for(lambda: first in witness.sources(), 15, "a press with room on the disk")
        # the daemon's filesystem, seen through its mount namespace
        seen = Path(f"/proc/{daemon.proc.pid}/root") / str(small).lstrip("/")
        filler = seen / "filler"

        def fill():
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
            try:
                with contextlib.suppress(OSError):  # ENOSPC ends it
                    while True:
                        os.write(fd, bytes(65536))
            finally:
                os.close(fd)
            assert os.statvfs(seen).f_bavail == 0

        yield daemon, fill, lambda: os.unlink(filler)
    finally:
        daemon.close()


def outbox_errors(witness):
    return [e for e in witness.on(ERRORS_TOPIC) if e["kind"] == "outbox-error"]


@pytest.mark.micropython
def test_a_full_disk_refuses_the_press_reports_it_and_takes_it_when_there_is_room(
        tmp_path, hall):
    broker, hub, device, witness = hall
    with daemon_on_a_small_fs(tmp_path, hall) as (daemon, fill, free):
        fill()
        taken_before = made(device)
        refused = press(device, "start")
        wait_for(lambda: any("disk full" in e["reason"] for e in outbox_errors(witness)), 15,
                 "the outbox error reported on the errors topic")
        st = daemon.wait_status(lambda s: s["outbox"]["disk_errors"] > 0, "disk errors counted")
        assert daemon.running  # an error and a retry, not a crash
        assert st["outbox"]["depth"] == 0
        assert refused not in witness.sources()  # not taken: the device keeps it

        free()
        wait_for(lambda: refused in witness.sources(), 15, "the refused press, with room again")
        after = press(device, "finish")
        wait_for(lambda: after in witness.sources(), 15, "a press after the disk was freed")
        assert daemon.terminate() == 0, daemon.log()

    everything = made(device)
    assert taken_before | {refused, after} <= everything
    sources = witness.sources()
    assert set(sources) == everything  # nothing lost, nothing invented
    assert all(len(ids) == 1 for ids in sources.values()), sources
    assert device.info()["overflows"] == 0


@pytest.mark.micropython
def test_a_full_disk_is_reported_a_few_times_not_on_every_retry(tmp_path, hall):
    broker, hub, device, witness = hall
    with daemon_on_a_small_fs(tmp_path, hall) as (daemon, fill, free):
        fill()
        press(device, "start")
        st = daemon.wait_status(lambda s: s["outbox"]["disk_errors"] > 0, "disk errors counted")
        daemon.wait_status(lambda s: s["ts"] > st["ts"], "one more status write")
        wait_for(lambda: outbox_errors(witness), 15, "the outbox error reported")
        reports = len(outbox_errors(witness))
        free()
        assert daemon.terminate() == 0, daemon.log()
    assert reports <= 3, f"{reports} outbox-error reports for one refused press"
