"""Firmware update over the bus, end to end: the real firmware on MicroPython, installed in
slots from a signed bundle (as `hallgate flash` lays it out), on the simulated RS-485 line,
updated by the real bus master running gateway/ota.py's transfer.

Each device's flash is a temporary folder; a "new version" is the firmware copied with
another FIRMWARE number (and, for the rollback, a start-up that raises), built and signed
like any release.
"""

import contextlib
import json
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import ROOT, wait_for
from hallgate.gateway import bundle, ota
from hallgate.gateway.bundle import BundleError
from hallgate.gateway.master import BusMaster
from hallgate.protocols import bus
from hallgate.protocols import otawire as ow
from hallgate.sim.broker import Mosquitto
from hallgate.sim.device import FirmwareDevice, install_slots
from hallgate.sim.hub import MASTER, BusHub
from harness import Daemon, daemon_env, hallgate, write_hall_config

pytestmark = pytest.mark.micropython

# The hub paces the line at this speed (RS-485 runs at it on a short bus): what these
# tests check is the update's protocol, and 4x the wire speed keeps make test short.
BAUD = 460800
TARGET, OTHER = 5, 6


def firmware_copy(tmp_path, name, version, crash=False):
    """firmware/ copied, reporting `version`; with `crash`, its start-up raises."""
    src = tmp_path / name
    shutil.copytree(ROOT / "firmware", src)
    appcore = src / "appcore.py"
    text = appcore.read_text()
    assert "FIRMWARE = (0, 1, 0)" in text
    appcore.write_text(text.replace("FIRMWARE = (0, 1, 0)",
                                    f"FIRMWARE = ({', '.join(version.split('.'))})"))
    if crash:
        devmain = src / "devmain.py"
        text = devmain.read_text()
        marker = '    cfg, count, persisted = _read_config(path)\n'
        assert marker in text
        devmain.write_text(text.replace(marker, marker + '    raise RuntimeError("boom")\n'))
    return src


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    d = tmp_path_factory.mktemp("bundles")
    bundle.keygen(d / "key.pem", d / "key.pub")
    bundle.keygen(d / "other.pem", d / "other.pub")
    made = {}
    for name, version, crash in (("old", "0.1.0", False), ("new", "0.2.0", False),
                                 ("crash", "0.3.0", True)):
        src = firmware_copy(d, name, version, crash) if name != "old" else ROOT / "firmware"
        made[name] = d / f"{name}.zip"
        bundle.build("call-panel", made[name], d / "key.pem", board="unix", firmware_dir=src)
    # 0.1.0 code under another label, as `firmware build --version 0.2.1` makes it
    made["label"] = d / "label.zip"
    bundle.build("call-panel", made["label"], d / "key.pem", board="unix", version="0.2.1",
                 firmware_dir=ROOT / "firmware")
    made["pub"] = d / "key.pub"
    made["other.pem"] = d / "other.pem"
    return made


class Line:
    """A hub, two call panels flashed with the old bundle, and a started bus master that
    polls both and collects their events."""

    def __init__(self, tmp_path, bundles, mangle=None):
        self.tap = []
        self.hub = BusHub(baud=BAUD, mangle=mangle, tap=self.tap).start()
        _, files = bundle.load(bundles["old"], bundles["pub"])
        self.devices = {}
        for addr in (TARGET, OTHER):
            flash = install_slots(tmp_path / f"flash-{addr}", files)
            self.devices[addr] = FirmwareDevice(tmp_path, addr, "call-panel", addr,
                                                self.hub.add_port(f"dev{addr}"), flash_dir=flash)
        self.events = []
        self.lock = threading.Lock()
        self.master = BusMaster(self.hub.master_path, baudrate=BAUD, devices=(TARGET, OTHER),
                                on_event=self._event).start()

    def _event(self, addr, ev):
        with self.lock:
            self.events.append((addr, ev.key_name))

    def pressed(self, addr, key):
        with self.lock:
            return (addr, key) in self.events

    def ota_frames(self):
        """The update's requests that crossed the line intact, and the master's frames
        that did not (CRC errors)."""
        d = bus.Decoder()
        for chunk in list(self.tap):
            if chunk.source == MASTER:
                d.feed(chunk.data)
        frames = []
        while (f := d.maybe_extract_frame(True)) is not None:
            frames.append(f)
        return [f for f in frames if bus.OTA_BEGIN <= f.mtype <= bus.OTA_QUERY], d.crc_errors

    def close(self):
        self.master.close()
        for dev in self.devices.values():
            dev.close()
        self.hub.close()


@pytest.fixture
def line(tmp_path, bundles):
    made = Line(tmp_path, bundles)
    yield made
    made.close()


