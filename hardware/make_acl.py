#!/usr/bin/env python3
"""Writes the mosquitto ACL of a secured hallgate deployment from the gateways' hall configs.

Why generated, not patterns: a gateway may publish events only for the windows it serves,
and read only their desired state. Window topics are `hall/v1/{site}/window/{n}/...`: they
name the window, not the gateway, and which windows a gateway serves is in its hall config
only. mosquitto's ACL patterns substitute %u (user name) and %c (client id), each for a whole
topic level, so no pattern can say "windows 1-4 of this gateway". So each certificate's CN
(its user name, hardware/make_test_ca.py) gets a `user` block with its exact topics, written
here from the configs the gateways run (read and checked by gateway/config.py load_config):

  gateway  hallgate-{site}-{gateway}   write gw/{gateway}/status, devices, errors and
                                       window/{n}/event; read window/{n}/display, panel, vote
                                       (for each window n of its config), gw/{gateway}/receipt
                                       and central/status; with [mqtt] subscribe = "site"
                                       desired too (the whole site's desired state)
  central  hallgate-central-{site}     read window/+/event, ticket/request, staff/session,
                                       gw/+/status, devices, errors; write window/+/display,
                                       panel, vote, session, desired, gw/+/receipt, ticket/issued,
                                       refused, staff/session/result, central/status, stats,
                                       alerts, errors
  staff    hallgate-staff-{site}       write staff/session; read staff/session/result and
                                       window/+/session (the site's staff app: operator
                                       logins, protocols/MQTT.md section 9)
  kiosk    hallgate-kiosk-{site}-{name}    write ticket/request; read ticket/issued, refused
  monitor  hallgate-monitor-{site}-{name}  read hall/v1/{site}/# (nothing written)

(all under hall/v1/{site}/, protocols/MQTT.md). Nothing else is allowed: no `pattern` lines,
no topics for anonymous clients, no $SYS. Re-run it when a gateway's windows change, then
reload the broker (`systemctl reload mosquitto`: SIGHUP re-reads the ACL).

The configs are checked whole; two gateways of a site serving the same window, or two
identities with the same CN, are refused. A file a config names (ca_file, cert_file, ...)
that is not on this machine is only noted: it matters on the gateway, not for the ACL.

    python3 hardware/make_acl.py hardware/hall-12-windows.toml hardware/branch-2-windows.toml \\
        -o /etc/mosquitto/hallgate/acl
"""

import argparse
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from hallgate.gateway.config import ConfigError, load_config
from make_test_ca import NAME, central_cn, gateway_cn, kiosk_cn, monitor_cn

COMMAND_KINDS = ("display", "panel", "vote")  # central -> gateway, retained desired state
CENTRAL_WINDOW_KINDS = (*COMMAND_KINDS, "session")  # central -> anyone, retained, per window
GATEWAY_TOPICS = ("status", "devices", "errors")  # hall/v1/{site}/gw/{gateway}/...


@dataclass(frozen=True)
class GatewayEntry:
    site: str
    gateway: str
    windows: tuple[int, ...]
    source: str  # the config file it came from
    subscribe: str = "windows"  # its [mqtt] subscribe: "site" reads the site's `desired` too


class AclError(ValueError):
    """Configs that cannot make one ACL: what is wrong, one line per problem."""


def _load_ignoring_missing_files(path):
    """load_config(path), but a file the config names that is not on this machine (the
    gateway's certificate, say) is dropped from a copy of the config; (config, notes)."""
    notes = []
    text = Path(path).read_text(encoding="utf-8")
    for _ in range(4):  # each round drops the missing files found; a config has at most 5
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / Path(path).name
            copy.write_text(text, encoding="utf-8")
            try:
                return load_config(copy), notes
            except ConfigError as e:
                problems = e.problems
        if not all(p.message.startswith("file not found") and p.line for p in problems):
            raise ConfigError(problems)
        lines = text.splitlines(keepends=True)
        for p in problems:
            lines[p.line - 1] = "# " + lines[p.line - 1]
            notes.append(f"{path}:{p.line}: {p.key}: not on this machine, ignored for the ACL")
        text = "".join(lines)
    raise ConfigError(problems)


