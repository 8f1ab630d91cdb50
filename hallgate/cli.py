"""The `hallgate` command: one entry point, a subcommand per job, `--help` on each."""

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from hallgate import __version__
from hallgate.protocols import bus
from hallgate.sim.cli import add_sim_parser
from hallgate.tools import (
    DEFAULT_STATUS,
    ToolError,
    adapter_lines,
    add_port_args,
    add_target_args,
    address_list,
    cmd_bus_identify,
    cmd_bus_scan,
    cmd_bus_sniff,
    cmd_bus_stats,
    cmd_bus_watch,
    cmd_devices,
    cmd_identify,
    cmd_logs,
    status_path,
)


def cmd_config_check(args):
    """Every problem of a hall config, one a line; exit 1 if there is any."""
    from hallgate.gateway.config import ConfigError, load_config

    try:
        summary, problems = load_config(args.file).summary(), []
    except ConfigError as e:
        summary, problems = None, e.problems
    if args.json:
        print(json.dumps({"ok": not problems, "problems": [p.asdict() for p in problems]},
                         indent=1))
    else:
        print("\n".join(map(str, problems)) or f"{args.file}: ok ({summary})")
    return 1 if problems else 0


def cmd_run(args):
    """The daemon: checks the config (every problem, then exit 1), then runs until SIGTERM.
    A problem of the config or of a file it names is said in plain words, never as a
    traceback, with exit code 1, as `config check` does."""
    from hallgate.gateway.config import ConfigError, load_config
    from hallgate.gateway.daemon import run

    try:
        config = load_config(args.config)
    except ConfigError as e:  # every URL the MQTT link would refuse is one (config._broker)
        print(str(e), file=sys.stderr)
        return 1
    status = status_path(args)
    try:
        os.makedirs(os.path.dirname(status), exist_ok=True)
    except OSError as e:
        print(f"status file {status}: {e}; use --status-file", file=sys.stderr)
        return 1
    from gpiozero.exc import BadPinFactory, GPIOZeroError

    from hallgate.gateway.outbox import OutboxError

    try:
        return run(config, status_file=status)
    except BadPinFactory:
        print("hallgate run: no GPIO on this machine (gpiozero found no pin factory). On a "
              "Raspberry Pi install lgpio (apt-get install python3-lgpio, venv with "
              "--system-site-packages); to try without hardware set GPIOZERO_PIN_FACTORY=mock",
              file=sys.stderr)
    except GPIOZeroError as e:
        print(f"hallgate run: GPIO: {e} (check the pins in {args.config})", file=sys.stderr)
    except OutboxError as e:
        print(f"hallgate run: {e} (outbox.path in {config.file})", file=sys.stderr)
    except OSError as e:  # a folder or file the config names, made or opened at start
        logging.getLogger("hallgate").debug("hallgate run", exc_info=True)
        print(_start_error(config, e), file=sys.stderr)
    return 1


def _start_error(config, e):
    """An OSError of `hallgate run` in one paragraph: the config key behind the file, if one
    is, and what to fix."""
    m = config.mqtt
    named = {"outbox.path": config.outbox.path, "mqtt.password_file": m.password_file,
             "mqtt.ca_file": m.ca_file, "mqtt.cert_file": m.cert_file,
             "mqtt.key_file": m.key_file}
    culprit = Path(os.fsdecode(e.filename)) if e.filename else None
    why = e.strerror or str(e)
    for key, path in named.items():
        if culprit is not None and path is not None and (culprit == path
                                                         or culprit in path.parents):
            what = "" if culprit == path else f"cannot make its folder {culprit}: "
            return (f"hallgate run: {config.file}: {key} = {path}: {what}{why}. Fix {key} in "
                    f"the config, or the file system there, and start again.")
    return (f"hallgate run: cannot start: {e}. Is it a file or folder {config.file} names? "
            f"`hallgate config check {config.file}` checks them; -v shows where it failed.")


