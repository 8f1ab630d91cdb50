"""The technician's commands: `hallgate devices`, `identify`, `ota`, `bus scan|watch|identify|
sniff|stats`. Without --port / --config they go through the running daemon's control
socket (gateway/control.py); with them they open the port themselves, exclusively, and
refuse to share it with the daemon. Each says which way it went."""

import argparse
import collections
import contextlib
import json
import os
import sys
import time

DEFAULT_STATUS = "/run/hallgate/status.json"


def status_path(args):
    """--status-file, else $HALLGATE_STATUS_FILE (set once in a shell, every command finds
    a daemon whose status is elsewhere), else systemd's RuntimeDirectory, else the default."""
    if getattr(args, "status_file", None):
        return args.status_file
    if os.environ.get("HALLGATE_STATUS_FILE"):
        return os.environ["HALLGATE_STATUS_FILE"]
    runtime = os.environ.get("RUNTIME_DIRECTORY")  # systemd's RuntimeDirectory=
    return os.path.join(runtime.split(":")[0], "status.json") if runtime else DEFAULT_STATUS



def add_port_args(p):
    p.add_argument("--port", required=True, help="serial port of the RS-485 adapter (or a pty)")
    p.add_argument("--baud", type=int, default=115200, help="line speed (default 115200)")
    p.add_argument(
        "--timeout",
        type=float,
        default=0.02,
        help="seconds a device has to start its reply (default 0.02)",
    )
    p.add_argument("--control", metavar="PATH", help="the daemon's control socket, to tell "
                   "whether it is the daemon that holds the port")
    p.add_argument("--status-file", help="as given to `hallgate run` (likewise)")


def add_target_args(p, addresses=True):
    """Where a technician command works: through the daemon (the default) or directly."""
    g = p.add_argument_group(
        "where", "Without --port or --config the command goes through the running gateway "
        "daemon (its control socket); with them it opens the port itself, which it refuses to "
        "do while the daemon holds that port.")
    way = g.add_mutually_exclusive_group()
    way.add_argument("--port", help="use the bus directly on this serial port (or pty)")
    way.add_argument("--config", help="use the buses of this hall config directly (their "
                     "ports, speeds and device addresses)")
    g.add_argument("--bus", help="only this bus (by name, of the daemon or of --config)")
    g.add_argument("--baud", type=int, help="line speed, directly (default 115200, or the "
                   "config's)")
    g.add_argument("--timeout", type=float, help="seconds a device has to start its reply, "
                   "directly (default 0.02, or the config's poll_timeout_ms)")
    if addresses:
        g.add_argument("--addresses", type=address_list, help="addresses to try directly, e.g. "
                       "1-32 (default: the config's devices; with --port 1-247)")
    g.add_argument("--control", metavar="PATH", help="the daemon's control socket (default: "
                   "control.sock beside its status file)")
    g.add_argument("--status-file", help="as given to `hallgate run` (to find its control "
                   "socket)")


def address_list(text):
    """'1-8,12' -> [1..8, 12]; a clear error for anything else."""
    out = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            first, last = int(lo), int(hi or lo)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"bad address range {part!r}: use e.g. 1-8,12"
            ) from None
        if not 1 <= first <= last <= 247:
            raise argparse.ArgumentTypeError(f"address range {part!r} outside 1-247")
        out.extend(range(first, last + 1))
    return out


@contextlib.contextmanager
def _master(args, port=None, baud=None, timeout=None, tx_enable=None, **kw):
    """A BusMaster on a port opened here for this process alone (ToolError if another
    process holds it, the gateway daemon above all); closed at the end."""
    from hallgate.gateway.master import BusMaster

    port = port or args.port
    baud = baud or args.baud
    serial_port = _open_port(args, port, baud)
    try:
        master = BusMaster(serial_port, baudrate=baud,
                           timeout=args.timeout if timeout is None else timeout,
                           tx_enable=tx_enable, **kw)
        try:
            yield master
        finally:
            master.close()
    finally:
        serial_port.close()