def run(line, image, **kw):
    [t] = ota.update(line.master, [TARGET], image, timeout=90, **kw)
    return t


def test_an_update_ends_on_the_new_version_while_the_other_device_keeps_working(line, bundles):
    dev, other = line.devices[TARGET], line.devices[OTHER]
    image = ota.prepare(bundles["new"], bundles["pub"])
    presses = []

    def on_progress(t):  # an operator at the other window keeps working mid-transfer
        if t.phase == "send" and t.offset > len(presses) * t.size / 3 and len(presses) < 2:
            presses.append(t.offset)
            other.press(("call", "finish")[len(presses) - 1])

    cycles = line.master.stats["cycles"]
    t = run(line, image, on_progress=on_progress)
    assert t.result == "updated", t.summary()
    assert t.firmware == (0, 2, 0)
    assert dev.wait_for(lambda m: m.get("ready", {}).get("firmware") == "0.2.0")["ready"][
        "slot"] == "b"
    assert dev.wait_kind("confirmed", timeout=10) == "b"
    # The other device's presses, made while chunks were going out, all arrived.
    assert len(presses) == 2
    wait_for(lambda: line.pressed(OTHER, "call") and line.pressed(OTHER, "finish"))
    stats = line.master.stats
    assert stats["cycles"] - cycles > t.chunks // 4  # polling went on between chunks
    assert stats["job_exchanges"] >= t.chunks
    # The updated device works: a press arrives, and it still has heap to spare.
    dev.press("call")
    wait_for(lambda: line.pressed(TARGET, "call"))
    # ... and once the update's requests have stopped, its modules' RAM back
    frees = []
    try:
        wait_for(lambda: frees.append(dev.info()["mem_free"]) or frees[-1] > 12 * 1024, 20)
    except AssertionError:
        raise AssertionError(f"the update's RAM was not let go: free {frees[-3:]}; "
                             f"{dev.messages[-8:]}") from None
    # The master asked the device who it is again: its table shows the new firmware.
    wait_for(lambda: line.master.device(TARGET)["info"].firmware == (0, 2, 0))


def test_a_device_already_on_the_bundles_version_is_skipped_unless_forced():
    image = ota.Image("call-panel", "unix", "0.2.0", b"")
    rows = [{"bus": "hall", "address": a, "role": "call-panel", "online": online,
             "firmware": fw, "board": "unix"}
            for a, online, fw in ((1, True, "0.2.0"), (2, True, "0.1.0"), (3, False, None))]
    targets, skipped = ota.choose_targets(rows, image, role="call-panel")
    assert targets == [("hall", 2)]
    assert {s["address"]: s["reason"] for s in skipped} == {
        1: "already runs 0.2.0 (--force sends it again)", 3: "offline"}
    targets, _ = ota.choose_targets(rows, image, addresses=[1, 2], force=True)
    assert targets == [("hall", 1), ("hall", 2)]


def test_a_board_of_another_kind_is_never_sent_the_bundle_and_an_unknown_one_only_forced():
    image = ota.Image("call-panel", "rp2", "0.2.0", b"")
    rows = [{"bus": "hall", "address": a, "role": "call-panel", "online": True,
             "firmware": "0.1.0", "board": board}
            for a, board in ((1, "rp2"), (2, "unix"), (3, "unknown"), (4, None))]
    targets, skipped = ota.choose_targets(rows, image, role="call-panel")
    assert targets == [("hall", 1)]
    reasons = {s["address"]: s["reason"] for s in skipped}
    assert reasons[2] == "a unix board; the bundle is for rp2 boards"
    assert "does not report its board" in reasons[3] and "--force" in reasons[3]
    assert reasons[4] == reasons[3]
    targets, skipped = ota.choose_targets(rows, image, role="call-panel", force=True)
    assert targets == [("hall", 1), ("hall", 3), ("hall", 4)]  # --force never crosses boards
    assert [s["address"] for s in skipped] == [2]


def test_the_result_says_the_version_the_new_code_runs_not_the_bundles_label(line, bundles):
    t = run(line, ota.prepare(bundles["label"], bundles["pub"]))
    assert t.result == "updated", t.summary()
    assert t.summary()["firmware"] == "0.1.0"
    assert t.reason == ("running 0.1.0, confirmed healthy (the bundle was labelled 0.2.1: "
                        "its code says 0.1.0)")


