"""The gateway daemon's footprint: resident memory and CPU share at idle and under a steady
event rate (50/s by default), with 32 bus devices and 24 GPIO buttons, measured in one run.

The daemon is the real `hallgate run` process with gpiozero's MockFactory
(GPIOZERO_PIN_FACTORY=mock): its sampler reads the 24 button pins (12 windows with like /
dislike) every 5 ms as on a Pi. The bus devices are the real firmware on MicroPython (16
call panels and 16 window displays on one simulated RS-485 line at 115200 baud, sim/hub.py);
a mock pin cannot be pressed from outside the daemon's process, so the load comes from the
call panels' keys, round robin, at the given rate, each event committed to the outbox and
published QoS 1 to a real mosquitto, counted at a subscriber.

From /proc/PID: VmRSS (resident now), VmHWM (peak resident), utime + stime over each
window, as a share of one CPU. The device processes' and this process's (hub and driver)
CPU are reported beside it: on a small machine they compete with the daemon. If fewer
devices start than asked, the run goes on with those that did, and says so.

Then the same daemon again on the same line, with its technician page on (`[http] listen`,
hallgate/web/gatewaypage.py) and watched as a browser watches it: the page and its
figures fetched, its event stream open (a push a second) through the idle window. Its
resident memory, beside the page off, against the 50 MB a gateway on a Pi must stay
under (the page's budget, issue 13; the daemon was 43 MB there without it).

    python bench/footprint.py [--devices 32] [--rate 50] [--seconds 20] [--no-http] [--json]
"""

import argparse
import http.client
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import EVENTS, GatewayProcess, Subscriber, hall_config
from hallgate.sim.broker import Mosquitto, free_port
from hallgate.sim.device import DeviceError, FirmwareDevice
from hallgate.sim.hub import BusHub

TICK = os.sysconf("SC_CLK_TCK")
GPIO_WINDOWS = 12  # like + dislike each: 24 buttons on BCM 4-27
HOLD_MS = 40
MAX_PER_PANEL = 5.0  # presses/s one key can take: 40 ms closed, debounce, open again
RSS_TARGET_MB = 50.0  # a gateway on a Pi, its technician page on (issue 13)


def cpu_seconds(pid):
    """utime + stime of a process, seconds (fields 14 and 15 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def memory_kb(pid):
    """{"VmRSS": kB, "VmHWM": kB} of a process."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def window(daemon_pid, device_pids, seconds, during=None):
    """CPU shares (of one CPU) over `seconds`, calling during(now) until then; memory at
    the end."""
    pids = [daemon_pid, *device_pids]
    before = {p: cpu_seconds(p) for p in pids}
    own0 = time.process_time()
    t0 = time.monotonic()
    end = t0 + seconds
    while (now := time.monotonic()) < end:
        if during is not None:
            during(now)
        else:
            time.sleep(min(0.1, end - now))
    wall = time.monotonic() - t0
    after = {p: cpu_seconds(p) for p in pids}
    mem = memory_kb(daemon_pid)
    return {
        "seconds": round(wall, 1),
        "daemon_cpu_pct": round(100 * (after[daemon_pid] - before[daemon_pid]) / wall, 1),
        "daemon_rss_mb": round(mem["VmRSS"] / 1024, 1),
        "daemon_peak_rss_mb": round(mem["VmHWM"] / 1024, 1),
        "devices_cpu_pct": round(100 * sum(after[p] - before[p] for p in device_pids) / wall,
                                 1),
        "bench_cpu_pct": round(100 * (time.process_time() - own0) / wall, 1),
        "load_avg_1min": round(os.getloadavg()[0], 2),
    }


def start_devices(hub, tmp, specs):
    """As many of the devices as start; (devices, error of the first that did not)."""
    devices = {}
    for address, role, win in specs:
        try:
            devices[address] = FirmwareDevice(
                tmp / f"dev-{address}", address, role, win, hub.add_port(f"{role}-{address}"),
                ready_timeout=60, lockout_ms=0)
        except DeviceError as e:
            return devices, str(e).splitlines()[0]
    return devices, None


