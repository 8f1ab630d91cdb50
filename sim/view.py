"""The simulator's live terminal view (rich) and its end-of-day report as text.

`render(snapshot)` turns `Hall.snapshot()` into a rich renderable: one row per window with
what its display and panel show (read back from the firmware) and its figures so far.
`report_text(report)` is the end-of-day summary a person reads (`--json` prints the dict).
"""

from datetime import UTC, datetime

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

MODE_STYLE = {"idle": "dim", "called": "bold yellow", "serving": "green", "paused": "blue",
              "closed": "red"}


def _mmss(seconds):
    seconds = int(seconds or 0)
    return f"{seconds // 60}:{seconds % 60:02d}"


def _pct(x):
    return "-" if x is None else f"{100 * x:.0f}%"


def render(snap):
    clock = datetime.fromtimestamp(snap["clock"], UTC).strftime("%H:%M")
    a, now = snap["all"], snap["now"]
    head = Text.assemble(
        (f" {snap['day']} {clock} ", "bold reverse"),
        f"  issued {a.get('issued', 0)}  served {a.get('served', 0)}"
        f"  no-show {a.get('noshow', 0)}  waiting {now.get('waiting', 0)}"
        f"  wait avg {_mmss(a.get('wait_avg_s'))} p95 {_mmss(a.get('wait_p95_s'))}"
        f"  over 15 min {_pct(a.get('over_norm_share'))}"
        f"  satisfaction {_pct(a.get('satisfaction'))} ({a.get('votes', 0)} votes,"
        f" {a.get('misuse', 0)} misuse)")
    table = Table(expand=True, box=None, header_style="bold")
    for col in ("win", "serves", "display", "panel", "ticket", "queue", "wait", "served",
                "like", "dislike", "misuse"):
        table.add_column(col, justify="right" if col in ("win", "queue", "served", "like",
                                                         "dislike", "misuse") else "left")
    for w in snap["windows"]:
        display = Text(w["display"] or "·", style="bold yellow blink" if w["blink"] else "")
        wait = Text(_mmss(w["wait_s"]) + (" tea" if w["tea"] else ""),
                    style="red" if w["tea"] else "")
        table.add_row(str(w["n"]), ",".join(w["services"]), display,
                      Text(w["mode"], style=MODE_STYLE.get(w["mode"], "")), w["ticket"],
                      str(w["queue"]), wait, str(w["served"]), str(w["likes"]),
                      str(w["dislikes"]), str(w["misuse"]))
    foot = Text(f"gateways {snap.get('gateways', 1)} (starts {snap['gateway_starts']})"
                f"  central starts "
                f"{snap['central_starts']}  problems {snap['problems']}", style="dim")
    return Panel(Group(head, table, foot), title=f"hallgate sim: {snap.get('site', 'the hall')}",
                 subtitle="displays and panels as the firmware shows them")


def _speed(speed):
    return "as fast as the chain answers" if speed is None else f"at most {speed:g}x"


