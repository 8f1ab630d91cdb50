"""Issue 9, the config part: what `hallgate run` fails on at start, `config check` reports
first; `run` says a config problem in words, never with a traceback; files that are not
UTF-8, FIFOs, devices, huge files and huge values are told in one short line, at once;
window numbers as the MQTT contract allows them."""

import datetime
import os
import sys
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hallgate.gateway import daemon
from hallgate.gateway.config import MAX_BYTES, QUOTE_CHARS, check_config, load_config
from harness import daemon_env, hallgate

from hallgate import cli

BASE = """\
[gateway]
site = "test"
id = "gw-1"

[mqtt]
urls = ["mqtt://127.0.0.1:1883"]
"""
WINDOW = """
[[windows]]
number = 1
like_pin = 5
dislike_pin = 6
"""


def write(tmp_path, text, name="hall.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(path):
    """[(key, line, message)] of the config at `path`."""
    return [(p.key, p.line, p.message) for p in check_config(path)]


def run_gateway(config, tmp_path):
    """`hallgate run` on `config`: the CompletedProcess (it must not start)."""
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", "hallgate.cli", "run", "--config", str(config),
         "--status-file", str(tmp_path / "run" / "status.json")],
        capture_output=True, text=True, timeout=30,
        env=daemon_env(GPIOZERO_PIN_FACTORY="mock"))


