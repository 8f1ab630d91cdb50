"""The technician's commands: `hallgate devices`, `hallgate identify`, `hallgate bus sniff`,
`hallgate bus stats`, through the running daemon and directly on the port.

Real parts only: the firmware on MicroPython behind a paced pty bus hub, the daemon as a
child process with mosquitto, the `hallgate` command as a child process; the control socket
and the sniffer's decoding are also tested on their own (real Unix sockets, byte strings).
"""

import contextlib
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest
import serial
from conftest import wait_for
from hallgate.gateway import sniff
from hallgate.gateway.control import ControlClient, ControlError, ControlServer, NoDaemon
from hallgate.gateway.master import BusMaster
from hallgate.protocols import bus
from hallgate.protocols import otawire as ow
from hallgate.sim.broker import Mosquitto
from hallgate.sim.device import DeviceError, FirmwareDevice
from hallgate.sim.hub import BusHub
from harness import Daemon, Witness, daemon_env, hallgate, write_hall_config
from hypothesis import given, settings
from hypothesis import strategies as st

SITE, GW = "tools-site", "gw-t"
PANEL, DISPLAY = 1, 2  # addresses; both at window 1
NOISE = b"\xa5\x05\x01\x02garbage"


# ---- gateway/sniff.py on byte strings ------------------------------------------------------


def feed_all(sniffer, chunks):
    out = []
    for data, t in chunks:
        out += sniffer.feed(data, t)
    return out


def test_sniff_decodes_every_message_type_with_its_fields():
    frames = [
        bus.encode_poll(5),
        bus.encode_poll(5, (3, 17)),
        bus.encode_status(5, 4),
        bus.encode_event(5, bus.Event(3, 18, 5, bus.LONG, 125, 2)),
        bus.encode_get_info(7),
        bus.encode_info(7, bus.Info(2, (0, 1, 0), 7, 86400, 3, 0, 12, 4, 0)),
        bus.encode_set(7, 4, bus.DisplayState("A042", 10, 8)),
        bus.encode_set(5, 9, bus.PanelState("A042", 1, 12, 1020, tea=True, beep=True)),
        bus.encode_identify(7, 10),
        bus.encode_nak(7, bus.SET, bus.NAK_WRONG_ROLE),
        bus.encode(9, 0x42, b"\x01\x02"),  # a type this sniffer does not know
    ]
    s = sniff.Sniffer()
    recs = s.feed(b"".join(frames), 1.5)
    assert [r["kind"] for r in recs] == ["frame"] * len(frames)
    assert [(r["dir"], r["addr"], r["type"]) for r in recs] == [
        ("request", 5, "POLL"), ("request", 5, "POLL"), ("reply", 5, "STATUS"),
        ("reply", 5, "EVENT"), ("request", 7, "GET_INFO"), ("reply", 7, "INFO"),
        ("request", 7, "SET"), ("request", 5, "SET"), ("request", 7, "IDENTIFY"),
        ("reply", 7, "NAK"), ("request", 9, "0x42")]
    f = [r["fields"] for r in recs]
    assert f[0] == {} and f[1] == {"ack": {"boot": 3, "seq": 17}}
    assert f[2] == {"version": 4}
    assert f[3] == {"boot": 3, "seq": 18, "key": "noshow", "action": "long", "age_s": 12.5,
                    "pending": 2}
    assert f[5]["role"] == "window-display" and f[5]["uptime_s"] == 86400
    assert f[5]["firmware"] == "0.1.0" and f[5]["crc_errors"] == 3 and f[5]["resets"] == 12
    assert f[6] == {"role": "window-display", "version": 4, "text": "A042", "blink_s": 10,
                    "brightness": 8}
    assert f[7]["mode"] == "called" and f[7]["tea"] is True and f[7]["wait_s"] == 1020
    assert f[8] == {"seconds": 10}
    assert f[9] == {"refused": "SET", "reason": "wrong role"}
    assert f[10] == {"payload": "0102"}
    assert recs[0]["hex"] == "a5 05 01 00 60 51" and recs[0]["t"] == 1.5
    summary = s.summary.asdict()
    assert summary["frames"] == len(frames) and summary["bad_frames"] == 0
    assert summary["by_address"]["5"] == {"POLL": 2, "STATUS": 1, "EVENT": 1, "SET": 1}


