"""The `hallgate` command: help everywhere, and the bus commands against real firmware."""

import argparse
import json
import subprocess
import sys

import pytest
from hallgate.sim.device import FirmwareDevice
from hallgate.sim.hub import BusHub

from hallgate.cli import build_parser


def hallgate(*args, timeout=60):
    return subprocess.run(
        [sys.executable, "-m", "hallgate.cli", *args],
        capture_output=True, text=True, timeout=timeout,
    )


def commands(parser, prefix=()):
    """Every command path of the parser, e.g. ('bus', 'scan')."""
    yield prefix
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, prefix + (name,))


def test_every_command_has_help():
    paths = list(commands(build_parser()))
    assert ("bus", "scan") in paths and ("sim", "bus") in paths
    for path in paths:
        out = hallgate(*path, "--help")
        assert out.returncode == 0, (path, out.stderr)
        assert out.stdout.startswith("usage: hallgate"), path


def test_bad_address_range_is_a_clear_error():
    out = hallgate("bus", "watch", "--port", "/dev/null", "1-300")
    assert out.returncode == 2
    assert "address range '1-300' outside 1-247" in out.stderr


@pytest.mark.micropython
def test_scan_and_identify_find_the_real_devices(tmp_path):
    with BusHub(baud=115200) as hub:
        devs = [
            FirmwareDevice(tmp_path / "p", 3, "call-panel", 7, hub.add_port("p"), ready_timeout=30),
            FirmwareDevice(tmp_path / "d", 9, "window-display", 7, hub.add_port("d"),
                           ready_timeout=30),
        ]
        try:
            port = ["--port", hub.master_path, "--timeout", "0.2"]
            out = hallgate("bus", "scan", *port, "--addresses", "1-12", "--json")
            assert out.returncode == 0, out.stderr
            rows = {r["address"]: r for r in json.loads(out.stdout)}
            assert set(rows) == {3, 9}
            assert (rows[3]["role"], rows[3]["window"]) == ("call-panel", 7)
            assert rows[9]["role"] == "window-display"
            assert rows[9]["resets"] >= 1

            mark = devs[1].mark()
            out = hallgate("bus", "identify", *port, "9", "--seconds", "2")
            assert out.returncode == 0, out.stderr
            assert "device 9: showing itself for 2 s" in out.stdout
            assert devs[1].wait_kind("identify", since=mark) == 2
        finally:
            for d in devs:
                d.close()
