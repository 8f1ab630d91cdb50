"""hallgate flash against a real MicroPython REPL: the unix port behind a pty (socat), its
filesystem a temporary folder, driven by the real mpremote (FIELD-NOTES). Bundles are built
and signed here, compiled with mpy-cross for armv6m as for a Pico (bytecode-only .mpy files
load on the x64 unix port); the unix port gets bundles for board "unix" (its HAL)."""

import base64
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from conftest import micropython_path, wait_for
from hallgate.gateway import bundle
from hallgate.gateway.flash import FlashError, check_board, check_bytecode, device_config, flash
from hallgate.protocols import bus
from hallgate.sim.device import HEAPSIZE

pytestmark = [pytest.mark.micropython, pytest.mark.timeout(120)]


# -- fixtures -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    bundle.keygen(d / "key.pem", d / "key.pub")
    bundle.keygen(d / "other.pem", d / "other.pub")
    return d


@pytest.fixture(scope="module")
def display_bundle(keys):
    """A compiled (armv6m .mpy) window-display bundle for the unix port's HAL."""
    path = keys / "display.zip"
    bundle.build("window-display", path, keys / "key.pem", compile=True, board="unix")
    return path


@pytest.fixture(scope="module")
def pico_bundle(keys):
    """The same for a Pico (board rp2): what a technician flashes in a hall."""
    path = keys / "pico.zip"
    bundle.build("window-display", path, keys / "key.pem", compile=True)
    return path


def _children(pid):
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z")


class PtyProcess:
    """`command` behind a pty that socat links at `tty`, run in `cwd`."""

    def __init__(self, command, tty, cwd):
        socat = shutil.which("socat")
        if socat is None:
            raise RuntimeError("socat not found: run `make test`, which installs it")
        self.tty = str(tty)
        self.proc = subprocess.Popen(
            [socat, f"pty,raw,echo=0,link={tty}",
             f"exec:{command},pty,raw,echo=0,stderr,setsid,ctty"],
            cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        wait_for(lambda: os.path.exists(tty) and _children(self.proc.pid), 10,
                 f"socat to link {tty} and start {command}")
        self.children = _children(self.proc.pid)

    def close(self):
        self.proc.terminate()  # its child loses the pty (SIGHUP)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for pid in self.children:
            try:
                wait_for(lambda p=pid: _gone(p), 5, f"pty child {pid} to end")
            except AssertionError:
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def board(tmp_path):
    """A MicroPython REPL on a pty; its filesystem is `board.root`."""
    root = tmp_path / "board"
    root.mkdir()
    b = PtyProcess(micropython_path(), tmp_path / "tty", root)
    b.root = root
    yield b
    b.close()


def snapshot(root):
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(Path(root).rglob("*"))}


def sha(data):
    return hashlib.sha256(data).hexdigest()


