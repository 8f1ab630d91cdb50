"""`hallgate sim`: a simulated site (or a town of them) on the real parts, and its
subcommands. Only the standard library is imported here: the sim extra (rich, amqtt) is
needed when a day runs, not to build the `hallgate` parser."""

import argparse
import json
import logging
import os
import sys
import tempfile
import threading

DEFAULTS = {"windows": 10, "visitors": 200, "duration": 10.0}


def add_sim_parser(sub):
    sim_p = sub.add_parser(
        "sim", help="a simulated hall: broker, central service, gateways, the real firmware on "
        "MicroPython, operators and visitors; a day in about a minute",
        description="Without a subcommand: a whole day in a simulated hall (or in several "
        "sites, --sites or --profile), shown live, then the end-of-day report.")
    sim_p.add_argument("--profile", metavar="NAME|FILE.toml",
                       help="a calibrated day: its sites, windows and their services, "
                       "gateways, visitors, arrivals by hour (bundled: syzran, "
                       "moscow-centre; or a TOML file of the same form)")
    sim_p.add_argument("--windows", type=int, help="windows per site (default 10)")
    sim_p.add_argument("--visitors", type=int, help="visitors per site (default 200: "
                       "below the 10 windows' capacity in every hour)")
    sim_p.add_argument("--duration", type=_duration_hours, metavar="HOURS",
                       help="opening hours, simulated: 10h (default), 90m")
    sim_p.add_argument("--gateways", type=int, default=1, help="gateways per site, each "
                       "with its own bus and devices, the windows shared out in ranges "
                       "(default 1; at most 47 windows per gateway)")
    sim_p.add_argument("--sites", type=int, default=1, help="sites alike, each with its own "
                       "central, gateways and people, on one broker (default 1)")
    sim_p.add_argument("--speed", type=_speed, default=600,
                       help="at most this many hall seconds per real second, or max (default "
                       "600: 10 h in a minute or more); the chain's latency is never hall time")
    sim_p.add_argument("--seed", type=int, default=1, help="seed of the day's plan")
    sim_p.add_argument("--broker", metavar="URL", help="use this broker (mqtt://host:port) "
                       "instead of starting one, to watch with your own MQTT client")
    sim_p.add_argument("--desired", choices=("windows", "site"), default="windows",
                       help="desired state per window topic (default), or one snapshot per "
                            "site (a clustered broker's way: central/desired.py)")
    sim_p.add_argument("--broker-kind", choices=("auto", "mosquitto", "amqtt"), default="auto",
                       help="the broker to start: mosquitto when installed, else the embedded "
                       "amqtt (MQTT 3.1.1) (default auto)")
    sim_p.add_argument("--workdir", help="keep the databases and logs (sim.log, gw-*.log) "
                       "here (default: a temporary folder, removed at the end)")
    sim_p.add_argument("--json", action="store_true", help="print the report as JSON")
    sim_p.add_argument("--http", type=_http, metavar="HOST:PORT",
                       help="serve each site's hall board (/board) and manager's view (/) "
                       "while the day runs, e.g. 127.0.0.1:8080 (more sites: the next ports; "
                       "port 0: free ones); the URLs are printed at the start")
    sim_p.add_argument("--stay", action="store_true", help="after the day, keep the hall up "
                       "for technician commands (as `hallgate sim lab`) until Ctrl-C")
    sim_p.add_argument("--model-only", action="store_true",
                       help="the same day through the real central queue alone (no "
                       "hardware, no broker), in seconds: what if one more window opened? "
                       "(any number of windows)")
    sim_p.set_defaults(func=cmd_sim_hall)
    sim_sub = sim_p.add_subparsers(dest="sim_command", required=False, metavar="SUBCOMMAND")
    p = sim_sub.add_parser(
        "gateway", help="the gateway daemon on gpiozero mock pins, its buttons pressed on "
        "stdin (what `hallgate sim` runs as its gateway)")
    p.add_argument("--config", required=True, help="hall config (TOML)")
    p.add_argument("--status-file", help="keep the status here, and the control socket "
                   "beside it, as `hallgate run` does")
    p.set_defaults(func=cmd_sim_gateway)
    p = sim_sub.add_parser(
        "bus",
        help="a call panel and a window display per window on one simulated RS-485 line, "
        "polled by the real bus master while simulated operators press keys",
    )
    p.add_argument("--windows", type=int, default=3, help="windows (default 3)")
    p.add_argument("--seconds", type=float, default=20, help="how long to run (default 20)")
    p.add_argument("--baud", type=int, default=115200, help="line speed the hub paces at")
    p.add_argument("--seed", type=int, default=1, help="seed of the operators' choices")
    p.set_defaults(func=cmd_sim_bus)
    p = sim_sub.add_parser(
        "lab", help="a simulated hall that stays up, no day played, to practise every "
        "technician command on: devices, identify, bus stats, sniff, ota, flash of a spare "
        "board; it prints the commands with its paths")
    p.add_argument("--windows", type=int, default=4, help="windows (default 4)")
    p.add_argument("--gateways", type=int, default=1, help="gateways (default 1)")
    p.add_argument("--seconds", type=float, help="stop after this long (default: Ctrl-C)")
    p.add_argument("--workdir", help="keep its files here (default: a temporary folder)")
    p.set_defaults(func=cmd_sim_lab)
    p = sim_sub.add_parser(
        "city", help="a city day: many centres' gateways (outbox + MQTT link, no firmware) "
        "and one real hall on a 3-node NATS cluster, central workers on PostgreSQL; a "
        "broker node and a worker SIGKILLed mid-day; the day balanced at the end",
        description="A city day (issue 14). The report names lost and counted_twice "
        "(events), the kills and the take-over times; exit 0 when the day finished with "
        "every visitor ended, 0 lost and 0 counted twice.")
    p.add_argument("--centres", type=int, default=96, help="centres (default 96)")
    p.add_argument("--visitors", type=int, default=40000,
                   help="visitors of the whole city (default 40000)")
    p.add_argument("--duration", type=_duration_hours, default=10.0, metavar="HOURS",
                   help="opening hours, simulated (default 10h)")
    p.add_argument("--speed", type=float, default=80.0, help="hall seconds per real second "
                   "(default 80: 10 h in 7.5 min); the chain's latency counts as hall time")
    p.add_argument("--seed", type=int, default=1, help="seed of the day's plans")
    p.add_argument("--fleets", type=int, default=2, help="processes running the centres' "
                   "gateways and people (default 2)")
    p.add_argument("--workers", type=int, default=3, help="central workers (default 3)")
    p.add_argument("--kill-node-at", type=_fraction, default=0.3, metavar="FRACTION",
                   help="SIGKILL a broker node at this fraction of the day (default 0.3; "
                   "none: no kill)")
    p.add_argument("--kill-worker-at", type=_fraction, default=0.6, metavar="FRACTION",
                   help="SIGKILL a central worker then (default 0.6; none: no kill)")
    p.add_argument("--node-down", type=float, default=15.0, metavar="SECONDS",
                   help="real seconds before the killed node restarts (default 15)")
    p.add_argument("--hall-windows", type=int, default=4, help="windows of the real hall "
                   "with firmware (default 4; 0: none)")
    p.add_argument("--limit", type=float, metavar="SECONDS", help="give the day up after "
                   "this many real seconds (default: 2.5 times the day at --speed, + 2 min)")
    p.add_argument("--desired", choices=("site", "windows"), default="site",
                   help="desired state in one snapshot per site (default), or per window "
                   "topic (central/desired.py)")
    p.add_argument("--broker", choices=("nats", "mosquitto"), default="nats",
                   help="nats: a 3-node cluster (default); mosquitto: one broker, no node kill")
    p.add_argument("--database", choices=("postgres", "sqlite"), default="postgres",
                   help="postgres (default), or a SQLite file per site")
    p.add_argument("--workdir", help="keep the configs, databases and logs here "
                   "(default: a temporary folder, removed at the end)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_sim_city)
    return sim_p


def _duration_hours(text):
    """'10h', '90m', '7.5' (hours) -> hours."""
    text = text.strip().lower()
    try:
        if text.endswith("m"):
            return float(text[:-1]) / 60
        return float(text.removesuffix("h"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: hours like 10h, or minutes like 90m") \
            from None


def _http(text):
    from hallgate.web import http_address  # standard library only

    try:
        return http_address(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _speed(text):
    """``--speed``: a number > 0, or ``max`` (None: as fast as the chain answers)."""
    if text == "max":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: a number of times real time, or max") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: more than 0, or max")
    return value


def _fraction(text):
    """``--kill-*-at``: a fraction of the day (0-1), or none."""
    if text == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a fraction of the day, or none") \
            from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: between 0 and 1")
    return value


def cmd_sim_city(args):
    """A city day: brokers, database, workers, fleets, a real hall; the balance."""
    import time

    from hallgate.sim import SimError
    from hallgate.sim.cityplan import CityOptions

    try:
        options = CityOptions(
            centres=args.centres, visitors=args.visitors, hours=args.duration,
            speed=args.speed, seed=args.seed, fleets=args.fleets, workers=args.workers,
            kill_node_at=args.kill_node_at if args.broker == "nats" else None,
            node_down_s=args.node_down, kill_worker_at=args.kill_worker_at,
            hall_windows=args.hall_windows, real_limit_s=args.limit, desired=args.desired)
    except ValueError as e:
        print(f"hallgate sim city: {e}", file=sys.stderr)
        return 2
    import signal

    from hallgate.sim.city import City, city_text

    def terminate(*_):  # SIGTERM: stop every part it started, as Ctrl-C does
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)
    if not args.verbose:
        logging.getLogger().setLevel(logging.ERROR)
    out = sys.stderr if args.json else sys.stdout
    with tempfile.TemporaryDirectory(prefix="hallgate-city-") as tmp:
        city = City(options, args.workdir or tmp, broker=args.broker, database=args.database)
        last = [0.0]

        def progress(c):  # a line every 5 s: a log as much as a view
            if time.monotonic() - last[0] < 5:
                return
            last[0] = time.monotonic()
            s = c.status()
            print(f"[{s['hall_h']:5.2f} h] issued {s['issued']}/{s['visitors']}, ended "
                  f"{s['ended']}, events {s['events']} ({s['waiting']} in outboxes), links "
                  f"{s['connected']}/{s['gateways']}"
                  + (f", real hall at {s['hall']} h" if s["hall"] is not None else "")
                  + (f", killed: {', '.join(s['kills'])}"
                                                         if s["kills"] else ""),
                  file=out, flush=True)

        try:
            city.start(say=lambda text: print(text + "...", file=out, flush=True))
            report = city.run_day(progress)
        except SimError as e:
            print(f"hallgate sim city: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
        finally:
            city.close()
    if args.json:
        print(json.dumps(report, indent=1), flush=True)
    else:
        print(city_text(report), flush=True)
    ok = report["finished"] and report["every_visitor_ended"] and not report["lost"] and (
        not report["counted_twice"])
    return 0 if ok else 1


def cmd_sim_bus(args):
    from hallgate.sim import busdemo

    busdemo.run(windows=args.windows, seconds=args.seconds, baud=args.baud, seed=args.seed)
    return 0


def cmd_sim_gateway(args):
    from hallgate.gateway.config import ConfigError, load_config
    from hallgate.sim import gwhost

    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return 1
    return gwhost.main(config, args.status_file)


def _stay(seconds=None):
    """Until Ctrl-C, SIGTERM or `seconds`."""
    import signal
    import time

    def stop(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    end = None if seconds is None else time.monotonic() + seconds
    try:
        while end is None or time.monotonic() < end:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass


def cmd_sim_lab(args):
    """A hall that stays up for technician commands, with no day played."""
    from hallgate.sim.hall import Hall, Options, SimError

    try:
        options = Options(windows=args.windows, gateways=args.gateways, lab=True)
    except ValueError as e:
        print(f"hallgate sim lab: {e}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="hallgate-lab-") as tmp:
        hall = Hall(options, args.workdir or tmp)
        try:
            print("starting the lab: a broker, the central, "
                  f"{len(hall.layout)} gateway(s), signed firmware on every device and a "
                  "spare board...", file=sys.stderr, flush=True)
            hall.start()
            print(hall.lab.text(hall), flush=True)
            _stay(args.seconds)
        except SimError as e:
            print(f"hallgate sim lab: {e}", file=sys.stderr)
            return 1
        finally:
            hall.close()
    return 0


def _sites(args):
    """The sites to run, as Hall keyword arguments, and the profile (or None); ValueError
    (the message for the user) on a bad option or profile."""
    from hallgate.sim.hall import Options
    from hallgate.sim.town import copies, profile_sites

    given = [f"--{k}" for k in DEFAULTS if getattr(args, k) is not None]
    if args.profile:
        from hallgate.sim.profile import load_profile

        if given or args.sites != 1 or args.gateways != 1:
            raise ValueError(f"--profile sets the sites, windows, gateways, visitors and "
                             f"hours: drop {', '.join(given) or '--sites/--gateways'}")
        profile = load_profile(args.profile)
        first = profile.sites[0]
        options = Options(windows=first.windows, visitors=first.visitors,
                          hours=profile.hours, gateways=first.gateways, speed=args.speed,
                          seed=args.seed, broker=args.broker, broker_kind=args.broker_kind,
                          model_only=args.model_only, lab=args.stay, http=args.http,
                          desired=args.desired)
        return profile_sites(profile, options), profile
    v = {k: getattr(args, k) if getattr(args, k) is not None else d
         for k, d in DEFAULTS.items()}
    if args.sites < 1:
        raise ValueError(f"sites: at least 1, got {args.sites}")
    options = Options(windows=v["windows"], visitors=v["visitors"], hours=v["duration"],
                      gateways=args.gateways, speed=args.speed, seed=args.seed,
                      broker=args.broker, broker_kind=args.broker_kind,
                      model_only=args.model_only, lab=args.stay, http=args.http,
                      desired=args.desired)
    return copies(options, args.sites), None


def cmd_sim_hall(args):
    """A whole simulated day: broker, central, gateways, firmware devices, people."""
    try:
        from hallgate.sim.load import load_text
        from hallgate.sim.view import model_text, render, report_text, town_text
        from rich.console import Console, Group
        from rich.live import Live
    except ImportError as e:
        print(f"hallgate sim needs the sim extra ({e.name} is missing): "
              "pip install 'hallgate[sim]'", file=sys.stderr)
        return 1
    try:
        sites, profile = _sites(args)
    except ValueError as e:  # a bad option, or a profile's ProfileError
        print(f"hallgate sim: {e}", file=sys.stderr)
        return 2
    from hallgate.sim.hall import SimError
    from hallgate.sim.town import Town

    console = Console(file=sys.stderr if args.json else sys.stdout)
    if profile is not None and not args.json:
        console.print(f"Profile {profile.name}: {profile.about}", markup=False,
                      highlight=False)
    if args.model_only:
        if args.http:
            print("hallgate sim: --http shows a running hall: not with --model-only",
                  file=sys.stderr)
            return 2
        return _model_only(args, sites, console, load_text, model_text)
    # The parts' logs would tear up the live view: with --workdir they go to sim.log
    # there (the gateways' to gw-*.log), else only errors are shown.
    root = logging.getLogger()
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
        log_file = logging.FileHandler(os.path.join(args.workdir, "sim.log"))
        log_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: "
                                                "%(message)s"))
        root.handlers = [log_file]
        root.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    elif not args.verbose:
        root.setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="hallgate-sim-") as tmp:
        try:
            town = Town(sites, args.workdir or tmp)
        except ValueError as e:  # a site the simulator cannot build (too many windows...)
            print(f"hallgate sim: {e}", file=sys.stderr)
            return 2
        result = {}

        def day():
            try:
                result["report"] = town.run_day()
            except BaseException as e:  # handed to the main thread below
                result["error"] = e

        if not args.json:
            for hall in town.halls:
                title = f"{hall.site}: " if len(town.halls) > 1 else ""
                console.print(title + load_text(hall.load), markup=False, highlight=False)
        devices = sum(len(g.devices()) for h in town.halls for g in h.layout)
        try:
            with console.status(f"starting the broker, {len(town.halls)} central service(s), "
                                f"{sum(len(h.layout) for h in town.halls)} gateway(s) and "
                                f"{devices} firmware devices..."):
                town.start()
            for hall in town.halls:
                if hall.pages is not None:
                    urls = hall.pages.urls
                    for what, url in (("hall board", urls["board"]),
                                      ("manager's view", urls["manager"])):
                        console.print(f"{hall.site} {what}: {url}", markup=False,
                                      highlight=False, soft_wrap=True)
            runner = threading.Thread(target=day, name="sim-day", daemon=True)
            runner.start()

            def view():
                return Group(*(render(s) for s in town.snapshots()))

            with Live(view(), console=console, refresh_per_second=2 if len(town.halls) > 1
                      else 4, transient=args.json, redirect_stderr=False) as live:
                while runner.is_alive():
                    runner.join(0.25)
                    live.update(view())
            if "error" in result:
                raise result["error"]
            if args.stay:  # the report now, then the hall for the technician
                _print_report(result["report"], args, console, report_text, town_text)
                for hall in town.halls:
                    console.print("\n" + hall.lab.text(hall), markup=False, highlight=False)
                _stay()
        except SimError as e:
            print(f"hallgate sim: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
        finally:
            town.close()
    report = result.get("report")
    if report is None:
        return 1
    if not args.stay:
        _print_report(report, args, console, report_text, town_text)
    return 0 if report["finished"] and not report["problems"] else 1


def _print_report(report, args, console, report_text, town_text):
    if len(report["sites"]) == 1:  # one site: its own report, as it always was
        report = next(iter(report["sites"].values()))
    if args.json:
        print(json.dumps(report, indent=1), flush=True)
    else:
        console.print()
        console.print(report_text(report) if "sites" not in report else town_text(report),
                      markup=False, highlight=False)


def _model_only(args, sites, console, load_text, model_text):
    from hallgate.sim.model import model_day

    reports = {}
    with tempfile.TemporaryDirectory(prefix="hallgate-model-") as tmp:
        for s in sites:
            site = s["options"].site
            work = os.path.join(args.workdir or tmp, site)
            os.makedirs(work, exist_ok=True)
            reports[site] = model_day(s["options"], work, services=s.get("services"),
                                      plan=s.get("plan"), by_window=s.get("by_window"))
    if args.json:
        out = next(iter(reports.values())) if len(reports) == 1 else {"sites": reports}
        print(json.dumps(out, indent=1))
    else:
        for site, r in reports.items():
            if len(reports) > 1:
                console.print(f"\n== {site} ==", markup=False, highlight=False)
            console.print(load_text(r["offered_load"]) + "\n", markup=False,
                          highlight=False)
            console.print(model_text(r), markup=False, highlight=False)
    return 0 if all(r["finished"] for r in reports.values()) else 1
