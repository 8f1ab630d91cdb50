"""Shared test fixtures: where the MicroPython interpreter and the source folders are."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

# tests/mp holds scripts run on MicroPython by the tests, not modules to import here.
collect_ignore = ["mp"]

ROOT = Path(__file__).resolve().parent.parent
PROTOCOLS = ROOT / "protocols"
FIRMWARE = ROOT / "firmware"


def micropython_path():
    """The `micropython` command installed with the test extra (beside this Python)."""
    here = Path(sys.executable).parent / "micropython"
    return str(here) if here.exists() else shutil.which("micropython")


def run_micropython(script, *args, heapsize="48k", path=(FIRMWARE, PROTOCOLS), timeout=120):
    """Run a script on the MicroPython interpreter with firmware/ and protocols/ importable."""
    exe = micropython_path()
    if exe is None:
        raise RuntimeError("micropython not found: run `make test`, which installs it")
    env = dict(os.environ, MICROPYPATH=":".join(str(p) for p in path) + ":.frozen")
    return subprocess.run(
        [exe, "-X", f"heapsize={heapsize}", str(script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.fixture
def broker(tmp_path):
    """A mosquitto of the test's own on a free loopback port (a module may define its own)."""
    from hallgate.sim.broker import Mosquitto

    b = Mosquitto(tmp_path / "broker").start()
    yield b
    b.stop()


@pytest.fixture
def micropython():
    return run_micropython


def wait_for(cond, timeout=15.0, what="condition"):
    """Polls cond() until true; fails the test, naming `what`, after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def read_retained(port, topic, timeout=3.0):
    """The retained payload (bytes) on `topic` as a fresh client gets it on loopback `port`;
    None if none came within `timeout` seconds."""
    import paho.mqtt.client as mqtt

    got = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(topic, qos=1)
    c.on_message = lambda cl, u, m: got.append(m.payload) if m.retain else None
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        deadline = time.monotonic() + timeout
        while not got and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        c.disconnect()
        c.loop_stop()
    return got[0] if got else None