def test_sniff_decodes_a_firmware_update():
    digest = bytes(range(32))
    frames = [ow.encode_begin(5, 4000, digest), ow.encode_data(5, 248, b"x" * 124),
              ow.encode_commit(5, digest), ow.encode_query(5),
              ow.encode_status(5, ow.Status(ow.ROLLED_BACK, 0, (0, 2, 0), "start-up failed"))]
    recs = sniff.Sniffer().feed(b"".join(frames), 2.0)
    assert [r["type"] for r in recs] == ["OTA_BEGIN", "OTA_DATA", "OTA_COMMIT", "OTA_QUERY",
                                         "OTA_STATUS"]
    assert [r["fields"] for r in recs] == [
        {"size": 4000, "sha256": digest.hex()}, {"offset": 248, "bytes": 124},
        {"sha256": digest.hex()}, {},
        {"state": "rolled-back", "have": 0, "firmware": "0.2.0", "reason": "start-up failed"}]


def test_sniff_flags_a_bad_crc_garbage_and_a_frame_cut_short():
    s = sniff.Sniffer(quiet=0.01)
    poll, status = bus.encode_poll(5), bus.encode_status(5, 4)
    recs = s.feed(poll + NOISE + status, 1.0)
    assert [(r["kind"], r.get("error")) for r in recs] == [
        ("frame", None), ("bad", "crc"), ("bad", "garbage"), ("frame", None)]
    crc, junk = recs[1], recs[2]
    assert crc["hex"] == NOISE[:8].hex(" ") and "POLL to 5" in crc["detail"]
    assert junk["hex"] == b"age".hex(" ") and junk["len"] == 3

    # A reply cut short: held while more may come, given up once the line is quiet.
    cut = bus.encode_event(5, bus.Event(3, 17, 1))[:6]
    assert s.feed(poll, 2.0) and s.feed(cut, 2.001) == []
    assert s.tick(2.005) == []  # not quiet long enough yet
    recs = s.tick(2.02)
    assert [(r["kind"], r["error"], r["len"]) for r in recs] == [("bad", "cut-short", 6)]
    assert "EVENT from 5: 6 of 14 bytes" in recs[0]["detail"]
    assert recs[0]["t"] == 2.001  # the time of its first byte

    # Cut short and the next request right behind it, no quiet line between: still found.
    assert s.feed(cut + poll, 3.0) == []  # the cut frame's LEN reaches past the POLL
    recs = s.tick(3.1)
    assert [(r["kind"], r.get("error")) for r in recs] == [("bad", "cut-short"),
                                                            ("frame", None)]
    # Quiet before the next bytes: what was held is given up before they are looked at.
    assert s.feed(cut, 4.0) == []
    recs = s.feed(poll, 4.5)
    assert [(r["kind"], r.get("error"), r["t"]) for r in recs] == [
        ("bad", "cut-short", 4.0), ("frame", None, 4.5)]

    # A good CRC around a payload that does not decode.
    recs = s.feed(bus.encode(5, bus.STATUS, b"\x01\x02\x03"), 5.0)
    assert recs[0]["kind"] == "bad" and recs[0]["error"] == "payload"
    assert recs[0]["type"] == "STATUS" and "3 bytes" in recs[0]["detail"]

    summary = s.summary.asdict()
    assert summary["bad"] == {"crc": 1, "garbage": 1, "cut-short": 3, "payload": 1}
    assert summary["bad_frames"] == 6
    text = sniff.format_summary(s.summary)
    assert "6 bad" in text and "3 cut-short" in text


def test_a_clean_line_captured_from_mid_frame_to_mid_frame_has_no_bad_frame():
    # A listener joins while a STATUS is on the line and stops during an EVENT: what it
    # sees at both edges are pieces of good frames, reported apart (issue 12).
    status, poll = bus.encode_status(5, 4), bus.encode_poll(7)
    event = bus.encode_event(5, bus.Event(3, 17, 1))
    for start in range(1, len(status)):
        for end in (1, 3, 9):
            s = sniff.Sniffer(quiet=0.01)
            recs = s.feed(status[start:] + poll + event[:end], 1.0) + s.finish()
            assert [(r["kind"], r.get("where")) for r in recs] == [
                ("partial", "start"), ("frame", None), ("partial", "end")], (start, end)
            summary = s.summary.asdict()
            assert summary["bad_frames"] == 0 and summary["partial"] == 2
            text = sniff.format_summary(s.summary)
            assert "0 bad" in text and "2 partial frame(s)" in text
            assert "PARTIAL" in sniff.format_record(recs[0])
    # A frame cut short mid-capture (a quiet line after it) stays a line fault.
    s = sniff.Sniffer(quiet=0.01)
    s.feed(poll, 1.0)
    s.feed(event[:6], 1.001)
    assert [(r["kind"], r.get("error")) for r in s.tick(1.1)] == [("bad", "cut-short")]
    s.feed(poll, 1.2)
    assert s.finish() == [] and s.summary.asdict()["bad_frames"] == 1


