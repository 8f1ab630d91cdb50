"""`hallgate flash`: put a signed firmware bundle on a new or recovered board over USB.

Design note
-----------
Operations: a technician plugs a board into the Pi (or a laptop) and runs
``hallgate flash --port /dev/ttyACM0 --role window-display --address 5 --window 5
--bundle B.zip --key KEY.pub``; `flash` does the work and raises `FlashError`, `run` is the
command body (one line per failure, exit 1), `configure_parser` adds its options.
Goals: nothing reaches the board before the bundle's signature and hashes, the role, the
device config, the board kind and its bytecode version have all been checked; a board whose
copy fails keeps its old firmware; every file is hashed on the board afterwards.
Plan: mpremote (a subprocess per step) does the talking; the board answers in marker lines.
1) probe (read-only): MicroPython answers; its sys.platform and sys.implementation._mpy.
2) copy: the new layout goes into a staging folder, `.hallgate-new/`.
3) install, one script on the board: hash the staged files against the manifest (a bad
copy stops here, the old firmware untouched), remove what an earlier install left (`b/`,
`ota.bin`, `ota.json`, the old `a/`, root copies of slot modules from the pre-slot layout),
rename the staged files into place, hash every final file.
4) reset, so the boot loader starts the new firmware.

The board's layout (the boot loader, firmware/main.py and slots.py, and OTA rely on it)::

    main.py, slots.mpy  the boot loader (bundle.in_root)   config.json  the device config
    boot.json           {"slot": "a"}                      a/  every other bundle file
    state.json          kept: the boot counter must never go back

Bytecode (checked with mpy-cross 1.29 and the unix port): a bytecode-only .mpy file has
no architecture: its header is ``M 06 00 1f`` whatever ``-march`` says (armv6m and x64
output are byte for byte the same) and it loads on the x64 unix port; the loader checks
only the major version (the sub-version and the arch only for native code, which is
refused elsewhere as "incompatible .mpy arch"). So a board must have the bundle's major
.mpy version, and a file with native code must match the board's arch and sub-version.
"""

import argparse
import hashlib
import json
import os
import selectors
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hallgate.gateway import bundle

STAGE = ".hallgate-new"
LEFTOVERS = ("b", "ota.bin", "ota.json")
BOOT_JSON = b'{"slot": "a"}'
BOARDS = {"rp2": ("rp2",), "unix": ("linux", "darwin", "freebsd")}  # manifest: sys.platform
# sys.implementation._mpy >> 10, and an .mpy header's third byte >> 2 (py/persistentcode.h)
ARCHS = (None, "x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp",
         "armv7emdp", "xtensa", "xtensawin", "rv32imc", "rv64imc")


class FlashError(Exception):
    """An expected failure; the message names what and where (port, file)."""


# -- checks on the PC, before the board is touched ----------------------------------------

def check_board(platform, manifest, where="the board"):
    """Refuse a bundle made for another kind of board (its HAL would not start)."""
    if platform not in BOARDS.get(manifest.board, (manifest.board,)):
        raise FlashError(f"{where}: the bundle is for {manifest.board} boards, this board's "
                         f"MicroPython is {platform}")


def check_bytecode(board_mpy, manifest, files, where="the board"):
    """Refuse a compiled bundle this board cannot load. `board_mpy` is the board's
    sys.implementation._mpy (0 when it has none): version in the low byte, then the
    sub-version (2 bits) and the native arch (from bit 10)."""
    if not manifest.compiled:
        return  # .py sources: every MicroPython compiles them
    want = manifest.mpy["version"]
    if not board_mpy:
        raise FlashError(f"{where}: this MicroPython cannot import .mpy files, the bundle "
                         f"holds mpy v{want} (build one with --source)")
    version, sub, arch = board_mpy & 0xFF, (board_mpy >> 8) & 3, board_mpy >> 10
    board = f"mpy v{version}.{sub}"
    if version != int(want.split(".")[0]):
        raise FlashError(f"{where}: the board's MicroPython loads {board}, the bundle holds "
                         f"mpy v{want}: use a bundle built for the board's version, or update "
                         f"MicroPython on the board")
    for name, data in sorted(files.items()):
        if not name.endswith(".mpy"):
            continue
        if data[:2] != b"M" + bytes([version]):
            raise FlashError(f"{where}: {name} is not mpy v{version}")
        native = data[2] >> 2
        if native and (native != arch or data[2] & 3 != sub):
            raise FlashError(f"{where}: {name} holds native code for "
                             f"{_arch(native)} mpy v{version}.{data[2] & 3}, the board is "
                             f"{_arch(arch)} {board}")