def read_gateways(paths):
    """[GatewayEntry] from hall config files; ConfigError for a bad one; (entries, notes)."""
    entries, notes = [], []
    for path in paths:
        try:
            config = load_config(path)
        except ConfigError as e:
            if not all(p.message.startswith("file not found") for p in e.problems):
                raise
            config, more = _load_ignoring_missing_files(path)
            notes += more
        entries.append(GatewayEntry(config.gateway.site, config.gateway.id,
                                    tuple(config.window_numbers), str(path),
                                    config.mqtt.subscribe))
    return entries, notes


def _site_and_name(value):
    site, sep, name = value.partition(":")
    if not sep or not NAME.fullmatch(site) or not NAME.fullmatch(name):
        raise argparse.ArgumentTypeError(f"{value!r}: SITE:NAME, each 1-64 of A-Z a-z 0-9 . _ -")
    return site, name


def _ranges(numbers):
    """[1, 2, 3, 5] -> '1-3, 5'."""
    out, start, prev = [], None, None
    for n in sorted(numbers):
        if start is not None and n == prev + 1:
            prev = n
            continue
        if start is not None:
            out.append(f"{start}-{prev}" if prev > start else str(start))
        start = prev = n
    if start is not None:
        out.append(f"{start}-{prev}" if prev > start else str(start))
    return ", ".join(out)


def gateway_block(entry):
    base = f"hall/v1/{entry.site}"
    lines = [f"# gateway {entry.gateway} of site {entry.site}, windows "
             f"{_ranges(entry.windows)} ({entry.source})",
             f"user {gateway_cn(entry.site, entry.gateway)}"]
    lines += [f"topic write {base}/gw/{entry.gateway}/{t}" for t in GATEWAY_TOPICS]
    for n in entry.windows:
        lines.append(f"topic write {base}/window/{n}/event")
        lines += [f"topic read {base}/window/{n}/{kind}" for kind in COMMAND_KINDS]
    if entry.subscribe == "site":  # one snapshot of every window: the site's, not its own
        lines.append(f"topic read {base}/desired")
    # its receipts, and the central's status (a new `online` makes it re-send)
    lines += [f"topic read {base}/gw/{entry.gateway}/receipt", f"topic read {base}/central/status"]
    return lines


def staff_cn(site):
    """The CN of a site's staff app (operator logins; make_test_ca.py has no option for it
    yet: issue it from the CA like the others)."""
    return f"hallgate-staff-{site}"


def central_block(site):
    base = f"hall/v1/{site}"
    return [
        f"# the central queue service of site {site}",
        f"user {central_cn(site)}",
        f"topic read {base}/window/+/event",
        f"topic read {base}/ticket/request",
        f"topic read {base}/staff/session",
        *(f"topic read {base}/gw/+/{t}" for t in GATEWAY_TOPICS),
        *(f"topic write {base}/window/+/{kind}" for kind in CENTRAL_WINDOW_KINDS),
        f"topic write {base}/desired",
        f"topic write {base}/ticket/issued",
        f"topic write {base}/ticket/refused",
        f"topic write {base}/staff/session/result",
        f"topic write {base}/gw/+/receipt",
        f"topic write {base}/central/status",
        f"topic write {base}/central/stats",
        f"topic write {base}/central/errors",
        f"topic write {base}/central/alerts",
    ]


def staff_block(site):
    base = f"hall/v1/{site}"
    return [f"# the staff app of site {site}: logs operators in and out of windows",
            f"user {staff_cn(site)}",
            f"topic write {base}/staff/session",
            f"topic read {base}/staff/session/result",
            f"topic read {base}/window/+/session"]


def kiosk_block(site, name):
    return [f"# ticket kiosk {name} of site {site}", f"user {kiosk_cn(site, name)}",
            f"topic write hall/v1/{site}/ticket/request",
            f"topic read hall/v1/{site}/ticket/issued",
            f"topic read hall/v1/{site}/ticket/refused"]