def test_a_bundle_with_a_bad_signature_or_a_changed_file_is_refused_before_a_byte_is_sent(
        line, bundles, tmp_path):
    forged = tmp_path / "forged.zip"
    bundle.build("call-panel", forged, bundles["other.pem"], board="unix")
    with pytest.raises(BundleError, match="signature"):
        ota.prepare(forged, bundles["pub"])
    changed = tmp_path / "changed.zip"
    import zipfile

    with zipfile.ZipFile(bundles["new"]) as src, zipfile.ZipFile(changed, "w") as out:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "files/appcore.mpy":
                data = data[:-1] + bytes([data[-1] ^ 1])
            out.writestr(info, data)
    with pytest.raises(BundleError, match="appcore.mpy"):
        ota.prepare(changed, bundles["pub"])
    time.sleep(0.2)
    assert line.ota_frames()[0] == [] and line.master.stats["job_exchanges"] == 0


def test_a_chunk_garbled_on_the_line_is_sent_again(tmp_path, bundles):
    garbled = []

    def flip_one_chunk(port, data):
        # The first OTA_DATA past 4 KB: one payload byte flipped; the CRC catches it.
        if (port == MASTER and not garbled and len(data) > 8 and data[0] == bus.SYNC
                and data[2] == bus.OTA_DATA and int.from_bytes(data[4:8], "little") > 4096):
            data[20] ^= 0x40
            garbled.append(int.from_bytes(data[4:8], "little"))

    made = Line(tmp_path, bundles, mangle=flip_one_chunk)
    try:
        t = run(made, ota.prepare(bundles["new"], bundles["pub"]))
        assert t.result == "updated", t.summary()
        assert len(garbled) == 1 and t.resent >= 1
        frames, crc_errors = made.ota_frames()
        offsets = [int.from_bytes(f.payload[:4], "little") for f in frames
                   if f.mtype == bus.OTA_DATA]
        assert crc_errors >= 1  # the garbled one (and collisions, on a loaded machine)
        assert offsets.count(garbled[0]) >= 1  # ... went out again, intact
    finally:
        made.close()


def test_a_device_killed_mid_transfer_comes_back_on_the_old_version_and_the_update_resumes(
        line, bundles):
    dev = line.devices[TARGET]
    killed = []  # the transfer's interruptions counted before the kill

    def kill_halfway(t):
        if t.phase == "send" and t.offset >= t.size // 2 and not killed:
            dev.kill()  # a power cut: the process dies at once
            killed.append(t.interruptions)

    image = ota.prepare(bundles["new"], bundles["pub"])
    [t] = [line.master.run_job(ota.Transfer(TARGET, image, on_progress=kill_halfway))]
    # (a loaded machine may have interrupted it before, too: wait for one after the kill)
    wait_for(lambda: killed and t.interruptions > killed[0], timeout=30)
    assert not t.done and not dev.running
    line.hub.reset_port(dev.config["uart"])
    ready = dev.start()
    assert (ready["firmware"], ready["slot"], ready["trial"]) == ("0.1.0", "a", False)
    wait_for(lambda: t.done, timeout=90)
    assert t.result == "updated", t.summary()
    assert t.resumed_from and t.size // 2 <= t.resumed_from[-1] < t.size  # after the kill
    assert t.chunks < 1.5 * t.size / ow.CHUNK  # it did not start again from 0
    assert dev.wait_for(lambda m: m.get("ready", {}).get("firmware") == "0.2.0")


def test_a_new_version_that_crashes_at_start_rolls_back_by_itself(line, bundles):
    dev = line.devices[TARGET]
    t = run(line, ota.prepare(bundles["crash"], bundles["pub"]))
    assert t.result == "rolled-back", t.summary()
    assert "boom" in t.reason and t.firmware == (0, 1, 0)
    ready = dev.wait_for(lambda m: m.get("ready", {}).get("slot") == "a")["ready"]
    assert (ready["firmware"], ready["trial"]) == ("0.1.0", False)
    assert "boom" in dev.stderr_text()
    dev.press("call")  # and it works as before
    wait_for(lambda: line.pressed(TARGET, "call"))


# -- hallgate ota: through the daemon, and directly ---------------------------------------


@contextlib.contextmanager
def ota_daemon(tmp_path, bundles, firmware=""):
    """A call panel flashed with the old bundle, mosquitto, and the daemon polling it, its
    config holding the bundles' public key (and `firmware`: more [firmware] lines).
    Yields (device, daemon, config path)."""
    with contextlib.ExitStack() as stack:
        hub = BusHub(baud=BAUD).start()
        stack.callback(hub.close)
        _, files = bundle.load(bundles["old"], bundles["pub"])
        flash = install_slots(tmp_path / "flash", files)
        dev = FirmwareDevice(tmp_path, TARGET, "call-panel", 1, hub.add_port("panel"),
                             flash_dir=flash)
        stack.callback(dev.close)
        broker = Mosquitto(tmp_path / "broker").start()
        stack.callback(broker.stop)
        config = write_hall_config(tmp_path, site="ota", gateway="gw", broker_url=broker.url,
                                   hub_path=hub.master_path,
                                   devices=[(TARGET, "call-panel", 1)],
                                   windows="[[windows]]\nnumber = 1\n")
        config.write_text(config.read_text()
                          + f'\n[firmware]\npublic_key = "{bundles["pub"]}"\n{firmware}')
        daemon = Daemon(tmp_path, config)
        stack.callback(daemon.close)
        daemon.start()
        daemon.wait_status(lambda s: s["devices"]["online"] == 1, "the panel online",
                           timeout=30)
        wait_for(lambda: (tmp_path / "control.sock").exists(), 10, "the control socket")
        yield dev, daemon, config