def _arch(n):
    return ARCHS[n] if 0 < n < len(ARCHS) else f"arch {n}"


def _devconfig():
    """firmware/devconfig.py (the board's own check) when this is a source checkout."""
    import importlib.util

    path = bundle.FIRMWARE / "devconfig.py"
    if not path.is_file():
        return None
    from hallgate.protocols import bus

    spec = importlib.util.spec_from_file_location("hallgate_devconfig", path)
    module = importlib.util.module_from_spec(spec)
    saved = sys.modules.get("bus")
    sys.modules["bus"] = bus  # devconfig imports the codec as `bus`, as on a board
    try:
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            del sys.modules["bus"]
        else:
            sys.modules["bus"] = saved
    return module


def device_config(role, address, window, baud=115200, extra=None):
    """The config.json dict, checked as the firmware will check it (ConfigError names the
    field), so a wrong address is refused here rather than by a board that stays dark."""
    cfg = {"address": address, "role": role, "window": window, "baud": baud}
    clash = sorted(set(cfg) & set(extra or {}))
    if clash:
        raise FlashError(f"bad device config: give {', '.join(clash)} with its own option")
    cfg.update(extra or {})
    devconfig = _devconfig()
    try:
        if devconfig is not None:
            devconfig.check(cfg)
        else:  # an installed package without firmware/: the fields this command sets
            from hallgate.protocols import bus

            for name, low, high in (("address", 1, bus.MAX_ADDRESS), ("window", 0, 0xFFFF),
                                    ("baud", 1200, 3000000)):
                if type(cfg[name]) is not int or not low <= cfg[name] <= high:
                    raise ValueError(f"config field {name!r}: expected an integer "
                                     f"{low}-{high}, got {cfg[name]!r}")
            if cfg["role"] not in bus.ROLES:
                raise ValueError(f"config field 'role': expected one of "
                                 f"{', '.join(bus.ROLES)}, got {cfg['role']!r}")
    except ValueError as e:
        raise FlashError(f"bad device config: {e}") from None
    return cfg


def board_layout(files, config):
    """{path on the board: bytes}, in the order they are copied and installed: the slot,
    config.json, boot.json, then the boot loader in the root, main.py last."""
    if "main.py" not in files:
        raise FlashError("the bundle has no main.py (boot loader)")
    out = {f"a/{name}": data for name, data in sorted(files.items()) if not bundle.in_root(name)}
    out["config.json"] = json.dumps(config, sort_keys=True).encode() + b"\n"
    out["boot.json"] = BOOT_JSON
    for name in sorted(files, key=lambda n: (n == "main.py", n)):
        if bundle.in_root(name):
            out[name] = files[name]
    return out


# -- mpremote -----------------------------------------------------------------------------