def resign(src, dst, key, edit):
    """A copy of bundle `src` whose manifest `edit` changed, signed again with `key`."""
    with zipfile.ZipFile(src) as z:
        entries = {n: z.read(n) for n in z.namelist()}
    manifest = json.loads(entries[bundle.MANIFEST])
    edit(manifest)
    body = bundle.canonical(manifest)
    private = bundle.load_private_key(key)
    entries[bundle.MANIFEST] = body
    entries[bundle.SIGNATURE] = bundle.canonical({
        "algorithm": "ed25519", "key_id": bundle.key_id(private.public_key()),
        "signature": base64.b64encode(private.sign(body)).decode()})
    with zipfile.ZipFile(dst, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return dst


def flash_display(board, bundle_path, key, **kw):
    kw = {"resume": True, "reset": False, "timeout": 20, **kw}
    return flash(board.tty, bundle_path, key, kw.pop("role", "window-display"),
                 kw.pop("address", 5), kw.pop("window", 5), **kw)


# -- a good flash -------------------------------------------------------------------------

def test_files_arrive_in_the_slot_layout_and_match_the_manifest(board, keys, display_bundle):
    manifest, files = bundle.load(display_bundle, keys / "key.pub")
    seen = []
    result = flash_display(board, display_bundle, keys / "key.pub",
                           extra_config={"idle_text": "CLOSED", "brightness": 3},
                           progress=lambda done, total, what: seen.append((done, total)))
    root = board.root
    loader = ["main.py", "slots.mpy"]
    assert sorted(p.name for p in root.iterdir()) == ["a", "boot.json", "config.json", *loader]
    assert sorted(p.name for p in (root / "a").iterdir()) == sorted(set(files) - set(loader))
    for name, entry in manifest.files.items():
        on_board = root / (name if name in loader else f"a/{name}")
        assert sha(on_board.read_bytes()) == entry.sha256, name
    assert all(n.endswith(".mpy") for n in files if n != "main.py")  # really compiled
    assert (root / "boot.json").read_bytes() == b'{"slot": "a"}'
    assert json.loads((root / "config.json").read_text()) == {
        "address": 5, "role": "window-display", "window": 5, "baud": 115200,
        "idle_text": "CLOSED", "brightness": 3}
    n = len(files) + 2  # config.json, boot.json
    assert result["ok"] and result["verified"] and result["files"] == n
    assert result["role"] == "window-display" and result["version"] == manifest.version
    assert result["board"]["mpy"] & 0xFF == 6 and result["reset"] is False
    assert result["warning"] is None
    assert seen[-1] == (2 * n, 2 * n) and [d for d, _ in seen] == list(range(1, 2 * n + 1))


def test_the_flashed_board_boots_from_slot_a(board, keys, display_bundle):
    """The board as flashed starts: main.py and slots.mpy pick slot a from boot.json, the
    armv6m bytecode there runs on the x64 unix port, and the firmware takes the config.json
    that flash wrote (the unix HAL's bus UART is a pty here)."""
    manifest = bundle.verify(display_bundle, keys / "key.pub")
    master, slave = os.openpty()
    try:
        flash_display(board, display_bundle, keys / "key.pub", address=17, window=4,
                      baud=9600, extra_config={"uart": os.ttyname(slave)})
        # stdin at its end: the device starts, says it is ready, and quits
        done = subprocess.run([micropython_path(), "-X", f"heapsize={HEAPSIZE}", "main.py"],
                              cwd=board.root, input="", capture_output=True, text=True,
                              timeout=30, env=dict(os.environ, MICROPYPATH=""))
    finally:
        os.close(slave)
        os.close(master)
    ready = [json.loads(ln)["ready"] for ln in done.stdout.splitlines() if '"ready"' in ln]
    assert ready, done.stdout + done.stderr
    assert {k: ready[0][k] for k in ("address", "role", "window", "firmware")} == {
        "address": 17, "role": "window-display", "window": 4, "firmware": manifest.version}
    assert (board.root / "state.json").exists()  # the boot counter, beside config.json


def test_leftovers_of_an_earlier_install_are_removed_and_state_json_kept(board, keys,
                                                                          display_bundle):
    root = board.root
    (root / "b").mkdir()
    (root / "b" / "devmain.mpy").write_bytes(b"M\x06old")
    (root / "ota.bin").write_bytes(b"half an image")
    (root / "ota.json").write_text('{"state": "receiving"}')
    (root / "state.json").write_text('{"boots": 41}')
    (root / "a").mkdir()
    (root / "a" / "role_panel.mpy").write_bytes(b"the other role")  # not in this bundle
    (root / "devmain.mpy").write_bytes(b"pre-slot layout")  # `mpremote cp build/firmware/*`
    (root / "bus.py").write_bytes(b"pre-slot layout")
    (root / ".hallgate-new").mkdir()  # an interrupted flash
    (root / ".hallgate-new" / "junk").write_bytes(b"x")
    (root / "notes.txt").write_text("not ours")
    result = flash_display(board, display_bundle, keys / "key.pub", reset=True)
    assert result["reset"] is False  # the unix port has no machine.reset: skipped
    names = sorted(p.name for p in root.iterdir())
    assert names == ["a", "boot.json", "config.json", "main.py", "notes.txt", "slots.mpy",
                     "state.json"]
    assert (root / "state.json").read_text() == '{"boots": 41}'
    assert not (root / "a" / "role_panel.mpy").exists()
    assert sorted(result["removed"]) == ["b", "bus.py", "devmain.mpy", "ota.bin", "ota.json"]


def test_the_command_prints_json_and_a_summary(board, keys, display_bundle):
    base = [sys.executable, "-m", "hallgate.gateway.flash", "--port", board.tty, "--resume",
            "--no-reset", "--role", "window-display", "--address", "9", "--window", "3",
            "--bundle", str(display_bundle), "--key", str(keys / "key.pub")]
    done = subprocess.run([*base, "--json", "--idle-text", "SHUT", "--set", "brightness=2"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["ok"] and out["verified"] and out["port"] == board.tty
    assert out["config"] == {"address": 9, "baud": 115200, "brightness": 2,
                             "idle_text": "SHUT", "role": "window-display", "window": 3}
    done = subprocess.run(base, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{board.tty}: window-display ")
    assert "all verified" in done.stdout and done.stderr == ""  # stderr is no tty: no bar


# -- refused before the board is touched --------------------------------------------------

def refused(board, match, bundle_path, key, **kw):
    before = snapshot(board.root)
    with pytest.raises(FlashError, match=match):
        flash_display(board, bundle_path, key, **kw)
    assert snapshot(board.root) == before


def test_a_bundle_signed_by_another_key_is_refused(board, keys, display_bundle):
    (board.root / "state.json").write_text("{}")
    refused(board, "bad signature: signed by an unknown key", display_bundle,
            keys / "other.pub")


def test_a_changed_file_is_refused(board, keys, display_bundle, tmp_path):
    changed = tmp_path / "changed.zip"
    with zipfile.ZipFile(display_bundle) as z, zipfile.ZipFile(changed, "w") as out:
        for name in z.namelist():
            data = z.read(name)
            out.writestr(name, data[:-1] + b"\x00" if name == "files/bus.mpy" else data)
    refused(board, "file bus.mpy: sha256", changed, keys / "key.pub")


def test_a_bundle_of_another_role_is_refused(board, keys, display_bundle):
    refused(board, "is for the window-display role, not call-panel", display_bundle,
            keys / "key.pub", role="call-panel")


@pytest.mark.parametrize("field, value", [("address", 0), ("address", 248), ("window", -1),
                                          ("baud", 300)])
def test_a_bad_device_config_is_refused(board, keys, display_bundle, field, value):
    refused(board, f"bad device config: config field '{field}': expected an integer",
            display_bundle, keys / "key.pub", **{field: value})


def test_bad_optional_config_fields_are_refused(board, keys, display_bundle):
    refused(board, "config field 'idle_text'", display_bundle, keys / "key.pub",
            extra_config={"idle_text": "x" * (bus.TEXT_MAX + 1)})
    refused(board, "config field 'lockout' is unknown", display_bundle, keys / "key.pub",
            extra_config={"lockout": 5})
    refused(board, "give address with its own option", display_bundle, keys / "key.pub",
            extra_config={"address": 7})


def test_a_bundle_for_another_kind_of_board_is_refused(board, keys, pico_bundle):
    refused(board, "the bundle is for rp2 boards, this board's MicroPython is linux",
            pico_bundle, keys / "key.pub")


def test_a_bundle_for_another_mpy_version_is_refused_on_the_board(board, keys, display_bundle,
                                                                   tmp_path):
    """Signed again after its manifest claims mpy v7: the board (v6) is asked, and refuses."""
    def v7(m):
        m["mpy"]["version"] = "7.0"

    other = resign(display_bundle, tmp_path / "v7.zip", keys / "key.pem", v7)
    refused(board, r"loads mpy v6\.3, the bundle holds mpy v7\.0", other, keys / "key.pub")


# -- ports without a MicroPython board ----------------------------------------------------

def test_a_port_that_does_not_exist(keys, display_bundle, tmp_path):
    with pytest.raises(FlashError, match=f"{tmp_path}/ttyNONE: no such port"):
        flash(str(tmp_path / "ttyNONE"), display_bundle, keys / "key.pub", "window-display",
              5, 5, resume=True, timeout=10)


def test_a_port_that_cannot_be_opened(keys, display_bundle, tmp_path):
    not_a_tty = tmp_path / "ttyFILE"
    not_a_tty.mkdir()
    with pytest.raises(FlashError, match=f"{not_a_tty}: cannot open the port "
                       r"\(not a serial device\)"):
        flash(str(not_a_tty), display_bundle, keys / "key.pub", "window-display", 5, 5,
              resume=True, timeout=10)


@pytest.mark.parametrize("resume", [True, False])
def test_a_pty_with_cat_behind_it_is_no_micropython(keys, display_bundle, tmp_path, resume):
    cat = PtyProcess(shutil.which("cat"), tmp_path / "tty", tmp_path)
    try:
        t0 = time.monotonic()
        with pytest.raises(FlashError, match="no MicroPython REPL answered"):
            flash(cat.tty, display_bundle, keys / "key.pub", "window-display", 5, 5,
                  resume=resume, timeout=3)
        assert time.monotonic() - t0 < 60  # bounded by the step timeout, not mpremote's
    finally:
        cat.close()


def test_a_silent_pty_is_no_micropython(keys, display_bundle):
    master, slave = os.openpty()
    try:
        with pytest.raises(FlashError, match=f"{os.ttyname(slave)}: no MicroPython REPL "
                           r"answered \(timed out\)"):
            flash(os.ttyname(slave), display_bundle, keys / "key.pub", "window-display", 5, 5,
                  resume=True, timeout=2)
    finally:
        os.close(slave)
        os.close(master)


def test_the_command_says_one_line_and_exits_1(keys, display_bundle, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "hallgate.gateway.flash", "--port", str(tmp_path / "ttyNONE"),
         "--role", "window-display", "--address", "5", "--window", "5",
         "--bundle", str(display_bundle), "--key", str(keys / "key.pub")],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.startswith("hallgate flash: ") and done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr


# -- the bytecode rule, with fabricated board answers --------------------------------------

def board_mpy(version, sub, arch):
    """sys.implementation._mpy as a board reports it."""
    return version | sub << 8 | arch << 10


X64, ARMV6M = 2, 4


def test_bytecode_version_rule(keys, display_bundle):
    manifest, files = bundle.load(display_bundle, keys / "key.pub")
    assert manifest.mpy == {"version": "6.3", "arch": "armv6m"}
    check_bytecode(board_mpy(6, 3, ARMV6M), manifest, files)  # a Pico
    check_bytecode(board_mpy(6, 3, X64), manifest, files)  # the unix port: no arch in bytecode
    check_bytecode(board_mpy(6, 2, ARMV6M), manifest, files)  # sub-version: native code only
    with pytest.raises(FlashError, match=r"/dev/ttyACM0: the board's MicroPython loads mpy "
                       r"v5\.0, the bundle holds mpy v6\.3"):
        check_bytecode(board_mpy(5, 0, ARMV6M), manifest, files, where="/dev/ttyACM0")
    with pytest.raises(FlashError, match="cannot import .mpy files"):
        check_bytecode(0, manifest, files)
    later = dataclasses.replace(manifest, mpy={"version": "7.0", "arch": "armv6m"})
    with pytest.raises(FlashError, match=r"loads mpy v6\.3, the bundle holds mpy v7\.0"):
        check_bytecode(board_mpy(6, 3, ARMV6M), later, files)


def test_native_code_must_match_the_boards_arch(keys, display_bundle):
    manifest, files = bundle.load(display_bundle, keys / "key.pub")
    native = dict(files, **{"fast.mpy": b"M\x06" + bytes([3 | ARMV6M << 2]) + b"\x1f..."})
    check_bytecode(board_mpy(6, 3, ARMV6M), manifest, native)
    with pytest.raises(FlashError, match="fast.mpy holds native code for armv6m mpy v6.3, "
                       "the board is x64 mpy v6.3"):
        check_bytecode(board_mpy(6, 3, X64), manifest, native)
    with pytest.raises(FlashError, match="fast.mpy holds native code"):
        check_bytecode(board_mpy(6, 2, ARMV6M), manifest, native)


def test_a_source_bundle_needs_no_mpy_support(keys, tmp_path):
    path = tmp_path / "source.zip"
    bundle.build("call-panel", path, keys / "key.pem", compile=False)
    manifest, files = bundle.load(path, keys / "key.pub")
    check_bytecode(0, manifest, files)


def test_board_kind_rule(keys, pico_bundle, display_bundle):
    check_board("rp2", bundle.verify(pico_bundle, keys / "key.pub"))
    check_board("linux", bundle.verify(display_bundle, keys / "key.pub"))
    with pytest.raises(FlashError, match="/dev/ttyACM0: the bundle is for unix boards, this "
                       "board's MicroPython is rp2"):
        check_board("rp2", bundle.verify(display_bundle, keys / "key.pub"), "/dev/ttyACM0")


def test_config_check_without_the_firmware_sources(monkeypatch, tmp_path):
    """An installed package has no firmware/: the fields the command sets are still checked."""
    monkeypatch.setattr(bundle, "FIRMWARE", tmp_path)
    assert device_config("call-panel", 3, 2, 9600) == {
        "address": 3, "role": "call-panel", "window": 2, "baud": 9600}
    for args, field in [((0, 2, 9600), "address"), ((3, 70000, 9600), "window"),
                        ((3, 2, True), "baud")]:
        with pytest.raises(FlashError, match=f"config field '{field}': expected an integer"):
            device_config("call-panel", *args)
    with pytest.raises(FlashError, match="config field 'role'"):
        device_config("kiosk", 3, 2)
