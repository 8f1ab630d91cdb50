"""The daemon's technician commands over its control socket: `hallgate devices`, `identify`,
`logs`, `bus scan`, `bus stats`, `bus sniff` and the like, through the running daemon.

Design note
-----------
Operations: `Technician(gateway).handlers()` gives the control server (gateway/control.py)
one function per command; each takes the request and its session and returns the reply
object or raises ControlError, whose message goes back to the technician. Firmware updates
have their own module (gateway/updates.py).
Goals: a command never holds up the gateway's real work: a bus master is asked between its
poll cycles and waited for at most MASTER_WAIT_S (`bounded`), a scan goes a few
addresses at a time so the polling goes on between them, and a sniff session reads from a
bounded queue the masters fill without waiting. A device that does not answer is said to
be offline (since when) or unknown to the daemon, not only silent.
"""

import functools
import os
import queue
import threading
import time

from hallgate.gateway.boards import fetch_log
from hallgate.gateway.control import ControlError, arg
from hallgate.gateway.master import DeviceRefused, NoReply
from hallgate.protocols import bus

from hallgate import __version__

MASTER_WAIT_S = 10.0  # longest wait of a control command for a bus master's thread
SNIFF_QUEUE = 20000  # tapped chunks held per sniff session; more are dropped and counted
SCAN_BATCH = 8  # addresses a scan asks between two poll cycles


def age_text(seconds):
    """12s, 5m03s, 2h10m, 3d04h."""
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 172800:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def masters_for(gateway, req):
    """{name: master} the request is about: its "bus", or all of them."""
    name = arg(req, "bus", str)
    if name is None:
        return dict(gateway.masters)
    if name not in gateway.masters:
        raise ControlError(f"no bus {name!r} (buses: {', '.join(gateway.masters) or 'none'})")
    return {name: gateway.masters[name]}


def bounded(fn, what, timeout=MASTER_WAIT_S):
    """fn() in a helper thread, waited for at most `timeout` s: a master's thread that
    does not come round never holds a control connection forever."""
    box = {}

    def call():
        try:
            box["result"] = fn()
        except BaseException as e:
            box["error"] = e

    helper = threading.Thread(target=call, name="control-wait", daemon=True)
    helper.start()
    helper.join(timeout)
    if helper.is_alive():
        raise ControlError(f"{what}: no answer within {timeout:g} s")
    if "error" in box:
        raise ControlError(f"{what}: {box['error']!r}")
    return box["result"]