def cert_and_key(tmp_path, name):
    """A self-signed certificate and its private key, as PEM files name.crt, name.key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    crt, pem = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return crt, pem, key


def tls_config(tmp_path, **files):
    text = BASE.replace("mqtt://127.0.0.1:1883", "mqtts://127.0.0.1:8883")
    text += "".join(f'{k} = "{v}"\n' for k, v in files.items())
    return write(tmp_path, text + WINDOW)


# ---- what `run` fails on at start, `config check` reports first ----------------------------


def test_outbox_under_a_regular_file_is_a_problem_with_line_and_key(tmp_path):
    (tmp_path / "state").write_text("a file, not a folder\n")
    path = write(tmp_path, BASE + '\n[outbox]\npath = "state/db/outbox.sqlite"\n' + WINDOW)
    assert problems(path) == [("outbox.path", 9, f"{tmp_path / 'state'} is a file, not a "
                               f"folder: the outbox's folder cannot be made there")]
    (tmp_path / "folder").mkdir()
    path = write(tmp_path, BASE + '\n[outbox]\npath = "folder"\n' + WINDOW)
    [(key, line, message)] = problems(path)
    assert (key, line) == ("outbox.path", 9) and message.startswith(f"{tmp_path}/folder is a "
                                                                    f"folder; expected")
    (tmp_path / "to-nowhere").symlink_to(tmp_path / "gone")
    path = write(tmp_path, BASE + '\n[outbox]\npath = "to-nowhere/outbox.sqlite"\n' + WINDOW)
    assert "is a broken link, not a folder" in problems(path)[0][2]
    # a folder that is missing is fine: the daemon makes it
    path = write(tmp_path, BASE + '\n[outbox]\npath = "new/sub/outbox.sqlite"\n' + WINDOW)
    assert problems(path) == []


def test_tls_files_must_be_pem_and_the_key_the_certificates(tmp_path):
    crt, key, _ = cert_and_key(tmp_path, "client")
    other_crt, other_key, other = cert_and_key(tmp_path, "other")
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    locked = tmp_path / "locked.key"
    locked.write_bytes(other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))

    good = tls_config(tmp_path, ca_file=other_crt, cert_file=crt, key_file=key)
    assert problems(good) == []
    assert load_config(good).mqtt.key_file == key

    path = tls_config(tmp_path, ca_file=junk)
    assert problems(path) == [("mqtt.ca_file", 7, f"{junk}: it is not PEM certificates "
                                                   f"(-----BEGIN CERTIFICATE-----)")]
    path = tls_config(tmp_path, ca_file=key)  # a key where certificates belong
    assert problems(path)[0][:2] == ("mqtt.ca_file", 7)

    path = tls_config(tmp_path, cert_file=key, key_file=crt)  # the two swapped
    assert problems(path) == [
        ("mqtt.cert_file", 7, f"{key}: it is not a PEM certificate (-----BEGIN CERTIFICATE-----)"),
        ("mqtt.key_file", 8, f"{crt}: it is not a PEM private key (-----BEGIN PRIVATE KEY-----)"),
    ]
    path = tls_config(tmp_path, cert_file=crt, key_file=locked)
    [(k, line, message)] = problems(path)
    assert (k, line) == ("mqtt.key_file", 8) and "the private key is encrypted" in message
    path = tls_config(tmp_path, cert_file=crt, key_file=other_key)
    assert problems(path) == [("mqtt.key_file", 8, f"{other_key} is not the private key of "
                                                    f"cert_file {crt}")]


def test_password_file_must_be_utf8(tmp_path):
    (tmp_path / "pw").write_bytes(b"caf\xe9\n")
    path = write(tmp_path, BASE + 'username = "u"\npassword_file = "pw"\n' + WINDOW)
    assert problems(path) == [("mqtt.password_file", 8, f"{tmp_path / 'pw'}: not UTF-8 at "
                               f"byte 4, line 1 (byte 0xe9): save it as UTF-8")]


@pytest.mark.parametrize("url, gist", [
    ("mqtt://127.0.0.1:0", "bad port; expected a number 1-65535"),
    ("mqtts://broker.example:0", "bad port; expected a number 1-65535"),
    ("mqtt://127.0.0.1:70000", "bad port; expected a number 1-65535"),
    ("mqtt://bro ker:1883", 'host "bro ker" is not a host name or an IP address'),
    ("mqtt://br*ker", 'host "br*ker" is not a host name or an IP address'),
])
def test_broker_urls_the_link_refuses_are_problems(tmp_path, url, gist):
    path = write(tmp_path, BASE.replace("mqtt://127.0.0.1:1883", url) + WINDOW)
    [(key, line, message)] = problems(path)
    assert (key, line) == ("mqtt.urls[0]", 6) and gist in message, message


def test_broker_urls_that_are_fine(tmp_path):
    urls = '"mqtt://[::1]:1883", "mqtts://broker-1.example", "mqtt://10.0.0.2:65535"'
    path = write(tmp_path, BASE.replace('"mqtt://127.0.0.1:1883"', urls) + WINDOW)
    assert [u.port for u in load_config(path).mqtt.urls] == [1883, 8883, 65535]


@pytest.mark.parametrize("case", ["outbox-under-file", "ca-not-pem", "key-not-pem", "port-0",
                                  "host-space", "ws-url", "outbox-folder-fails",
                                  "outbox-not-sqlite"])
def test_run_never_shows_a_traceback_for_a_config_problem(tmp_path, case):
    (tmp_path / "afile").write_text("x\n")
    (tmp_path / "junk.pem").write_text("not PEM\n")
    crt, _, _ = cert_and_key(tmp_path, "client")
    text = {
        "outbox-under-file": BASE + '[outbox]\npath = "afile/outbox.sqlite"\n',
        "ca-not-pem": tls_config(tmp_path, ca_file="junk.pem").read_text(),
        "key-not-pem": tls_config(tmp_path, cert_file=crt, key_file="junk.pem").read_text(),
        "port-0": BASE.replace("1883", "0"),
        "host-space": BASE.replace("127.0.0.1", "bro ker"),
        # the link speaks MQTT over TCP only: config check says so first
        "ws-url": BASE.replace("mqtt://127.0.0.1:1883", "ws://127.0.0.1:9001"),
        # passes config check (/proc is a folder), then the folder cannot be made
        "outbox-folder-fails": BASE + '[outbox]\npath = "/proc/hallgate-no/outbox.sqlite"\n',
        "outbox-not-sqlite": BASE + '[outbox]\npath = "afile"\n',  # the outbox says so
    }[case]
    config = write(tmp_path, text + ("" if "[[windows]]" in text else WINDOW))
    out = run_gateway(config, tmp_path)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr + out.stdout, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and str(config) in lines[0], out.stderr
    if case == "outbox-folder-fails":
        assert lines[0] == (f"hallgate run: {config}: outbox.path = /proc/hallgate-no/outbox.sqlite"
                            f": cannot make its folder /proc/hallgate-no: No such file or "
                            f"directory. Fix outbox.path in the config, or the file system "
                            f"there, and start again.")
    elif case == "outbox-not-sqlite":
        assert lines[0] == (f"hallgate run: outbox: opening {tmp_path / 'afile'} failed "
                            f"(corrupt): file is not a database (outbox.path in {config})")
    elif case == "ws-url":
        assert "MQTT over WebSockets is not supported" in lines[0]
        assert lines[0] == str(check_config(config)[0])
    else:
        assert lines[0] == str(check_config(config)[0])
    assert not (tmp_path / "run" / "status.json").exists()


def test_run_says_an_oserror_at_start_in_one_paragraph(tmp_path, monkeypatch, capsys):
    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    config = write(tmp_path, BASE + 'username = "u"\npassword_file = "pw"\n' + WINDOW)

    def refuse(path):
        def run(config, status_file=None):
            raise PermissionError(13, "Permission denied", str(path))
        return run

    for path, gist in ((pw, f"mqtt.password_file = {pw}: Permission denied. Fix "
                            f"mqtt.password_file in the config"),
                       (tmp_path / "outbox.sqlite", "cannot start: [Errno 13] Permission "
                                                     "denied")):
        monkeypatch.setattr(daemon, "run", refuse(path))
        code = cli.main(["run", "--config", str(config),
                         "--status-file", str(tmp_path / "status.json")])
        err = capsys.readouterr().err
        assert code == 1 and err.count("\n") == 1 and gist in err, err
        assert err.startswith("hallgate run: ") and str(config) in err


# ---- reading the file -----------------------------------------------------------------------


def test_not_utf8_says_byte_and_line(tmp_path):
    path = tmp_path / "hall.toml"
    path.write_bytes(BASE.encode() + b'# caf\xe9\n' + WINDOW.encode())
    at = len(BASE) + len("# caf") + 1  # counted from 1, as lines are
    assert path.read_bytes()[at - 1] == 0xE9
    [problem] = check_config(path)
    assert (problem.line, problem.key) == (None, None)  # the line is in the message
    assert problem.message == (f"cannot read the file: not UTF-8 at byte {at}, line 7 "
                               f"(byte 0xe9): save it as UTF-8")


def test_a_leading_bom_is_skipped_and_lines_stay_right(tmp_path):
    path = tmp_path / "hall.toml"
    path.write_bytes(b"\xef\xbb\xbf" + (BASE + WINDOW + "colour = 1\n").encode())
    assert problems(path) == [("windows[0].colour", 12, 'unknown key "colour"; allowed '
                               'here: number, like_pin, dislike_pin, like_led_pin, '
                               'dislike_led_pin, panel')]
    path.write_bytes(b"\xef\xbb\xbf" + (BASE + WINDOW).encode())
    assert load_config(path).window_numbers == (1,)
    # not at the start it is text like any other: a TOML syntax error with its line
    path.write_bytes((BASE + "\ufeff" + WINDOW).encode())
    [(key, line, message)] = problems(path)
    assert (key, line) == (None, 7) and message.startswith("TOML syntax error")


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero", "/dev/null", "folder"])
def test_fifos_devices_and_folders_are_refused_at_once(tmp_path, kind):
    if kind == "fifo":
        path = tmp_path / "hall.toml"
        os.mkfifo(path)
    elif kind == "folder":
        path = tmp_path
    else:
        path = kind
    # a child process, so that a regression hangs it (and the timeout tells), not pytest
    out = hallgate("config", "check", path, timeout=20)
    what = {"fifo": "a FIFO (named pipe)", "folder": "a folder"}.get(kind, "a character device")
    assert (out.returncode, out.stdout) == (
        1, f"{path}: cannot read the file: it is {what}, not a regular file\n"), out.stderr


def test_a_huge_file_is_refused_quickly_with_its_size_and_the_limit(tmp_path):
    path = tmp_path / "hall.toml"
    path.write_text(BASE + WINDOW + "".join(f"k{i} = {i}\n" for i in range(800_000)))
    size = path.stat().st_size
    assert size > 10 * MAX_BYTES
    start = time.perf_counter()
    [problem] = check_config(path)
    assert time.perf_counter() - start < 0.5
    assert problem.message == (f"cannot read the file: it is {size:,} bytes, over the limit "
                               f"of {MAX_BYTES:,} (1 MB): is it the right file?")
    out = hallgate("config", "check", path)
    assert out.returncode == 1 and out.stdout == f"{problem}\n"
    text = BASE + WINDOW + "#" * (MAX_BYTES - len(BASE + WINDOW) - 1) + "\n"
    path.write_text(text)  # at the limit: read
    assert path.stat().st_size == MAX_BYTES
    assert problems(path) == []


@pytest.mark.parametrize("text, key", [
    (BASE.replace('"gw-1"', '"' + "X" * 1_000_000 + '"') + WINDOW, "gateway.id"),
    (BASE + WINDOW + "x" * 1_000_000 + " = 1\n", "windows[0]." + "x" * QUOTE_CHARS
     + "... (1000000 characters)"),
    (BASE.replace("127.0.0.1", "a b" + "c" * 1_000_000) + WINDOW, "mqtt.urls[0]"),
    (BASE + WINDOW.replace("number = 1", "number = " + "9" * 4000), "windows[0].number"),
    (BASE + '[outbox]\npath = "' + "p" * 1_000_000 + '"\n' + WINDOW, "outbox.path"),
    (BASE + 'ca_file = "~no-such-user-here/ca.pem"\n' + WINDOW, "mqtt.ca_file"),
])
def test_a_long_value_is_cut_in_messages(tmp_path, text, key):
    path = write(tmp_path, text)
    [problem] = check_config(path)
    assert problem.key == key and len(str(problem)) < 600, str(problem)[:2000]
    assert "~no-such-user" in problem.message or " characters)" in problem.message
    out = hallgate("config", "check", path)
    assert out.returncode == 1 and len(out.stdout) < 600 and "Traceback" not in out.stderr


def test_many_problems_cost_linear_time(tmp_path):
    """A check of every window against every problem made 6000 bad windows take 9 s."""
    text = BASE + "".join(f"[[windows]]\nnumber = {n}\nlike_pin = 5\n" for n in range(6000))
    path = write(tmp_path, text)
    start = time.perf_counter()
    found = check_config(path)
    assert time.perf_counter() - start < 5 and len(found) == 6000 * 2


# ---- window numbers -------------------------------------------------------------------------


def test_window_numbers_as_the_mqtt_contract_allows(tmp_path):
    text = BASE + WINDOW.replace("number = 1", "number = 1000")
    text += WINDOW.replace("number = 1", "number = 999999").replace("5", "7").replace("6", "8")
    assert load_config(write(tmp_path, text)).window_numbers == (1000, 999999)

    path = write(tmp_path, BASE + WINDOW.replace("number = 1", "number = 1000000"))
    assert problems(path) == [("windows[0].number", 9, "1000000 is out of range 1-999999")]

    bus = ('[[buses]]\nname = "hall"\nport = "/dev/ttyUSB0"\n'
           'devices = [{ address = 1, role = "call-panel", window = %d }]\n')
    text = BASE + bus % 65535 + WINDOW.replace("number = 1", "number = 65535")
    assert load_config(write(tmp_path, text)).bus_devices()[0][1].window == 65535
    path = write(tmp_path, BASE + bus % 65536 + WINDOW.replace("number = 1", "number = 65536"))
    assert problems(path) == [("buses[0].devices[0].window", 10, "65536 is out of range "
                               "1-65535 (a bus device keeps its window in 16 bits)")]
