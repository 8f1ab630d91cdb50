"""The technician's commands: `hallgate devices`, `identify`, `logs`, `bus scan|watch|
identify|sniff|stats` (`ota`: hallgate/ota_tool.py). Without --port / --config they go through the
running daemon's control socket (gateway/control.py); with them they open the port
themselves, exclusively, and refuse to share it with the daemon. Each says which way it
went."""

import argparse
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


def adapter_lines(a):
    """The adapter under a bus port (gateway/adapter.py's asdict()), for `bus stats` and
    `status`: one line, and a WARNING line when its latency timer is above 1 ms."""
    if not a:
        return []
    from hallgate.gateway.adapter import WANT_MS, describe

    lines = [f"adapter: {describe(a)}"]
    ms = a.get("latency_timer_ms")
    if a.get("warning"):
        lines.append(f"WARNING: {a['warning']}")
    elif ms is not None and ms > WANT_MS:
        lines.append(f"WARNING: the adapter holds every reply up to {ms} ms (want 1 ms)")
    return lines


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
    from hallgate.gateway.technician import age_text

    return "-" if seconds is None else age_text(seconds)


def _seen(row):
    if row.get("seen_ago_s") is None:
        return "never"
    return "now" if row["seen_ago_s"] < 1 else f"{_age(row['seen_ago_s'])} ago"


def _short_id(board_id):
    """The last 8 hex digits of a board id (RP2040 ids of one batch share their start)."""
    return board_id[-8:] if board_id else "-"


def _cell(x):
    return "-" if x is None else str(x)


