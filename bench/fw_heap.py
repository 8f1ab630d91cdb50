"""The device firmware's heap high-water mark on MicroPython, in the 48 KB heap the soak runs
it in (tests/test_firmware_soak.py), as a share of that heap.

bench/mp/heap_soak.py runs the real core and call-panel role (the .mpy image the devices
run, sim/device.py compile_firmware) like tests/mp/soak.py: N key events pressed, polled,
acked, with a SET and a GET_INFO every 100. It samples gc.mem_alloc() after every main-loop
tick and every request. Two runs:
  board      the collector runs only when the heap is full (as on a Pico): the peak
             sampled is how full the heap gets before a collection;
  tight      gc.threshold(1 KB): collections every KB allocated, so the peak sampled is the
             live data plus at most 1 KB of garbage: the firmware's real high-water.
Also: the heap in use once everything is loaded, and the most still in use after a
collection (every 100 events).

Note: the unix port's objects are 64-bit, up to twice a Pico's, so these figures are an
upper bound for a board.

    python bench/fw_heap.py [--events 10000] [--heap 48k] [--json]
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
    """The soak script run as tests/mp/soak.py is (from source, beside the .mpy image)."""
    env = dict(os.environ, MICROPYPATH=micropython_path(compile_firmware()) + ":.frozen")
    done = subprocess.run([micropython_command(), "-X", f"heapsize={heap}", str(SCRIPT),
                           str(events), str(threshold)],
                          capture_output=True, text=True, timeout=600, env=env)
    if done.returncode:
        raise SystemExit(f"heap soak failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=10_000)
    p.add_argument("--heap", default="48k", help="MicroPython heap size (-X heapsize)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    board = run(args.events, args.heap, 0)
    tight = run(args.events, args.heap, TIGHT)
    heap = board["heap"]
    r = {
        "events": args.events,
        "heap_bytes": heap,
        "loaded_bytes": board["loaded"],
        "peak_board_bytes": board["peak_sampled"],
        "peak_tight_bytes": tight["peak_sampled"],
        "live_peak_bytes": max(board["live_peak"], tight["live_peak"]),
        "peak_tight_share": round(tight["peak_sampled"] / heap, 3),
        "headroom_bytes": heap - tight["peak_sampled"],
        "end_live_bytes": board["end_live"],
    }
    if args.json:
        print(json.dumps(r, indent=1))
    else:
        kb = 1024
        print(f"firmware core + call panel on MicroPython, {args.events} events, heap "
              f"{heap / kb:.1f} KB:")
        print(f"  loaded, before any event      {r['loaded_bytes'] / kb:6.1f} KB")
        print(f"  high-water (collect every 1 KB) {r['peak_tight_bytes'] / kb:4.1f} KB = "
              f"{r['peak_tight_share']:.0%} of the heap, {r['headroom_bytes'] / kb:.1f} KB left")
        print(f"  live after a collection, most {r['live_peak_bytes'] / kb:6.1f} KB; at the end "
              f"{r['end_live_bytes'] / kb:.1f} KB")
        print(f"  fullest before a collection   {r['peak_board_bytes'] / kb:6.1f} KB "
              "(collector left to run when the heap is full)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
