"""`hallgate ota`: firmware updates over the bus, through the daemon or directly, and the
daemon's running updates (--status, --cancel) and their history (--history)."""

import collections
import json
import os
import sys
import time

from hallgate.tools import (
    ToolError,
    _scan_rows,
    _target_master,
    _tool,
    _via,
    _via_daemon_text,
    _via_port_text,
)


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


def _daemon_only(args, what):
    way = _via(args)
    if way[0] != "daemon":
        raise ToolError(f"{what} is the daemon's: run it without --port / --config")
    return way[1], way[2]


def _print_rows(rows, empty):
    if not rows:
        print(empty)
    for r in rows:
        done = f"{100 * r['offset'] // r['bytes']}%" if r.get("bytes") else ""
        state = r["result"] or f"{r['phase']} {done}" + (
            f" ({r['device_state']})" if r.get("device_state") else "")
        print(f"  {r['bus']}:{r['address']:<4} -> {r['version']:10} {state:24} "
              f"since {r['started']}  {r['reason']}".rstrip())


def _status(args):
    client, _ = _daemon_only(args, "--status")
    with client:
        result = client.call("ota_status")
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print("updates running:")
    _print_rows(result["running"], "  none")
    if result["recent"]:
        print("ended in the last hour (all: hallgate ota --history):")
        for r in result["recent"]:
            print(f"  {r['bus']}:{r['address']:<4} {r['ended']}  {r['outcome'].upper():12} "
                  f"{r['from']} -> {r['to']}: {r['reason']}")
    return 0


def _cancel(args):
    client, _ = _daemon_only(args, "--cancel")
    with client:
        result = client.call("ota_cancel", bus=args.bus, addresses=args.targets or None)
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        print("cancel asked:")
        _print_rows(result["results"], "  none")
    return 0 if all(r["result"] == "cancelled" for r in result["results"]) else 1


def _history(args):
    client, _ = _daemon_only(args, "--history")
    if len(args.targets) > 1:
        raise ToolError("--history shows one device (ADDR) or all of them")
    with client:
        result = client.call("ota_history", bus=args.bus, limit=args.limit,
                             address=args.targets[0] if args.targets else None)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    rows = result["history"]
    print(f"firmware updates ({result['file']}), oldest first:" if rows else
          f"no firmware update recorded yet ({result['file']})")
    for r in rows:
        board = f" board {r['board_id']}" if r.get("board_id") else ""
        print(f"  {r['ended']}  {r['bus']}:{r['address']:<4}{board} {r['from']} -> {r['to']} "
              f"{r['outcome'].upper()}: {r['reason']}")
    return 0


@_tool
def cmd_ota(args):
    """Firmware update over the bus from a signed bundle, per device or per role; or the
    daemon's updates: --status, --cancel, --history."""
    words = args.words
    modes = [m for m in ("status", "cancel", "history") if getattr(args, m)]
    if len(modes) > 1:
        raise ToolError("give one of --status, --cancel, --history")
    if modes:
        try:
            args.targets = [int(w) for w in words]
        except ValueError:
            raise ToolError(f"--{modes[0]} takes device addresses only, not "
                            f"{' '.join(words)!r}") from None
        return {"status": _status, "cancel": _cancel, "history": _history}[modes[0]](args)
    if not words:
        raise ToolError("give the bundle, after the devices' addresses (or --role ROLE)")
    try:
        args.targets = [int(w) for w in words[:-1]]
    except ValueError:
        raise ToolError(f"device addresses are numbers; the bundle comes last: "
                        f"{' '.join(words)!r}") from None
    bundle_path = os.path.abspath(words[-1])
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
            # left mid-transfer would resume it anyway), and keeps each result.
            print("\nhallgate: stopped following; the update goes on in the daemon (pid "
                  f"{hello['pid']}). Follow it with `hallgate ota --status`, stop it with "
                  "`hallgate ota --cancel [ADDR...]`; `hallgate ota --history` keeps each "
                  "result.", file=sys.stderr)
            return 130
        result = client.result
        view = view or _OtaView(args, result["version"])
        results = result["results"]
    else:
        view, results, via = _ota_directly(args, way[1], bundle_path)
    view.finish(results, via)
    return 0 if results and all(r["result"] == "updated" for r in results) else 1