def monitor_block(site, name):
    return [f"# monitoring client {name} of site {site}: reads everything of the site",
            f"user {monitor_cn(site, name)}", f"topic read hall/v1/{site}/#"]


def make_acl(gateways, *, central=True, staff=True, kiosks=(), monitors=()):
    """The ACL text for these gateways (and a central service per site when `central`, a
    staff app per site when `staff`); AclError if two gateways share a window or an
    identity, or two CNs collide."""
    problems = []
    seen_gw = {}
    owner = {}  # (site, window) -> entry
    for e in gateways:
        if (e.site, e.gateway) in seen_gw:
            problems.append(f"gateway {e.gateway} of site {e.site} is in both "
                            f"{seen_gw[e.site, e.gateway].source} and {e.source}")
            continue
        seen_gw[e.site, e.gateway] = e
        for n in e.windows:
            other = owner.setdefault((e.site, n), e)
            if other is not e:
                problems.append(f"window {n} of site {e.site} is served by both gateway "
                                f"{other.gateway} ({other.source}) and gateway {e.gateway} "
                                f"({e.source}): only one may publish its events")
    sites = sorted({e.site for e in gateways} | {s for s, _ in kiosks} | {s for s, _ in monitors})
    blocks = [gateway_block(e) for e in seen_gw.values()]
    if central:
        blocks += [central_block(s) for s in sites]
    if staff:
        blocks += [staff_block(s) for s in sites]
    blocks += [kiosk_block(s, n) for s, n in kiosks]
    blocks += [monitor_block(s, n) for s, n in monitors]
    users = defaultdict(list)
    for block in blocks:
        user = next(line for line in block if line.startswith("user "))
        users[user].append(block[0].lstrip("# "))
    for user, whose in users.items():
        if len(whose) > 1:
            problems.append(f"{user[5:]} would be the CN of both " + " and ".join(whose))
    if problems:
        raise AclError("\n".join(problems))
    head = [
        "# mosquitto ACL of a secured hallgate deployment: written by hardware/make_acl.py from",
        "# the gateways' hall configs; re-run it when a gateway's windows change.",
        "# The user name is the client certificate's CN (use_identity_as_username true).",
        "# Nothing is allowed that is not listed: no anonymous topics, no patterns.",
    ]
    return "\n".join(head + [line for block in blocks for line in ["", *block]]) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="make_acl.py",
        description="Write the mosquitto ACL (hardware/mosquitto/README.md) from the gateways' "
        "hall configs: each gateway may publish only its own status, devices, errors and its "
        "windows' events, and read only its windows' desired state; a central service and a "
        "staff app per site get their roles.")
    p.add_argument("configs", nargs="+", type=Path, metavar="HALL.toml",
                   help="the hall config of every gateway the broker serves")
    p.add_argument("--no-central", action="store_true",
                   help="no central service user (hallgate-central-{site}) for the sites")
    p.add_argument("--no-staff", action="store_true",
                   help="no staff app user (hallgate-staff-{site}) for the sites")
    p.add_argument("--kiosk", action="append", default=[], type=_site_and_name,
                   metavar="SITE:NAME", help="a ticket kiosk (hallgate-kiosk-{site}-{name})")
    p.add_argument("--monitor", action="append", default=[], type=_site_and_name,
                   metavar="SITE:NAME",
                   help="a read-only monitoring client (hallgate-monitor-{site}-{name})")
    p.add_argument("-o", "--output", type=Path, help="write here (default: standard output)")
    args = p.parse_args(argv)
    try:
        gateways, notes = read_gateways(args.configs)
        text = make_acl(gateways, central=not args.no_central, staff=not args.no_staff,
                        kiosks=args.kiosk, monitors=args.monitor)
    except (ConfigError, AclError) as e:
        print(f"make_acl: {e}", file=sys.stderr)
        return 1
    for note in notes:
        print(f"make_acl: note: {note}", file=sys.stderr)
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
        print(f"wrote {args.output}: {len(gateways)} gateway(s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
