"""A simulated RS-485 line (sim/hub.py's `BusHub`) in a process of its own.

The hub moves every byte of every poll (thousands of exchanges a second on a busy line) in
Python; in the simulator's process it would take the GIL from the central service, the
observer and the people, and add its work to their latency. As a child it runs beside them,
on the other core. `HubProcess({name: address}, baud)` starts `python -m
hallgate.sim.hubproc`, which makes the line (routed: a frame goes only to the drop it
addresses, see sim/hub.py) and its ports and prints one JSON line, {"master": path,
"ports": {name: path}}; the end of its stdin (or SIGTERM) closes the line.
"""

import argparse
import json
import signal
import subprocess
import sys
import threading

from hallgate.sim import SimError


class HubProcess:
    def __init__(self, addresses, baud, timeout=60.0):
        ports = [f"{name}={address}" for name, address in addresses.items()]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hallgate.sim.hubproc", "--baud", str(baud), *ports],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = _readline(self.proc, timeout)
        try:
            paths = json.loads(line)
        except ValueError:
            self.close()
            raise SimError(f"the bus hub did not start (it said {line!r})") from None
        self.master_path = paths["master"]
        self.paths = paths["ports"]

    def port(self, name):
        return self.paths[name]

    def close(self, timeout=10.0):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(5)


def _readline(proc, timeout):
    out = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not out:
        proc.kill()
        raise SimError(f"the bus hub did not start within {timeout:.0f} s")
    return out[0]


def main(argv=None):
    from hallgate.sim.hub import BusHub

    p = argparse.ArgumentParser(prog="python -m hallgate.sim.hubproc",
                                description="a simulated RS-485 line until stdin ends")
    p.add_argument("--baud", type=int, required=True)
    p.add_argument("ports", nargs="+", metavar="NAME=ADDRESS",
                   help="the device ports to make, with their devices' bus addresses")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.stdin.close())
    hub = BusHub(baud=args.baud, route=True).start()
    try:
        ports = {}
        for spec in args.ports:
            name, _, address = spec.rpartition("=")
            ports[name] = hub.add_port(name, address=int(address))
        print(json.dumps({"master": hub.master_path, "ports": ports}), flush=True)
        try:
            sys.stdin.read()  # until the simulator closes it (or dies)
        except (OSError, ValueError):
            pass
    finally:
        hub.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
