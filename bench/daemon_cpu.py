"""The gateway daemon's CPU at rest, and per bus exchange, measured in one run.

Two runs of the real `hallgate run` (GPIOZERO_PIN_FACTORY=mock) against a real mosquitto:
  1. 24 GPIO buttons (12 windows with like / dislike), no bus, nothing pressed: the daemon's
     CPU share at idle (target: at most 1% of a core here). Its GPIO sampler sleeps until an
     edge, with a safety pass a second; the rest is the outbox sender, the MQTT link, the
     status file and the control socket.
  2. The same with N idle bus devices (the real firmware on MicroPython, on a simulated
     RS-485 line at 115200 baud, sim/hub.py): the daemon's CPU over the exchanges it made in
     the window (its control socket's `stats`), less run 1's idle share, gives CPU per
     exchange in microseconds. On a core k times slower it costs about k times as much: at
     the measured exchange rate, the share of such a core is printed for k = 3 and 5 (a
     Raspberry Pi 3's Cortex-A53 at 1.2 GHz runs Python several times slower than this
     machine's cores).

From /proc/PID/stat (utime + stime) over each window.

    python bench/daemon_cpu.py [--devices 32] [--seconds 20] [--json]
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from common import GatewayProcess, hall_config, start_devices
from hallgate.gateway.control import ControlClient
from hallgate.sim.broker import Mosquitto
from hallgate.sim.hub import BusHub

GPIO_WINDOWS = 12  # like + dislike each: 24 buttons on BCM 4-27
TICK = os.sysconf("SC_CLK_TCK")
IDLE_TARGET_PCT = 1.0  # the daemon at rest with 24 buttons, no bus: at most 1% of a core


def cpu_seconds(pid):
    """utime + stime of a process, seconds (fields 14 and 15 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


def wait_status(status, test, timeout, daemon):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and daemon.proc.poll() is None:
        try:
            st = json.loads(status.read_text())
            if test(st):
                return st
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    tail = Path(daemon.log_path).read_text(errors="replace").splitlines()[-5:]
    raise SystemExit("the daemon did not get ready; the end of its log:\n" + "\n".join(tail))


def exchanges(control):
    with ControlClient(control, timeout=15) as c:
        buses = c.call("stats", timeout=15)["buses"]
    return sum(b["stats"]["exchanges"] for b in buses.values())


def run_daemon(tmp, broker, seconds, hub=None, specs=()):
    """One daemon run: (CPU share %, seconds, exchanges, RSS MB) over an idle window."""
    gpio = {w: (2 + 2 * w, 3 + 2 * w) for w in range(1, GPIO_WINDOWS + 1)}
    windows = range(1, max([GPIO_WINDOWS, *(w for _, _, w in specs)]) + 1)
    tmp.mkdir(parents=True, exist_ok=True)
    config = hall_config(tmp / "hall.toml", broker_port=broker.port,
                         hub_path=hub.master_path if hub else None, devices=specs,
                         windows=windows, gpio=gpio)
    status = tmp / "status.json"
    daemon = GatewayProcess(config, tmp / "daemon.log", run=True, status_file=status)
    try:
        wait_status(status, lambda s: s["broker"]["connected"]
                    and s["devices"]["online"] == len(specs), 60, daemon)
        time.sleep(3)  # settle: first INFOs and SETs, the device table, imports done
        control = status.with_name("control.sock")
        n0 = exchanges(control) if specs else 0
        c0, t0 = cpu_seconds(daemon.pid), time.monotonic()
        time.sleep(seconds)
        c1, t1 = cpu_seconds(daemon.pid), time.monotonic()
        n1 = exchanges(control) if specs else 0
        rss = rss_mb(daemon.pid)
    finally:
        daemon.close()
    return 100 * (c1 - c0) / (t1 - t0), t1 - t0, n1 - n0, rss


def measure(n_devices, seconds, tmp):
    with Mosquitto(tmp / "broker") as broker:
        idle_pct, idle_s, _, idle_rss = run_daemon(tmp / "gpio", broker, seconds)
        with BusHub(baud=115200) as hub:
            panels = (n_devices + 1) // 2
            specs = [(a, "call-panel", a) for a in range(1, panels + 1)]
            specs += [(panels + a, "window-display", a)
                      for a in range(1, n_devices - panels + 1)]
            devices = start_devices(hub, tmp, specs, lockout_ms=0)
            try:
                bus_pct, bus_s, n, bus_rss = run_daemon(tmp / "bus", broker, seconds, hub,
                                                        specs)
            finally:
                for d in devices.values():
                    d.close()
    per_s = n / bus_s
    us = (bus_pct - idle_pct) / 100 / per_s * 1e6 if per_s else None
    return {
        "gpio_buttons": 2 * GPIO_WINDOWS, "devices": n_devices, "cpus": os.cpu_count(),
        "seconds": round(idle_s, 1),
        "gpio_idle_cpu_pct": round(idle_pct, 2),
        "gpio_idle_target_pct": IDLE_TARGET_PCT,
        "gpio_idle_rss_mb": round(idle_rss, 1),
        "bus_idle_cpu_pct": round(bus_pct, 2),
        "bus_idle_rss_mb": round(bus_rss, 1),
        "exchanges_per_s": round(per_s, 1),
        "cpu_per_exchange_us": round(us, 1) if us is not None else None,
        # the same exchange rate on a core k times slower than this one
        "bus_cpu_pct_on_3x_slower_core": round(3 * bus_pct, 1),
        "bus_cpu_pct_on_5x_slower_core": round(5 * bus_pct, 1),
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=32, help="idle bus devices in run 2")
    p.add_argument("--seconds", type=float, default=20.0, help="each measured window")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if not 2 <= args.devices <= 32:
        p.error("--devices 2-32")
    with tempfile.TemporaryDirectory() as tmp:
        r = measure(args.devices, args.seconds, Path(tmp))
    ok = r["gpio_idle_cpu_pct"] <= IDLE_TARGET_PCT
    if args.json:
        print(json.dumps(r, indent=1))
    else:
        print(f"daemon at rest, {r['gpio_buttons']} GPIO buttons, no bus: "
              f"{r['gpio_idle_cpu_pct']}% of a core (target <= {IDLE_TARGET_PCT}%: "
              f"{'met' if ok else 'MISSED'}), RSS {r['gpio_idle_rss_mb']} MB")
        print(f"with {r['devices']} idle bus devices: {r['bus_idle_cpu_pct']}% of a core, "
              f"{r['exchanges_per_s']} exchanges/s, {r['cpu_per_exchange_us']} us of daemon "
              f"CPU per exchange; on a core 3x / 5x slower: "
              f"{r['bus_cpu_pct_on_3x_slower_core']}% / {r['bus_cpu_pct_on_5x_slower_core']}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