def test_sniff_text_lines():
    s = sniff.Sniffer()
    recs = s.feed(bus.encode_poll(5) + bus.encode_status(5, 4) + NOISE, 1000.0)
    recs += s.finish()
    lines = [sniff.format_record(r, 999.999) for r in recs]
    assert "-> POLL" in lines[0] and "+    1.000ms" in lines[0]
    assert "<- STATUS" in lines[1] and "version=4" in lines[1]
    assert "!! BAD CRC" in lines[2] and "[a5 05 01 02 67 61 72 62]" in lines[2]
    assert "!! BAD GARBAGE" in lines[3]


CHUNK = st.one_of(
    st.sampled_from([bus.encode_poll(5), bus.encode_status(5, 4), bus.encode_get_info(9),
                     bus.encode_event(5, bus.Event(1, 2, 3)), NOISE, b"\xa5", b"\x00\xff"]),
    st.binary(max_size=20))


@settings(max_examples=150, deadline=None)
@given(st.lists(CHUNK, max_size=12), st.data())
def test_sniff_accounts_for_every_byte_however_the_reads_split(chunks, data):
    stream = b"".join(chunks)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    s = sniff.Sniffer(quiet=1.0)
    recs = feed_all(s, [(p, 0.001 * i) for i, p in enumerate(pieces)]) + s.finish()
    assert b"".join(bytes.fromhex(r["hex"]) for r in recs) == stream
    d = bus.Decoder()
    d.feed(stream)
    whole = []
    while (f := d.maybe_extract_frame(True)) is not None:
        whole.append(f.to_bytes().hex(" "))
    good = [r["hex"] for r in recs if r["kind"] == "frame" or r.get("error") == "payload"]
    assert good == whole  # the same frames as one decoder fed everything at once


# ---- gateway/control.py: the socket on its own ---------------------------------------------


@contextlib.contextmanager
def server(tmp_path, handlers=None):
    srv = ControlServer(tmp_path / "control.sock", handlers or {
        "echo": lambda req, session: {"said": req.get("text")},
        "boom": lambda req, session: 1 / 0,
    }).start()
    try:
        yield srv
    finally:
        srv.stop()


def raw_lines(sock, n, timeout=5):
    sock.settimeout(timeout)
    buf = b""
    while buf.count(b"\n") < n:
        data = sock.recv(4096)
        if not data:
            break
        buf += data
    return [json.loads(line) for line in buf.splitlines()]


def test_control_socket_answers_bad_requests_and_stays_usable(tmp_path):
    with server(tmp_path) as srv:
        assert stat.S_IMODE(os.stat(srv.path).st_mode) == 0o660
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(srv.path))
            s.sendall(b'this is not json\n[1, 2]\n{"text": "no cmd"}\n{"cmd": "nope"}\n'
                      b'{"cmd": "boom"}\n{"cmd": "echo", "text": "still here"}\n')
            answers = raw_lines(s, 6)
        assert [a["ok"] for a in answers] == [False] * 5 + [True]
        assert "malformed request: not a JSON object" in answers[0]["error"]
        assert "a JSON object like" in answers[1]["error"]
        assert 'no "cmd"' in answers[2]["error"] and "echo" in answers[2]["error"]
        assert answers[3]["error"] == "unknown command 'nope'; known: boom, echo"
        assert answers[4]["error"].startswith("internal error: ZeroDivisionError")
        assert answers[5] == {"ok": True, "said": "still here"}

        with ControlClient(srv.path) as c:  # the client's view of the same
            assert c.call("echo", text="hi") == {"ok": True, "said": "hi"}
            with pytest.raises(ControlError, match="unknown command 'x'"):
                c.call("x")
            assert c.call("echo", text="again")["said"] == "again"

        # A line without end, too long: answered, then the connection is closed.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(srv.path))
            with contextlib.suppress(OSError):
                s.sendall(b"x" * (70 * 1024))
            answer = raw_lines(s, 1)
            assert "longer than" in answer[0]["error"]
            try:  # closed: an end of file, or a reset (the rest of the line was unread)
                assert s.recv(10) == b""
            except ConnectionResetError:
                pass
    assert not srv.path.exists()  # removed on stop


