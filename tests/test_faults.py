"""Faults while presses stream from real firmware devices: nothing lost, nothing split.

Each run is one fault, a few cycles of it (the long runs are tests/test_faults_soak.py):
the broker SIGKILLed and restarted, the network between gateway and broker cut (a proxy
that drops or holds the connection), noise on the bus (flipped bits, dropped bytes, garbage
bursts), a device unplugged (its TX pair cut) and power-cycled, and the outbox's disk full.
A SIGKILLed gateway is tests/test_daemon_kill.py (the soak file loops it).

Counted as in test_daemon_kill.py: a press is made when the firmware queues it (it reports
`{"event": ...}` with its seq), keyed (address, boot, seq); the witness, an independent MQTT
client with a persistent session, must receive every one of them (lost = 0), nothing else
(invented = 0), each under one id (split = 0); duplicates are redeliveries of the same id,
counted and allowed. After each fault ends, the time until every press made so far has
arrived is its recovery. Each run prints one line: run with -s to see it.

The runs are functions with their sizes as arguments, so the soak file runs them longer.
"""

import contextlib
import os
import random
import subprocess
import sys
import threading
import time

import pytest
from conftest import wait_for
from hallgate.sim.broker import Mosquitto
from hallgate.sim.device import DeviceError, FirmwareDevice
from hallgate.sim.faults import LineFaults, SmallDisk, Tally, TcpProxy
from hallgate.sim.hub import BusHub
from harness import Daemon, Witness, daemon_env, write_hall_config

pytestmark = pytest.mark.micropython

SITE, GW = "fault-site", "gw-f"
EVENTS = f"hall/v1/{SITE}/window/+/event"
ERRORS = f"hall/v1/{SITE}/gw/{GW}/errors"
KEYS = ("call", "start", "finish", "recall", "pause", "resume", "redirect")


def seed():
    return int(os.environ.get("HALLGATE_TEST_SEED", "7"))


class Operators:
    """A thread per device pressing a key every `interval` s and waiting for the firmware
    to take it; a paused or dead device is skipped. Bounded: stop() joins them."""

    def __init__(self, devices, interval=0.2):
        self.devices = devices
        self.interval = interval
        self.paused = set()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(a,), daemon=True,
                                          name=f"operator-{a}") for a in devices]

    def start(self):
        for t in self._threads:
            t.start()
        return self

    def _run(self, addr):
        i = 0
        while not self._stop.wait(self.interval):
            dev = self.devices[addr]
            if addr in self.paused or not dev.running:
                continue
            try:
                mark = dev.mark()
                dev.press(KEYS[i % len(KEYS)], hold_ms=100)
                dev.wait_kind("event", timeout=5, since=mark)
            except (DeviceError, OSError, ValueError):
                pass  # killed under us, or starved past the hold: not made, not counted
            i += 1

    def stop(self):
        self._stop.set()
        for t in self._threads:
            t.join(15)