def cmd_bus_scan(args):
    with _master(args) as master:
        found = master.scan(args.addresses, add=False)
    rows = [dict(address=a, **info.asdict()) for a, info in sorted(found.items())]
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(f"{len(rows)} device(s) answered on {args.port} at {args.baud} baud")
        if rows:
            print(f"{'addr':>4}  {'role':15} {'window':>6}  {'firmware':9} {'uptime':>8}  "
                  f"{'crc err':>7} {'overflow':>8} {'resets':>6}")
        for r in rows:
            print(f"{r['address']:>4}  {r['role']:15} {r['window']:>6}  {r['firmware']:9} "
                  f"{r['uptime_s']:>7}s  {r['crc_errors']:>7} {r['overflows']:>8} {r['resets']:>6}")
    return 0


def cmd_bus_watch(args):
    """Polls the given devices and prints every event and every change of state."""
    out_json = args.json

    def emit(kind, **fields):
        fields = {"ts": round(time.time(), 3), "kind": kind, **fields}
        if out_json:
            print(json.dumps(fields), flush=True)
        else:
            rest = " ".join(f"{k}={v}" for k, v in fields.items() if k not in ("ts", "kind"))
            print(f"{time.strftime('%H:%M:%S')} {kind:7} {rest}", flush=True)

    def on_event(addr, ev):
        emit("event", address=addr, boot=ev.boot, seq=ev.seq, key=ev.key_name,
             action=ev.action_name, age_s=ev.age_ds / 10)

    def on_device(addr, online, info):
        emit("online" if online else "offline", address=addr,
             **({"role": info.role_name, "window": info.window} if info else {}))

    deadline = time.monotonic() + args.seconds if args.seconds else None
    with _master(args, on_event=on_event, on_device=on_device,
                 devices=args.addresses) as master:
        master.start()
        try:
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
    stats = master.stats
    emit("stats", **{k: stats[k] for k in sorted(stats)})
    return 0


def cmd_bus_identify(args):
    with _master(args) as master:
        ok = _identify_directly(master, args.address, args.seconds)
    who = "every device" if args.address == 0 else f"device {args.address}"
    print(f"{who}: {'showing itself' if ok else 'did not acknowledge'} for {args.seconds} s")
    return 0 if ok else 1


# ---- technician commands: through the running daemon, or directly on the port ---------
# `hallgate devices`, `hallgate identify`, `hallgate bus sniff`, `hallgate bus stats`. Without
# --port / --config they go through the daemon's control socket (gateway/control.py); with
# them they open the port themselves, exclusively, and refuse to share it with the daemon.


class ToolError(Exception):
    """A technician command that cannot be done; the message says why (exit 1)."""


def _open_port(args, port, baud, timeout=0.005):
    from hallgate.gateway.direct import PortBusy, PortError, open_port

    try:
        return open_port(port, baud, timeout)
    except PortBusy:
        raise ToolError(_busy_message(args, port)) from None
    except PortError as e:
        raise ToolError(str(e)) from None


def _same_file(a, b):
    try:
        return os.path.realpath(a) == os.path.realpath(b)
    except (OSError, TypeError, ValueError):
        return False


def _busy_message(args, port):
    """Who holds `port`: the gateway daemon (its control socket or status file says it
    runs on that port) or another program."""
    pid = None
    daemon = _daemon(args, quiet=True)
    if daemon is not None:
        client, hello = daemon
        client.close()
        if any(_same_file(port, b["port"]) for b in hello.get("buses", {}).values()):
            pid = hello["pid"]
    else:
        try:
            path = status_path(args)
            with open(path) as f:
                st = json.load(f)
            fresh = time.time() - os.path.getmtime(path) < 10 and st.get("state") == "running"
            ports = [b.get("port") for b in st.get("buses", {}).values()]
            if fresh and any(p and _same_file(port, p) for p in ports):
                pid = st.get("pid")
        except (OSError, ValueError, AttributeError):
            pass
    holder = None
    if pid is None:
        from hallgate.gateway.direct import lock_holder

        holder = lock_holder(port)
        if holder is not None and " run " in f" {holder[1]} " and "hallgate" in holder[1]:
            pid = holder[0]  # a daemon whose control socket and status file are elsewhere
    if pid is not None:
        flag = "--port" if getattr(args, "port", None) else "--config"
        return (f"{port} is in use (the gateway daemon holds it, pid {pid}: run without "
                f"{flag} to go through it)")
    if holder is not None:
        return f"{port} is in use by another program (pid {holder[0]}: {holder[1][:80]})"
    return f"{port} is in use by another program"


def _control_path(args):
    if getattr(args, "control", None):
        return args.control
    return os.path.join(os.path.dirname(status_path(args)), "control.sock")


