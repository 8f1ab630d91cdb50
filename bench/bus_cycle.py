"""Poll cycle and press latency on the bus, as ratios to the wire time, measured in one run.

N real firmware devices (MicroPython processes) share one simulated RS-485 line paced at the
configured baud rate (sim/hub.py), polled by the real bus master. The hub delivers a byte only
after its wire time, so what the master adds to the wire time (turnaround, scheduling, our
Python) shows as the ratio `cycle / wire`. A ratio of 1.0 would be a line never idle.

Bytes on the wire per cycle are counted by the hub (master's and devices' bytes over the
measured idle cycles) and set against two yardsticks: the wire-time lower bound of those
bytes (bytes x 10 bits / baud) and Modbus RTU reading one register from each device (8 + 7
bytes and two 3.5-character silences per exchange, protocols/BUS.md section 8).

On a small shared machine N MicroPython processes compete with the master and the hub for
the CPU: the load average during the run is reported with each row, and the cycle over
wire ratio says how much of the cycle the machine, not the line, took.

    python bench/bus_cycle.py                 # 1, 8 and 32 devices at 115200 baud
    python bench/bus_cycle.py --devices 1,8 --baud 115200 --seconds 5 --json
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from hallgate.gateway.master import BusMaster
from hallgate.protocols import bus
from hallgate.sim.device import FirmwareDevice
from hallgate.sim.hub import BusHub

IDLE_EXCHANGE = len(bus.encode_poll(1)) + len(bus.encode_status(1, 1))  # 14 bytes
MODBUS_EXCHANGE = 8 + 7  # read one holding register: request 8 bytes, reply 7 (BUS.md, 8)
MODBUS_SILENCE_CHARS = 2 * 3.5  # a 3.5-character silence after each frame


def modbus_wire_time(n, baud):
    """Modbus RTU reading one register from each of n devices: bytes plus silences (at
    least 1.75 ms each above 19200 baud, as the spec fixes)."""
    silence = 3.5 * 10 / baud if baud <= 19200 else 0.00175
    return n * (MODBUS_EXCHANGE * 10 / baud + 2 * silence)


def wire_time(nbytes, baud):
    return nbytes * 10 / baud


def line_bytes(hub):
    """Bytes every talker has put on the line so far (the hub counts them as read)."""
    return hub.stats.from_master + hub.stats.from_devices


def measure(n, baud, seconds, presses, tmp):
    events = {}
    with BusHub(baud=baud) as hub:
        devices = {}
        try:
            for addr in range(1, n + 1):
                path = hub.add_port(f"panel-{addr}")
                devices[addr] = FirmwareDevice(
                    Path(tmp) / f"d{n}-{addr}", addr, "call-panel", addr, path,
                    lockout_ms=0, ready_timeout=60,
                )
            master = BusMaster(
                hub.master_path, baudrate=baud, timeout=0.05, devices=devices,
                on_event=lambda addr, ev: events.setdefault((addr, ev.seq), time.monotonic()),
            )
            master.min_cycle = 0  # measure the bus, not the CPU-saving pause between cycles
            master.start()
            deadline = time.monotonic() + 30
            while not all((master.device(a) or {}).get("online") for a in devices):
                if time.monotonic() > deadline:
                    raise SystemExit("devices did not come online")
                time.sleep(0.05)
            time.sleep(0.5)  # let the first SETs and INFOs pass
            before, bytes_before = master.stats, line_bytes(hub)
            load_before = os.getloadavg()[0]
            time.sleep(seconds)
            after, bytes_after = master.stats, line_bytes(hub)
            load = max(load_before, os.getloadavg()[0])
            # Event latency: from the firmware queueing a press (its control-channel line
            # arrives) to the master taking it from the bus: the wait for the poll plus
            # the exchange. Debounce is the firmware's and not counted.
            latencies = []
            dev = devices[1]
            for _ in range(presses):
                mark = dev.mark()
                dev.press("start", hold_ms=40)
                seq = dev.wait_kind("event", timeout=10, since=mark)["seq"]
                queued = time.monotonic()
                deadline = queued + 5
                while (1, seq) not in events and time.monotonic() < deadline:
                    time.sleep(0.0005)
                if (1, seq) in events:
                    latencies.append(max(events[(1, seq)] - queued, 0.0))
                time.sleep(0.08)
            master.close()
        finally:
            for d in devices.values():
                d.close()
        cycles = after["cycles"] - before["cycles"]
        cycle = (after["cycle_total"] - before["cycle_total"]) / max(cycles, 1)
        per_cycle = (bytes_after - bytes_before) / max(cycles, 1)
        wire = wire_time(per_cycle, baud)
        modbus = modbus_wire_time(n, baud)
        return {
            "devices": n,
            "baud": baud,
            "cycles": cycles,
            "cycle_ms": round(cycle * 1000, 3),
            "bytes_per_cycle": round(per_cycle, 1),
            "bytes_per_cycle_spec": IDLE_EXCHANGE * n,
            "modbus_bytes_per_cycle": MODBUS_EXCHANGE * n,
            "wire_ms": round(wire * 1000, 3),
            "modbus_wire_ms": round(modbus * 1000, 3),
            "cycle_over_wire": round(cycle / wire, 2) if wire else None,
            "cycle_over_modbus_wire": round(cycle / modbus, 2),
            "load_avg_1min": round(load, 2),
            "cpus": os.cpu_count(),
            "timeouts": after["timeouts"] - before["timeouts"],
            "collisions": hub.stats.collisions,
            "event_to_master_ms_p50": round(statistics.median(latencies) * 1000, 2)
            if latencies else None,
            "event_to_master_ms_max": round(max(latencies) * 1000, 2) if latencies else None,
        }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", default="1,8,32", help="device counts, e.g. 1,8,32")
    p.add_argument("--baud", type=int, default=115200)
    p.add_argument("--seconds", type=float, default=3.0, help="idle polling measured per count")
    p.add_argument("--presses", type=int, default=20, help="presses timed per count")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in args.devices.split(",")):
            rows.append(measure(n, args.baud, args.seconds, args.presses, tmp))
            if not args.json:
                r = rows[-1]
                print(f"{r['devices']:>3} devices @ {r['baud']}: cycle {r['cycle_ms']:.2f} ms"
                      f" = {r['cycle_over_wire']:.2f} x wire time ({r['wire_ms']:.2f} ms"
                      f" for {r['bytes_per_cycle']:.0f} bytes; Modbus RTU"
                      f" {r['modbus_bytes_per_cycle']} bytes, {r['modbus_wire_ms']:.2f} ms);"
                      f" queued event to master p50 {r['event_to_master_ms_p50']} ms,"
                      f" max {r['event_to_master_ms_max']} ms;"
                      f" timeouts {r['timeouts']}, collisions {r['collisions']};"
                      f" load {r['load_avg_1min']} on {r['cpus']} CPUs", flush=True)
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