class Hall:
    """A broker, a bus hub with firmware call panels, a witness, and the daemon (started by
    start()). `proxy`: the daemon reaches the broker through a TcpProxy; `line`: the hub's
    mangle hook; `disk`: a SmallDisk the outbox lives on."""

    def __init__(self, tmp_path, panels=(1, 2), *, proxy=False, line=None, disk=None,
                 broker_kw=None, timings="poll_timeout_ms = 200", delivery="puback"):
        self.tmp_path = tmp_path
        self.devices, self.witness, self.daemon, self.proxy = {}, None, None, None
        self.broker = Mosquitto(tmp_path / "broker", **(broker_kw or {})).start()
        self.hub = BusHub(baud=115200, mangle=line).start()
        try:
            for a in panels:
                # queue_len 64: presses go on through the fault; nothing may overflow
                self.devices[a] = FirmwareDevice(tmp_path / f"p{a}", a, "call-panel", a,
                                                 self.hub.add_port(f"p{a}"), ready_timeout=30,
                                                 lockout_ms=0, queue_len=64)
            self.witness = Witness(self.broker.port, topics=[EVENTS, ERRORS])
            if proxy:
                self.proxy = TcpProxy(self.broker.port).start()
            url = self.proxy.url if proxy else self.broker.url
            outbox = disk.folder / "outbox.sqlite" if disk else None
            config = write_hall_config(
                tmp_path, site=SITE, gateway=GW, broker_url=url, hub_path=self.hub.master_path,
                devices=[(a, "call-panel", a) for a in panels], outbox=outbox, timings=timings,
                delivery=delivery,
                windows="".join(f"[[windows]]\nnumber = {a}\n" for a in panels))
            self.daemon = Daemon(tmp_path, config, prefix=disk.prefix if disk else ())
        except BaseException:
            self.close()
            raise

    def start(self):
        self.daemon.start()
        self.wait_ready()
        return self

    def wait_ready(self, timeout=60):
        n = len(self.devices)
        return self.daemon.wait_status(
            lambda s: s["broker"]["connected"] and s["devices"]["online"] == n,
            "daemon connected, every panel online", timeout)

    def take(self, tally):
        made = set()
        for d in self.devices.values():
            if d.running:
                made |= tally.take(d)
        return made

    def arrived(self, made):
        return lambda: made <= set(self.witness.sources())

    def finish(self, tally, operators):
        """Stops the presses, waits for every one at the witness, reports, checks."""
        operators.stop()
        time.sleep(0.3)
        made = self.take(tally)
        try:
            wait_for(self.arrived(tally.made), 90, "every press at the witness")
        except AssertionError:
            pass  # reported below with the counts
        counts = tally.report(self.witness.sources(), len(self.witness.events()))
        assert made <= tally.made
        assert counts["lost"] == 0, f"{counts}\n{self.daemon.log()}"
        assert counts["invented"] == 0 and counts["split"] == 0, counts
        for a, d in self.devices.items():
            assert d.info()["overflows"] == 0, f"device {a} dropped presses"
        assert self.daemon.running, self.daemon.log()
        return counts

    def close(self):
        if self.daemon is not None:
            self.daemon.close()
        if self.witness is not None:
            self.witness.close()
        if self.proxy is not None:
            self.proxy.close()
        for d in self.devices.values():
            d.close()
        self.hub.close()
        self.broker.stop()


# ---- the runs (sized by their arguments) ------------------------------------------------------


def run_broker_kills(tmp_path, cycles, down=(0.3, 1.5), up=(1.0, 3.0)):
    """The broker SIGKILLed and started again, `cycles` times. The broker saves after every
    change (autosave_on_changes), so what it acked survives its SIGKILL: only the gateway
    is under test, not mosquitto's autosave window."""
    rng = random.Random(seed())
    hall = Hall(tmp_path, broker_kw={"autosave_on_changes": True})
    tally = Tally("broker-kill")
    try:
        # The broker saves after every change: a save after one more change (a retained
        # probe) has the witness's subscription, which so survives the first kill.
        db = hall.broker.data_dir / "mosquitto.db"

        def saved():
            with contextlib.suppress(FileNotFoundError):
                st = db.stat()
                return st.st_ino, st.st_mtime_ns, st.st_size
            return None

        before = saved()
        hall.witness.publish(f"hall/v1/{SITE}/probe", "x")
        wait_for(lambda: saved() not in (None, before), 10, "a broker save")
        hall.start()
        ops = Operators(hall.devices).start()
        for _ in range(cycles):
            time.sleep(rng.uniform(*up))
            hall.broker.kill()
            time.sleep(rng.uniform(*down))
            hall.broker.start()
            made = hall.take(tally)
            tally.recovered(hall.arrived(made))
        counts = hall.finish(tally, ops)
        assert hall.broker.starts == cycles + 1
        return counts
    finally:
        hall.close()