def _daemon(args, quiet=False):
    """(ControlClient, its hello) of the running daemon, or None if none answers."""
    from hallgate.gateway.control import ControlClient, ControlError, NoDaemon

    path = _control_path(args)
    try:
        client = ControlClient(path, timeout=15.0)
    except NoDaemon:
        return None
    except PermissionError:
        if quiet:
            return None
        raise ToolError(f"cannot reach the gateway daemon on {path}: permission denied (the "
                        "socket is mode 0660: run as the daemon's user or group, or with "
                        "sudo)") from None
    except OSError as e:
        if quiet:
            return None
        raise ToolError(f"cannot reach the gateway daemon on {path}: {e}") from None
    try:
        return client, client.call("hello")
    except (ControlError, OSError, ValueError) as e:
        client.close()
        if quiet:
            return None
        raise ToolError(f"the gateway daemon on {path} did not say hello: {e}") from None


def _via(args):
    """("daemon", client, hello) when no --port / --config is given and a daemon answers;
    ("direct", targets) with them; ToolError naming both ways when neither works."""
    if getattr(args, "port", None) or getattr(args, "config", None):
        return "direct", _targets(args)
    daemon = _daemon(args)
    if daemon is None:
        raise ToolError(
            f"no gateway daemon answers on {_control_path(args)}, and neither --port nor "
            "--config was given. Either run this beside a running `hallgate run` (with "
            "--control PATH or --status-file PATH if it does not use the default), or give "
            "--port /dev/ttyUSB0 (or --config hall.toml) to use the bus directly.")
    return ("daemon", *daemon)


def _via_daemon_text(hello):
    return (f"via the gateway daemon (pid {hello['pid']}, gateway {hello['site']}/"
            f"{hello['gateway']})")


def _via_port_text(targets):
    return "directly on " + ", ".join(t["port"] for t in targets)


def _targets(args):
    """The buses to use directly: --port (one bus named "port"), or the config's buses
    (only --bus if given), with their speed, timeout, addresses and configured devices."""
    explicit = getattr(args, "addresses", None)
    if args.port:
        return [{"name": "port", "port": args.port, "baud": args.baud or 115200,
                 "timeout": args.timeout or 0.02, "addresses": explicit, "devices": {},
                 "de_pin": None}]
    from hallgate.gateway.config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as e:
        raise ToolError(str(e)) from None
    buses = [b for b in config.buses if args.bus in (None, b.name)]
    if not buses:
        names = ", ".join(b.name for b in config.buses) or "none"
        raise ToolError(f"{args.config}: no bus {args.bus!r} (buses: {names})" if args.bus
                        else f"{args.config} has no [[buses]]")
    timeout = args.timeout or config.timings.poll_timeout_ms / 1000
    return [{"name": b.name, "port": b.port, "baud": args.baud or b.baud, "timeout": timeout,
             "addresses": explicit or [d.address for d in b.devices],
             "devices": {d.address: d for d in b.devices}, "de_pin": b.de_pin}
            for b in buses]


def _tx_enable(target):
    """The RS-485 direction pin of a config's bus (None: the adapter switches itself)."""
    if target["de_pin"] is None:
        return None
    try:
        from gpiozero import OutputDevice
        from gpiozero.exc import GPIOZeroError

        pin = OutputDevice(target["de_pin"])
    except (ImportError, GPIOZeroError) as e:
        raise ToolError(f"bus {target['name']}: cannot drive its DE pin "
                        f"{target['de_pin']}: {e}") from None
    return lambda on: pin.on() if on else pin.off()


@contextlib.contextmanager
def _target_master(args, target):
    """(BusMaster, serial port, tx_enable) on a target's port, opened exclusively; the
    master never polls on its own (not started): scan and identify only."""
    from hallgate.gateway.master import BusMaster

    port = _open_port(args, target["port"], target["baud"])
    try:
        tx = _tx_enable(target)
        master = BusMaster(port, baudrate=target["baud"], timeout=target["timeout"],
                           tx_enable=tx)
        try:
            yield master, port, tx
        finally:
            master.close()
    finally:
        port.close()


