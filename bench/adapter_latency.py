"""The poll cycle of 32 idle devices behind a USB adapter whose latency timer is Linux's
default for an FTDI (16 ms) and what the gateway sets (1 ms), measured in one run.

The same N real firmware devices (MicroPython processes) on one simulated RS-485 line at
115200 baud (sim/hub.py), polled by the real bus master with the daemon's timings. The hub
models the master's adapter (`latency_timer_ms`): it holds the bytes it receives until
62 of them or its timer runs out, as an FTDI chip does, so each short reply waits for the
next run-out. The timer is switched between 16 ms and 1 ms on the running line, so both
figures come from one set of devices; a plain UART (no adapter) is measured as the
baseline. The cycle is also set against its wire time (bytes x 10 / baud).

    python bench/adapter_latency.py [--devices 32] [--seconds 5] [--json]
"""

import argparse
import json
import os
import sys
import tempfile
import time

from common import start_devices
from hallgate.gateway.master import BusMaster
from hallgate.sim.hub import BusHub

BAUD = 115200
TIMERS = (None, 16, 1)  # no adapter (a UART), Linux's FTDI default, what we set


def line_bytes(hub):
    return hub.stats.from_master + hub.stats.from_devices


def cycle(master, hub, seconds):
    """Mean cycle (s), bytes per cycle and timeouts over `seconds` of idle polling."""
    s0, b0 = master.stats, line_bytes(hub)
    time.sleep(seconds)
    s1, b1 = master.stats, line_bytes(hub)
    n = max(s1["cycles"] - s0["cycles"], 1)
    return ((s1["cycle_total"] - s0["cycle_total"]) / n, (b1 - b0) / n,
            s1["timeouts"] - s0["timeouts"])


def measure(n, seconds, tmp):
    rows = []
    with BusHub(baud=BAUD) as hub:
        specs = [(a, "call-panel", a) for a in range(1, n + 1)]
        devices = start_devices(hub, tmp, specs, lockout_ms=0)
        try:
            master = BusMaster(hub.master_path, baudrate=BAUD, timeout=0.02,
                               devices=[a for a, _, _ in specs])
            with master:
                deadline = time.monotonic() + 60
                while not all((master.device(a) or {}).get("online") for a, _, _ in specs):
                    if time.monotonic() > deadline:
                        raise SystemExit("devices did not come online")
                    time.sleep(0.05)
                for timer in TIMERS:
                    hub.latency_timer_ms = timer
                    time.sleep(1.0)  # a few cycles on the new timer first
                    mean, per_cycle, timeouts = cycle(master, hub, seconds)
                    wire = per_cycle * 10 / BAUD
                    rows.append({
                        "latency_timer_ms": timer, "cycle_ms": round(mean * 1000, 2),
                        "bytes_per_cycle": round(per_cycle, 1),
                        "wire_ms": round(wire * 1000, 2),
                        "cycle_over_wire": round(mean / wire, 2) if wire else None,
                        "timeouts": timeouts,
                        "load_avg_1min": round(os.getloadavg()[0], 2)})
        finally:
            for d in devices.values():
                d.close()
    by = {r["latency_timer_ms"]: r for r in rows}
    return {"devices": n, "baud": BAUD, "cpus": os.cpu_count(), "rows": rows,
            "cycle_16_over_1": round(by[16]["cycle_ms"] / by[1]["cycle_ms"], 2),
            "cycle_1_over_uart": round(by[1]["cycle_ms"] / by[None]["cycle_ms"], 2),
            "estimate_16_ms": n * 16}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=32, help="idle call panels on the line")
    p.add_argument("--seconds", type=float, default=5.0, help="polling measured per timer")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if not 1 <= args.devices <= 32:
        p.error("--devices: 1-32")
    with tempfile.TemporaryDirectory() as tmp:
        r = measure(args.devices, args.seconds, tmp)
    if args.json:
        print(json.dumps(r, indent=1))
        return 0
    print(f"{r['devices']} idle devices at {r['baud']} baud:")
    for row in r["rows"]:
        what = ("no adapter (a UART)" if row["latency_timer_ms"] is None
                else f"adapter latency timer {row['latency_timer_ms']} ms")
        print(f"  {what:<32} cycle {row['cycle_ms']:>8} ms = {row['cycle_over_wire']} x wire "
              f"({row['wire_ms']} ms); timeouts {row['timeouts']}")
    print(f"  16 ms / 1 ms: {r['cycle_16_over_1']} x (16 ms x {r['devices']} = "
          f"{r['estimate_16_ms']} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