def test_control_socket_streams_until_the_client_goes(tmp_path):
    sent = []
    ended = threading.Event()

    def tick(req, session):
        n = 0
        while session.alive() and n < 10000:
            n += 1
            session.send({"n": n})
            sent.append(n)
            session.wait(0.01)
        ended.set()
        return {"count": n}

    with server(tmp_path, {"tick": tick}) as srv:
        with ControlClient(srv.path) as c:
            got = []
            for rec in c.stream("tick"):
                got.append(rec["n"])
                if len(got) == 5:
                    break
        assert got == [1, 2, 3, 4, 5]
        assert ended.wait(5)  # the handler saw the client go
        assert len(sent) < 10000


def test_a_stale_socket_is_replaced_and_a_live_one_is_not_taken(tmp_path):
    path = tmp_path / "control.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))  # bound, never listening, then closed: what a SIGKILL leaves
    dead.close()
    assert path.exists()
    with pytest.raises(NoDaemon):
        ControlClient(path)
    with server(tmp_path):
        with ControlClient(path) as c:
            assert c.call("echo", text="new")["said"] == "new"
        second = ControlServer(path, {})
        with pytest.raises(ControlError, match="another gateway daemon answers"):
            second.start()
        with ControlClient(path) as c:  # the first one still serves
            assert c.call("echo", text="mine")["said"] == "mine"
    assert not path.exists()
    (tmp_path / "plain").write_text("a file")
    with pytest.raises(ControlError, match="not a socket"):
        ControlServer(tmp_path / "plain", {}).start()
    assert (tmp_path / "plain").read_text() == "a file"


def test_a_socket_path_too_long_for_af_unix_still_works(tmp_path):
    deep = tmp_path / ("x" * 60) / ("y" * 60)
    deep.mkdir(parents=True)
    assert len(str(deep / "control.sock")) > 108
    with server(deep) as srv:
        assert stat.S_ISSOCK(os.stat(srv.path).st_mode)
        with ControlClient(srv.path) as c:
            assert c.call("echo", text="deep")["said"] == "deep"
    assert not srv.path.exists()


# ---- the real parts --------------------------------------------------------------------------


def run(*args, timeout=60):
    out = hallgate(*args, timeout=timeout)
    assert "Traceback" not in out.stderr, out.stderr
    return out


def rows_by_address(out):
    assert out.returncode == 0, (out.stdout, out.stderr)
    doc = json.loads(out.stdout)
    return doc, {r["address"]: r for r in doc["devices"]}


def press(device, key="call", tries=3):
    """A press the firmware took (it samples its contacts: a starved process can miss a
    short one, which then is no event and is pressed again); returns (addr, boot, seq)."""
    for _ in range(tries):
        mark = device.mark()
        device.press(key, hold_ms=250)
        try:
            ev = device.wait_kind("event", timeout=3, since=mark)
        except DeviceError:
            continue
        return (device.address, device.ready["boot"], ev["seq"])
    raise AssertionError(f"the firmware saw none of {tries} presses")


@pytest.fixture
def line(tmp_path):
    """A paced bus hub with a firmware call panel and window display."""
    with contextlib.ExitStack() as stack:
        hub = BusHub(baud=115200).start()
        stack.callback(hub.close)
        devices = {}
        for addr, role in ((PANEL, "call-panel"), (DISPLAY, "window-display")):
            devices[addr] = FirmwareDevice(tmp_path / f"d{addr}", addr, role, 1,
                                           hub.add_port(f"d{addr}"), ready_timeout=30,
                                           lockout_ms=0)
            stack.callback(devices[addr].close)
        yield hub, devices


def write_config(tmp_path, broker, hub):
    return write_hall_config(
        tmp_path, site=SITE, gateway=GW, broker_url=broker.url, hub_path=hub.master_path,
        devices=[(PANEL, "call-panel", 1), (DISPLAY, "window-display", 1)],
        windows="[[windows]]\nnumber = 1\n")


@pytest.fixture
def daemon_hall(tmp_path, line):
    """The line, mosquitto, the witness and the daemon (a child process) polling the line,
    with its status file (and so its control socket) in tmp_path."""
    hub, devices = line
    with contextlib.ExitStack() as stack:
        broker = Mosquitto(tmp_path / "broker").start()
        stack.callback(broker.stop)
        witness = Witness(broker.port)
        stack.callback(witness.close)
        daemon = Daemon(tmp_path, write_config(tmp_path, broker, hub))
        stack.callback(daemon.close)
        daemon.start()
        daemon.wait_status(lambda s: s["broker"]["connected"] and s["devices"]["online"] == 2,
                           "daemon connected, both devices online", timeout=30)
        wait_for(lambda: os.path.exists(tmp_path / "control.sock"), 10, "the control socket")
        yield hub, devices, daemon, witness