def _tool(fn):
    """Runs a technician command: ToolError and the daemon's refusals become a message on
    stderr and exit 1; Ctrl-C exit 130."""
    import functools

    from hallgate.gateway.control import ControlError

    @functools.wraps(fn)
    def run(args):
        try:
            return fn(args)
        except (ToolError, ControlError) as e:
            print(f"hallgate: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
    return run


def _age(seconds):
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 172800:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def _seen(row):
    if row.get("seen_ago_s") is None:
        return "never"
    return "now" if row["seen_ago_s"] < 1 else f"{_age(row['seen_ago_s'])} ago"


def _print_devices(rows):
    def v(x):
        return "-" if x is None else x

    print(f"{'bus':8} {'addr':>4}  {'role':15} {'window':>6}  {'firmware':9} {'uptime':>8}  "
          f"{'online':7} {'last seen':>10}  {'crc dev':>7} {'overflow':>8} {'resets':>6} "
          f"{'queued':>6}  {'timeouts':>8} {'garbled':>7} {'retries':>7} {'crc gw':>6}")
    for r in rows:
        d = r.get("device") or {}
        ln = r.get("link") or {}
        line = (f"{r['bus']:8} {r['address']:>4}  {r['role']:15} {v(r['window'])!s:>6}  "
                f"{v(r['firmware']):9} {_age(r['uptime_s']):>8}  "
                f"{'yes' if r['online'] else 'NO':7} {_seen(r):>10}  "
                f"{v(d.get('crc_errors')):>7} {v(d.get('overflows')):>8} "
                f"{v(d.get('resets')):>6} {v(d.get('queued')):>6}  "
                f"{v(ln.get('timeouts')):>8} {v(ln.get('garbled')):>7} "
                f"{v(ln.get('retries')):>7} {v(ln.get('crc_errors')):>6}")
        if r.get("mismatch"):
            line += f"  <- {r['mismatch']}"
        print(line)


def _scan_rows(target, found):
    """Device rows (as the daemon's) from a direct GET_INFO scan: every device that
    answered, and every configured device that did not (offline)."""
    from hallgate.gateway.commands import utc_ts

    rows = []
    for addr in sorted(set(found) | set(target["devices"])):
        info, conf = found.get(addr), target["devices"].get(addr)
        row = {"bus": target["name"], "address": addr,
               "role": info.role_name if info else conf.role,
               "window": info.window if info else conf.window,
               "firmware": info.firmware_text if info else None,
               "uptime_s": info.uptime_s if info else None,
               "online": info is not None,
               "last_seen": utc_ts() if info else None, "seen_ago_s": 0.0 if info else None,
               "device": {k: getattr(info, k) for k in (
                   "crc_errors", "overflows", "resets", "queued", "version")}
               if info else None,
               "link": None}
        if info and conf and (info.role_name, info.window) != (conf.role, conf.window):
            row["mismatch"] = f"the config says {conf.role} at window {conf.window}"
        rows.append(row)
    return rows


@_tool
def cmd_devices(args):
    """The devices on the bus: role, window, firmware, uptime, online, counters."""
    way = _via(args)
    if way[0] == "daemon":
        _, client, hello = way
        with client:
            rows = client.call("devices", bus=args.bus, timeout=60)["devices"]
        via = {"via": "daemon", "pid": hello["pid"], "control": _control_path(args)}
        note = _via_daemon_text(hello)
    else:
        targets = way[1]
        rows = []
        for t in targets:
            with _target_master(args, t) as (master, _, _):
                found = master.scan(t["addresses"] or range(1, 248), add=False)
            rows += _scan_rows(t, found)
        via = {"via": "port", "ports": [t["port"] for t in targets]}
        note = _via_port_text(targets)
    if args.json:
        print(json.dumps({**via, "devices": rows}, indent=1))
        return 0
    print(note)
    online = sum(r["online"] for r in rows)
    print(f"{online} of {len(rows)} device(s) online")
    if rows:
        _print_devices(rows)
    return 0


def _identify_directly(master, addr, seconds):
    """IDENTIFY through a master that is not polling: one cycle runs the command and
    polls nothing (the master knows no devices), so no event is taken from anyone."""
    future = master.identify(addr, seconds)
    master.run_cycle()
    return future.result(timeout=0)


@_tool
def cmd_identify(args):
    """The device shows itself: its display flashes, its panel beeps."""
    way = _via(args)
    as_json = getattr(args, "json", False)
    if way[0] == "daemon":
        _, client, hello = way
        with client:
            r = client.call("identify", address=args.address, seconds=args.seconds,
                            bus=args.bus, timeout=30)
        if as_json:
            print(json.dumps({"ok": True, "address": r["address"], "bus": r["bus"],
                              "seconds": r["seconds"], "via": "daemon", "pid": hello["pid"]}))
        else:
            print(f"device {r['address']} on bus {r['bus']}: showing itself for "
                  f"{r['seconds']} s ({_via_daemon_text(hello)})")
        return 0
    targets = way[1]
    if len(targets) > 1:
        having = [t for t in targets if args.address in t["devices"]]
        if len(having) != 1:
            raise ToolError(f"device {args.address} is in "
                            f"{len(having) or 'none'} of the config's buses: say which "
                            f"(--bus {' or --bus '.join(t['name'] for t in targets)})")
        targets = having
    t = targets[0]
    with _target_master(args, t) as (master, _, _):
        ok = _identify_directly(master, args.address, args.seconds)
    who = "every device" if args.address == 0 else f"device {args.address}"
    if as_json:
        print(json.dumps({"ok": ok, "address": args.address, "bus": t["name"],
                          "seconds": args.seconds, "via": "port", "port": t["port"]}
                         | ({} if ok else {"error": f"{who} did not acknowledge"})))
        return 0 if ok else 1
    if not ok:
        print(f"{who} did not acknowledge ({_via_port_text([t])})", file=sys.stderr)
        return 1
    print(f"{who}: showing itself for {args.seconds} s ({_via_port_text([t])})")
    return 0


@_tool
def cmd_bus_sniff(args):
    """Every frame on the line, decoded, with timestamps; bad frames flagged."""
    from hallgate.gateway import sniff

    way = _via(args)
    summary = sniff.Summary()
    prev = [None]

    def show(rec):
        summary.count(rec)
        if args.json:
            print(json.dumps(rec), flush=True)
        else:
            print(sniff.format_record(rec, prev[0]), flush=True)
        prev[0] = rec["t"]

    if way[0] == "daemon":
        _, client, hello = way
        via = {"via": "daemon", "pid": hello["pid"]}
        note = (f"sniffing {_via_daemon_text(hello)}: the frames it sends and receives")
        print(note, file=sys.stderr if args.json else sys.stdout, flush=True)
        wait = None if args.seconds is None else args.seconds + 15
        try:
            with client:
                for rec in client.stream("sniff", seconds=args.seconds, bus=args.bus,
                                         timeout=wait):
                    show(rec)
        except KeyboardInterrupt:
            pass
        dropped = (client.result or {}).get("dropped_chunks", 0)
        via["dropped_chunks"] = dropped
        if dropped:
            print(f"hallgate: {dropped} chunk(s) of bytes were dropped by the daemon: this "
                  "reader did not keep up", file=sys.stderr)
    else:
        targets = way[1]
        if len(targets) > 1:
            raise ToolError("the config has several buses: say which (--bus NAME)")
        t = targets[0]
        via = {"via": "port", "port": t["port"]}
        note = (f"sniffing {_via_port_text([t])} at {t['baud']} baud (a passive listener: "
                "nothing is sent)")
        print(note, file=sys.stderr if args.json else sys.stdout, flush=True)
        sniffer = sniff.Sniffer(sniff.quiet_for(t["baud"]))
        offset = time.time() - time.monotonic()
        port = _open_port(args, t["port"], t["baud"], timeout=0.005)
        end = None if args.seconds is None else time.monotonic() + args.seconds
        try:
            while end is None or time.monotonic() < end:
                data = port.read(port.in_waiting or 1)
                now = time.monotonic()
                for rec in (sniffer.feed(data, now) if data else sniffer.tick(now)):
                    rec["t"] = round(rec["t"] + offset, 6)
                    show(rec)
        except KeyboardInterrupt:
            pass
        finally:
            port.close()
        for rec in sniffer.finish():
            rec["t"] = round(rec["t"] + offset, 6)
            show(rec)
    if args.json:
        print(json.dumps({"summary": summary.asdict(), **via}))
    else:
        print("-- " + sniff.format_summary(summary))
    return 0


# ---- hallgate ota: firmware updates over the bus ------------------------------------------


class _OtaView:
    """Progress per device on stderr (a rich bar each, on a terminal), then a summary."""

    def __init__(self, args, version):
        self.json = args.json
        self.version = version
        self._progress = self._tasks = None
        if not args.json and sys.stderr.isatty():
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                      DownloadColumn(), TextColumn("{task.fields[state]}"),
                                      transient=False)
            self._tasks = {}
            self._progress.start()

    def update(self, rows):
        if self._progress is None:
            return
        for r in rows:
            key = (r["bus"], r["address"])
            state = r["result"] or f"{r['phase']}" + (
                f" ({r['device_state']})" if r.get("device_state") else "")
            if key not in self._tasks:
                self._tasks[key] = self._progress.add_task(
                    f"{r['bus']}:{r['address']} -> {self.version}", total=r["bytes"], state="")
            self._progress.update(self._tasks[key], completed=r["offset"], state=state)

    def finish(self, results, via):
        if self._progress is not None:
            self._progress.stop()
        if self.json:
            print(json.dumps({**via, "version": self.version, "results": results}, indent=1))
            return
        print(f"firmware update to {self.version} ({via['text']}):")
        for r in results:
            detail = (f"{r['chunks']} chunks, {r['resent']} re-sent"
                      + (f", resumed at {r['resumed_from']}" if r.get("resumed_from") else "")
                      + f", {r['seconds']} s") if "chunks" in r else ""
            print(f"  {r['bus']}:{r['address']:<4} {(r['result'] or 'unfinished').upper():12}"
                  f" {r['reason']}" + (f" [{detail}]" if detail else ""))
        counts = collections.Counter(r["result"] or "unfinished" for r in results)
        print("  " + ", ".join(f"{n} {what}" for what, n in sorted(counts.items())))


