"""Fault injectors for the tests: a network cut, bus noise, a full disk, and the tally.

Design note
-----------
Operations:
- `TcpProxy(port)`: a loopback TCP proxy in front of the broker. The gateway connects to
  `proxy.url`; `cut()` drops every connection (RST) and refuses new ones until `restore()`,
  as a pulled cable with the switch still answering; `cut(hold=True)` is a partition
  instead: connections stay open and nothing flows either way (the bytes wait in the
  kernel, as TCP retransmits on a real network) until `restore()`, so only the client's
  keepalive can tell.
- `LineFaults(seed)`: a `BusHub(mangle=...)` hook. `noise(rate)` flips a bit in, or drops a
  byte from, a `rate` share of the chunks any talker writes, and `bursts(hub, every_s)`
  puts random garbage on the line with `hub.inject()` from a thread; `unplug(name)` drops
  everything the named device sends (its TX pair cut: the master hears nothing from it)
  until `replug(name)`. `counts` says how many of each fault were made.
- `SmallDisk(folder)`: a small tmpfs mounted on `folder` in a private mount namespace of
  ONE child process (`prefix` goes before its command): `fill()` takes every free block,
  `free()` gives them back. Needs root or unprivileged user namespaces (`prefix` is None
  otherwise); checked on these machines (root): a 512 KB tmpfs mounts in well under 1 s.
  The tmpfs dies with the process: a test that kills the process loses the outbox on it.
- `Tally(name)`: what a fault run made and what arrived. `take(device)` adds the presses a
  FirmwareDevice reported (`{"event": ...}`, its own ground truth, read before each restart
  of the device: its messages start again), `recovered(cond)` times how long after a fault
  ended cond() took to hold, and `report(witness_sources, deliveries)` prints and returns
  made / delivered / lost / duplicates / split (a press under two ids) / recovery.
Goals: every wait and loop is bounded, every thread stops on `close()`, only loopback
addresses, and randomness comes from a seed, so a failing run can be replayed.
Plan: one thread per proxy (select over all its sockets), one per burst source; the hub
calls the mangle hook in its own thread, so the hook takes a lock and never blocks.

Example (opens sockets, so not a doctest)::

    with TcpProxy(broker.port) as proxy:
        config = write_hall_config(..., broker_url=proxy.url)
        proxy.cut(); time.sleep(2); proxy.restore()
"""

import contextlib
import os
import random
import select
import shutil
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

# ---- network ---------------------------------------------------------------------------------


class TcpProxy:
    """A loopback TCP proxy to `target_port`; at most `max_conns` connections at a time."""

    CONNECT_TIMEOUT = 2.0
    SEND_TIMEOUT = 5.0  # a peer that takes nothing for this long is dropped

    def __init__(self, target_port, target_host="127.0.0.1", max_conns=32):
        self.target = (target_host, target_port)
        self.max_conns = max_conns
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = self._listener.getsockname()[1]
        self._pairs = {}  # socket -> its peer, both directions
        self._lock = threading.Lock()
        self._state = "open"  # "open", "cut" (refuse), "hold" (nothing flows)
        self._stop = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = None
        self.connections = 0  # accepted and joined to the target
        self.refused = 0  # accepted and closed: cut, target down, or too many
        self.cuts = 0

    @property
    def url(self):
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self):
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tcp-proxy", daemon=True)
            self._thread.start()
        return self

    def cut(self, hold=False):
        """Drop every connection and refuse new ones; hold=True: keep them, pass nothing."""
        with self._lock:
            self._state = "hold" if hold else "cut"
            self.cuts += 1
            if not hold:
                for s in list(self._pairs):
                    self._close(s, reset=True)
        self._wake()

    def restore(self):
        with self._lock:
            self._state = "open"
        self._wake()

    def close(self, timeout=3.0):
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            for s in list(self._pairs):
                self._close(s)
        for s in (self._listener, self._wake_r, self._wake_w):
            s.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def _wake(self):
        with contextlib.suppress(OSError):
            self._wake_w.send(b"!")

    def _close(self, s, reset=False):
        """Close `s` and its peer (under the lock); reset: RST instead of FIN."""
        for sock in (s, self._pairs.pop(s, None)):
            if sock is None:
                continue
            self._pairs.pop(sock, None)
            if reset:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                    struct.pack("ii", 1, 0))
            sock.close()

    def _accept(self):
        client, _ = self._listener.accept()
        with self._lock:
            state, full = self._state, len(self._pairs) >= 2 * self.max_conns
        if state == "cut" or full:
            self.refused += 1
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()
            return
        try:
            upstream = socket.create_connection(self.target, timeout=self.CONNECT_TIMEOUT)
        except OSError:
            self.refused += 1
            client.close()
            return
        for s in (client, upstream):
            s.settimeout(self.SEND_TIMEOUT)
        with self._lock:
            self._pairs[client] = upstream
            self._pairs[upstream] = client
            self.connections += 1

    def _run(self):
        while not self._stop.is_set():
            with self._lock:
                flowing = [] if self._state == "hold" else list(self._pairs)
            try:
                ready = select.select([self._listener, self._wake_r, *flowing], [], [], 0.5)[0]
            except (OSError, ValueError):  # a socket closed under us by cut(): look again
                continue
            for s in ready:
                if s is self._wake_r:
                    with contextlib.suppress(OSError):
                        s.recv(4096)
                elif s is self._listener:
                    with contextlib.suppress(OSError):
                        self._accept()
                else:
                    self._forward(s)

    def _forward(self, s):
        with self._lock:
            peer = self._pairs.get(s)
            if peer is None or self._state == "hold":
                return
        try:
            data = s.recv(65536)
            if data:
                peer.sendall(data)
        except OSError:
            data = b""
        if not data:
            with self._lock:
                if s in self._pairs:
                    self._close(s)