def cmd_status(args):
    """What the running daemon last wrote: broker connection, outbox depth, devices."""
    path = status_path(args)
    try:
        with open(path) as f:
            st = json.load(f)
    except (OSError, ValueError) as e:
        print(f"no gateway status at {path} ({e}): is `hallgate run` running?", file=sys.stderr)
        return 1
    age = time.time() - os.path.getmtime(path)
    stopped = st.get("state") == "stopped"
    st["age_s"] = round(age, 1)
    st["running"] = age < 10 and not stopped
    if args.json:
        print(json.dumps(st, indent=1))
        return 0 if st["running"] else 1
    b, o, d = st["broker"], st["outbox"], st["devices"]
    print(f"gateway {st['site']}/{st['gateway']} (hallgate {st['version']}, pid {st['pid']})"
          + ("" if st["running"] else f": NOT RUNNING (stopped cleanly at {st['ts']})"
             if stopped else f": NOT RUNNING, status {age:.0f} s old"))
    print(f"broker:  {'connected to ' + str(b['url']) if b['connected'] else 'DISCONNECTED'}"
          + (f" (last error: {b['last_error']})" if b.get("last_error") else ""))
    print(f"outbox:  {o['depth']} held, {o.get('added', 0)} added, "
          f"{o.get('delivered', 0)} delivered, {o.get('dropped_overflow', 0)} dropped")
    if "delivery" in o:
        receipt = o["delivery"] == "receipt"
        oldest = o.get("oldest_age_s")
        central = {True: "online", False: "OFFLINE", None: "status not seen"}[
            o.get("central_online")]
        print(f"         {o['waiting_to_send']} waiting to send, "
              f"{o.get('awaiting_receipt', o.get('awaiting_puback', 0))} sent awaiting "
              f"{'the central' + chr(39) + 's receipt' if receipt else 'PUBACK'}"
              + (f", oldest {oldest:.0f} s old" if oldest is not None else "")
              + (f" (central {central})" if receipt else
                 " (delivery = \"puback\": a broker crash can lose acknowledged events)"))
    for name, bs in (st.get("buses") or {}).items():
        print(f"bus {name} on {bs.get('port')}: {bs.get('cycles', 0)} poll cycles, "
              f"{1000 * (bs.get('cycle_mean') or 0.0):.1f} ms mean")
        for line in adapter_lines(bs.get("adapter")):
            print(f"  {line}")
    page = st.get("page")
    if page:
        print(f"page:    http://{page['listen']}/" + (
            f" NOT SERVED: {page['error']}" if page["error"] else ""))
    # A daemon that is not running polls nobody: its table is what it last saw.
    was = "" if st["running"] else "was "
    print(f"devices: {d['online']}/{d['total']} online" + ("" if st["running"] else
          f" when the daemon last wrote, {age:.0f} s ago: not known now"))
    for r in d["table"]:
        seen = f"{was}online" if r["online"] else f"{was}OFFLINE"
        print(f"  {r['bus']}:{r['address']:<4} {r['role']:15} window {r['window']!s:>4} "
              f"{seen:12} fw {r['firmware'] or '-'}")
    updates = st.get("updates") or []
    if updates:
        print(f"firmware updates {'running' if st['running'] else 'cut short by the stop'} "
              "(hallgate ota --status, --cancel):")
    for u in updates:
        print(f"  {u['bus']}:{u['address']:<4} -> {u['version']}: {u['phase']}, "
              f"{u['offset']}/{u['bytes']} bytes, since {u['started']}")
    return 0 if st["running"] else 1


def _central_config(args):
    from hallgate.central.config import ConfigError, load_config

    try:
        return load_config(args.config)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return None