def _ota_rows(transfers):
    return [t.progress(name) for name, t in transfers]


def _ota_directly(args, targets, bundle_path):
    """The update without the daemon: the bundle checked with --key (or the config's
    [firmware] public_key), the devices found with GET_INFO, then only the transfers on
    the bus (nothing else is polled, so no event is taken from anyone)."""
    from hallgate.gateway import ota
    from hallgate.gateway.bundle import BundleError

    key = args.key
    if key is None and args.config:
        from hallgate.gateway.config import load_config

        key = load_config(args.config).firmware.public_key
    if key is None:
        raise ToolError("directly, the bundle is checked with --key PUBLIC.pub (or the "
                        "[firmware] public_key of --config)")
    try:
        image = ota.prepare(bundle_path, key)
    except BundleError as e:
        raise ToolError(f"bundle refused, nothing sent: {e}") from None
    view = _OtaView(args, image.version)
    results = []
    for t in targets:
        with _target_master(args, t) as (master, _, _):
            wanted = args.targets or t["addresses"] or range(1, 248)
            rows = _scan_rows(t, master.scan(wanted, add=False))
            try:
                chosen, skipped = ota.choose_targets(
                    rows, image, args.targets or None, args.role, force=args.force)
            except ota.OtaError as e:
                raise ToolError(f"bus {t['name']}: {e}") from None
            master.start()
            transfers = [(t["name"], master.run_job(ota.Transfer(addr, image)))
                         for _, addr in chosen]
            while not all(x.done for _, x in transfers):
                view.update(_ota_rows(transfers))
                time.sleep(0.2)
            results += _ota_rows(transfers) + skipped
    return view, results, {"via": "port", "ports": [t["port"] for t in targets],
                           "text": _via_port_text(targets)}