# ---- the bus line ----------------------------------------------------------------------------


class LineFaults:
    """A BusHub mangle hook: noise on the chunks talkers write, and unplugged devices."""

    def __init__(self, seed=0):
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.rate = 0.0
        self.unplugged = set()
        self.counts = {"flips": 0, "drops": 0, "bursts": 0, "burst_bytes": 0, "muted": 0}
        self._burst_stop = threading.Event()
        self._burst_thread = None

    def noise(self, rate):
        """From now on, a `rate` share (0-1) of chunks get a flipped bit or a dropped byte."""
        self.rate = rate

    def unplug(self, name):
        with self._lock:
            self.unplugged.add(name)

    def replug(self, name):
        with self._lock:
            self.unplugged.discard(name)

    def __call__(self, port, data):
        with self._lock:
            if port in self.unplugged:
                self.counts["muted"] += len(data)
                data.clear()
                return
            if not data or self._rng.random() >= self.rate:
                return
            i = self._rng.randrange(len(data))
            if self._rng.random() < 0.5:
                data[i] ^= 1 << self._rng.randrange(8)
                self.counts["flips"] += 1
            else:
                del data[i]
                self.counts["drops"] += 1

    def bursts(self, hub, every_s=0.2, size=(1, 24)):
        """Random garbage of `size` bytes on `hub`'s line every `every_s` s, from a thread,
        until stop_bursts() or close()."""
        self.stop_bursts()
        self._burst_stop.clear()
        rng = random.Random(self._rng.random())

        def run():
            while not self._burst_stop.wait(every_s):
                junk = bytes(rng.randrange(256) for _ in range(rng.randint(*size)))
                hub.inject(junk)
                with self._lock:
                    self.counts["bursts"] += 1
                    self.counts["burst_bytes"] += len(junk)

        self._burst_thread = threading.Thread(target=run, name="bus-bursts", daemon=True)
        self._burst_thread.start()

    def stop_bursts(self, timeout=2.0):
        self._burst_stop.set()
        if self._burst_thread is not None:
            self._burst_thread.join(timeout)
            self._burst_thread = None

    def quiet(self):
        """No more faults of any kind (noise, bursts, unplugged devices)."""
        self.noise(0.0)
        self.stop_bursts()
        with self._lock:
            self.unplugged.clear()

    close = quiet


# ---- the disk --------------------------------------------------------------------------------


class SmallDisk:
    """A `size` tmpfs on `folder`, private to the one process started with `prefix`."""

    def __init__(self, folder, size="512k"):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.size = size
        self.prefix = self._probe()
        self._seen = None

    def _probe(self):
        unshare = shutil.which("unshare")
        if unshare is None:
            return None
        mount = f'mount -t tmpfs -o size={self.size} hallgate-test "$0" && exec "$@"'
        for userns in ([], ["--user", "--map-root-user"]):
            prefix = [unshare, *userns, "--mount", "--propagation", "private", "sh", "-c",
                      mount, str(self.folder)]
            try:
                probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                continue
            if probe.returncode == 0:
                return prefix
        return None

    def attach(self, pid):
        """The folder as process `pid` sees it (through its mount namespace)."""
        self._seen = Path(f"/proc/{pid}/root") / str(self.folder).lstrip("/")
        return self._seen

    def fill(self, limit=64 * 1024 * 1024):
        """Takes every free block (at most `limit` bytes); returns the bytes written."""
        written = 0
        fd = os.open(self._seen / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            for block in (65536, 4096, 512):  # ENOSPC ends each size
                with contextlib.suppress(OSError):
                    while written < limit:
                        written += os.write(fd, bytes(block))
        finally:
            os.close(fd)
        return written

    def free(self):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._seen / "filler")


# ---- counting --------------------------------------------------------------------------------


class Tally:
    """Presses made at the sources against what an independent subscriber received."""

    def __init__(self, name):
        self.name = name
        self.made = set()  # (address, boot, seq)
        self.recoveries = []  # seconds from a fault's end to everything made before it arriving
        self._lock = threading.Lock()

    def take(self, device):
        """Adds the presses the firmware reported in its current run; returns them."""
        with device._cond:
            boot = device.ready["boot"] if device.ready else None
            got = {(device.address, boot, m["event"]["seq"])
                   for m in device.messages if "event" in m}
        with self._lock:
            self.made |= got
        return got

    def recovered(self, cond, timeout=90.0, what="recovery"):
        """Waits (at most `timeout` s) until cond() holds; records and returns the time."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: no {what} within {timeout} s")
            time.sleep(0.02)
        took = time.monotonic() - t0
        self.recoveries.append(took)
        return took

    def report(self, sources, deliveries):
        """sources: {(address, boot, seq): {ids}} at the witness; deliveries: how many event
        messages it received. Prints one line and returns the counts."""
        got = set(sources) & self.made
        counts = {
            "made": len(self.made),
            "delivered": len(got),
            "lost": len(self.made - got),
            "invented": len(set(sources) - self.made),
            "duplicates": deliveries - len(sources),  # redeliveries (same id)
            "split": sum(len(ids) > 1 for ids in sources.values()),  # a press, two ids
            "cycles": len(self.recoveries),
            "recovery_max_s": round(max(self.recoveries, default=0.0), 2),
            "recovery_mean_s": round(sum(self.recoveries) / len(self.recoveries), 2)
            if self.recoveries else 0.0,
        }
        print(f"\n[fault {self.name}] " + " ".join(f"{k}={v}" for k, v in counts.items()))
        return counts
