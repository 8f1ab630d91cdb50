"""The device firmware's heap high-water mark on MicroPython, in the 48 KB heap the soak runs
it in (tests/test_firmware_soak.py) and the 64 KB a simulated device gets, as a share.

bench/mp/heap_soak.py runs the real core and call-panel role (the .mpy image the devices
run, sim/device.py compile_firmware) like tests/mp/soak.py: N key events pressed, polled,
acked, with a SET and a GET_INFO every 100. It samples gc.mem_alloc() after every main-loop
tick and every request. Two runs:
  board      the collector runs only when the heap is full (as on a Pico): the peak
             sampled is how full the heap gets before a collection;
  tight      gc.threshold(1 KB): collections every KB allocated, so the peak sampled is the
             live data plus at most 1 KB of garbage: the firmware's real high-water.
Also: the heap in use once everything is loaded (this includes the driver script's own
code, compiled in the heap as the soak's is), and the most still in use after a collection
(every 100 events). Two heaps: 48 KB (the soak's) and 64 KB (what sim/device.py gives a
device). Running out of memory is reported as the result for that heap, not as a failure.

Note: the unix port's objects are 64-bit, up to twice a Pico's, so these figures are an
upper bound for a board.

    python bench/fw_heap.py [--events 10000] [--heaps 48k,64k] [--json]
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from hallgate.sim.device import compile_firmware, micropython_command, micropython_path

SCRIPT = Path(__file__).resolve().parent / "mp" / "heap_soak.py"
TIGHT = 1024


def run(events, heap, threshold):
    """The soak script run as tests/mp/soak.py is (from source, beside the .mpy image).
    A MemoryError is a result: {"memory_error": {"event": N or None, "error": ...}}."""
    env = dict(os.environ, MICROPYPATH=micropython_path(compile_firmware()) + ":.frozen")
    done = subprocess.run([micropython_command(), "-X", f"heapsize={heap}", str(SCRIPT),
                           str(events), str(threshold)],
                          capture_output=True, text=True, timeout=600, env=env)
    said = (done.stderr + done.stdout).strip()  # MicroPython's traceback is on either
    if done.returncode and "MemoryError" in said:  # before the first event
        return {"memory_error": {"event": None, "error": said.splitlines()[-1]}}
    if done.returncode:
        raise SystemExit(f"heap soak failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(events, heap):
    board = run(events, heap, 0)
    tight = run(events, heap, TIGHT)
    r = {"heap": heap, "events": events}
    for name, x in (("board", board), ("tight", tight)):
        if x["memory_error"]:
            err = x["memory_error"]
            where = "while loading" if err["event"] is None else f"at event {err['event']}"
            r["memory_error"] = f"{name} run: MemoryError {where} ({err['error']})"
            return r
    size = board["heap"]
    r.update({
        "heap_bytes": size,
        "loaded_bytes": board["loaded"],
        "peak_board_bytes": board["peak_sampled"],
        "peak_tight_bytes": tight["peak_sampled"],
        "live_peak_bytes": max(board["live_peak"], tight["live_peak"]),
        "peak_tight_share": round(tight["peak_sampled"] / size, 3),
        "headroom_bytes": size - tight["peak_sampled"],
        "end_live_bytes": board["end_live"],
        "memory_error": None,
    })
    return r


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=10_000)
    p.add_argument("--heaps", default="48k,64k",
                   help="MicroPython heap sizes (-X heapsize): the soak's, the devices'")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    rows = [measure(args.events, h) for h in args.heaps.split(",")]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    kb = 1024
    print(f"firmware core + call panel on MicroPython, {args.events} events:")
    for r in rows:
        if r["memory_error"]:
            print(f"  heap {r['heap']}: {r['memory_error']}")
            continue
        print(f"  heap {r['heap']} ({r['heap_bytes'] / kb:.1f} KB): loaded "
              f"{r['loaded_bytes'] / kb:.1f} KB; high-water (collect every 1 KB) "
              f"{r['peak_tight_bytes'] / kb:.1f} KB = {r['peak_tight_share']:.0%}, "
              f"{r['headroom_bytes'] / kb:.1f} KB left; live after a collection at most "
              f"{r['live_peak_bytes'] / kb:.1f} KB; fullest before a collection "
              f"{r['peak_board_bytes'] / kb:.1f} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
