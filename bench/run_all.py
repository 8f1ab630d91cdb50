"""Runs every benchmark once (each with --json, one after the other), prints their figures,
and writes the last run's report: bench/RESULTS.md (tables, the date and the machine),
bench/results.json (everything measured) and bench/latency.png (the press latency
distributions). This is `make bench`.

Every ratio in the report is measured within one benchmark's run, against its own baseline
(plain paho on the same broker, the wire time of the same bytes): these machines are shared
and absolute times wander from run to run.

    python bench/run_all.py            # the full run, a few minutes
    python bench/run_all.py --quick    # small sizes, to check that everything works
    python bench/run_all.py --only latency,fw_heap --json
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# The figures with a target (issue 15), found in the results: (label, bench, path to the
# value, target, "max": the value must be at most the target).
TARGETS = (
    ("daemon resident memory at idle, {devices_running} bus devices + {gpio_buttons} GPIO "
     "buttons (MB)", "footprint", ("idle", "daemon_rss_mb"), 35.0),
    ("daemon CPU at rest, {gpio_buttons} GPIO buttons, no bus (% of a core)", "daemon_cpu",
     ("gpio_idle_cpu_pct",), 1.0),
    ("GPIO press to broker: p99 over its limit", "latency", ("gpio", "p99_over_limit"), 1.5),
    ("bus key press to broker: p99 over its limit", "latency", ("bus", "p99_over_limit"),
     1.5),
)

# name: (script, arguments of the full run, arguments of --quick, time limit s)
BENCHES = {
    "bus_cycle": ("bus_cycle.py", ["--devices", "1,8,32"], ["--devices", "1,8", "--seconds",
                                                            "1", "--presses", "3"], 600),
    "latency": ("latency.py", ["--presses", "100", "--samples"],
                ["--presses", "10", "--devices", "2", "--samples"], 600),
    "mqtt_outbox": ("mqtt_outbox.py", ["--events", "100000"], ["--events", "2000", "--live",
                                                                "500"], 900),
    "footprint": ("footprint.py", ["--devices", "32", "--seconds", "20"],
                  ["--devices", "4", "--rate", "8", "--seconds", "3"], 600),
    "daemon_cpu": ("daemon_cpu.py", ["--devices", "32", "--seconds", "20"],
                   ["--devices", "4", "--seconds", "3"], 600),
    "adapter_latency": ("adapter_latency.py", ["--devices", "32", "--seconds", "5"],
                        ["--devices", "4", "--seconds", "1"], 600),
    "fw_heap": ("fw_heap.py", ["--events", "10000"], ["--events", "300"], 600),
    "ota_share": ("ota_share.py", [], ["--devices", "2", "--presses", "3"], 600),
    "device_idle": ("device_idle.py", ["--devices", "72", "--seconds", "10"],
                    ["--devices", "8", "--seconds", "2"], 600),
    "sim_day": ("sim_day.py", [], ["--windows", "3", "--visitors", "30", "--hours", "3"], 900),
    "sim_town": ("sim_town.py", ["--profile", "syzran"], ["--profile", "moscow-centre"], 1800),
}


def machine():
    model = platform.processor() or platform.machine()
    try:
        fields = dict(line.split(":", 1) for line in
                      Path("/proc/cpuinfo").read_text().splitlines() if ":" in line)
        fields = {k.strip().lower(): v.strip() for k, v in fields.items()}
        model = fields.get("model name") or fields.get("model") or model  # x86, then arm
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    try:
        mosq = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True,
                              timeout=10).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        mosq = "mosquitto: unknown version"
    return {"host": platform.node(), "cpu": model, "cpus": os.cpu_count(),
            "memory_gb": round(mem_gb, 1), "os": platform.platform(),
            "python": platform.python_version(), "broker": mosq,
            "load_avg_1min_at_start": round(os.getloadavg()[0], 2)}


def run(name, quick):
    script, full, small, limit = BENCHES[name]
    cmd = [sys.executable, str(HERE / script), *(small if quick else full), "--json"]
    t0 = time.monotonic()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {limit} s"}, time.monotonic() - t0
    took = time.monotonic() - t0
    try:
        result = json.loads(done.stdout)
    except ValueError:
        return {"error": f"exit {done.returncode}: {(done.stdout + done.stderr)[-1500:]}"}, took
    if done.returncode:
        return {"error": f"exit {done.returncode}", "result": result}, took
    return result, took


# ---- the report ------------------------------------------------------------------------

def met(value, target):
    return "met" if value is not None and value <= target else "MISSED"


def targets(results):
    """{name: {"value", "target", "met"}} of the figures with a target that ran."""
    out = {}
    for label, bench, path, target in TARGETS:
        value = result = results.get(bench)
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None:
            out[label.format_map(result)] = {"bench": bench, "value": value,
                                             "target": target, "met": value <= target}
    return out


def section_targets(found):
    rows = [(label, t["value"], f"<= {t['target']}", "met" if t["met"] else "MISSED")
            for label, t in found.items()]
    return "### Targets\n\n" + table(("figure", "measured", "target", ""), rows) + "\n"


def table(head, rows):
    out = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    out += ["| " + " | ".join("" if c is None else str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def section_latency(r):
    rows = []
    for key, label in (("gpio", "GPIO press (mock pin), through the outbox"),
                       ("bus", "bus key press, through the outbox"),
                       ("paho", "plain paho QoS 1 publish to receive")):
        x = r[key]
        ratio = "1" if key == "paho" else f"{x['p50_over_paho']} / {x['p99_over_paho']}"
        limit, over = "", ""
        if "limit_ms" in x:
            limit = x["limit_ms"]
            over = (f"{x['p99_over_limit']} (target <= {x['target_over_limit']}: "
                    f"{met(x['p99_over_limit'], x['target_over_limit'])})")
        rows.append((label, x["p50_ms"], x["p99_ms"], x["max_ms"], ratio, limit, over,
                     x["lost"]))
    limits = ""
    for key in ("gpio", "bus"):
        lim = r[key].get("limit")
        if lim:
            parts = " + ".join(f"{k.removesuffix('_ms').replace('_', ' ')} {v}"
                               for k, v in lim.items() if k != "total_ms")
            limits += f"\n- {key}: {parts} = {lim['total_ms']} ms"
    return (f"### Press to broker (subscriber), {r['presses']} presses each, "
            f"{r['devices']} call panels on the bus at {r['baud']} baud\n\n"
            + table(("path", "p50 ms", "p99 ms", "max ms", "x paho (p50 / p99)",
                     "limit ms", "p99 / limit", "lost"), rows)
            + "\n\nFrom the press command to the event at a subscriber of the same broker. Both "
              "press paths include a 20 ms debounce (the gateway's own for GPIO, woken by the "
              "pin's edge; the firmware's for a bus key) and an fsynced outbox commit; a bus "
              "key also waits for its device's poll. p99 of 100 presses is the second-slowest. "
              "The limit of each path, measured in the same run (outbox commit: an fsynced "
              "`Outbox.add` on the same file system; poll cycle: the gateway's mean during the "
              f"bus presses):{limits}\n\n"
              "![press latency distributions](latency.png)\n")


def section_outbox(r):
    rows = [("plain paho, pipelined, at PUBACK", r["paho_per_s"], "1"),
            ("committed to the outbox (fsync each)", r["commit_per_s"], r["commit_over_paho"]),
            ("backlog published from the outbox, at PUBACK (delivery = puback)",
             r["link_per_s"], r["link_over_paho"]),
            ("backlog into the central's database, at its receipts (the default)",
             r["receipt_per_s"], r["receipt_over_paho"])]
    if r.get("outbox_per_s"):
        rows.append((f"{r['live_events']} committed then sent one by one", r["outbox_per_s"],
                     r["outbox_over_paho"]))
    return (f"### Outbox throughput, a {r['events']:,}-event backlog, QoS 1\n\n"
            + table(("path", "events/s", "x paho"), rows)
            + f"\n\nThe backlog drained in {r['backlog_drain_s']} s at PUBACK, in "
              f"{r['receipt_drain_s']} s to the central's database (receipts: the reference "
              "central, `hallgate central run`, in its own process on SQLite, commits each "
              "event, votes here, and sends a receipt per 200); "
              f"{r['left_in_outbox']} left in the outboxes.\n")


def section_bus(rows_in):
    rows = [(r["devices"], r["cycle_ms"], r["bytes_per_cycle"], r["wire_ms"],
             r["cycle_over_wire"], r["modbus_bytes_per_cycle"], r["modbus_wire_ms"],
             r["cycle_over_modbus_wire"], r["event_to_master_ms_p50"], r["timeouts"],
             r["load_avg_1min"]) for r in rows_in]
    baud = rows_in[0]["baud"] if rows_in else "?"
    return (f"### Bus poll cycle at {baud} baud, every device idle\n\n"
            + table(("devices", "cycle ms", "bytes/cycle", "wire ms", "cycle / wire",
                     "Modbus RTU bytes", "Modbus wire ms", "cycle / Modbus wire",
                     "press to master p50 ms", "timeouts", "load"), rows)
            + "\n\nWire = bytes x 10 bits / baud (the lower bound); Modbus RTU = reading one "
              "register from each device, 15 bytes and two 3.5-character silences per "
              "exchange. Load: the 1-minute load average during the run (one MicroPython "
              "process per device).\n")


def section_footprint(r):
    rows = []
    for name, w in (("idle", r["idle"]), (f"{r['rate_asked']:g} presses/s", r["loaded"])):
        rows.append((name, w["daemon_rss_mb"], w["daemon_peak_rss_mb"], w["daemon_cpu_pct"],
                     w["devices_cpu_pct"], w["bench_cpu_pct"], w["load_avg_1min"]))
    note = (f"{r['devices_running']} of {r['devices_asked']} bus devices running "
            f"({r['devices_online']} online), {r['gpio_buttons']} GPIO buttons on mock pins, "
            f"{r['cpus']} CPUs; events at the subscriber under load: "
            f"{r['loaded']['events_per_s_received']}/s.")
    if r.get("device_start_error"):
        note += f" Devices that did not start: {r['device_start_error']}."
    rss = r["idle"]["daemon_rss_mb"]
    note += f" Resident at idle: {rss} MB (target <= 35 MB: {met(rss, 35.0)})."
    return ("### Gateway daemon footprint (`hallgate run`, GPIOZERO_PIN_FACTORY=mock)\n\n"
            + table(("state", "RSS MB", "peak RSS MB", "daemon CPU % of a core",
                     "device processes CPU %", "hub + driver CPU %", "load"), rows)
            + "\n\n" + note + "\n")


def section_daemon_cpu(r):
    rows = [(f"{r['gpio_buttons']} GPIO buttons, no bus, at rest",
             f"{r['gpio_idle_cpu_pct']} (target <= {r['gpio_idle_target_pct']}: "
             f"{met(r['gpio_idle_cpu_pct'], r['gpio_idle_target_pct'])})",
             "", r["gpio_idle_rss_mb"]),
            (f"+ {r['devices']} idle bus devices", r["bus_idle_cpu_pct"],
             f"{r['cpu_per_exchange_us']} us x {r['exchanges_per_s']}/s",
             r["bus_idle_rss_mb"])]
    return ("### Gateway daemon CPU at rest and per bus exchange (`hallgate run`, mock pins)\n\n"
            + table(("daemon", "CPU % of a core", "per bus exchange", "RSS MB"), rows)
            + "\n\nThe GPIO sampler sleeps until a pin's edge, with a safety pass a second. "
              "Per exchange: the daemon's CPU with the bus polling, less its CPU at rest, over "
              "the exchanges its control socket counted. The same polling on a core 3x / 5x "
              f"slower (a Raspberry Pi 3's is several times slower): "
              f"{r['bus_cpu_pct_on_3x_slower_core']}% / {r['bus_cpu_pct_on_5x_slower_core']}% "
              "of it.\n")


def section_adapter(r):
    rows = [("none (a UART)" if x["latency_timer_ms"] is None
             else f"{x['latency_timer_ms']} ms", x["cycle_ms"], x["wire_ms"],
             x["cycle_over_wire"], x["timeouts"], x["load_avg_1min"]) for x in r["rows"]]
    return (f"### Poll cycle of {r['devices']} idle devices behind a USB adapter's latency "
            f"timer, {r['baud']} baud\n\n"
            + table(("adapter latency timer", "cycle ms", "wire ms", "cycle / wire",
                     "timeouts", "load"), rows)
            + f"\n\n16 ms (Linux's default for an FTDI) over 1 ms (what the gateway sets, "
              f"gateway/adapter.py and hardware/udev/): {r['cycle_16_over_1']} x; "
              f"{r['devices']} x 16 ms = {r['estimate_16_ms']} ms. The simulated line "
              "(sim/hub.py) holds each reply until the adapter's timer runs out, as an FTDI "
              "chip does; the same devices, the timer switched on the running line.\n")


def section_heap(rows_in):
    kb = 1024
    rows = []
    for r in rows_in:
        if r["memory_error"]:
            rows.append((r["heap"], r["memory_error"], "", "", "", ""))
            continue
        rows.append((r["heap"], f"{r['loaded_bytes'] / kb:.1f}",
                     f"{r['peak_tight_bytes'] / kb:.1f} ({r['peak_tight_share']:.0%})",
                     f"{r['headroom_bytes'] / kb:.1f}", f"{r['live_peak_bytes'] / kb:.1f}",
                     f"{r['peak_board_bytes'] / kb:.1f}"))
    events = rows_in[0]["events"] if rows_in else "?"
    return (f"### Firmware heap, {events:,} events on MicroPython (unix port, 64-bit "
            "objects: a Pico's are up to half)\n\n"
            + table(("heap", "in use once loaded KB", "high-water KB (share)", "headroom KB",
                     "most live after a collection KB", "fullest before a collection KB"),
                    rows)
            + "\n\nHigh-water: gc.mem_alloc() after every tick and request with a collection "
              "every 1 KB allocated (live data + at most 1 KB garbage). Fullest: the collector "
              "left to run when the heap is full, as on a board. In use once loaded includes "
              "the driver script's own code (bench/mp/heap_soak.py).\n")


def section_ota(r):
    rows = [("bus share taken by the update", f"{r['job_share_measured']}",
             f"allowed {r['share_allowed']}"),
            ("sending time / wire time of the image", r["send_over_wire"], ""),
            ("poll cycle during / before", r["cycle_during_over_before"], ""),
            ("press to master p50 ms, before -> during",
             f"{r['press_ms_p50_before']} -> {r['press_ms_p50_during']}", "")]
    return (f"### Firmware update over the bus, {r['devices']} devices: {r['result']}\n\n"
            + table(("", "measured", ""), rows) + "\n")


def section_device_idle(r):
    return (f"### Idle simulated devices ({r['devices']} firmware processes, no master)\n\n"
            + table(("devices", "CPU % of one core, all", "each", "scaled to 72", "target"),
                    [(r["devices"], r["devices_idle_cpu_pct"], r["per_device_idle_cpu_pct"],
                      r["scaled_to_72_pct"], r["target_pct_for_72"])]) + "\n")


def section_sim_day(r):
    chain = r["chain_ms"]
    rows = [("wait avg s", r["wait_avg_s"]["full"], r["wait_avg_s"]["model"],
             r["wait_avg_s"]["ratio"]),
            ("wait p95 s", r["wait_p95_s"]["full"], r["wait_p95_s"]["model"],
             r["wait_p95_s"]["ratio"]),
            ("over 15 min", r["over_norm_share"]["full"], r["over_norm_share"]["model"], "")]
    lat = [(k.replace("_", " "), v.get("p50"), v.get("p95"), v.get("p99"), v.get("n"))
           for k, v in chain.items()]
    return (f"### A simulated day against its model run ({r['windows']} windows, "
            f"{r['visitors']} visitors, {r['hall_hours']} hall hours in {r['real_s']} s "
            "real)\n\n" + table(("", "full run", "model run", "full / model"), rows)
            + "\n\nThe chain's real latency (ms), never counted as hall time:\n\n"
            + table(("path", "p50", "p95", "p99", "n"), lat) + "\n")


def section_sim_town(r):
    rows = [(name, s["windows"], s["gateways"], s["devices"], s["visitors"],
             f"{s['wait_avg_s']['full']} / {s['wait_avg_s']['model']}",
             f"{s['wait_p95_s']['full']} / {s['wait_p95_s']['model']}",
             s["chain_ms"]["press_to_central"].get("p50"),
             s["chain_ms"]["press_to_central"].get("p99"))
            for name, s in r["sites"].items()]
    return (f"### The {r['profile']} day: {len(r['sites'])} sites, {r['gateways']} gateways, "
            f"{r['devices']} firmware devices, {r['visitors']} visitors in {r['real_s']} s "
            f"real (target {r['target_s']})\n\n"
            + table(("site", "windows", "gateways", "devices", "visitors",
                     "wait avg s, full / model", "wait p95 s, full / model",
                     "press to central p50 ms", "p99"), rows) + "\n")


SECTIONS = {"latency": section_latency, "mqtt_outbox": section_outbox,
            "bus_cycle": section_bus, "footprint": section_footprint,
            "daemon_cpu": section_daemon_cpu, "adapter_latency": section_adapter,
            "fw_heap": section_heap, "ota_share": section_ota,
            "device_idle": section_device_idle, "sim_day": section_sim_day,
            "sim_town": section_sim_town}


def plot(samples, path):
    """Latency CDFs of the three paths on a log axis; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    labels = {"paho": "plain paho QoS 1", "gpio": "GPIO press", "bus": "bus key press"}
    for key, label in labels.items():
        values = sorted(samples.get(key) or [])
        if values:
            ax.step(values, [(i + 1) / len(values) for i in range(len(values))],
                    where="post", label=f"{label} (n={len(values)})")
    ax.set_xscale("log")
    ax.set_xlabel("press (or publish) to subscriber, ms")
    ax.set_ylabel("share of presses")
    ax.set_title("Press to broker latency, one run")
    ax.grid(True, which="both", alpha=0.3)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.legend(loc="center")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def report(results, took, info, quick):
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    lines = [f"# Benchmarks: the last `make bench`{' (--quick)' if quick else ''}",
             "", f"Run {date} on {info['host']}: {info['cpu']}, {info['cpus']} CPUs, "
             f"{info['memory_gb']} GB, {info['os']}, Python {info['python']}, "
             f"{info['broker']}; load average {info['load_avg_1min_at_start']} at the start "
             "(the machine is shared: read the ratios, which are measured in the same run).",
             "", "Written by `bench/run_all.py`; every figure is also in `results.json`.", ""]
    found = targets(results)
    if found:
        lines += [section_targets(found), ""]
    for name, result in results.items():
        if "error" in result:
            lines += [f"### {name}: FAILED", "", "```", result["error"], "```", ""]
            continue
        lines += [SECTIONS[name](result), f"_{name}: {took[name]:.0f} s._", ""]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes: a check, not figures")
    p.add_argument("--only", help=f"comma-separated subset of {','.join(BENCHES)}")
    p.add_argument("--out", default=str(HERE), help="folder for RESULTS.md, results.json, "
                   "latency.png (default: bench/)")
    p.add_argument("--json", action="store_true", help="print the results as JSON at the end")
    args = p.parse_args(argv)
    names = list(BENCHES) if not args.only else args.only.split(",")
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        p.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHES)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = machine()
    results, took = {}, {}
    for name in names:
        print(f"== {name} ...", flush=True)
        results[name], took[name] = run(name, args.quick)
        r = results[name]
        if "error" in r:
            print(f"   FAILED: {r['error']}", flush=True)
        elif not args.json:
            text = SECTIONS[name](r)
            print("\n".join("   " + line for line in text.splitlines() if line
                            and not line.startswith("![")), flush=True)
            print(f"   ({took[name]:.0f} s)", flush=True)
    samples = (results.get("latency") or {}).pop("samples_ms", None)
    plotted = bool(samples) and plot(samples, out / "latency.png")
    text = report(results, took, info, args.quick)
    if not plotted:
        text = text.replace("![press latency distributions](latency.png)",
                            "(no plot: matplotlib missing or no samples)")
    (out / "RESULTS.md").write_text(text)
    found = targets(results)
    if found and not args.json:
        print("\n".join("   " + line for line in section_targets(found).splitlines() if line))
    everything = {"machine": info, "quick": args.quick, "seconds": took, "targets": found,
                  "results": results, "latency_samples_ms": samples}
    (out / "results.json").write_text(json.dumps(everything, indent=1) + "\n")
    if args.json:
        print(json.dumps(everything, indent=1))
    print(f"wrote {out / 'RESULTS.md'}, {out / 'results.json'}"
          + (f", {out / 'latency.png'}" if plotted else ""))
    failed = [n for n, r in results.items() if "error" in r]
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