def start_daemon(config, status, log_path, expected):
    """`hallgate run` on `config`, once `expected` devices are online (or 60 s went by):
    (process, devices online)."""
    daemon = GatewayProcess(config, log_path, run=True, status_file=status)
    deadline = time.monotonic() + 60
    online = 0
    while time.monotonic() < deadline and daemon.proc.poll() is None:
        try:
            st = json.loads(status.read_text())
            online = st["devices"]["online"] if st["pid"] == daemon.pid else 0
            if online == expected:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    if daemon.proc.poll() is not None:
        raise SystemExit(f"the daemon exited; see {log_path}")
    return daemon, online


class PageWatcher:
    """What a technician's browser does to the page: fetches it and its figures, then
    keeps its event stream open (read in a thread), counting the pushes."""

    def __init__(self, port):
        self.port = port
        self.events = 0
        self.conn = None
        for path in ("/", "/static/gateway.js", "/api/gateway"):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            c.request("GET", path)
            r = c.getresponse()
            r.read()
            c.close()
            if r.status != 200:
                raise SystemExit(f"the page answered {r.status} for {path}")
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.conn.request("GET", "/api/gateway/events")
        self.stream = self.conn.getresponse()
        self.thread = threading.Thread(target=self._read, name="page-stream", daemon=True)
        self.thread.start()

    def _read(self):
        try:
            while line := self.stream.readline():
                if line.startswith(b"event: state"):
                    self.events += 1
        except Exception:  # noqa: BLE001 - the stream closed under the read, at the end
            pass

    def close(self):
        if self.conn is not None:
            self.conn.close()


def measure_http(config_text, tmp, expected, device_pids, seconds):
    """The daemon again, with its page on and watched: its idle window."""
    port = free_port()
    config = tmp / "hall-http.toml"
    config.write_text(config_text + f'\n[http]\nlisten = "127.0.0.1:{port}"\n')
    status = tmp / "status-http.json"
    daemon, online = start_daemon(config, status, tmp / "daemon-http.log", expected)
    watcher = None
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                watcher = PageWatcher(port)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"the page on port {port} did not answer; see "
                                     f"{tmp / 'daemon-http.log'}") from None
                time.sleep(0.2)
        time.sleep(3)  # settle, as without the page
        w = window(daemon.pid, device_pids, seconds)
        w["devices_online"] = online
        w["pushes_received"] = watcher.events
    finally:
        if watcher is not None:
            watcher.close()
        daemon.close()
    return w


