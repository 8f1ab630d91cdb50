"""Signed firmware bundles (gateway/bundle.py) and `hallgate keygen` / `hallgate firmware`."""

import ast
import base64
import hashlib
import json
import stat
import zipfile
from pathlib import Path

import pytest
from hallgate.gateway import bundle
from hallgate.gateway.bundle import BundleError
from harness import hallgate

ROOT = Path(__file__).resolve().parent.parent
FIRMWARE = ROOT / "firmware"

ROLE_ONLY = {"call-panel": "role_panel", "window-display": "role_display",
             "feedback-pad": "role_feedback"}


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    bundle.keygen(d / "good.pem", d / "good.pub")
    bundle.keygen(d / "other.pem", d / "other.pub")
    return d


@pytest.fixture(scope="module")
def built(keys, tmp_path_factory):
    """A compiled bundle per role, built once: {role: path}."""
    d = tmp_path_factory.mktemp("bundles")
    return {role: (bundle.build(role, d / f"{role}.zip", keys / "good.pem", version="1.2.3"),
                   d / f"{role}.zip")
            for role in bundle.ROLE_MODULES}


def rewrite(src, dst, change=None, drop=(), add=None):
    """A copy of the zip `src` with entries changed ({name: bytes}), dropped or added."""
    change, add = change or {}, add or {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            if name not in drop:
                zout.writestr(name, change.get(name, zin.read(name)))
        for name, data in add.items():
            zout.writestr(name, data)
    return dst


def resign(body, private_path):
    key = bundle.load_private_key(private_path)
    return bundle.canonical({"algorithm": "ed25519", "key_id": bundle.key_id(key.public_key()),
                             "signature": base64.b64encode(key.sign(body)).decode()})


# -- keys ---------------------------------------------------------------------------------

def test_keygen_writes_private_key_0600_and_a_matching_public_key(tmp_path):
    bundle.keygen(tmp_path / "k.pem", tmp_path / "k.pub")
    assert stat.S_IMODE((tmp_path / "k.pem").stat().st_mode) == 0o600
    assert (tmp_path / "k.pem").read_text().startswith("-----BEGIN PRIVATE KEY-----")
    private = bundle.load_private_key(tmp_path / "k.pem")
    public = bundle.load_public_key(tmp_path / "k.pub")
    assert bundle.key_id(private.public_key()) == bundle.key_id(public)


@pytest.mark.parametrize("existing", ["k.pem", "k.pub"])
def test_keygen_refuses_to_overwrite_either_key(tmp_path, existing):
    (tmp_path / existing).write_text("precious")
    with pytest.raises(BundleError, match=f"{existing} already exists"):
        bundle.keygen(tmp_path / "k.pem", tmp_path / "k.pub")
    assert (tmp_path / existing).read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == [existing]  # nothing half-written


def test_a_public_key_is_no_signing_key(keys, tmp_path):
    with pytest.raises(BundleError, match="private key .*good.pub"):
        bundle.build("call-panel", tmp_path / "b.zip", keys / "good.pub", version="1")


# -- build and verify ---------------------------------------------------------------------

def expected_names(role, compiled=True):
    mods = bundle.modules(role)
    return {"main.py"} | {m + (".mpy" if compiled else ".py") for m in mods if m != "main"}


@pytest.mark.parametrize("role", sorted(bundle.ROLE_MODULES))
def test_build_and_verify_round_trip(built, keys, role):
    made, path = built[role]
    manifest, files = bundle.load(path, keys / "good.pub")
    assert manifest == made
    assert (manifest.role, manifest.version, manifest.compiled) == (role, "1.2.3", True)
    assert manifest.mpy == {"version": "6.3", "arch": "armv6m"}
    assert set(manifest.files) == set(files) == expected_names(role)
    others = {m + ".mpy" for r, m in ROLE_ONLY.items() if r != role}
    assert not {"hal_unix.mpy", "cpython.mpy"} & set(files) and not others & set(files)
    for name, data in files.items():
        assert manifest.files[name].sha256 == hashlib.sha256(data).hexdigest()
        assert manifest.files[name].size == len(data)
        if name.endswith(".mpy"):
            assert data[:2] == b"M\x06", name
    assert files["main.py"] == (FIRMWARE / "main.py").read_bytes()


def test_source_bundle_holds_the_sources(keys, tmp_path):
    bundle.build("window-display", tmp_path / "s.zip", keys / "good.pem", version="2",
                 compile=False)
    manifest, files = bundle.load(tmp_path / "s.zip", keys / "good.pub")
    assert not manifest.compiled and manifest.mpy is None
    assert set(files) == expected_names("window-display", compiled=False)
    assert files["bus.py"] == (ROOT / "protocols" / "bus.py").read_bytes()
    assert files["role_display.py"] == (FIRMWARE / "role_display.py").read_bytes()


def test_version_defaults_to_the_firmwares_own(keys, tmp_path):
    m = bundle.build("call-panel", tmp_path / "b.zip", keys / "good.pem", compile=False)
    text = (FIRMWARE / "appcore.py").read_text()
    assert f"FIRMWARE = ({m.version.replace('.', ', ')})" in text


@pytest.mark.parametrize("role", sorted(bundle.ROLE_MODULES))
def test_role_files_are_what_main_imports_on_a_pico(role):
    """The import closure of main.py on an rp2 (hal_rp2, this role, MicroPython's own
    modules left out) is exactly the bundle's module list."""
    local = {p.stem: p for p in FIRMWARE.glob("*.py")} | {
        m: ROOT / f"protocols/{m}.py" for m in bundle.PROTOCOL_MODULES}
    skip = {"hal_unix", "cpython"} | {m for r, m in ROLE_ONLY.items() if r != role}
    seen, todo = set(), ["main"]
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        for node in ast.walk(ast.parse(local[mod].read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) else [])
            todo += [n for n in names if n in local and n not in skip]
    assert seen == set(bundle.modules(role))


def test_unknown_role_is_refused(keys, tmp_path):
    with pytest.raises(BundleError, match="unknown role 'kiosk'"):
        bundle.build("kiosk", tmp_path / "b.zip", keys / "good.pem", version="1")


# -- what verify refuses ------------------------------------------------------------------

def test_bundle_signed_by_another_key_is_refused(built, keys):
    _, path = built["call-panel"]
    with pytest.raises(BundleError, match="bad signature: signed by an unknown key") as e:
        bundle.verify(path, keys / "other.pub")
    assert str(path) in str(e.value)


def test_changed_file_is_refused_naming_it(built, keys, tmp_path):
    _, path = built["call-panel"]
    with zipfile.ZipFile(path) as z:
        data = bytearray(z.read("files/appcore.mpy"))
    data[-1] ^= 1
    bad = rewrite(path, tmp_path / "bad.zip", change={"files/appcore.mpy": bytes(data)})
    with pytest.raises(BundleError, match="file appcore.mpy: sha256 .* differs"):
        bundle.verify(bad, keys / "good.pub")
    bigger = rewrite(path, tmp_path / "big.zip", change={"files/main.py": bytes(600)})
    with pytest.raises(BundleError, match="file main.py: size 600"):
        bundle.verify(bigger, keys / "good.pub")


def test_extra_file_is_refused(built, keys, tmp_path):
    _, path = built["window-display"]
    bad = rewrite(path, tmp_path / "bad.zip", add={"files/boot.py": b"import evil\n"})
    with pytest.raises(BundleError, match="extra file.*boot.py"):
        bundle.verify(bad, keys / "good.pub")
    outside = rewrite(path, tmp_path / "out.zip", add={"boot.py": b"import evil\n"})
    with pytest.raises(BundleError, match="extra file.*boot.py"):
        bundle.verify(outside, keys / "good.pub")


def test_missing_file_is_refused(built, keys, tmp_path):
    _, path = built["window-display"]
    bad = rewrite(path, tmp_path / "bad.zip", drop={"files/max7219.mpy"})
    with pytest.raises(BundleError, match="missing file.*max7219.mpy"):
        bundle.verify(bad, keys / "good.pub")


def test_tampered_manifest_is_refused(built, keys, tmp_path):
    _, path = built["call-panel"]
    with zipfile.ZipFile(path) as z:
        body = z.read("manifest.json")
    m = json.loads(body)
    m["version"] = "9.9.9"
    bad = rewrite(path, tmp_path / "bad.zip", change={"manifest.json": bundle.canonical(m)})
    with pytest.raises(BundleError, match="bad signature: manifest.json was changed"):
        bundle.verify(bad, keys / "good.pub")
    # The same change, re-signed with a key the gateway does not hold.
    other = rewrite(path, tmp_path / "other.zip", change={
        "manifest.json": bundle.canonical(m),
        "manifest.sig": resign(bundle.canonical(m), keys / "other.pem")})
    with pytest.raises(BundleError, match="unknown key"):
        bundle.verify(other, keys / "good.pub")


def test_malformed_but_signed_manifest_is_refused(built, keys, tmp_path):
    _, path = built["call-panel"]
    with zipfile.ZipFile(path) as z:
        m = json.loads(z.read("manifest.json"))
    m["files"]["../boot.py"] = m["files"].pop("main.py")
    body = bundle.canonical(m)
    bad = rewrite(path, tmp_path / "bad.zip", change={
        "manifest.json": body, "manifest.sig": resign(body, keys / "good.pem")})
    with pytest.raises(BundleError, match=r"malformed manifest \(bad file name '../boot.py'"):
        bundle.verify(bad, keys / "good.pub")


def test_not_a_bundle_is_refused(built, keys, tmp_path):
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(BundleError, match="cannot open as a zip"):
        bundle.verify(tmp_path / "junk.zip", keys / "good.pub")
    _, path = built["call-panel"]
    unsigned = rewrite(path, tmp_path / "unsigned.zip", drop={"manifest.sig"})
    with pytest.raises(BundleError, match="no manifest.sig"):
        bundle.verify(unsigned, keys / "good.pub")
    garbled = rewrite(path, tmp_path / "garbled.zip", change={"manifest.sig": b"{}"})
    with pytest.raises(BundleError, match="malformed manifest.sig"):
        bundle.verify(garbled, keys / "good.pub")


# -- the command line ---------------------------------------------------------------------

def test_cli_keygen_build_verify(tmp_path):
    priv, pub, out = tmp_path / "k.pem", tmp_path / "k.pub", tmp_path / "panel.zip"
    done = hallgate("keygen", "--private", priv, "--public", pub)
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    again = hallgate("keygen", "--private", priv, "--public", tmp_path / "new.pub")
    assert again.returncode == 1
    assert again.stderr.strip().splitlines() == [
        f"hallgate keygen: {priv} already exists; not overwriting a key (remove it first "
        "if you mean to replace it)"]

    done = hallgate("firmware", "build", "--role", "call-panel", "--key", priv, "--out", out,
                    "--version", "3.1.4")
    assert done.returncode == 0, done.stderr
    assert "16 files (mpy v6.3 for armv6m)" in done.stdout

    done = hallgate("firmware", "verify", out, "--key", pub)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{out}: ok, call-panel 3.1.4")

    done = hallgate("firmware", "verify", out, "--key", pub, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["ok"], report["role"], report["version"]) == (True, "call-panel", "3.1.4")
    assert set(report["files"]) == expected_names("call-panel")

    src = tmp_path / "src.zip"
    done = hallgate("firmware", "build", "--role", "window-display", "--key", priv,
                    "--out", src, "--source")
    assert done.returncode == 0, done.stderr
    assert "plain .py" in done.stdout


def test_cli_errors_are_one_line_and_exit_nonzero(built, keys, tmp_path):
    _, path = built["call-panel"]
    done = hallgate("firmware", "verify", path, "--key", keys / "other.pub")
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1
    assert "bad signature: signed by an unknown key" in done.stderr

    done = hallgate("firmware", "verify", path, "--key", keys / "other.pub", "--json")
    assert done.returncode == 1
    assert json.loads(done.stdout)["ok"] is False

    done = hallgate("firmware", "build", "--role", "call-panel", "--key",
                    tmp_path / "nokey.pem", "--out", tmp_path / "b.zip")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"hallgate firmware build: private key {tmp_path / 'nokey.pem'}: No such file or "
        "directory"]
    assert not (tmp_path / "b.zip").exists()

    done = hallgate("firmware", "build", "--help")
    assert done.returncode == 0 and "--source" in done.stdout