def _table(columns, rows, groups=None, max_width=None, shrink=0):
    """Text lines of a table: `columns` [(header, "<" or ">")], `rows` lists of values
    (None shows as -), each column as wide as its widest cell, two spaces apart.
    `groups` [(title, first column, last column)] adds a line above the headers naming
    runs of columns. Lines longer than `max_width` have column `shrink` cut to fit (its
    cut cells end in "~"), down to its header's width."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, (h, _) in enumerate(columns)]
    excess = sum(widths) + 2 * (len(widths) - 1) - (max_width or sum(widths) + 99)
    if excess > 0:
        widths[shrink] = max(len(columns[shrink][0]), widths[shrink] - excess)
        for r in cells:
            if len(r[shrink]) > widths[shrink]:
                r[shrink] = r[shrink][:widths[shrink] - 1] + "~"

    def line(values):
        out = "  ".join(f"{v:{a}{w}}" for v, (_, a), w in zip(values, columns, widths,
                                                               strict=True))
        return out.rstrip()

    lines = []
    if groups:
        starts = [sum(widths[:i]) + 2 * i for i in range(len(widths))]
        top = ""
        for title, first, last in groups:
            span = starts[last] + widths[last] - starts[first]
            top = f"{top:{starts[first]}}" + f"{' ' + title + ' ':-^{span}}"
        lines.append(top.rstrip())
    lines.append(line([h for h, _ in columns]))
    lines += [line(r) for r in cells]
    return lines


def _online(row):
    if row["online"]:
        return "yes"
    if row.get("seen_ago_s") is None:
        return "NO, never"
    return f"NO, {_age(row['seen_ago_s'])} ago"


def _count(n):
    """A counter in at most 6 characters: 123456, 1234k, 12345M."""
    if n is None or n < 1_000_000:
        return n
    return f"{n // 1000}k" if n < 10_000_000 else f"{n // 1_000_000}M"


def _errors(row):
    """Every error counted for a device: by it (CRC errors, queue overflows) and by the
    gateway (timeouts, garbled replies, CRC errors); None when neither is known."""
    d, ln = row.get("device"), row.get("link")
    if d is None and ln is None:
        return None
    return (sum((d or {}).get(k) or 0 for k in ("crc_errors", "overflows"))
            + sum((ln or {}).get(k) or 0 for k in ("timeouts", "garbled", "crc_errors")))


DEVICES_LEGEND = (
    "errors: CRC errors and queue overflows the device counted, plus the gateway's timeouts,",
    "garbled replies and CRC errors with it (--wide: each); boots: its boot count; board id:",
    "the last 8 hex digits (--wide: all).",
)


WIDTH = 100  # columns of the default device table


def _print_devices(rows, wide=False):
    """The device table: at most WIDTH columns by default (a long bus name is cut to
    fit); `wide`, every detail and counter apart, as wide as it takes."""
    if wide:
        cols = [("bus", "<"), ("addr", ">"), ("role", "<"), ("window", ">"),
                ("online", "<"), ("last seen", ">"), ("firmware", "<"), ("board", "<"),
                ("board id", "<"), ("uptime", ">"),
                ("boots", ">"), ("queued", ">"), ("state", ">"), ("crc", ">"),
                ("overflows", ">"),
                ("exchanges", ">"), ("timeouts", ">"), ("garbled", ">"), ("retries", ">"),
                ("crc", ">"), ("events", ">"), ("dups", ">"), ("NAKs", ">")]
        body = []
        for r in rows:
            d, ln = r.get("device") or {}, r.get("link") or {}
            body.append([r["bus"], r["address"], r["role"], r["window"],
                         "yes" if r["online"] else "NO", _seen(r), r["firmware"],
                         r.get("board"), r.get("board_id"), _age(r["uptime_s"])]
                        + [d.get(k) for k in ("resets", "queued", "version", "crc_errors",
                                              "overflows")]
                        + [ln.get(k) for k in ("exchanges", "timeouts", "garbled", "retries",
                                               "crc_errors", "events", "duplicates",
                                               "naks")])
        lines = _table(cols, body, groups=[("counted by the device", 10, 14),
                                           ("counted by the gateway", 15, 22)])
        lines.append("state: the desired-state version the device shows; dups: events "
                     "sent again after a lost ack")
    else:
        cols = [("bus", "<"), ("addr", ">"), ("role", "<"), ("window", ">"),
                ("online", "<"), ("firmware", "<"), ("uptime", ">"), ("boots", ">"),
                ("errors", ">"), ("board id", "<")]
        body = [[r["bus"], r["address"], r["role"], r["window"], _online(r),
                 r["firmware"], _age(r["uptime_s"]), (r.get("device") or {}).get("resets"),
                 _count(_errors(r)), _short_id(r.get("board_id"))] for r in rows]
        lines = _table(cols, body, max_width=WIDTH, shrink=0) + list(DEVICES_LEGEND)
    for r in rows:
        if r.get("mismatch"):
            lines.append(f"! {r['bus']}:{r['address']} answers as {r['role']} at window "
                         f"{r['window']}; {r['mismatch']}")
    for line in lines:
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
               "board": getattr(info, "board_name", None) if info else None,
               "board_id": info.asdict().get("board_id") if info else None,
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


def _scan_text_rows(rows):
    """The table of `bus scan`: who answered, what it says of itself."""
    cols = [("bus", "<"), ("addr", ">"), ("role", "<"), ("window", ">"), ("firmware", "<"),
            ("board", "<"), ("board id", "<"), ("uptime", ">"), ("boots", ">"),
            ("crc errors", ">"), ("overflows", ">"), ("note", "<")]
    body = []
    for r in rows:
        note = r.get("mismatch") or ("" if r.get("configured", True) else
                                     "not in the daemon's config")
        body.append([r["bus"], r["address"], r["role"], r["window"], r["firmware"],
                     r.get("board") or "-", _short_id(r.get("board_id")),
                     _age(r["uptime_s"]), r["resets"], r["crc_errors"], r["overflows"], note])
    return _table(cols, body)


@_tool
def cmd_bus_scan(args):
    """GET_INFO to each address: who answers, and what it says of itself. Through the
    daemon (between its poll cycles, a few addresses at a time) or directly."""
    way = _via(args)
    wanted = args.addresses or list(range(1, 248))
    if way[0] == "daemon":
        _, client, hello = way
        progress = sys.stderr.isatty() and not args.json
        with client:
            for rec in client.stream("scan", addresses=wanted, bus=args.bus, timeout=60):
                if progress:
                    print(f"\rscanning bus {rec['bus']}: {rec['scanned']} of {rec['of']} "
                          f"addresses, {rec['found']} answered", end="", file=sys.stderr,
                          flush=True)
            result = client.result
        if progress:
            print(file=sys.stderr)
        rows = [r for b in result["buses"].values() for r in b["found"]]
        where = ", ".join(f"bus {n} ({b['port']})" for n, b in result["buses"].items())
        note = f"{where}, {_via_daemon_text(hello)}"
    else:
        targets = way[1]
        rows = []
        for t in targets:
            addresses = args.addresses or list(range(1, 248))
            with _target_master(args, t) as (master, _, _):
                found = master.scan(addresses, add=False)
            for a, info in sorted(found.items()):
                row = {"bus": t["name"], "address": a, **info.asdict()}
                conf = t["devices"].get(a)
                if t["devices"]:
                    row["configured"] = conf is not None
                if conf and (info.role_name, info.window) != (conf.role, conf.window):
                    row["mismatch"] = f"the config says {conf.role} at window {conf.window}"
                rows.append(row)
        note = ", ".join(f"{t['port']} at {t['baud']} baud" for t in targets)
        note = f"directly on {note}"
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{len(rows)} device(s) answered of {len(wanted)} address(es) tried: {note}")
    for line in _scan_text_rows(rows) if rows else ():
        print(line)
    return 0


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
        _print_devices(rows, wide=getattr(args, "wide", False))
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
        from hallgate.gateway.control import ControlError

        _, client, hello = way
        try:
            with client:
                r = client.call("identify", address=args.address, seconds=args.seconds,
                                bus=args.bus, timeout=30)
        except ControlError as e:
            if not as_json:
                raise
            print(json.dumps({"ok": False, "address": args.address, "bus": args.bus,
                              "seconds": args.seconds, "via": "daemon", "pid": hello["pid"],
                              "error": str(e)}))
            return 1
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


def _read_log_directly(master, addr):
    """fetch_log through a master that is not polling: each GET_LOG is run by a cycle
    that polls nothing (the master knows no devices)."""
    from hallgate.gateway.boards import fetch_log

    def read(offset):
        future = master.read_log(addr, offset)
        master.run_cycle()
        return future.result(timeout=0)

    return fetch_log(read)


def _print_log(r, note):
    what = ", ".join(x for x in (r.get("role"), r.get("firmware") and
                                 f"firmware {r['firmware']}",
                                 r.get("boot") is not None and f"boot {r['boot']}") if x)
    print(f"device {r['address']} on bus {r['bus']}" + (f" ({what})" if what else "")
          + f", {note}")
    print(f"last reset: {r['reset_cause']}")
    if not r["crash_boot"] and not r["total"]:
        print("no crash kept")
        return
    now = (f"; it is in boot {r['boot']} now" if r.get("boot") is not None
           and r["boot"] != r["crash_boot"] else "")
    print(f"crash kept from boot {r['crash_boot']}{now}; its traceback ({r['total']} "
          "bytes):")
    for line in r["text"].splitlines():
        print(f"  {line}")
    if not r["complete"]:
        print(f"(cut short: {len(r['text'].encode())} of {r['total']} bytes read)")


@_tool
def cmd_logs(args):
    """A device's log over the bus: the cause of its last reset, and the traceback of the
    crash it kept, with the boot it happened in."""
    from hallgate.gateway.master import DeviceRefused, NoReply

    if not 1 <= args.address <= 247:
        raise ToolError(f"address {args.address} out of range 1-247")
    way = _via(args)
    if way[0] == "daemon":
        _, client, hello = way
        with client:
            r = client.call("logs", address=args.address, bus=args.bus, timeout=60)
        r = {k: v for k, v in r.items() if k != "ok"}
        via, note = {"via": "daemon", "pid": hello["pid"]}, _via_daemon_text(hello)
    else:
        targets = way[1]
        if len(targets) > 1:
            having = [t for t in targets if args.address in t["devices"]]
            if len(having) != 1:
                raise ToolError(f"device {args.address} is in {len(having) or 'none'} of the "
                                "config's buses: say which (--bus "
                                f"{' or --bus '.join(t['name'] for t in targets)})")
            targets = having
        t = targets[0]
        where = _via_port_text([t])
        with _target_master(args, t) as (master, _, _):
            info = master.scan([args.address], add=False).get(args.address)
            if info is None:
                raise ToolError(f"device {args.address} did not answer ({where}): is it "
                                "powered, on this bus, at this address?")
            try:
                log = _read_log_directly(master, args.address)
            except DeviceRefused as e:
                if e.unknown_type:
                    raise ToolError(
                        f"device {args.address}: its firmware ({info.firmware_text}) "
                        "predates device logs (it does not know GET_LOG): update it "
                        "(`hallgate ota`) to read its reset cause and crash") from None
                raise ToolError(f"{e} ({where})") from None
            except NoReply as e:
                raise ToolError(f"{e} to GET_LOG ({where})") from None
        r = {"bus": t["name"], "address": args.address, "role": info.role_name,
             "firmware": info.firmware_text, "board_id": info.asdict().get("board_id"),
             "boot": info.resets, **log}
        via, note = {"via": "port", "port": t["port"]}, where
    if args.json:
        print(json.dumps({**via, **r}, indent=1))
        return 0
    _print_log(r, note)
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
            adapter = getattr(port, "adapter", None)
            report["bus"]["adapter"] = adapter.asdict() if adapter is not None else None
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
        for line in adapter_lines(s.get("adapter")):
            print(f"  {line}")
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