def _mpremote(port, commands, timeout, *, resume=True, on_line=None):
    """Run mpremote on `port`; (returncode, stdout, stderr), returncode None on timeout.
    `on_line` gets each stdout line as it comes (mpremote runs unbuffered)."""
    argv = [sys.executable, "-m", "mpremote", "connect", port, *(["resume"] if resume else []),
            *commands]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    got = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    deadline, pending, rc = time.monotonic() + timeout, b"", None
    try:
        with selectors.DefaultSelector() as sel:
            for f in got:
                sel.register(f, selectors.EVENT_READ)
            while sel.get_map() and time.monotonic() < deadline:
                for key, _ in sel.select(max(0.0, deadline - time.monotonic())):
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        sel.unregister(key.fileobj)
                    got[key.fileobj] += chunk
                    if key.fileobj is proc.stdout and on_line:
                        *lines, pending = (pending + chunk).split(b"\n")
                        for line in lines:
                            on_line(line.decode(errors="replace").rstrip("\r"))
            if not sel.get_map():
                rc = proc.wait(max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    return rc, got[proc.stdout].decode(errors="replace"), got[proc.stderr].decode(errors="replace")


def _step(port, what, commands, timeout, **kw):
    """Run one mpremote step; its stdout, or FlashError naming the step and the port."""
    rc, out, err = _mpremote(port, commands, timeout, **kw)
    if rc == 0:
        return out
    if "could not enter raw repl" in err or (rc is None and what == "probe"):
        why = "timed out" if rc is None else "no raw REPL prompt"
        raise FlashError(f"{port}: no MicroPython REPL answered ({why}): is this a board "
                         "running MicroPython? (another device, or a program on the board "
                         "that ignores Ctrl-C, looks the same)")
    if "failed to access" in err:
        hint = "in use by another program?"
        if os.path.exists(port) and not stat.S_ISCHR(os.stat(port).st_mode):
            hint = "not a serial device"
        elif os.path.exists(port) and not os.access(port, os.R_OK | os.W_OK):
            hint = "permission denied: add the user to the dialout group"
        raise FlashError(f"{port}: cannot open the port ({hint})")
    if rc is None:
        raise FlashError(f"{port}: {what} timed out after {timeout:.0f} s")
    lines = [ln.strip() for ln in (err + "\n" + out).splitlines() if ln.strip()]
    raise FlashError(f"{port}: {what} failed: {lines[-1] if lines else f'exit code {rc}'}")


def _marked(out, marker):
    return [ln[len(marker) + 1:].strip() for ln in out.splitlines() if ln.startswith(marker)]


_PROBE = """import sys, json
try:
    import machine
    r = hasattr(machine, 'reset')
except ImportError:
    r = False
print('HG-PROBE', json.dumps({'mpy': getattr(sys.implementation, '_mpy', 0), 'reset': r,
 'platform': sys.platform, 'micropython': '%d.%d.%d' % sys.implementation.version[:3]}))
"""

# Runs on the board: MicroPython, % formatting only, no f-strings.
_RM = """import os
def _rm(p):
    try:
        d = os.stat(p)[0] & 0x4000
    except OSError:
        return False
    if d:
        for n in os.listdir(p):
            _rm(p + '/' + n)
        os.rmdir(p)
    else:
        os.remove(p)
    return True
"""

_INSTALL = """import hashlib, binascii, json
def _sha(p):
    try:
        f = open(p, 'rb')
    except OSError:
        return None
    h, b = hashlib.sha256(), bytearray(512)
    m = memoryview(b)
    with f:
        while True:
            n = f.readinto(b)
            if not n:
                break
            h.update(m[:n])
    return binascii.hexlify(h.digest()).decode()
bad = [p for p in FILES if _sha(S + '/' + p) != FILES[p]]
if bad:
    print('HG-STAGED-BAD', json.dumps(bad))
else:
    print('HG-REMOVED', json.dumps([p for p in GONE if _rm(p)]))
    _rm('a')
    os.rename(S + '/a', 'a')
    for p in TOP:
        try:
            os.rename(S + '/' + p, p)
        except OSError:  # FAT will not rename onto an existing file
            os.remove(p)
            os.rename(S + '/' + p, p)
    _rm(S)
    for p in FILES:
        print('HG-FILE', p, _sha(p))
"""


# -- the command --------------------------------------------------------------------------

def flash(port, bundle_path, key_path, role, address, window, *, baud=115200, resume=False,
          reset=True, extra_config=None, timeout=20.0, progress=None):
    """Flash the bundle onto the board on `port`; a result dict, or FlashError.
    `progress(done, total, what)` is called as files are copied and verified;
    `timeout` bounds each mpremote step (the copy gets 1 s more per KB)."""
    try:
        manifest, files = bundle.load(bundle_path, key_path)
    except bundle.BundleError as e:
        raise FlashError(str(e)) from None
    if manifest.role != role:
        raise FlashError(f"bundle {bundle_path} is for the {manifest.role} role, not {role}")
    layout = board_layout(files, device_config(role, address, window, baud, extra_config))
    total, size = 2 * len(layout), sum(map(len, layout.values()))
    if port.startswith("/") and not os.path.exists(port):
        raise FlashError(f"{port}: no such port (is the board plugged in? "
                         "`mpremote connect list` lists the serial ports)")

    # 1) probe: read-only, and the only step that may soft-reset the board
    out = _step(port, "probe", ["exec", _PROBE], timeout, resume=resume)
    try:
        board = json.loads(_marked(out, "HG-PROBE")[0])
    except (IndexError, ValueError):
        raise FlashError(f"{port}: unexpected answer from the board: {out.strip()[-200:]!r}") \
            from None
    check_board(board["platform"], manifest, where=port)
    check_bytecode(board["mpy"], manifest, files, where=port)

    # 2) copy into the staging folder
    done = 0

    def advance(what):
        nonlocal done
        done += 1
        if progress:
            progress(done, total, what)

    current = []

    def copied(line):  # mpremote prints "cp SRC :DEST" as it starts each file
        if line.startswith("cp ") and ":" + STAGE + "/" in line:
            if current:
                advance(f"copied {current[-1]}")
            current.append(line.split(":" + STAGE + "/", 1)[1])

    with tempfile.TemporaryDirectory(prefix="hallgate-flash-") as tmp:
        commands = ["exec", _RM + f"_rm({STAGE!r})\nos.mkdir({STAGE!r})\nos.mkdir('{STAGE}/a')"]
        for path, data in layout.items():
            local = Path(tmp, path)
            local.parent.mkdir(exist_ok=True)
            local.write_bytes(data)
            commands += ["+", "fs", "cp", "-f", str(local), f":{STAGE}/{path}"]
        try:
            _step(port, "copy", commands, timeout + size / 1000, on_line=copied)
        except FlashError as e:
            where = f" (at {current[-1]})" if current else ""
            raise FlashError(f"{e}{where}; the old firmware is still in place") from None
        advance(f"copied {current[-1]}" if current else "copied")

    # 3) check the staged copy, install it, hash the result
    expected = {p: hashlib.sha256(d).hexdigest() for p, d in layout.items()}
    top = [p for p in layout if "/" not in p]
    stale = sorted({f"{Path(n).stem}{ext}" for n in files if not bundle.in_root(n)
                    for ext in (".py", ".mpy")})  # the pre-slot layout had them in the root
    script = (_RM + f"S = {STAGE!r}\nFILES = {expected!r}\nTOP = {top!r}\n"
              f"GONE = {[*LEFTOVERS, *stale]!r}\n" + _INSTALL)

    def verified(line):
        if line.startswith("HG-FILE "):
            advance(f"verified {line.split()[1]}")

    out = _step(port, "install", ["exec", script], timeout + size / 1000, on_line=verified)
    bad = _marked(out, "HG-STAGED-BAD")
    if bad:
        raise FlashError(f"{port}: {', '.join(json.loads(bad[0]))} arrived with the wrong "
                         "sha256; nothing installed, the old firmware is still in place")
    on_board = dict(ln.split(" ", 1) for ln in _marked(out, "HG-FILE"))
    for path, digest in expected.items():
        if on_board.get(path) != digest:
            raise FlashError(f"{port}: {path} on the board has sha256 "
                             f"{on_board.get(path)}, expected {digest}: flash again")
    removed = json.loads((_marked(out, "HG-REMOVED") or ["[]"])[0])

    # 4) reset, so the boot loader starts the new firmware
    reset, warning = reset and board["reset"], None  # the unix port has no machine.reset
    if reset:
        try:  # the files are in place and verified: a failed reset is no failed flash
            _step(port, "reset", ["reset"], timeout)
        except FlashError as e:
            reset, warning = False, f"{e}; press the board's reset or plug it in again"
    return {"ok": True, "warning": warning, "port": port, "role": manifest.role,
            "version": manifest.version, "bundle": str(bundle_path), "key_id": manifest.key_id,
            "files": len(layout), "bytes": size, "verified": True, "removed": removed,
            "reset": reset, "board": board, "config": json.loads(layout["config.json"])}


def _field(text):
    name, eq, value = text.partition("=")
    if not eq or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name, json.loads(value)
    except ValueError:
        return name, value  # a plain string, e.g. idle_text=CLOSED


def configure_parser(p):
    p.add_argument("--port", required=True, help="the board's USB serial port, e.g. "
                   "/dev/ttyACM0 (or anything `mpremote connect` takes)")
    p.add_argument("--bundle", required=True, help="signed firmware bundle "
                   "(`hallgate firmware build`)")
    p.add_argument("--key", required=True, metavar="PUBLIC",
                   help="public key the bundle must be signed with")
    p.add_argument("--role", required=True, choices=tuple(bundle.ROLE_MODULES),
                   help="the device role (must be the bundle's)")
    p.add_argument("--address", required=True, type=int, help="bus address, 1-247")
    p.add_argument("--window", required=True, type=int, help="the window this device serves")
    p.add_argument("--baud", type=int, default=115200, help="the device's RS-485 bus speed "
                   "(default 115200)")
    p.add_argument("--idle-text", help="what the display shows when idle (default ----)")
    p.add_argument("--set", type=_field, action="append", default=[], metavar="NAME=VALUE",
                   help="another config.json field (firmware/README.md), VALUE as JSON, "
                   "e.g. --set brightness=12 --set 'pins={\"led\": 25}'")
    p.add_argument("--resume", action="store_true",
                   help="do not soft-reset the board when connecting")
    p.add_argument("--no-reset", dest="reset", action="store_false",
                   help="do not reset the board afterwards (the new firmware starts at the "
                   "next reset)")
    p.add_argument("--timeout", type=float, default=20.0,
                   help="seconds each step may take (the copy 1 s more per KB; default 20)")
    p.add_argument("--json", action="store_true", help="print the result (or the error) as "
                   "JSON, no progress bar")


def run(args):
    """The command body: flash, print a summary (or one line on stderr), exit code."""
    extra = dict(args.set)
    if args.idle_text is not None:
        extra["idle_text"] = args.idle_text
    show = not args.json and sys.stderr.isatty()
    try:
        if show:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            with Progress(TextColumn("{task.description:28}"), BarColumn(),
                          MofNCompleteColumn(), console=Console(stderr=True),
                          transient=True) as bar:
                task = bar.add_task(f"flashing {args.port}", total=None)
                result = flash(args.port, args.bundle, args.key, args.role, args.address,
                               args.window, baud=args.baud, resume=args.resume,
                               reset=args.reset, extra_config=extra, timeout=args.timeout,
                               progress=lambda done, total, what: bar.update(
                                   task, completed=done, total=total, description=what))
        else:
            result = flash(args.port, args.bundle, args.key, args.role, args.address,
                           args.window, baud=args.baud, resume=args.resume, reset=args.reset,
                           extra_config=extra, timeout=args.timeout)
    except FlashError as e:
        if args.json:
            print(json.dumps({"ok": False, "port": args.port, "error": str(e)}, indent=1))
        print(f"hallgate flash: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"hallgate flash: interrupted; flash {args.port} again", file=sys.stderr)
        return 1
    if result["warning"] and not args.json:
        print(f"hallgate flash: warning: {result['warning']}", file=sys.stderr)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"{args.port}: {result['role']} {result['version']} (address "
              f"{args.address}, window {args.window}), {result['files']} files, "
              f"{result['bytes']} bytes, all verified"
              + (", board reset" if result["reset"] else ", not reset"))
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(prog="hallgate flash", description="Put a signed firmware "
                                "bundle on a board over USB (mpremote), verify every file.")
    configure_parser(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
