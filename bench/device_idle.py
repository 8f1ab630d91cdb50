"""Idle cost of the simulated hall's devices: N firmware processes (half call panels, half
window displays, the real firmware on MicroPython behind the pty hub) waiting for a master
that does not poll, CPU over a window. With every key up and settled a device sleeps
50 ms at a time in poll() on its port and control channel (firmware/hal_unix.py), not
the 5 ms key-sampling period. Target: 72 idle devices (a 36-window hall) under 20% of
one core in total.

    python bench/device_idle.py --devices 72 --seconds 10
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from footprint import cpu_seconds  # noqa: E402
from hallgate.sim.device import FirmwareDevice, compile_firmware  # noqa: E402
from hallgate.sim.hub import BusHub  # noqa: E402

TARGET_PCT = 20.0  # of one core, for 72 devices


def measure(n, seconds, tmp):
    compile_firmware()
    hub = BusHub(baud=921600).start()
    devices = []
    try:
        panels = (n + 1) // 2
        for i in range(n):
            role, window = ("call-panel", i + 1) if i < panels else ("window-display",
                                                                      i - panels + 1)
            address = window if role == "call-panel" else 100 + window
            devices.append(FirmwareDevice(tmp / f"dev-{i}", address, role, window,
                                          hub.add_port(f"dev-{i}"), ready_timeout=120))
        time.sleep(1.0)  # past the keys' settling after boot
        pids = [d.proc.pid for d in devices]
        before = {p: cpu_seconds(p) for p in pids}
        t0 = time.monotonic()
        time.sleep(seconds)
        wall = time.monotonic() - t0
        used = [cpu_seconds(p) - before[p] for p in pids]
    finally:
        for d in devices:
            d.close()
        hub.close()
    total = 100 * sum(used) / wall
    return {"devices": n, "seconds": round(wall, 1), "cpus": os.cpu_count(),
            "devices_idle_cpu_pct": round(total, 2),
            "per_device_idle_cpu_pct": round(total / n, 3),
            "target_pct_for_72": TARGET_PCT,
            "scaled_to_72_pct": round(total / n * 72, 1)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=72)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if not 1 <= args.devices <= 200:
        p.error("--devices 1-200")
    with tempfile.TemporaryDirectory() as tmp:
        r = measure(args.devices, args.seconds, Path(tmp))
    if args.json:
        print(json.dumps(r, indent=1))
    else:
        print(f"{r['devices']} idle devices: {r['devices_idle_cpu_pct']}% of one core in total "
              f"({r['per_device_idle_cpu_pct']}% each; {r['scaled_to_72_pct']}% for 72, "
              f"target {TARGET_PCT:g}%)")
    return 0 if r["scaled_to_72_pct"] <= TARGET_PCT else 1


if __name__ == "__main__":
    sys.exit(main())
