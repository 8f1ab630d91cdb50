"""The bus port's adapter (gateway/adapter.py) against a fake sysfs tree, and what the
technician sees of it (`hallgate bus stats`, `hallgate status`).

The fake tree is laid out as Linux lays out a USB serial adapter:
    SYS/bus/usb-serial/devices/ttyUSB0 -> SYS/devices/usb1/1-1/1-1:1.0/ttyUSB0
        latency_timer, driver -> .../drivers/ftdi_sio
    SYS/devices/usb1/1-1/idVendor, idProduct, manufacturer, product
and a fake /dev holds ttyUSB0 and a /dev/serial/by-id link to it. Writing the timer is
refused by replacing the module's writer (the tests run as root, who may write any file).
"""

import io
import json
import logging
import os
import subprocess
import sys
import time
from contextlib import redirect_stdout

import serial
from hallgate.gateway import adapter, direct
from hallgate.gateway.master import BusMaster

from hallgate import cli
from hallgate.tools import adapter_lines


def fake_usb_serial(root, name="ttyUSB0", driver="ftdi_sio", latency=16,
                    ids=("0403", "6001", "FTDI", "FT232R USB UART")):
    """A sysfs tree under root/sys with one USB serial port, and root/dev/<name> with a
    by-id link to it; returns (sysfs root, device path, by-id path)."""
    sys_ = root / "sys"
    usbdev = sys_ / "devices" / "usb1" / "1-1"
    port = usbdev / "1-1:1.0" / name
    port.mkdir(parents=True)
    for f, v in zip(("idVendor", "idProduct", "manufacturer", "product"), ids, strict=True):
        (usbdev / f).write_text(v + "\n")
    (sys_ / "bus" / "usb-serial" / "drivers" / driver).mkdir(parents=True)
    os.symlink(sys_ / "bus" / "usb-serial" / "drivers" / driver, port / "driver")
    if latency is not None:
        (port / "latency_timer").write_text(f"{latency}\n")
    devices = sys_ / "bus" / "usb-serial" / "devices"
    devices.mkdir(parents=True)
    os.symlink(port, devices / name)
    dev = root / "dev"
    (dev / "serial" / "by-id").mkdir(parents=True)
    (dev / name).write_text("")
    by_id = dev / "serial" / "by-id" / "usb-FTDI_FT232R_USB_UART_A1B2C3-if00-port0"
    os.symlink(f"../../{name}", by_id)
    return sys_, dev / name, by_id


class FakePort:
    """An open pyserial port as far as prepare() cares."""

    def __init__(self, path, low_latency="ok"):
        self.port = str(path)
        self.asked = []
        self._low = low_latency

    def set_low_latency_mode(self, on):
        self.asked.append(on)
        if self._low == "refused":
            raise ValueError("Failed to update ASYNC_LOW_LATENCY flag to True: [Errno 25]")
        if self._low == "unsupported":
            raise NotImplementedError("Low latency not supported on this platform")


def timer(sys_, name="ttyUSB0"):
    return (sys_ / "bus" / "usb-serial" / "devices" / name / "latency_timer").read_text()


def test_an_ftdi_at_16_ms_is_set_to_1_ms(tmp_path, caplog):
    sys_, dev, by_id = fake_usb_serial(tmp_path)
    port = FakePort(by_id)
    with caplog.at_level(logging.INFO, logger="hallgate.gateway.adapter"):
        a = adapter.prepare(port, sysfs=sys_)
    assert port.asked == [True] and a.low_latency is True
    assert timer(sys_) == "1\n"
    assert (a.kind, a.tty, a.driver, a.latency_timer_ms) == ("usb-serial", "ttyUSB0",
                                                              "ftdi_sio", 1)
    assert a.usb == "0403:6001 FTDI FT232R USB UART"
    assert a.done == "latency timer 16 -> 1 ms" and a.warning is None and not a.slow
    assert "latency timer 1 ms" in a.text() and "WARNING" not in caplog.text
    # Read only: inspect() says the same without touching anything.
    assert adapter.inspect(dev, sys_).latency_timer_ms == 1