def measure(n_devices, rate, seconds, tmp, with_page=True):
    panels = (n_devices + 1) // 2
    specs = [(a, "call-panel", a) for a in range(1, panels + 1)]
    specs += [(panels + a, "window-display", a) for a in range(1, n_devices - panels + 1)]
    windows = range(1, max(panels, GPIO_WINDOWS) + 1)
    gpio = {w: (2 + 2 * w, 3 + 2 * w) for w in range(1, GPIO_WINDOWS + 1)}
    with Mosquitto(tmp / "broker") as broker, BusHub(baud=115200) as hub:
        devices, failed = start_devices(hub, tmp, specs)
        daemon = None
        try:
            started = [s for s in specs if s[0] in devices]
            config = hall_config(tmp / "hall.toml", broker_port=broker.port,
                                 hub_path=hub.master_path, devices=started, windows=windows,
                                 gpio=gpio)
            status = tmp / "status.json"
            sub = Subscriber(broker.port, topics=(EVENTS,))
            daemon, online = start_daemon(config, status, tmp / "daemon.log", len(started))
            time.sleep(3)  # settle: first INFOs, SETs, the device table
            device_pids = [d.pid for d in devices.values()]
            idle = window(daemon.pid, device_pids, seconds)

            panel_list = [devices[a] for a, role, _ in started if role == "call-panel"]
            sent = [0]
            t_start = time.monotonic()

            def drive(now):
                due = int((now - t_start) * rate)
                while sent[0] < due:
                    panel_list[sent[0] % len(panel_list)].press("call", hold_ms=HOLD_MS)
                    sent[0] += 1
                time.sleep(max(0.0, min(0.01, t_start + (sent[0] + 1) / rate
                                        - time.monotonic())))

            warm = t_start + 2.0  # the steady state, not the ramp
            while (now := time.monotonic()) < warm:
                drive(now)
            mark = sub.mark()
            sent_before = sent[0]
            loaded = window(daemon.pid, device_pids, seconds, during=drive)
            sent_during = sent[0] - sent_before
            time.sleep(1.0)
            received = sub.count(lambda t, p: p is not None and p.get("type") == "key", mark)
            loaded["presses_sent"] = sent_during
            loaded["events_per_s_received"] = round(received / loaded["seconds"], 1)
            sub.close()
            daemon.close()
            daemon = None
            page = (measure_http(config.read_text(), tmp, len(started), device_pids, seconds)
                    if with_page else None)
        finally:
            if daemon is not None:
                daemon.close()
            for d in devices.values():
                d.close()
    out = {"devices_asked": n_devices, "devices_running": len(devices),
           "devices_online": online, "device_start_error": failed,
           "gpio_buttons": 2 * GPIO_WINDOWS, "rate_asked": rate, "cpus": os.cpu_count(),
           "idle": idle, "loaded": loaded, "rss_target_mb": RSS_TARGET_MB}
    if page is not None:
        out["http"] = page
        out["daemon_rss_mb"] = idle["daemon_rss_mb"]  # the page off, idle
        out["daemon_rss_http_mb"] = page["daemon_rss_mb"]  # the page on, watched, idle
        out["daemon_rss_http_added_mb"] = round(page["daemon_rss_mb"] - idle["daemon_rss_mb"], 1)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=32, help="bus devices (half call panels)")
    p.add_argument("--rate", type=float, default=50.0, help="key presses per second")
    p.add_argument("--seconds", type=float, default=20.0, help="each measured window")
    p.add_argument("--no-http", dest="http", action="store_false",
                   help="skip the run with the technician page on")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if not 2 <= args.devices <= 32 or not 0 < args.rate <= 200:
        p.error("--devices 2-32, --rate up to 200")
    if args.rate / ((args.devices + 1) // 2) > MAX_PER_PANEL:
        p.error(f"--rate {args.rate:g} is more than {MAX_PER_PANEL:g} presses/s per call panel "
                f"({(args.devices + 1) // 2} panels): a key pressed that often never opens")
    with tempfile.TemporaryDirectory() as tmp:
        r = measure(args.devices, args.rate, args.seconds, Path(tmp), with_page=args.http)
    if args.json:
        print(json.dumps(r, indent=1))
    else:
        print(f"gateway daemon with {r['devices_running']} of {r['devices_asked']} bus devices "
              f"running ({r['devices_online']} online) and {r['gpio_buttons']} GPIO buttons, "
              f"{r['cpus']} CPUs:")
        if r["device_start_error"]:
            print(f"  devices that did not start: {r['device_start_error']}")
        for name, w in (("idle", r["idle"]), (f"{r['rate_asked']:g} presses/s", r["loaded"])):
            print(f"  {name:<15} RSS {w['daemon_rss_mb']} MB (peak {w['daemon_peak_rss_mb']}),"
                  f" CPU {w['daemon_cpu_pct']}% of one core; devices {w['devices_cpu_pct']}%,"
                  f" hub+driver {w['bench_cpu_pct']}%, load {w['load_avg_1min']}")
        print(f"  events at the subscriber: {r['loaded']['events_per_s_received']}/s")
        if "http" in r:
            h, target = r["http"], r["rss_target_mb"]
            over = " OVER THE TARGET" if h["daemon_peak_rss_mb"] >= target else ""
            print(f"  technician page: RSS {r['daemon_rss_mb']} MB off, "
                  f"{r['daemon_rss_http_mb']} MB on (+{r['daemon_rss_http_added_mb']} MB; "
                  f"peak {h['daemon_peak_rss_mb']}), idle, a browser's stream open "
                  f"({h['pushes_received']} pushes); target under {target:g} MB{over}; "
                  f"CPU {h['daemon_cpu_pct']}% of one core")
    # The load must have happened for the loaded figures to mean anything.
    return 0 if r["loaded"]["events_per_s_received"] >= 0.8 * args.rate else 1


if __name__ == "__main__":
    sys.exit(main())