@pytest.fixture
def daemon_line(tmp_path, bundles):
    with ota_daemon(tmp_path, bundles) as (dev, daemon, _):
        yield dev, daemon


def test_hallgate_ota_through_the_daemon_updates_and_refuses_a_forged_bundle(
        daemon_line, bundles, tmp_path):
    dev, daemon = daemon_line
    forged = tmp_path / "forged.zip"
    bundle.build("call-panel", forged, bundles["other.pem"], board="unix")
    out = hallgate("ota", TARGET, forged, "--status-file", daemon.status_file)
    assert out.returncode == 1 and "bundle refused, nothing sent" in out.stderr, out.stderr
    assert "signature" in out.stderr
    out = hallgate("ota", TARGET, bundles["new"], "--json", "--status-file",
                   daemon.status_file, timeout=120)
    assert out.returncode == 0, (out.stdout, out.stderr)
    doc = json.loads(out.stdout)
    assert doc["via"] == "daemon" and doc["version"] == "0.2.0"
    [r] = doc["results"]
    assert (r["address"], r["result"], r["firmware"]) == (TARGET, "updated", "0.2.0"), r
    out = hallgate("devices", "--json", "--status-file", daemon.status_file)
    assert json.loads(out.stdout)["devices"][0]["firmware"] == "0.2.0"
    assert daemon.running


def test_ctrl_c_on_hallgate_ota_says_the_update_goes_on_in_the_daemon(daemon_line, bundles):
    ctrl_c_then_the_daemon_finishes(daemon_line[1], bundles)


# The Ctrl-C of a terminal: SIGINT raising KeyboardInterrupt. A command started from a
# shell without job control (CI's `make test &`) inherits SIGINT ignored, and would go on.
FOREGROUND = ("import runpy, signal, sys; "
              "signal.signal(signal.SIGINT, signal.default_int_handler); "
              "sys.argv[0] = 'hallgate'; runpy.run_module('hallgate.cli', run_name='__main__')")


def ctrl_c_then_the_daemon_finishes(daemon, bundles):
    proc = subprocess.Popen([sys.executable, "-c", FOREGROUND, "ota", str(TARGET),
                             str(bundles["new"]), "--status-file", str(daemon.status_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=daemon_env())
    try:
        # The whole log: its last 40 lines may have scrolled past the line already.
        wait_for(lambda: "firmware update to call-panel" in daemon.log(lines=10**6)
                 or proc.poll() is not None, 30, "the daemon to start the update")
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (stdout, stderr, daemon.log())
    assert "the update goes on in the daemon" in stderr
    # ... and it does: the device ends on the new version.
    def firmware():
        out = hallgate("devices", "--json", "--status-file", daemon.status_file)
        return json.loads(out.stdout)["devices"][0]["firmware"]

    wait_for(lambda: firmware() == "0.2.0", 120, "the daemon to finish the update")


def test_hallgate_ota_directly_by_role_and_its_refusals(line, bundles, tmp_path):
    master_path = line.hub.master_path
    line.master.close()  # the port is the technician's now
    out = hallgate("ota", "--role", "window-display", bundles["new"], "--port", master_path,
                   "--key", bundles["pub"], "--status-file", tmp_path / "none.json")
    assert out.returncode == 1 and "the bundle is for call-panel, not window-display" in \
        out.stderr, out.stderr
    out = hallgate("ota", 9, bundles["new"], "--port", master_path, "--key",
                   bundles["pub"], "--status-file", tmp_path / "none.json")
    assert out.returncode == 1 and "device 9 is not on the bus" in out.stderr, out.stderr
    out = hallgate("ota", "--role", "call-panel", bundles["new"], "--port", master_path,
                   "--key", bundles["pub"], "--status-file", tmp_path / "none.json",
                   timeout=180)
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert out.stdout.startswith(f"firmware update to 0.2.0 (directly on {master_path}):")
    assert out.stdout.count("UPDATED") == 2 and "2 updated" in out.stdout