def test_an_ftdi_already_at_1_ms_is_left_alone(tmp_path):
    sys_, dev, _ = fake_usb_serial(tmp_path, latency=1)
    before = os.stat(sys_ / "bus" / "usb-serial" / "devices" / "ttyUSB0" / "latency_timer")
    a = adapter.prepare(FakePort(dev), sysfs=sys_)
    after = os.stat(sys_ / "bus" / "usb-serial" / "devices" / "ttyUSB0" / "latency_timer")
    assert before.st_mtime_ns == after.st_mtime_ns
    assert a.latency_timer_ms == 1 and a.warning is None and a.done == "low-latency mode"


def test_a_timer_that_cannot_be_written_is_warned_about_and_the_port_is_used(
        tmp_path, monkeypatch, caplog):
    sys_, dev, _ = fake_usb_serial(tmp_path)
    real_open = open

    def refusing_open(path, mode="r", *args, **kw):
        if "w" in mode:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, mode, *args, **kw)

    monkeypatch.setattr(adapter, "open", refusing_open, raising=False)
    port = FakePort(dev, low_latency="refused")  # an older driver, say: no help there
    with caplog.at_level(logging.INFO, logger="hallgate.gateway.adapter"):
        a = adapter.prepare(port, sysfs=sys_)  # no exception: the bus goes on
    assert timer(sys_) == "16\n"
    assert a.latency_timer_ms == 16 and a.slow and a.low_latency is False
    assert "Permission denied" in a.warning and adapter.UDEV_RULE in a.warning
    assert "512 ms instead of 40" in a.warning
    assert "WARNING" in caplog.text and "latency timer is 16 ms" in caplog.text
    lines = adapter_lines(a.asdict())
    assert lines[0] == ("adapter: USB serial adapter (ttyUSB0, ftdi_sio, 0403:6001 FTDI "
                        "FT232R USB UART), latency timer 16 ms (want 1 ms)")
    assert lines[1].startswith("WARNING: ttyUSB0's latency timer is 16 ms")


def test_a_usb_adapter_that_is_not_an_ftdi_has_nothing_to_set(tmp_path):
    sys_, dev, _ = fake_usb_serial(tmp_path, driver="ch341", latency=None,
                                   ids=("1a86", "7523", "QinHeng", "USB Serial"))
    a = adapter.prepare(FakePort(dev, low_latency="refused"), sysfs=sys_)
    assert (a.kind, a.driver, a.latency_timer_ms, a.warning, a.done) == (
        "usb-serial", "ch341", None, None, None)
    assert not (sys_ / "bus" / "usb-serial" / "devices" / "ttyUSB0" /
                "latency_timer").exists()
    assert a.text().endswith("no latency timer")
    assert adapter_lines(a.asdict()) == [f"adapter: {a.text()}"]


def test_a_uart_and_a_url_have_nothing_to_set(tmp_path):
    sys_ = tmp_path / "sys"
    (sys_ / "class" / "tty" / "ttyAMA0" / "device").mkdir(parents=True)
    os.symlink(tmp_path / "drivers" / "uart-pl011", sys_ / "class" / "tty" / "ttyAMA0"
               / "device" / "driver")
    (tmp_path / "ttyAMA0").write_text("")
    a = adapter.prepare(FakePort(tmp_path / "ttyAMA0", low_latency="unsupported"),
                        sysfs=sys_)
    assert (a.kind, a.driver, a.latency_timer_ms, a.low_latency, a.warning) == (
        "serial", "uart-pl011", None, None, None)
    assert adapter.inspect("socket://127.0.0.1:7000", sys_).kind == "url"