def cmd_central_run(args):
    """The central queue service on MQTT until SIGTERM or SIGINT; with --http, the hall
    board and the manager's view too (hallgate/web: they read the hall's MQTT topics as a
    client of their own and publish nothing)."""
    import signal
    import threading

    from hallgate.central.mqtt import CentralService
    from hallgate.central.service import Central

    cfg = _central_config(args)
    if cfg is None:
        return 1
    if args.http and cfg.broker.startswith("mqtts://") and not args.http_cert:
        print("hallgate central run: --http on an mqtts:// broker needs the pages' own "
              "read-only certificate: --http-cert and --http-key (a monitoring one: "
              "hardware/make_test_ca.py --monitor NAME); the central's own would take "
              "over its client id", file=sys.stderr)
        return 2
    central = Central(cfg.queue, cfg.database, dedupe_days=cfg.dedupe_days)
    svc = CentralService(central, cfg.site, cfg.broker, client_id=cfg.client_id,
                         protocol=cfg.protocol, desired=cfg.desired,
                         desired_batch_s=cfg.desired_batch_s, tick_s=cfg.tick_s,
                         stats_s=cfg.stats_s, version=__version__,
                         **{k: str(v) for k in ("ca_file", "cert_file", "key_file")
                            if (v := getattr(cfg, k)) is not None})
    pages = None
    if args.http:
        from hallgate.web.hallpages import HallPages  # the web stack: only when asked

        try:
            pages = HallPages(cfg.site, cfg.broker, *args.http, protocol=cfg.protocol,
                              ca_file=str(cfg.ca_file) if cfg.ca_file else None,
                              cert_file=args.http_cert, key_file=args.http_key)
        except OSError as e:  # the port is taken, or the address is not this machine's
            print(f"hallgate central run: --http {args.http[0]}:{args.http[1]}: {e}",
                  file=sys.stderr)
            central.close()
            return 1
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    svc.start()
    logging.getLogger("hallgate.central").info("central %s: %s, db %s", cfg.site, cfg.broker,
                                               cfg.database)
    if pages is not None:
        try:
            pages.start()
        except RuntimeError as e:  # uvicorn could not start: said, then a clean stop
            print(f"hallgate central run: the pages: {e}", file=sys.stderr)
            svc.stop()
            central.close()
            return 1
        logging.getLogger("hallgate.central").info(
            "pages: hall board %s, manager's view %s", pages.urls["board"],
            pages.urls["manager"])
    done.wait()
    if pages is not None:
        pages.stop()
    svc.stop()
    central.close()
    return 0