def run_network_cuts(tmp_path, cycles, down=(0.5, 2.0), up=(1.0, 2.5), hold_every=3):
    """The gateway's connection to the broker cut `cycles` times: dropped (RST, new ones
    refused), and every `hold_every`-th cycle held instead (nothing flows, nothing closes:
    a partition; longer than 1.5 keepalives, the gateway must notice on its own)."""
    rng = random.Random(seed())
    hall = Hall(tmp_path, proxy=True, timings="poll_timeout_ms = 200")
    tally = Tally("network-cut")
    try:
        hall.start()
        ops = Operators(hall.devices).start()
        for i in range(cycles):
            time.sleep(rng.uniform(*up))
            hold = hold_every and i % hold_every == hold_every - 1
            hall.proxy.cut(hold=bool(hold))
            time.sleep(rng.uniform(*down))
            hall.proxy.restore()
            made = hall.take(tally)
            tally.recovered(hall.arrived(made))
        counts = hall.finish(tally, ops)
        print(f"  proxy: {hall.proxy.connections} connections, {hall.proxy.refused} refused, "
              f"{hall.proxy.cuts} cuts")
        assert hall.proxy.cuts == cycles and hall.proxy.connections >= 2
        return counts
    finally:
        hall.close()


def run_bus_noise(tmp_path, cycles, rate=0.05, burst_every_s=0.1, noisy=(2.0, 3.0)):
    """Noise on the bus, `cycles` times: a `rate` share of chunks with a flipped bit or a
    dropped byte, and a garbage burst every `burst_every_s`."""
    rng = random.Random(seed())
    line = LineFaults(seed())
    hall = Hall(tmp_path, line=line)
    tally = Tally("bus-noise")
    try:
        hall.start()
        ops = Operators(hall.devices).start()
        for _ in range(cycles):
            time.sleep(rng.uniform(0.5, 1.5))
            line.noise(rate)
            line.bursts(hall.hub, burst_every_s)
            time.sleep(rng.uniform(*noisy))
            line.quiet()
            made = hall.take(tally)
            tally.recovered(hall.arrived(made))
        counts = hall.finish(tally, ops)
        bus = hall.daemon.status()["buses"]["hall"]
        print(f"  line: {line.counts}, collisions {hall.hub.stats.noise_collisions}; master: "
              f"{bus['timeouts']} timeouts, {bus['duplicates']} duplicates, "
              f"{bus['events']} events")
        assert line.counts["flips"] + line.counts["drops"] > 0 and line.counts["bursts"] > 0
        return counts
    finally:
        line.close()
        hall.close()


def run_unplugs(tmp_path, cycles, down=(1.0, 2.5)):
    """Device 1 unplugged from the bus (its TX pair cut: the master hears nothing from it,
    it keeps taking presses) and plugged in again, then power-cycled (SIGKILL, a flushed
    UART, a new boot) once its presses are delivered (a board's RAM queue dies with its
    power: that loss is the device's, not under test), alternately, `cycles` times; device
    2 streams presses throughout."""
    rng = random.Random(seed())
    line = LineFaults(seed())
    hall = Hall(tmp_path, line=line)
    tally = Tally("device-unplug")
    dev = hall.devices[1]
    boots = {dev.ready["boot"]}
    try:
        hall.start()
        ops = Operators(hall.devices).start()
        for i in range(cycles):
            time.sleep(rng.uniform(1.0, 2.0))
            if i % 2 == 0:
                line.unplug("p1")
                hall.daemon.wait_status(lambda s: s["devices"]["online"] == 1,
                                        "the unplugged panel offline", 30)
                time.sleep(rng.uniform(*down))
                line.replug("p1")
            else:
                ops.paused.add(1)
                time.sleep(0.3)
                wait_for(hall.arrived(tally.take(dev)), 60, "panel 1's presses delivered")
                dev.kill()
                time.sleep(rng.uniform(*down))
                hall.hub.reset_port(dev.config["uart"])
                boots.add(dev.start(30)["boot"])
                ops.paused.discard(1)
            made = hall.take(tally)
            tally.recovered(lambda m=made: hall.arrived(m)() and (
                hall.daemon.status() or {}).get("devices", {}).get("online") == 2)
        counts = hall.finish(tally, ops)
        assert len(boots) == 1 + cycles // 2
        assert 1 in {a for a, _, _ in tally.made}  # presses before and after every fault
        return counts
    finally:
        line.close()
        hall.close()