@_tool
def cmd_ota(args):
    """Firmware update over the bus from a signed bundle, per device or per role."""
    bundle_path = os.path.abspath(args.bundle)
    if bool(args.targets) == bool(args.role):
        raise ToolError("give the devices' addresses, or --role ROLE (every device of it)")
    way = _via(args)
    if way[0] == "daemon":
        if args.key:
            raise ToolError("--key is for direct use: the daemon checks bundles with its "
                            "config's [firmware] public_key")
        _, client, hello = way
        via = {"via": "daemon", "pid": hello["pid"], "text": _via_daemon_text(hello)}
        view = None
        try:
            with client:
                for rec in client.stream("ota", bundle=bundle_path, bus=args.bus,
                                         addresses=args.targets or None, role=args.role,
                                         force=args.force, timeout=300):
                    if view is None:
                        view = _OtaView(args, rec["progress"][0]["version"]
                                        if rec["progress"] else "?")
                    view.update(rec["progress"])
        except KeyboardInterrupt:
            # Only this command stops: the daemon finishes what it started (a device
            # left mid-transfer would resume it anyway), and logs each result.
            print("\nhallgate: stopped following; the update goes on in the daemon (pid "
                  f"{hello['pid']}): `hallgate devices` shows each device's firmware, its "
                  "log (journalctl -u hallgate) each result", file=sys.stderr)
            return 130
        result = client.result
        view = view or _OtaView(args, result["version"])
        results = result["results"]
    else:
        view, results, via = _ota_directly(args, way[1], bundle_path)
    view.finish(results, via)
    return 0 if results and all(r["result"] == "updated" for r in results) else 1