def test_a_pty_the_simulated_line_has_nothing_to_set(tmp_path):
    master_fd, slave_fd = os.openpty()
    path = os.ttyname(slave_fd)
    try:
        with serial.Serial(path, 115200, timeout=0.01) as port:
            a = adapter.prepare(port, sysfs=tmp_path)  # a real ioctl, refused by the pty
        assert a.kind == "pty" and a.latency_timer_ms is None and a.warning is None
        assert a.low_latency in (False, True)  # whatever the kernel says, no exception
        # direct.open_port (the technician's tools) and the bus master do the same.
        port = direct.open_port(path, sysfs=tmp_path)
        try:
            assert port.adapter.kind == "pty"
        finally:
            port.close()
        master = BusMaster(path, timeout=0.01)
        master.sysfs = tmp_path
        try:
            assert master.stats["adapter"] is None  # not opened yet
            master.scan([1], add=False)  # opens the port; nobody answers
            assert master.stats["adapter"]["kind"] == "pty"
        finally:
            master.close()
    finally:
        os.close(master_fd)
        os.close(slave_fd)


def status_file(tmp_path, adapter_dict):
    st = {"gateway": "gw-1", "site": "hall", "version": "0.1.0", "state": "running",
          "pid": 4242, "started": "2026-12-05T10:00:00.000Z", "ts": "2026-12-05T10:00:01.000Z",
          "broker": {"connected": True, "url": "mqtt://127.0.0.1:1883", "last_error": None},
          "outbox": {"depth": 0}, "devices": {"online": 0, "total": 0, "table": []},
          "buses": {"hall": {"port": "/dev/ttyUSB0", "cycles": 120, "cycle_mean": 0.5123,
                             "timeouts": 0, "events": 0, "duplicates": 0,
                             "adapter": adapter_dict}}}
    path = tmp_path / "status.json"
    path.write_text(json.dumps(st))
    now = time.time()
    os.utime(path, (now, now))
    return path


def test_hallgate_status_shows_the_adapter_and_warns_above_1_ms(tmp_path):
    slow = adapter.Adapter(port="/dev/ttyUSB0", kind="usb-serial", tty="ttyUSB0",
                           driver="ftdi_sio", latency_timer_ms=16).asdict()
    out = io.StringIO()
    with redirect_stdout(out):
        code = cli.main(["status", "--status-file", str(status_file(tmp_path, slow))])
    text = out.getvalue()
    assert code == 0, text
    assert "bus hall on /dev/ttyUSB0: 120 poll cycles, 512.3 ms mean" in text
    assert "adapter: USB serial adapter (ttyUSB0, ftdi_sio), latency timer 16 ms" in text
    assert "WARNING: the adapter holds every reply up to 16 ms (want 1 ms)" in text
    fast = dict(slow, latency_timer_ms=1)
    out = io.StringIO()
    with redirect_stdout(out):
        cli.main(["status", "--status-file", str(status_file(tmp_path, fast))])
    assert "latency timer 1 ms" in out.getvalue() and "WARNING" not in out.getvalue()


def test_the_daemon_loads_the_adapter_code_and_not_what_it_does_not_run():
    """`hallgate run` imports the adapter code with the bus master, but not bundle checking
    (cryptography), progress bars (rich) or the sniffer's decoder: they load when a
    technician uses them (issue 15: the daemon's resident memory)."""
    code = ("import sys\n"
            "import hallgate.cli as cli\n"
            "cli.build_parser()\n"
            "import hallgate.gateway.daemon, hallgate.gateway.feedback, "
            "hallgate.gateway.gpiopanel, hallgate.gateway.master\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('cryptography', 'rich') or m in ('hallgate.gateway.sniff', "
            "'hallgate.gateway.adapter')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['hallgate.gateway.adapter']"


def test_bus_stats_directly_on_a_port_names_its_adapter(tmp_path):
    master_fd, slave_fd = os.openpty()
    try:
        out = subprocess.run(
            [sys.executable, "-m", "hallgate.cli", "bus", "stats", "--port",
             os.ttyname(slave_fd), "--addresses", "1", "--seconds", "0.2", "--timeout",
             "0.01", "--status-file", str(tmp_path / "none.json")],
            capture_output=True, text=True, timeout=60)
    finally:
        os.close(master_fd)
        os.close(slave_fd)
    assert out.returncode == 0, out.stderr
    assert "  adapter: pty (simulated line), no latency timer" in out.stdout, out.stdout