def run_disk_full(tmp_path, cycles, full=(1.5, 3.0)):
    """The outbox's filesystem filled to the last block while presses stream, then freed,
    `cycles` times: presses are refused (the devices keep them), reported on the errors
    topic, and taken once there is room."""
    rng = random.Random(seed())
    # 16 MB: room for the outbox's WAL, which grows to ~4 MB before SQLite checkpoints it
    # (see test_outbox_wal_alone_fills_a_small_disk_for_good below)
    disk = SmallDisk(tmp_path / "small", size="16m")
    if disk.prefix is None:
        pytest.skip("cannot mount a small tmpfs here (needs root or user namespaces)")
    hall = Hall(tmp_path, disk=disk)
    tally = Tally("disk-full")
    try:
        hall.start()
        disk.attach(hall.daemon.proc.pid)
        ops = Operators(hall.devices).start()
        for _ in range(cycles):
            time.sleep(rng.uniform(1.0, 2.0))
            disk.fill()
            errors = hall.daemon.status()["outbox"]["disk_errors"]
            hall.daemon.wait_status(lambda s, e=errors: s["outbox"]["disk_errors"] > e,
                                    "a press refused on the full disk", 30)
            time.sleep(rng.uniform(*full))
            disk.free()
            made = hall.take(tally)
            tally.recovered(hall.arrived(made))
        counts = hall.finish(tally, ops)
        reports = [e for e in hall.witness.on(ERRORS) if e["kind"] == "outbox-error"]
        print(f"  {hall.daemon.status()['outbox']['disk_errors']} refused adds, "
              f"{len(reports)} outbox-error reports")
        assert reports and all("disk full" in e["reason"] for e in reports), reports
        return counts
    finally:
        hall.close()


# ---- the fast runs ----------------------------------------------------------------------------


def test_broker_kill_and_restart_loop_loses_no_press(tmp_path):
    run_broker_kills(tmp_path, cycles=3)


def test_network_cut_between_gateway_and_broker_loses_no_press(tmp_path):
    run_network_cuts(tmp_path, cycles=3, hold_every=3)


def test_bus_noise_loses_no_press(tmp_path):
    run_bus_noise(tmp_path, cycles=2)


def test_device_unplugged_and_power_cycled_loses_no_press(tmp_path):
    run_unplugs(tmp_path, cycles=2)


def test_outbox_disk_full_loses_no_press(tmp_path):
    run_disk_full(tmp_path, cycles=2)


# ---- bugs found -------------------------------------------------------------------------------

WAL_FILL = """
import sys
from hallgate.gateway.outbox import Outbox, OutboxError
outbox = Outbox(sys.argv[1] + "/outbox.sqlite", "gw")
refused = 0
for i in range(300):  # a press, delivered at once: the outbox never holds more than one
    try:
        entry = outbox.add(1, {"type": "key", "key": "call"}, source=f"bus:hall:1:b1:s{i}",
                           stream="bus:hall:1")
        outbox.delete(entry.seq)
    except OutboxError:
        refused += 1
print(refused, outbox.depth())
"""


def test_the_outbox_wal_does_not_fill_a_small_disk(tmp_path):
    """Each add and delete appends ~30 KB of WAL frames and SQLite's own checkpoint waits
    for ~4 MB: on a 1 MB disk the WAL alone once filled it for good (every later add
    refused, the outbox empty). An emptied outbox now cuts its WAL back."""
    disk = SmallDisk(tmp_path / "small", size="1m")
    if disk.prefix is None:
        pytest.skip("cannot mount a small tmpfs here (needs root or user namespaces)")
    out = subprocess.run([*disk.prefix, sys.executable, "-c", WAL_FILL, str(disk.folder)],
                         capture_output=True, text=True, timeout=120, env=daemon_env())
    assert out.returncode == 0, out.stderr[-2000:]
    refused, depth = map(int, out.stdout.split())
    assert depth == 0
    assert refused == 0, (f"{refused} of 300 adds refused (disk full) on a 1 MB filesystem "
                          "with an empty outbox")