def _ms(seconds):
    return f"{seconds * 1000:.2f} ms"


@_tool
def cmd_bus_stats(args):
    """Poll-cycle time, retries, CRC errors, timeouts: per bus and per device."""
    way = _via(args)
    if way[0] == "daemon":
        _, client, hello = way
        with client:
            buses = client.call("stats", bus=args.bus, timeout=30)["buses"]
        out = {"via": "daemon", "pid": hello["pid"], "buses": buses}
        note = _via_daemon_text(hello)
    else:
        from hallgate.gateway.direct import PlainPoller

        targets = way[1]
        buses = {}
        for t in targets:
            with _target_master(args, t) as (master, port, tx):
                addresses = t["addresses"]
                if not addresses:
                    print(f"no --addresses: looking for devices on {t['port']} (GET_INFO to "
                          "1-247) first", file=sys.stderr)
                    addresses = sorted(master.scan(range(1, 248), add=False))
                # Plain POLLs of our own, never an ack: an event stays with its device for
                # the daemon to take (gateway/direct.py).
                poller = PlainPoller(port, addresses, baudrate=t["baud"],
                                     timeout=t["timeout"], tx_enable=tx)
                report = poller.run(args.seconds)
            buses[t["name"]] = {"port": t["port"], "stats": report["bus"],
                                "devices": {str(a): d for a, d in report["devices"].items()}}
        out = {"via": "port", "ports": [t["port"] for t in targets], "buses": buses}
        note = _via_port_text(targets) + f", plain polls (no acks) for {args.seconds:g} s"
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(note)
    for name, b in buses.items():
        s = b["stats"]
        print(f"\nbus {name} on {b['port']}: {s['cycles']} poll cycles, "
              f"{_ms(s['cycle_mean'])} mean, {_ms(s['cycle_last'])} last"
              + (f", {_ms(s['cycle_max'])} longest" if "cycle_max" in s else ""))
        print(f"  exchanges {s['exchanges']}, retries {s['retries']}, timeouts "
              f"{s['timeouts']}, garbled {s['garbled']}, CRC errors {s['crc_errors']}"
              + (f", line busy {s['line_busy']}, port errors {s['port_errors']}"
                 if "line_busy" in s else f", port errors {s['port_errors']}"))
        if "events" in s:
            print(f"  events taken {s['events']}, duplicates {s['duplicates']}, "
                  f"NAKs {s['naks']}")
        else:
            print(f"  replies carrying an event {s['event_replies']} (not acked: left with "
                  f"the device), NAKs {s['naks']}")
        job_time = s.get("job_time") or 0.0
        if job_time > 0:
            share = job_time / ((s.get("poll_time") or 0.0) + job_time)
            print(f"  jobs (firmware transfers): {share:.0%} of the bus time, "
                  f"{s['job_exchanges']} exchanges, {job_time:.1f} s")
        print(f"  {'addr':>4} {'online':7} {'exchanges':>9} {'timeouts':>8} {'garbled':>7} "
              f"{'retries':>7} {'crc':>5} {'events':>6}  last seen")
        for addr, d in b["devices"].items():
            events = d["events"] if "events" in d else d["event_replies"]
            if "seen_ago_s" not in d:
                d["seen_ago_s"] = None if d["last_seen"] is None else (
                    time.time() - d["last_seen"])
            print(f"  {addr:>4} {'yes' if d['online'] else 'NO':7} {d['exchanges']:>9} "
                  f"{d['timeouts']:>8} {d['garbled']:>7} {d['retries']:>7} "
                  f"{d['crc_errors']:>5} {events:>6}  {_seen(d)}")
    return 0
