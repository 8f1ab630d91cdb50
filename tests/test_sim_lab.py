"""`hallgate sim lab`: a simulated hall that stays up, on which every technician command of
the README works through the gateway daemon as on a Pi: devices, identify, bus stats,
sniff, an update over the bus with the lab's signed bundle, and `hallgate flash` of the
spare board on its own pty. All real parts (mosquitto, the gateway daemon, the firmware on
MicroPython booted from a signed bundle, mpremote for the flash)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.micropython, pytest.mark.timeout(480)]


def hallgate(*args, timeout=60, env=None):
    done = subprocess.run([sys.executable, "-m", "hallgate.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def test_every_technician_command_works_on_the_lab(tmp_path):
    work = tmp_path / "lab"
    lab = subprocess.Popen([sys.executable, "-m", "hallgate.cli", "sim", "lab", "--windows",
                            "2", "--seconds", "240", "--workdir", str(work)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the commands to try come once it is up
            line = lab.stdout.readline()
            assert line, f"the lab ended: {lab.stderr.read()}"
            lines.append(line)
            if line.startswith("Broker "):
                break
        text = "".join(lines)
        status = work / "gw-sim" / "status.json"
        where = ["--status-file", str(status)]
        assert f"hallgate devices --status-file {status}" in text

        devices = json.loads(hallgate("devices", "--json", env={"HALLGATE_STATUS_FILE":
                                                                str(status)}))
        rows = devices["devices"]
        assert sorted(d["address"] for d in rows) == [1, 2, 101, 102]
        assert all(d["online"] for d in rows)
        stats = json.loads(hallgate("bus", "stats", *where, "--json"))
        assert "hall" in json.dumps(stats)
        assert "showing itself" in hallgate("identify", "1", "--seconds", "1", *where)
        shown = json.loads(hallgate("identify", "2", "--seconds", "1", "--json", *where))
        assert shown["ok"] and shown["address"] == 2 and shown["via"] == "daemon"
        assert "POLL" in hallgate("bus", "sniff", "--seconds", "1", *where)

        # An update over the bus with the lab's own signed bundle, and the spare board
        # flashed over its "USB" pty: the commands as the lab printed them.
        ota = next(ln for ln in lines if "hallgate ota" in ln).split("#")[0].split()[1:]
        # Past the update's own bound (gateway/ota.py CONFIRM_TIMEOUT after the commit), so
        # a device that does not come back fails with the command's reason, not a timeout.
        out = hallgate(*ota, timeout=240)
        assert "1 updated" in out, out
        flash = next(ln for ln in lines if "hallgate flash" in ln).split("#")[0].split()[1:]
        out = hallgate(*flash, timeout=120)
        assert "all verified" in out, out
    finally:
        lab.send_signal(signal.SIGTERM)
        try:
            rc = lab.wait(60)
        except subprocess.TimeoutExpired:
            lab.kill()
            raise
    assert rc == 0
    assert not (work / "gw-sim" / "control.sock").exists()  # the daemon stopped cleanly
    # Its last status is kept, and says the devices' state is no longer known.
    done = subprocess.run([sys.executable, "-m", "hallgate.cli", "status", "--status-file",
                           str(status)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "NOT RUNNING" in done.stdout, done.stdout
    assert "not known now" in done.stdout and "was online" in done.stdout
    assert "devices: 4/4 online when the daemon last wrote" in done.stdout, done.stdout
    rows = [ln for ln in done.stdout.splitlines() if ln.startswith("  hall:")]
    assert len(rows) == 4 and all("was online" in ln for ln in rows), done.stdout