def via_daemon(daemon):
    return ["--status-file", daemon.status_file]


@pytest.mark.micropython
def test_devices_directly_on_the_port_lists_the_firmware_devices(tmp_path, line):
    hub, devices = line
    out = run("devices", "--port", hub.master_path, "--addresses", "1-4", "--timeout", "0.2",
              "--json", "--status-file", tmp_path / "no-daemon.json")
    doc, rows = rows_by_address(out)
    assert doc["via"] == "port" and doc["ports"] == [hub.master_path]
    assert set(rows) == {PANEL, DISPLAY}
    for addr, role in ((PANEL, "call-panel"), (DISPLAY, "window-display")):
        r = rows[addr]
        assert (r["role"], r["window"], r["online"]) == (role, 1, True)
        assert r["firmware"] == devices[addr].ready.get("firmware", r["firmware"])
        assert r["firmware"].count(".") == 2
        assert isinstance(r["uptime_s"], int) and r["last_seen"]
        assert set(r["device"]) == {"crc_errors", "overflows", "resets", "queued", "version"}
        assert r["device"]["resets"] >= 1
    out = run("devices", "--port", hub.master_path, "--addresses", "1-4", "--timeout", "0.2",
              "--status-file", tmp_path / "no-daemon.json")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"directly on {hub.master_path}\n2 of 2 device(s) online")
    assert "call-panel" in out.stdout and "window-display" in out.stdout


def test_without_a_daemon_and_without_a_port_the_error_names_both_ways(tmp_path):
    for cmd in (["devices"], ["identify", "3"], ["logs", "3"], ["bus", "scan"],
                ["bus", "stats"], ["bus", "sniff"]):
        out = run(*cmd, "--status-file", tmp_path / "status.json", timeout=30)
        assert out.returncode == 1, (cmd, out.stdout)
        err = out.stderr
        assert f"no gateway daemon answers on {tmp_path / 'control.sock'}" in err, err
        assert "--port" in err and "--config" in err and "hallgate run" in err, err