def report_text(r):
    c = (r.get("central") or {}).get("all", {})
    lines = [
        f"End of day {r['day']}: {'finished' if r['finished'] else 'NOT FINISHED'} in "
        f"{r['real_s']} s real ({r['sim_hours']} simulated hours,"
        f" speed {_speed(r['options']['speed'])})",
        f"  visitors planned {r['plan']['visitors']}, tickets issued {c.get('issued', 0)}:"
        f" served {c.get('served', 0)}, no-show {c.get('noshow', 0)}",
        f"  wait avg {_mmss(c.get('wait_avg_s'))}, p95 {_mmss(c.get('wait_p95_s'))},"
        f" over 15 min {_pct(c.get('over_norm_share'))}",
        f"  votes {c.get('votes', 0)} (likes {c.get('likes', 0)}, dislikes"
        f" {c.get('dislikes', 0)}), satisfaction {_pct(c.get('satisfaction'))},"
        f" misuse presses {c.get('misuse', 0)}",
        f"  calls {r['calls']}, shown on the right display {r['calls_shown']};"
        f" vote presses {r['vote_presses']}",
        f"  gateway starts {r['gateway_starts']}, central starts {r['central_starts']};"
        f" broker {r['broker']['url']} (MQTT {r['broker']['protocol']})",
    ]
    lines += _balance_lines(r.get("central") or {})
    chain = r.get("chain_ms") or {}
    if chain:
        lines.append("  the chain's real latency, not in hall time (ms, p50/p95/p99): " + "; ".join(
            f"{name.replace('_', ' ')} {v['p50']}/{v['p95']}/{v['p99']}"
            for name, v in chain.items() if v.get("n")))
    if r.get("rejected_presses"):
        lines.append(f"  presses the central rejected: {r['rejected_presses']}")
    if r.get("people"):
        lines.append("  what people did: " + ", ".join(f"{n} {what}" for what, n in
                                                    sorted(r["people"].items())))
    by_window = (r.get("central") or {}).get("by_window", {})
    for n, w in by_window.items():
        lines.append(f"    window {n:>2}: served {w['served']:>3}, no-show {w['noshow']:>2},"
                     f" satisfaction {_pct(w['satisfaction'])}")
    for p in r["problems"]:
        lines.append(f"  problem: {p}")
    return "\n".join(lines)


def town_text(r):
    """The town's report: each site's, then the totals."""
    a = r["all"]
    lines = []
    for site, sr in r["sites"].items():
        lines += [f"== {site} ==", report_text(sr), ""]
    done = "finished" if r["finished"] else "NOT FINISHED"
    lines.append(f"Town: {len(r['sites'])} sites, {done} in {r['real_s']} s real: "
                 f"issued {a['issued']}, served "
                 f"{a['served']}, no-show {a['noshow']}, wait avg {_mmss(a['wait_avg_s'])}, "
                 f"over 15 min {_pct(a['over_norm_share'])}, votes {a['votes']} (likes "
                 f"{a['likes']}, dislikes {a['dislikes']})")
    return "\n".join(lines)


def model_text(r):
    """The model run's report (`hallgate sim --model-only`)."""
    c = r["central"]["all"]
    o = r["options"]
    lines = [
        f"Model run (the central queue alone, no hardware, no broker): {o['windows']} windows,"
        f" {o['visitors']} visitors, {o['hours']:g} h plan, seed {o['seed']}:"
        f" {r['sim_hours']} hall hours in {r['real_s']} s real",
        f"  served {c['served']}, no-show {c['noshow']}, redirects {c['redirected_out']}",
        f"  wait avg {_mmss(c.get('wait_avg_s'))}, p95 {_mmss(c.get('wait_p95_s'))},"
        f" over 15 min {_pct(c.get('over_norm_share'))}",
        f"  votes {c['votes']}, satisfaction {_pct(c.get('satisfaction'))}",
    ]
    lines += _balance_lines(r["central"])
    lines += [f"  problem: {p}" for p in r["problems"]]
    return "\n".join(lines)


def _balance_lines(central):
    """Per service, as the central counts it: issued + redirected in = served + no-show +
    redirected out + still open (or ended at closing); and the day's close."""
    lines = []
    for code, g in (central.get("by_service") or {}).items():
        lines.append(f"    service {code}: issued {g['issued']} + redirected in "
                     f"{g['redirected_in']} = served {g['served']} + no-show {g['noshow']} + "
                     f"redirected out {g['redirected_out']} + open {g['open']}"
                     + (f" + closed {g['closed']}" if g.get("closed") else ""))
    close = central.get("close")
    if close and close.get("overrun"):
        lines.append(f"  OVERRUN: the last visit ended {close['overrun_s'] / 60:.0f} min after "
                     f"closing ({close['closes']})")
    return lines