def cmd_central_worker(args):
    """One of the city's central workers (central/city.py) until SIGTERM or SIGINT: it takes
    its share of the city file's sites, and a dead worker's; one JSON line per change of
    ownership on stdout. Exit 2 on a bad city file."""
    import signal
    import threading

    from hallgate.central.city import CityConfigError, CityWorker, OverviewLead, load_city
    from hallgate.central.clock import ScaledClock

    try:
        city = load_city(args.city)
    except CityConfigError as e:
        print(f"hallgate central worker: {e}", file=sys.stderr)
        return 2
    clock = None
    if args.clock_start is not None or args.clock_speed is not None:
        clock = ScaledClock(args.clock_start if args.clock_start is not None else time.time(),
                            args.clock_speed or 1.0, args.clock_real0)
    try:
        worker = CityWorker(city, args.name, clock=clock, poll_s=args.poll,
                            version=__version__,
                            lead_hook=None if args.no_overview else OverviewLead(city))
    except (ValueError, RuntimeError) as e:  # a bad name, no psycopg
        print(f"hallgate central worker: {e}", file=sys.stderr)
        return 2
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    try:
        worker.run(done)
    except RuntimeError as e:  # another worker of that name
        print(f"hallgate central worker: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_central_report(args):
    """A day's figures from the store (the service may be running)."""
    from hallgate.central.clock import local_day
    from hallgate.central.stats import day_stats
    from hallgate.central.store import Store

    cfg = _central_config(args)
    if cfg is None:
        return 1
    if not cfg.database.exists():
        print(f"no database at {cfg.database}: has `hallgate central run` run?", file=sys.stderr)
        return 1
    day = args.day or local_day(time.time(), cfg.queue.tz)
    with Store(cfg.database) as store:
        tickets, votes = store.day(day)
        sessions = store.day_sessions(day)
    rep = day_stats(tickets, votes, norm_s=cfg.queue.norm_s, day=day, tz=cfg.queue.tz,
                    closes=cfg.queue.closes, sessions=sessions, services=cfg.queue.services,
                    now=time.time())
    if args.json:
        print(json.dumps(rep, indent=1))
        return 0

    def f(v, fmt="{:.0f}"):
        return "-" if v is None else fmt.format(v)

    print(f"{cfg.site} {day}: {rep['all']['issued']} tickets, norm {cfg.queue.norm_s} s "
          "(definitions: --json)")
    close = rep.get("close")
    if close and close["overrun"]:
        print(f"OVERRUN: the last visit ended {close['overrun_s'] / 60:.0f} min after closing "
              f"({close['closes']})")
    if close and close["unfinished"]:
        print(f"{close['unfinished']} ticket(s) not finished")
    head = (f"{'':12} {'issued':>6} {'served':>6} {'noshow':>6} {'open':>5} {'r.out':>5} "
            f"{'r.in':>5} {'avg wait':>8} {'p50 wait':>8} {'p95 wait':>8} {'>norm':>6} "
            f"{'avg svc':>7} {'p95 svc':>7} {'likes':>5} {'votes':>5} {'satisf.':>7} "
            f"{'misuse':>6}")
    services = cfg.queue.services
    for title, rows in (("all", {"": rep["all"]}), ("window", rep["by_window"]),
                        ("service", rep["by_service"]), ("group", rep["by_group"]),
                        ("operator", rep["by_operator"]), ("hour", rep["by_hour"])):
        if not rows:
            continue
        print(f"\n{head}" if title == "all" else f"-- by {title}")
        for k, g in rows.items():
            name = title if title == "all" else (
                f"{k} {services[k].name if k in services else ''}"[:12]
                if title == "service" else k[:12])
            print(f"{name:12} {g['issued']:>6} {g['served']:>6} {g['noshow']:>6} "
                  f"{g['open']:>5} {g['redirected_out']:>5} {g['redirected_in']:>5} "
                  f"{f(g['wait_avg_s']):>7}s {f(g['wait_p50_s']):>7}s "
                  f"{f(g['wait_p95_s']):>7}s {f(g['over_norm_share'], '{:.0%}'):>6} "
                  f"{f(g['service_time_avg_s']):>6}s {f(g['service_time_p95_s']):>6}s "
                  f"{g['likes']:>5} {g['votes']:>5} {f(g['satisfaction'], '{:.0%}'):>7} "
                  f"{g['misuse']:>6}" + (f"  {g['sessions']} session(s), logged in "
                                          f"{g['logged_in_s'] / 3600:.1f} h"
                                          if title == "operator" else ""))
    return 0


def cmd_central_overview(args):
    """The city overview (central/overview.py) until SIGTERM or SIGINT: every centre's
    central/stats and central/status in, city/v1/{city}/overview out; with --http, the
    city page too (hallgate/web/citypage.py: it reads that topic, publishes nothing)."""
    import signal
    import threading

    from hallgate.central.overview import OverviewService

    if not args.verbose:  # a service: its connections are logged, as `central run`'s
        logging.getLogger().setLevel(logging.INFO)
    password = None
    if args.password_file:
        try:
            password = Path(args.password_file).read_text().strip()
        except OSError as e:
            print(f"hallgate central overview: --password-file: {e}", file=sys.stderr)
            return 1
    mqtt = {"protocol": args.protocol, "username": args.username, "password": password,
            "ca_file": args.ca_file, "cert_file": args.cert_file, "key_file": args.key_file}
    try:
        svc = OverviewService(args.city, args.broker, sites=args.site or None,
                              period_s=args.period, **mqtt)
    except ValueError as e:
        print(f"hallgate central overview: {e}", file=sys.stderr)
        return 2
    pages = None
    if args.http:
        from hallgate.web.citypage import CityPages  # the web stack: only when asked

        try:
            pages = CityPages(args.city, args.broker, *args.http, manager=args.manager_url,
                              **{k: v for k, v in mqtt.items() if k != "cert_file"
                                 and k != "key_file"},
                              cert_file=args.http_cert or args.cert_file,
                              key_file=args.http_key or args.key_file)
        except ValueError as e:
            print(f"hallgate central overview: {e}", file=sys.stderr)
            return 2
        except OSError as e:  # the port is taken, or the address is not this machine's
            print(f"hallgate central overview: --http {args.http[0]}:{args.http[1]}: {e}",
                  file=sys.stderr)
            return 1
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    svc.start()
    logging.getLogger("hallgate.central").info("overview of %s: %s -> %s", args.city,
                                               ", ".join(args.broker), svc.topic)
    if pages is not None:
        try:
            pages.start()
        except RuntimeError as e:  # uvicorn could not start: said, then a clean stop
            print(f"hallgate central overview: the city page: {e}", file=sys.stderr)
            svc.stop()
            return 1
        logging.getLogger("hallgate.central").info("city page: %s", pages.url)
    done.wait()
    if pages is not None:
        pages.stop()
    svc.stop()
    return 0


def cmd_keygen(args):
    """A new Ed25519 key pair for signing firmware bundles."""
    from hallgate.gateway.bundle import BundleError, keygen

    try:
        keygen(args.private, args.public)
    except BundleError as e:
        print(f"hallgate keygen: {e}", file=sys.stderr)
        return 1
    print(f"private key {args.private} (mode 0600: keep it with whoever builds firmware), "
          f"public key {args.public} (for the gateway's config)")
    return 0


def cmd_firmware_build(args):
    from hallgate.gateway.bundle import BundleError, build

    try:
        m = build(args.role, args.out, args.key, version=args.version, compile=not args.source,
                  board=args.board)
    except BundleError as e:
        print(f"hallgate firmware build: {e}", file=sys.stderr)
        return 1
    kind = f"mpy v{m.mpy['version']} for {m.mpy['arch']}" if m.compiled else "plain .py"
    print(f"{args.out}: {m.role} {m.version} for {m.board}, {len(m.files)} files ({kind}), "
          f"signed by key {m.key_id}")
    return 0


def cmd_firmware_verify(args):
    from hallgate.gateway.bundle import BundleError, verify

    try:
        m = verify(args.bundle, args.key)
    except BundleError as e:
        if args.json:
            print(json.dumps({"ok": False, "bundle": args.bundle, "error": str(e)}, indent=1))
        print(f"hallgate firmware verify: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"ok": True, "bundle": args.bundle, "role": m.role,
                          "version": m.version, "created": m.created, "compiled": m.compiled,
                          "mpy": m.mpy, "key_id": m.key_id,
                          "files": {n: {"sha256": e.sha256, "size": e.size}
                                    for n, e in m.files.items()}}, indent=1))
    else:
        print(f"{args.bundle}: ok, {m.role} {m.version} built {m.created}, "
              f"{len(m.files)} files, signed by key {m.key_id}")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(
        prog="hallgate",
        description="Edge controller for service-hall hardware: call panels, window displays, "
        "feedback buttons.",
    )
    parser.add_argument("--version", action="version", version=f"hallgate {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    bus_p = sub.add_parser("bus", help="talk to the RS-485 device bus directly")
    bus_sub = bus_p.add_subparsers(dest="bus_command", required=True, metavar="SUBCOMMAND")

    p = bus_sub.add_parser(
        "scan", help="find the devices that answer on the bus",
        description="GET_INFO to each address (nothing is acked, nothing added to the "
        "daemon's devices). Through the daemon: a few addresses between its poll cycles, "
        "so the polling goes on. Directly: on --port, or the buses of --config.")
    add_target_args(p, addresses=False)
    p.add_argument("--addresses", type=address_list,
                   help="addresses to try, e.g. 1-12,101-112 (default 1-247)")
    p.add_argument("--json", action="store_true", help="print a JSON list, a row per "
                   "device that answered")
    p.set_defaults(func=cmd_bus_scan)

    p = bus_sub.add_parser("watch", help="poll devices and print their key events")
    add_port_args(p)
    p.add_argument("addresses", type=address_list, help="devices to poll, e.g. 1-8")
    p.add_argument("--seconds", type=float, default=0, help="stop after this long (0: Ctrl-C)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_bus_watch)

    p = bus_sub.add_parser("identify", help="make a device show itself (blink, beep)")
    add_port_args(p)
    p.add_argument("address", type=int, help="device address, 0 for all")
    p.add_argument("--seconds", type=int, default=10, help="how long (default 10)")
    p.set_defaults(func=cmd_bus_identify)

    p = bus_sub.add_parser(
        "sniff", help="decode every frame on the line, with timestamps; flag bad frames",
        description="A protocol analyser: with --port, a passive listener on a second "
        "adapter (it sends nothing); without, through the daemon (the frames it sends and "
        "receives). Bad frames (CRC errors, frames cut short, garbage between frames) are "
        "flagged; a summary ends the capture.")
    add_target_args(p, addresses=False)
    p.add_argument("--seconds", type=float, help="stop after this long (default: Ctrl-C)")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per frame, then the summary")
    p.set_defaults(func=cmd_bus_sniff)

    p = bus_sub.add_parser(
        "stats", help="poll-cycle time, retries, CRC errors, timeouts, per device",
        description="Through the daemon: its bus masters' counters since it started. "
        "Directly: plain polls (never acking an event, so none is taken from the central "
        "service) for --seconds.")
    add_target_args(p)
    p.add_argument("--seconds", type=float, default=5.0,
                   help="how long to poll, directly (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_bus_stats)

    p = sub.add_parser(
        "devices", help="the devices on the bus: role, window, firmware, uptime, online, "
        "last seen, error counters",
        description="Through the daemon: its device table, with fresh INFO from the online "
        "devices. Directly: a GET_INFO scan (nothing is acked).")
    add_target_args(p)
    p.add_argument("--wide", action="store_true", help="every detail: board, whole board "
                   "id, last seen and each counter apart (wider than 100 columns)")
    p.add_argument("--json", action="store_true", help="print JSON (everything)")
    p.set_defaults(func=cmd_devices)

    p = sub.add_parser("identify", help="make a device show itself (display flashes, panel "
                       "beeps)")
    p.add_argument("address", type=int, help="device address (0: every device, directly)")
    p.add_argument("--seconds", type=int, default=10, help="how long (default 10)")
    p.add_argument("--json", action="store_true", help='print {"ok", "address", "bus", '
                   '"seconds", "via"} (or the reason it failed)')
    add_target_args(p, addresses=False)
    p.set_defaults(func=cmd_identify)

    p = sub.add_parser(
        "logs", help="a device's log: why it last reset, and the crash it kept",
        description="Reads a device's log over the bus (GET_LOG, between the daemon's poll "
        "cycles, or directly): the cause of its last reset (power-on, watchdog, reboot), "
        "and the traceback of the last crash it kept, with the boot it happened in.")
    p.add_argument("address", type=int, help="device address, 1-247")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_target_args(p, addresses=False)
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser(
        "ota", help="update devices' firmware over the bus from a signed bundle",
        description="Sends a signed bundle's image (`hallgate firmware build`) to devices, "
        "in checked chunks, while the bus keeps polling (at most [firmware] job_share of "
        "it); each device checks the whole image, restarts into it, and must confirm "
        "itself healthy or goes back to its previous version by itself. Interrupted "
        "updates resume where they stopped. Exit 0 when every device is updated.")
    p.add_argument("words", nargs="*", metavar="ADDR... BUNDLE",
                   help="device addresses (or --role), then the signed bundle (.zip); with "
                   "--status, --cancel or --history: device addresses only (none: all)")
    p.add_argument("--role", choices=bus.ROLES,
                   help="every online device of this role")
    p.add_argument("--force", action="store_true", help="send the bundle also to devices "
                   "that already run its version, or whose firmware does not report its "
                   "board (skipped otherwise)")
    p.add_argument("--key", metavar="PUBLIC", help="public key to check the bundle with, "
                   "directly (the daemon uses its config's)")
    p.add_argument("--status", action="store_true", help="the daemon's updates running now, "
                   "and those ended in the last hour")
    p.add_argument("--cancel", action="store_true", help="stop the daemon's running updates "
                   "(of ADDR...) not yet committed: the devices keep their old firmware")
    p.add_argument("--history", action="store_true", help="past update results the daemon "
                   "kept (of ADDR), across restarts: when, device, board, from, to, outcome")
    p.add_argument("--limit", type=int, default=50, help="--history: the last N (default 50; "
                   "0: all)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    add_target_args(p, addresses=False)
    from hallgate.ota_tool import cmd_ota

    p.set_defaults(func=cmd_ota)

    from hallgate.gateway import flash

    p = sub.add_parser("flash", help="put signed firmware on a new or recovered board over "
                       "USB (mpremote)")
    flash.configure_parser(p)
    p.set_defaults(func=flash.run)

    p = sub.add_parser("run", help="the gateway daemon (what the systemd unit starts)")
    p.add_argument("--config", required=True, help="hall config (TOML)")
    p.add_argument("--status-file", help="where to keep the status (default "
                   "$HALLGATE_STATUS_FILE, or $RUNTIME_DIRECTORY/status.json under systemd, "
                   f"or {DEFAULT_STATUS}); the technician commands look in the same places")
    p.add_argument("--log-format", choices=("text", "json"), default="text",
                   help="log lines as text (default) or one JSON object per line")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("status", help="the running gateway's state: broker, outbox, devices")
    p.add_argument("--status-file", help="as given to `hallgate run`")
    p.add_argument("--json", action="store_true", help="print the whole status as JSON")
    p.set_defaults(func=cmd_status)

    config_p = sub.add_parser("config", help="hall config files")
    config_sub = config_p.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    p = config_sub.add_parser("check", help="check a hall config; print every problem, exit 1 "
                              "if there is any")
    p.add_argument("file", help="the config (TOML), e.g. hardware/hall-12-windows.toml")
    p.add_argument("--json", action="store_true", help='print {"ok": ..., "problems": [...]}')
    p.set_defaults(func=cmd_config_check)

    central_p = sub.add_parser("central", help="the reference central queue service")
    central_sub = central_p.add_subparsers(dest="central_command", required=True,
                                           metavar="SUBCOMMAND")
    p = central_sub.add_parser("run", help="serve the queue on MQTT until SIGTERM/SIGINT")
    p.add_argument("--config", required=True, help="central config (TOML), e.g. "
                   "central/example.toml")
    p.add_argument("--log-format", choices=("text", "json"), default="text",
                   help="log lines as text (default) or one JSON object per line")
    from hallgate.web import http_address  # standard library only

    def http_arg(text):
        try:
            return http_address(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    p.add_argument("--http", type=http_arg, metavar="HOST:PORT",
                   help="also serve the hall board (/board) and the manager's view (/) here, "
                   "e.g. 0.0.0.0:8080; they read the hall's MQTT topics and change nothing")
    p.add_argument("--http-cert", metavar="PEM", help="with --http on an mqtts:// broker: "
                   "the pages' read-only (monitoring) client certificate")
    p.add_argument("--http-key", metavar="PEM", help="its private key")
    p.set_defaults(func=cmd_central_run)
    p = central_sub.add_parser("report", help="a day's figures: served, waits, no-shows, "
                               "satisfaction per window, service and operator")
    p.add_argument("--config", required=True, help="central config (TOML)")
    p.add_argument("--day", help="YYYY-MM-DD (default: today in the config's zone)")
    p.add_argument("--json", action="store_true", help="print the whole report as JSON")
    p.set_defaults(func=cmd_central_report)
    p = central_sub.add_parser("worker", help="one of the city's central workers: serve a "
                               "share of the city file's sites (PostgreSQL, many brokers)")
    p.add_argument("--city", required=True, metavar="TOML",
                   help="the city file (format: central/city.py)")
    p.add_argument("--name", required=True, help="this worker's name, unique in the city")
    p.add_argument("--poll", type=float, default=0.5, metavar="S",
                   help="seconds between ownership rounds (default 0.5)")
    p.add_argument("--clock-start", type=float, metavar="EPOCH",
                   help="hall time at --clock-real0 (default: the system clock)")
    p.add_argument("--clock-speed", type=float, metavar="X",
                   help="hall seconds per real second (default 1)")
    p.add_argument("--clock-real0", type=float, metavar="EPOCH",
                   help="the real time hall time was --clock-start (default: now)")
    p.add_argument("--log-format", choices=("text", "json"), default="text",
                   help="log lines (stderr) as text or one JSON object per line")
    p.add_argument("--no-overview", action="store_true",
                   help="never run the city overview here (by default the worker holding the "
                        "city's overview lock publishes city/v1/CITY/overview)")
    p.set_defaults(func=cmd_central_worker)
    p = central_sub.add_parser(
        "overview", help="the city overview: every centre's figures on one retained topic",
        description="Reads every centre's retained central/stats and central/status "
        "(hall/v1/+/central/...) and publishes the city's figures per centre and in all, "
        "retained, on city/v1/CITY/overview when they change (protocols/MQTT.md section "
        "10); fails over between the --broker URLs (a cluster's nodes). One per city.")
    p.add_argument("--city", required=True, help="the city's name (a topic level), e.g. "
                   "moscow")
    p.add_argument("--broker", required=True, action="append", metavar="URL",
                   help="mqtt://host[:port] or mqtts://; again for each node of a cluster")
    p.add_argument("--protocol", choices=("3.1.1", "5"), default="3.1.1",
                   help="MQTT version (default 3.1.1: what NATS speaks)")
    p.add_argument("--site", action="append", metavar="NAME", help="a centre of the city "
                   "(again for each): listed before it publishes, and only these taken "
                   "(default: every site on the brokers)")
    p.add_argument("--period", type=float, default=5.0, metavar="S",
                   help="seconds between looks for a change (default 5)")
    p.add_argument("--username", help="MQTT user name")
    p.add_argument("--password-file", metavar="PATH", help="its password, in a file")
    p.add_argument("--ca-file", metavar="PEM", help="mqtts://: the brokers' CA")
    p.add_argument("--cert-file", metavar="PEM", help="mqtts://: this client's certificate")
    p.add_argument("--key-file", metavar="PEM", help="its private key")
    p.add_argument("--http", type=http_arg, metavar="HOST:PORT",
                   help="also serve the city page (/city) here, e.g. 0.0.0.0:8081; it reads "
                   "the overview topic and changes nothing")
    p.add_argument("--http-cert", metavar="PEM", help="with --http on mqtts://: the page's "
                   "read-only (monitoring) certificate (default: --cert-file)")
    p.add_argument("--http-key", metavar="PEM", help="its private key")
    p.add_argument("--manager-url", metavar="TEMPLATE", help="with --http: each centre's "
                   "manager's view, {site} standing for its name, e.g. "
                   "http://{site}.halls.example:8080/ (the centre's name links to it)")
    p.set_defaults(func=cmd_central_overview)

    add_sim_parser(sub)

    p = sub.add_parser("keygen", help="make an Ed25519 key pair for signing firmware bundles")
    p.add_argument("--private", required=True, metavar="PATH",
                   help="private key to write (PEM, mode 0600; never overwritten)")
    p.add_argument("--public", required=True, metavar="PATH",
                   help="public key to write (PEM; the gateway's config points at it)")
    p.set_defaults(func=cmd_keygen)

    fw_p = sub.add_parser("firmware", help="signed device firmware bundles: build, verify")
    fw_sub = fw_p.add_subparsers(dest="firmware_command", required=True, metavar="SUBCOMMAND")
    p = fw_sub.add_parser("build", help="build and sign the firmware bundle of a device role")
    p.add_argument("--role", required=True, choices=bus.ROLES,
                   help="the device role the bundle is for")
    p.add_argument("--key", required=True, metavar="PRIVATE",
                   help="private key to sign with (from `hallgate keygen`)")
    p.add_argument("--out", required=True, metavar="PATH", help="the bundle file to write")
    p.add_argument("--version", help="firmware version in the manifest (default: the "
                   "firmware's own, appcore.FIRMWARE)")
    p.add_argument("--source", action="store_true",
                   help="plain .py files instead of .mpy compiled with mpy-cross")
    p.add_argument("--board", choices=("rp2", "unix"), default="rp2",
                   help="rp2: a Raspberry Pi Pico (default); unix: the MicroPython unix "
                   "port, as the simulator's devices run")
    p.set_defaults(func=cmd_firmware_build)
    p = fw_sub.add_parser("verify", help="check a bundle's signature and every file's hash; "
                          "exit 1 with the reason if anything is wrong")
    p.add_argument("bundle", help="the bundle file")
    p.add_argument("--key", required=True, metavar="PUBLIC", help="public key to check with")
    p.add_argument("--json", action="store_true", help="print the manifest (or the error) "
                   "as JSON")
    p.set_defaults(func=cmd_firmware_verify)
    return parser


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: what a log shipper or `journalctl -o cat | jq` reads."""

    def format(self, record):
        entry = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def main(argv=None):
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler()
    if getattr(args, "log_format", "text") == "json":
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    daemon = (args.command == "run"
              or getattr(args, "central_command", None) in ("run", "worker")
              or getattr(args, "sim_command", None) == "gateway")
    level = logging.DEBUG if args.verbose else logging.INFO if daemon else logging.WARNING
    logging.basicConfig(level=level, handlers=[handler])
    try:
        return args.func(args)
    except ToolError as e:
        print(f"hallgate: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