@pytest.mark.micropython
def test_through_the_daemon_devices_identify_stats_and_sniff(daemon_hall):
    hub, devices, daemon, witness = daemon_hall
    pid = daemon.proc.pid

    out = run("devices", "--json", *via_daemon(daemon))
    doc, rows = rows_by_address(out)
    assert doc["via"] == "daemon" and doc["pid"] == pid
    assert set(rows) == {PANEL, DISPLAY}
    for addr, role in ((PANEL, "call-panel"), (DISPLAY, "window-display")):
        r = rows[addr]
        assert (r["bus"], r["role"], r["window"], r["online"]) == ("hall", role, 1, True)
        assert r["firmware"].count(".") == 2 and isinstance(r["uptime_s"], int)
        assert r["last_seen"] and r["seen_ago_s"] is not None
        assert r["device"]["resets"] >= 1
        assert r["link"]["exchanges"] > 0 and "timeouts" in r["link"]
    text = run("devices", *via_daemon(daemon)).stdout
    assert text.startswith(f"via the gateway daemon (pid {pid}, gateway {SITE}/{GW})"), text
    assert "2 of 2 device(s) online" in text

    mark = devices[DISPLAY].mark()
    out = run("identify", str(DISPLAY), "--seconds", "3", *via_daemon(daemon))
    assert out.returncode == 0, out.stderr
    assert f"device {DISPLAY} on bus hall: showing itself for 3 s (via the gateway daemon " \
           f"(pid {pid}" in out.stdout
    assert devices[DISPLAY].wait_kind("identify", since=mark, timeout=10) == 3
    out = run("identify", "77", "--bus", "nope", *via_daemon(daemon))
    assert out.returncode == 1 and "no bus 'nope' (buses: hall)" in out.stderr

    out = run("bus", "stats", "--json", *via_daemon(daemon))
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["via"] == "daemon" and doc["pid"] == pid
    hall = doc["buses"]["hall"]
    assert hall["port"] == hub.master_path
    assert hall["stats"]["cycles"] > 0 and hall["stats"]["cycle_mean"] > 0
    assert {"retries", "crc_errors", "timeouts", "poll_time", "job_time"} <= set(hall["stats"])
    assert set(hall["devices"]) == {str(PANEL), str(DISPLAY)}
    assert hall["devices"][str(PANEL)]["exchanges"] > 0
    text = run("bus", "stats", *via_daemon(daemon)).stdout
    assert text.startswith(f"via the gateway daemon (pid {pid}"), text
    assert f"bus hall on {hub.master_path}:" in text and "poll cycles" in text, text

    # sniff through the daemon: the frames it sends and receives, a press among them
    proc = subprocess.Popen(
        [sys.executable, "-m", "hallgate.cli", "bus", "sniff", "--json", "--seconds", "3",
         *map(str, via_daemon(daemon))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=daemon_env())
    try:
        time.sleep(0.5)
        pressed = press(devices[PANEL])
        wait_for(lambda: pressed in witness.sources(), 15, "the press at the witness")
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, stderr
    assert f"via the gateway daemon (pid {pid}" in stderr
    lines = [json.loads(x) for x in stdout.splitlines()]
    records, summary = lines[:-1], lines[-1]
    assert summary["via"] == "daemon" and summary["pid"] == pid
    types = {(r["dir"], r["type"]) for r in records if r["kind"] == "frame"}
    assert {("request", "POLL"), ("reply", "STATUS"), ("reply", "EVENT")} <= types, types
    assert all(r["bus"] == "hall" for r in records)
    events = [r for r in records if r.get("type") == "EVENT"]
    assert events[0]["fields"]["key"] == "call" and events[0]["fields"]["seq"] == pressed[2]
    acks = [r for r in records if r.get("type") == "POLL" and "ack" in r["fields"]]
    assert acks and acks[0]["fields"]["ack"]["seq"] == pressed[2]  # the daemon acked it
    times = [r["t"] for r in records]
    assert times == sorted(times) and abs(times[0] - time.time()) < 60
    assert summary["summary"]["frames"] == len([r for r in records if r["kind"] == "frame"])
    assert daemon.running


def table_lines(out):
    assert out.returncode == 0, (out.stdout, out.stderr)
    return out.stdout.splitlines()


@pytest.mark.micropython
def test_through_the_daemon_a_readable_table_a_scan_and_an_offline_device(daemon_hall,
                                                                          tmp_path):
    hub, devices, daemon, witness = daemon_hall
    pid = daemon.proc.pid

    # The default table fits 100 columns, with headers a technician can read.
    lines = table_lines(run("devices", *via_daemon(daemon)))
    assert all(len(line) <= 100 for line in lines), "\n".join(lines)
    assert lines[2].split() == ["bus", "addr", "role", "window", "online", "firmware",
                                "uptime", "boots", "errors", "board", "id"], lines
    doc, rows = rows_by_address(run("devices", "--json", *via_daemon(daemon)))
    for addr, role in ((PANEL, "call-panel"), (DISPLAY, "window-display")):
        line = next(x for x in lines if x.split()[:3] == ["hall", str(addr), role])
        r = rows[addr]
        assert line.split()[4:6] == ["yes", r["firmware"]], line
        assert line.endswith(r["board_id"][-8:] if r["board_id"] else "-"), line
    assert any(line.startswith("errors: ") for line in lines)
    wide = table_lines(run("devices", "--wide", *via_daemon(daemon)))
    assert "counted by the device" in wide[2] and "counted by the gateway" in wide[2]
    assert {"last", "board", "exchanges", "timeouts", "NAKs"} <= set(wide[3].split())
    assert max(map(len, wide)) > 100

    # bus scan through the daemon: between its poll cycles; a spare device the config
    # does not name answers too, and is not taken into the daemon's devices.
    spare = FirmwareDevice(tmp_path / "d9", 9, "call-panel", 9, hub.add_port("d9"),
                           ready_timeout=30)
    try:
        out = run("bus", "scan", "--addresses", "1-4,9", "--json", *via_daemon(daemon))
        assert out.returncode == 0, out.stderr
        found = {r["address"]: r for r in json.loads(out.stdout)}
        assert set(found) == {PANEL, DISPLAY, 9}
        assert (found[PANEL]["bus"], found[PANEL]["role"], found[PANEL]["known"],
                found[PANEL]["configured"]) == ("hall", "call-panel", True, True)
        assert (found[9]["role"], found[9]["window"], found[9]["known"],
                found[9]["configured"]) == ("call-panel", 9, False, False)
        assert found[DISPLAY]["resets"] >= 1 and "board_id" in found[DISPLAY]
        text = run("bus", "scan", "--addresses", "1-4,9", *via_daemon(daemon)).stdout
        assert text.startswith(f"3 device(s) answered of 5 address(es) tried: bus hall "
                               f"({hub.master_path}), via the gateway daemon (pid {pid}"), text
        assert "not in the daemon's config" in next(
            x for x in text.splitlines() if x.split()[:2] == ["hall", "9"])
        _, rows = rows_by_address(run("devices", "--json", *via_daemon(daemon)))
        assert set(rows) == {PANEL, DISPLAY}  # the scan added nothing
    finally:
        spare.close()
    pressed = press(devices[PANEL])  # the polling went on
    wait_for(lambda: pressed in witness.sources(), 15, "a press after the scan")

    # A device the daemon knows as offline, and one it does not know: said so.
    devices[DISPLAY].kill()
    daemon.wait_status(lambda s: not next(r for r in s["devices"]["table"]
                                          if r["address"] == DISPLAY)["online"],
                       "the display offline")
    out = run("identify", str(DISPLAY), "--seconds", "2", *via_daemon(daemon))
    assert out.returncode == 1
    assert f"hallgate: device {DISPLAY} on bus hall is offline (last seen " in out.stderr
    assert "ago); it did not answer IDENTIFY: check its power" in out.stderr, out.stderr
    out = run("identify", str(DISPLAY), "--json", *via_daemon(daemon))
    doc = json.loads(out.stdout)
    assert out.returncode == 1 and doc["ok"] is False and "is offline" in doc["error"]
    out = run("identify", "77", *via_daemon(daemon))
    assert out.returncode == 1
    assert "device 77 is not known on bus hall (not in the config, and no scan found it)" \
        in out.stderr, out.stderr
    out = run("logs", str(DISPLAY), *via_daemon(daemon))
    assert out.returncode == 1 and f"device {DISPLAY} on bus hall is offline" in out.stderr
    lines = table_lines(run("devices", *via_daemon(daemon)))
    line = next(x for x in lines if x.split()[:2] == ["hall", str(DISPLAY)])
    assert " NO, " in line and " ago " in line and len(line) <= 100, line
    assert daemon.running


@pytest.mark.micropython
def test_the_daemons_port_is_refused_and_the_daemon_goes_on(daemon_hall):
    hub, devices, daemon, witness = daemon_hall
    pid = daemon.proc.pid
    for cmd in (["devices"], ["bus", "stats", "--seconds", "1"], ["identify", "1"],
                ["bus", "sniff", "--seconds", "1"]):
        out = run(*cmd, "--port", hub.master_path, *via_daemon(daemon))
        assert out.returncode == 1, (cmd, out.stdout)
        assert out.stderr.strip() == (
            f"hallgate: {hub.master_path} is in use (the gateway daemon holds it, pid {pid}: "
            "run without --port to go through it)"), (cmd, out.stderr)
    out = run("bus", "scan", "--port", hub.master_path, "--addresses", "1-2",
              "--status-file", daemon.status_file)  # the older commands too
    assert out.returncode == 1 and "gateway daemon holds it" in out.stderr, out.stderr
    # Told apart by the port's lock holder when its status file is not where we look.
    out = run("devices", "--port", hub.master_path, "--status-file",
              daemon.status_file.parent / "elsewhere" / "status.json")
    assert out.returncode == 1
    assert f"the gateway daemon holds it, pid {pid}: run without --port" in out.stderr, \
        out.stderr

    pressed = press(devices[PANEL])
    wait_for(lambda: pressed in witness.sources(), 15, "a press after the refusals")
    assert daemon.running

    # Another program holding a port: said so, without blaming the daemon.
    spare = hub.add_port("spare")
    with serial.Serial(spare, 115200, exclusive=True):
        out = run("devices", "--port", spare, "--addresses", "1", *via_daemon(daemon))
    assert out.returncode == 1
    assert out.stderr.startswith(f"hallgate: {spare} is in use by another program (pid "
                                 f"{os.getpid()}: "), out.stderr


@pytest.mark.micropython
def test_a_malformed_control_request_gets_a_clear_error_and_the_daemon_goes_on(daemon_hall,
                                                                               tmp_path):
    hub, devices, daemon, witness = daemon_hall
    path = tmp_path / "control.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(path))
        s.sendall(b'{"cmd": "devices"\n{"cmd": "identify", "address": "one"}\n'
                  b'{"cmd": "hello"}\n')
        answers = raw_lines(s, 3, timeout=15)
    assert answers[0]["ok"] is False and "malformed request" in answers[0]["error"]
    assert answers[1] == {"ok": False, "error": "'address' must be int, not \"one\""}
    assert answers[2]["ok"] is True and answers[2]["pid"] == daemon.proc.pid
    assert "devices" in answers[2]["commands"] and "sniff" in answers[2]["commands"]
    st = daemon.wait_status(lambda s: s["control"] == str(path), "the status names the socket")
    daemon.wait_status(lambda s: s["ts"] > st["ts"], "the daemon writes its status on")
    pressed = press(devices[PANEL])
    wait_for(lambda: pressed in witness.sources(), 15, "a press after the bad requests")
    assert daemon.running
    assert daemon.terminate() == 0, daemon.log()
    assert not path.exists()  # removed on stop


@pytest.mark.micropython
def test_direct_stats_never_acks_so_the_daemon_delivers_the_press_later(tmp_path, line):
    hub, devices = line
    pressed = press(devices[PANEL])
    out = run("bus", "stats", "--port", hub.master_path, "--addresses", "1-2", "--seconds",
              "1.5", "--timeout", "0.2", "--json", "--status-file", tmp_path / "status.json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["via"] == "port"
    b = doc["buses"]["port"]
    assert b["stats"]["cycles"] > 0 and b["stats"]["cycle_mean"] > 0
    assert b["stats"]["exchanges"] >= 2 * b["stats"]["cycles"]
    panel = b["devices"][str(PANEL)]
    assert panel["online"] and panel["event_replies"] > 0  # seen again and again ...
    assert panel["pending_event"]["seq"] == pressed[2]
    assert devices[PANEL].info()["queued"] == 1  # ... and left with the device
    text = run("bus", "stats", "--port", hub.master_path, "--addresses", "1-2",
               "--seconds", "0.5", "--timeout", "0.2", "--status-file",
               tmp_path / "status.json").stdout
    assert text.startswith(f"directly on {hub.master_path}, plain polls (no acks)"), text
    assert "not acked: left with the device" in text

    # A daemon started afterwards takes the press: nothing was lost to the tool.
    with contextlib.ExitStack() as stack:
        broker = Mosquitto(tmp_path / "broker").start()
        stack.callback(broker.stop)
        witness = Witness(broker.port)
        stack.callback(witness.close)
        daemon = Daemon(tmp_path, write_config(tmp_path, broker, hub))
        stack.callback(daemon.close)
        daemon.start()
        wait_for(lambda: pressed in witness.sources(), 30, "the press, from the daemon")
        assert daemon.terminate() == 0, daemon.log()


@pytest.mark.micropython
def test_sniff_on_a_second_adapter_decodes_the_line_and_flags_noise(tmp_path, line):
    hub, devices = line
    taken = []
    master = BusMaster(hub.master_path, timeout=0.2, devices=[PANEL, DISPLAY],
                       on_event=lambda addr, ev: taken.append((addr, ev.seq)))
    listener = hub.add_port("sniffer")
    master.start()
    proc = None
    try:
        wait_for(lambda: all(d["online"] for d in master.devices().values()), 15,
                 "both devices online")
        proc = subprocess.Popen(
            [sys.executable, "-m", "hallgate.cli", "bus", "sniff", "--port", listener,
             "--json", "--seconds", "4", "--status-file", str(tmp_path / "status.json")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=daemon_env())
        time.sleep(1.0)  # the sniffer has opened its port
        pressed = press(devices[PANEL])
        wait_for(lambda: (PANEL, pressed[2]) in taken, 10, "the master took the press")
        time.sleep(0.3)
        hub.inject(NOISE)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        master.close()
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, stderr
    assert f"sniffing directly on {listener}" in stderr
    lines = [json.loads(x) for x in stdout.splitlines()]
    records, summary = lines[:-1], lines[-1]
    frames = [r for r in records if r["kind"] == "frame"]
    kinds = {(r["dir"], r["type"], r["addr"]) for r in frames}
    assert {("request", "POLL", PANEL), ("reply", "STATUS", PANEL),
            ("request", "POLL", DISPLAY), ("reply", "STATUS", DISPLAY),
            ("reply", "EVENT", PANEL)} <= kinds, kinds
    event = next(r for r in frames if r["type"] == "EVENT")
    assert event["fields"]["key"] == "call" and event["fields"]["seq"] == pressed[2]
    times = [r["t"] for r in records]
    assert times == sorted(times) and abs(times[-1] - time.time()) < 60
    # The noise is flagged. It may collide with a request on the line (the hub ORs the
    # bytes that share wire time, as a real line garbles them), so which bad records it
    # makes varies; its bytes are all in bad ones, never in a good frame.
    bad = [r for r in records if r["kind"] == "bad" and r["t"] >= event["t"]]
    assert sum(r["len"] for r in bad) >= len(NOISE), bad
    assert {r["error"] for r in bad} <= {"crc", "garbage", "cut-short"}, bad
    s = summary["summary"]
    assert summary["via"] == "port" and summary["port"] == listener
    assert s["frames"] == len(frames) and s["bad_frames"] >= len(bad) >= 1
    assert s["by_address"][str(PANEL)]["POLL"] > 0