class Technician:
    """The control socket's commands about devices and buses, for one Gateway."""

    def __init__(self, gateway):
        self.gw = gateway
        self._sniffs = ()  # (queue, bus names, drop counter) of the sniff sessions
        self._sniffs_lock = threading.Lock()

    def handlers(self):
        return {
            "hello": self.hello,
            "devices": self.devices,
            "identify": self.identify,
            "logs": self.logs,
            "scan": self.scan,
            "stats": self.stats,
            "sniff": self.sniff,
        }

    def hello(self, req, session):
        gw = self.gw
        return {"pid": os.getpid(), "gateway": gw.name, "site": gw.site,
                "version": __version__, "commands": sorted(gw.control.handlers)
                if gw.control is not None else [],
                "buses": {b.name: {"port": b.port, "baud": b.baud} for b in gw.config.buses}}

    def devices(self, req, session):
        """The device table; with "refresh" (default true) the online devices are asked for
        a fresh INFO first (a GET_INFO each, between poll cycles: nothing is acked)."""
        masters = masters_for(self.gw, req)
        if arg(req, "refresh", bool, True):
            for name, master in masters.items():
                online = [a for a, s in master.devices().items() if s["online"]]
                if online:
                    bounded(functools.partial(master.scan, online, add=True), f"bus {name}")
        rows = [r for r in self.gw.device_rows() if r["bus"] in masters]
        return {"devices": rows}

    def _one_master(self, req, addr, broadcast=False):
        """(bus name, master) for a command to one device: the "bus" asked, else the only
        bus, else the one bus the daemon knows the device on."""
        masters = masters_for(self.gw, req)
        if len(masters) > 1:
            having = [n for n, m in masters.items() if m.device(addr) is not None]
            if broadcast or len(having) != 1:
                where = (f"on buses {', '.join(having)}" if having else
                         "not known to this daemon on any bus")
                raise ControlError(f"device {addr} is {where}: say which bus (--bus NAME; "
                                   f"buses: {', '.join(masters)})")
            masters = {having[0]: masters[having[0]]}
        if not masters:
            raise ControlError("this gateway has no bus")
        (name, master), = masters.items()
        return name, master

    def absent(self, name, master, addr, what):
        """Why device `addr` did not answer `what`, in the daemon's words: offline since
        when, or unknown to it."""
        snap = master.device(addr)
        if snap is None:
            return (f"device {addr} is not known on bus {name} (not in the config, and no "
                    f"scan found it) and did not answer {what}: is the address right? "
                    "(`hallgate bus scan` lists the devices that answer)")
        seen = snap["stats"].get("last_seen")
        if snap["online"]:
            return (f"device {addr} on bus {name} did not answer {what} (it answered the "
                    "poll cycle lately: try again)")
        since = ("never seen since the gateway started" if seen is None else
                 f"last seen {age_text(time.monotonic() - seen)} ago")
        return (f"device {addr} on bus {name} is offline ({since}); it did not answer "
                f"{what}: check its power and its bus cable")

    def identify(self, req, session):
        addr = arg(req, "address", int, required=True)
        seconds = arg(req, "seconds", int, 10)
        if not 0 <= addr <= bus.MAX_ADDRESS:
            raise ControlError(f"address {addr} out of range 0-{bus.MAX_ADDRESS}")
        if not 1 <= seconds <= 255:
            raise ControlError(f"seconds {seconds} out of range 1-255")
        name, master = self._one_master(req, addr, broadcast=addr == bus.BROADCAST)
        future = master.identify(addr, seconds)
        ok = bounded(lambda: future.result(MASTER_WAIT_S), f"bus {name}", MASTER_WAIT_S + 1)
        if not ok:
            if addr == bus.BROADCAST:
                raise ControlError(f"bus {name}: the broadcast IDENTIFY could not be sent")
            raise ControlError(self.absent(name, master, addr, "IDENTIFY"))
        return {"bus": name, "address": addr, "seconds": seconds}

    def logs(self, req, session):
        """A device's log over the bus (GET_LOG from offset 0 until its total, each between
        poll cycles): the cause of its last reset, the boot its kept crash happened in and
        that crash's traceback."""
        addr = arg(req, "address", int, required=True)
        if not 1 <= addr <= bus.MAX_ADDRESS:
            raise ControlError(f"address {addr} out of range 1-{bus.MAX_ADDRESS}")
        name, master = self._one_master(req, addr)

        def read(offset):
            future = master.read_log(addr, offset)

            def once():
                try:
                    return future.result(MASTER_WAIT_S)
                except (NoReply, DeviceRefused) as e:
                    return e

            got = bounded(once, f"bus {name}", MASTER_WAIT_S + 1)
            if isinstance(got, Exception):
                raise got
            return got

        snap = master.device(addr)
        info = snap["info"] if snap else None
        try:
            log = fetch_log(read)
        except DeviceRefused as e:
            if e.unknown_type:
                fw = f" ({info.firmware_text})" if info else ""
                raise ControlError(
                    f"device {addr} on bus {name}: its firmware{fw} predates device logs "
                    "(it does not know GET_LOG): update it (`hallgate ota`) to read its "
                    "reset cause and crash") from None
            raise ControlError(f"{e} on bus {name}") from None
        except NoReply:
            raise ControlError(self.absent(name, master, addr, "GET_LOG")) from None
        snap = master.device(addr) or snap
        info = snap["info"] if snap else info
        return {"bus": name, "address": addr,
                "role": info.role_name if info else None,
                "firmware": info.firmware_text if info else None,
                "board_id": info.asdict().get("board_id") if info else None,
                "boot": info.resets if info else None, **log}

    def scan(self, req, session):
        """GET_INFO to "addresses" (default 1-247) on each bus (or "bus"), SCAN_BATCH at a
        time between poll cycles, so polling goes on meanwhile; nothing is added to the
        daemon's devices. Streams {"scanned", "of", "bus"} after each batch; the final
        object has "buses": {name: {"port", "found": [rows]}}, a row being the device's
        INFO with "bus", "address", "known" (the daemon polls it) and "configured"."""
        addresses = arg(req, "addresses", list)
        if addresses is None:
            addresses = list(range(1, bus.MAX_ADDRESS + 1))
        if not addresses or not all(isinstance(a, int) and not isinstance(a, bool)
                                    and 1 <= a <= bus.MAX_ADDRESS for a in addresses):
            raise ControlError(f"'addresses' must be a list of addresses 1-{bus.MAX_ADDRESS}")
        masters = masters_for(self.gw, req)
        out = {}
        for name, master in masters.items():
            found = {}
            for i in range(0, len(addresses), SCAN_BATCH):
                if not session.alive():
                    raise ControlError("scan: the client went away")
                batch = addresses[i:i + SCAN_BATCH]
                wait = MASTER_WAIT_S + len(batch) * (master.timeout + 0.05)
                found.update(bounded(functools.partial(master.scan, batch, add=False),
                                     f"bus {name}", wait))
                session.send({"bus": name, "scanned": min(i + SCAN_BATCH, len(addresses)),
                              "of": len(addresses), "found": len(found)})
            known = master.devices()
            rows = []
            for addr, info in sorted(found.items()):
                conf = self.gw.devices.get((name, addr))
                row = {"bus": name, "address": addr, **info.asdict(),
                       "known": addr in known, "configured": conf is not None}
                if conf is not None and (info.role_name, info.window) != (
                        conf.role, conf.window):
                    row["mismatch"] = f"the config says {conf.role} at window {conf.window}"
                rows.append(row)
            out[name] = {"port": self.gw.bus_port(name), "found": rows}
        return {"buses": out, "addresses": len(addresses)}

    def stats(self, req, session):
        now = time.monotonic()
        out = {}
        for name, master in masters_for(self.gw, req).items():
            stats = master.stats
            seen = stats.pop("last_seen")  # the master's monotonic clock: an age instead
            stats["seen_ago_s"] = round(now - seen, 3) if seen else None
            devices = {}
            for addr, snap in master.devices().items():
                d = dict(snap["stats"])
                seen = d.pop("last_seen")
                d["seen_ago_s"] = round(now - seen, 3) if seen else None
                d["online"] = snap["online"]
                devices[str(addr)] = d
            out[name] = {"port": self.gw.bus_port(name), "stats": stats, "devices": devices}
        return {"buses": out}

    def sniff(self, req, session):
        """Streams the frames the masters send and receive, decoded (gateway/sniff.py),
        one record per line with its "bus"; ends after "seconds" (if given), when the
        client closes, or at stop. The final object holds the summary."""
        from hallgate.gateway import sniff  # the decoder: loaded when a technician sniffs

        seconds = arg(req, "seconds", float)
        masters = masters_for(self.gw, req)
        chunks = queue.Queue(SNIFF_QUEUE)
        sub = (chunks, frozenset(masters), [0])
        sniffers = {n: sniff.Sniffer(sniff.quiet_for(m.baudrate)) for n, m in masters.items()}
        offset = time.time() - time.monotonic()  # records carry wall-clock time
        self._tap_add(sub)
        end = None if seconds is None else time.monotonic() + seconds

        def send(name, records):
            for rec in records:
                rec["t"] = round(rec["t"] + offset, 6)
                rec["bus"] = name
                session.send(rec)

        try:
            while session.alive() and (end is None or time.monotonic() < end):
                try:
                    name, _, data, t = chunks.get(timeout=0.05)
                except queue.Empty:
                    now = time.monotonic()
                    for n, s in sniffers.items():
                        send(n, s.tick(now))
                    continue
                send(name, sniffers[name].feed(data, t))
        finally:
            self._tap_remove(sub)
        for n, s in sniffers.items():
            send(n, s.finish())
        return {"buses": {n: s.summary.asdict() for n, s in sniffers.items()},
                "dropped_chunks": sub[2][0]}

    def _tap_add(self, sub):
        with self._sniffs_lock:
            self._sniffs = (*self._sniffs, sub)
            self._retap()

    def _tap_remove(self, sub):
        with self._sniffs_lock:
            self._sniffs = tuple(s for s in self._sniffs if s is not sub)
            self._retap()

    def _retap(self):
        for name, master in self.gw.masters.items():
            wanted = any(name in buses for _, buses, _ in self._sniffs)
            master.tap = functools.partial(self._tap, name) if wanted else None

    def _tap(self, name, direction, data, t):
        """In the master's thread: hand the bytes to each sniff session, never wait."""
        for chunks, buses, dropped in self._sniffs:
            if name in buses:
                try:
                    chunks.put_nowait((name, direction, data, t))
                except queue.Full:
                    dropped[0] += 1
