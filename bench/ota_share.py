"""A firmware update over the bus: its share of the line, what it costs the other devices'
presses, and its time as a ratio to the wire time of the image, measured in one run.

N call panels (the real firmware on MicroPython, installed in slots from a signed bundle)
share one simulated RS-485 line paced at the baud rate (sim/hub.py), polled by the real bus
master. Device 1 is updated to a new version (gateway/ota.py) while presses are timed on
device 2: first with no update running (the baseline), then during the update.

    python bench/ota_share.py                    # 4 devices at 115200 baud, share 50%
    python bench/ota_share.py --devices 8 --share 0.3 --json
"""

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from hallgate.gateway import bundle, ota
from hallgate.gateway.master import BusMaster
from hallgate.protocols import bus
from hallgate.protocols import otawire as ow
from hallgate.sim.device import FirmwareDevice, install_slots
from hallgate.sim.hub import BusHub

ROOT = Path(__file__).resolve().parent.parent


def bundles(tmp):
    """The current firmware and a copy reporting 0.9.0, both signed for the unix board."""
    bundle.keygen(tmp / "key.pem", tmp / "key.pub")
    new_src = tmp / "fw-new"
    shutil.copytree(ROOT / "firmware", new_src)
    appcore = new_src / "appcore.py"
    appcore.write_text(appcore.read_text().replace("FIRMWARE = (0, 1, 0)", "FIRMWARE = (0, 9, 0)"))
    for name, src in (("old", ROOT / "firmware"), ("new", new_src)):
        bundle.build("call-panel", tmp / f"{name}.zip", tmp / "key.pem", board="unix",
                     firmware_dir=src)
    return tmp / "old.zip", tmp / "new.zip", tmp / "key.pub"


def time_presses(dev, events, lock, count, stop=None):
    """Latency from the firmware queueing a press to the master taking it, per press."""
    out = []
    for _ in range(count):
        if stop is not None and stop():
            break
        mark = dev.mark()
        dev.press("start", hold_ms=40)
        seq = dev.wait_kind("event", timeout=10, since=mark)["seq"]
        queued = time.monotonic()
        deadline = queued + 5
        while time.monotonic() < deadline:
            with lock:
                taken = events.get((dev.address, seq))
            if taken is not None:
                out.append(max(taken - queued, 0.0))
                break
            time.sleep(0.0005)
        time.sleep(0.05)
    return out


def measure(n, baud, share, presses, tmp):
    old, new, pub = bundles(tmp)
    _, files = bundle.load(old, pub)
    image = ota.prepare(new, pub)
    events, lock = {}, threading.Lock()

    def on_event(addr, ev):
        with lock:
            events.setdefault((addr, ev.seq), time.monotonic())

    with BusHub(baud=baud) as hub:
        devices = {}
        try:
            for addr in range(1, n + 1):
                flash = install_slots(tmp / f"flash-{addr}", files)
                devices[addr] = FirmwareDevice(tmp, addr, "call-panel", addr,
                                               hub.add_port(f"panel-{addr}"), flash_dir=flash,
                                               lockout_ms=0, ready_timeout=60)
            master = BusMaster(hub.master_path, baudrate=baud, devices=devices,
                               on_event=on_event, job_share=share)
            master.start()
            deadline = time.monotonic() + 30
            while not all((master.device(a) or {}).get("online") for a in devices):
                if time.monotonic() > deadline:
                    raise SystemExit("devices did not come online")
                time.sleep(0.05)
            time.sleep(0.5)
            s0 = master.stats
            base = time_presses(devices[2], events, lock, presses)
            s1 = master.stats
            transfer = master.run_job(ota.Transfer(1, image))
            during = time_presses(devices[2], events, lock, presses,
                                  stop=lambda: transfer.phase not in ("begin", "send"))
            while transfer.phase in ("begin", "send"):
                time.sleep(0.01)
            s2 = master.stats
            sending = transfer.summary()["seconds"]
            deadline = time.monotonic() + 120
            while not transfer.done and time.monotonic() < deadline:
                time.sleep(0.05)
            master.close()
        finally:
            for d in devices.values():
                d.close()
    chunks = -(-len(image.data) // ow.CHUNK)
    # Wire time of the image alone: every chunk's request and OTA_STATUS reply, once.
    wire_bytes = len(image.data) + chunks * (bus.OVERHEAD + 4 + bus.OVERHEAD + 8)
    wire = wire_bytes * 10 / baud
    job = s2["job_time"] - s1["job_time"]
    poll = s2["poll_time"] - s1["poll_time"]
    base_cycle = (s1["cycle_total"] - s0["cycle_total"]) / max(s1["cycles"] - s0["cycles"], 1)
    ota_cycle = (s2["cycle_total"] - s1["cycle_total"]) / max(s2["cycles"] - s1["cycles"], 1)

    def ms(values, f):
        return round(f(values) * 1000, 2) if values else None

    return {
        "devices": n, "baud": baud, "share_allowed": share, "result": transfer.result,
        "image_bytes": len(image.data), "chunks_sent": transfer.chunks,
        "resent": transfer.resent,
        "job_share_measured": round(job / (job + poll), 3) if job + poll else None,
        "send_s": sending, "send_over_wire": round(sending / wire, 2),
        "cycle_during_over_before": round(ota_cycle / base_cycle, 2) if base_cycle else None,
        "press_ms_p50_before": ms(base, statistics.median),
        "press_ms_p50_during": ms(during, statistics.median),
        "press_ms_max_before": ms(base, max), "press_ms_max_during": ms(during, max),
        "presses_during": len(during),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=4)
    p.add_argument("--baud", type=int, default=115200)
    p.add_argument("--share", type=float, default=0.5, help="BusMaster job_share")
    p.add_argument("--presses", type=int, default=20)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        r = measure(args.devices, args.baud, args.share, args.presses, Path(tmp))
    if args.json:
        print(json.dumps(r, indent=1))
    else:
        print(f"{r['devices']} devices @ {r['baud']}: update {r['result']}, "
              f"{r['image_bytes']} bytes in {r['chunks_sent']} chunks ({r['resent']} re-sent); "
              f"bus share {r['job_share_measured']:.0%} (allowed {r['share_allowed']:.0%}); "
              f"sending took {r['send_over_wire']:.1f} x the image's wire time; "
              f"poll cycle {r['cycle_during_over_before']:.2f} x its length before; "
              f"press to master p50 {r['press_ms_p50_before']} -> "
              f"{r['press_ms_p50_during']} ms, max {r['press_ms_max_before']} -> "
              f"{r['press_ms_max_during']} ms ({r['presses_during']} presses during)")
    return 0 if r["result"] == "updated" else 1


if __name__ == "__main__":
    sys.exit(main())
