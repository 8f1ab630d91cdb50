#!/usr/bin/env python3
"""Writes the configs of the city's NATS cluster (hardware/nats/): one `nats-N.conf` per node,
with the users and permissions of every gateway, central service, staff app, kiosk and
monitor, from the gateways' hall configs.

Design note
-----------
Operations: `python3 hardware/make_nats.py HALL.toml... --node HOST --node HOST --node HOST
-o DIR` writes DIR/nats-1.conf ... nats-N.conf (one per --node, in that order; the systemd
unit hardware/nats/nats-hallgate@.service runs `nats-N.conf` as instance N). Re-run it when
a gateway's windows change, copy the files to the nodes and reload (`systemctl reload
nats-hallgate@N`: SIGHUP re-reads users and permissions).
Goals: permissions equal to the mosquitto ACL's (hardware/make_acl.py), from the very same
rules, so a hall moved from mosquitto to the city keeps its guarantees; nothing allowed that
is not listed; the same identities (the client certificate's CN).
Plan:
- Users come from make_acl.py's blocks (`gateway_block`, `central_block`, `staff_block`,
  `kiosk_block`, `monitor_block`): `topic write T` becomes a publish allow and `topic read
  T` a subscribe allow of the NATS subject of T (MQTT `a/b/+/#` is NATS `a.b.*.>`). A site
  or gateway id with a '.' (the contract allows it) is refused here: nats-server 2.9 closes
  the connection of a client that publishes or subscribes a topic with a '.' in it
  (measured: "characters ' ' and '.' not supported for MQTT topics"; 2.10 maps them to
  '//'). One difference, NATS's: a gateway reads its site's three filters
  `window/+/{display,panel,vote}` and its site's `desired` snapshot (`[mqtt] subscribe =
  "site"`, the city's way), not its own windows' topics. Measured on nats-server 2.9:
  a wildcard subscription with a deny for some windows still delivers the denied ones at
  QoS 1 (JetStream consumers ignore per-message deny), so reads can be limited per
  subscription filter only, and 30 per-window QoS 1 subscriptions per gateway (each a
  JetStream consumer) cost ~480 MB per node and 3.5x the desired-state throughput. Desired
  state holds no secret (what a window's display shows); what a gateway may WRITE is still
  limited to its own windows' events and its own gw/{gateway}/ topics, as with mosquitto.
- Every MQTT user also subscribes `$MQTT.sub.>`: NATS delivers a QoS 1 subscription through
  a JetStream consumer on that subject and checks the client's permission for it. MQTT
  clients cannot subscribe `$MQTT/sub/#` themselves (refused), and `allowed_connection_types:
  ["MQTT"]` keeps these users off the NATS protocol port, where that permission would read
  every consumer's traffic.
- Identities: the MQTT listener has `tls { verify_and_map: true }`: the client certificate's
  subject, `CN=hallgate-{site}-{gateway}` (hardware/make_test_ca.py), is the user name, as
  mosquitto's `use_identity_as_username`. Routes between the nodes are TLS with verify, on
  their own certificate (it must allow both serverAuth and clientAuth: a route dials out).
- `nats_users(...)` returns the users as Python dicts; `node_config(...)` renders a node's
  file with them (JSON values, which nats-server's parser reads). sim/natscluster.py takes
  the same dicts (`users=`), so the tests run the permissions made here.

    python3 hardware/make_nats.py hardware/hall-12-windows.toml hardware/branch-2-windows.toml \\
        --node nats-1.city.example --node nats-2.city.example --node nats-3.city.example \\
        -o hardware/nats
"""

import argparse
import json
import re
import sys
from pathlib import Path

from hallgate.gateway.config import ConfigError
from make_acl import (
    AclError,
    _site_and_name,
    central_block,
    gateway_block,
    kiosk_block,
    make_acl,
    monitor_block,
    read_gateways,
    staff_block,
)

COMMAND_KINDS = ("display", "panel", "vote")
MQTT_DELIVERY = "$MQTT.sub.>"  # where NATS delivers QoS 1 subscriptions (JetStream consumers)
CLUSTER_NAME = "hallgate-city"
PORTS = {"mqtt": 8883, "cluster": 6222, "client": 4222, "http": 8222}
ETC = "/etc/nats-hallgate"  # certificates and configs on a node (the systemd unit's)
STORE = "/var/lib/nats-hallgate"  # JetStream's store (StateDirectory of the unit)
_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}")


class NatsError(AclError):
    """Configs that cannot make the cluster's users: what is wrong and where."""


def mqtt_subject(topic):
    """An MQTT topic (filter) as NATS names it: '/' -> '.', '+' -> '*', '#' -> '>'.
    ValueError for a topic nats-server 2.9 refuses (a '.' or a space) or an empty level."""
    levels = topic.split("/")
    if any(not level for level in levels):
        raise ValueError(f"topic {topic!r}: an empty level has no NATS subject")
    bad = sorted({c for c in topic if c in ". "})
    if bad:
        raise ValueError(f"topic {topic!r}: nats-server 2.9 refuses {' and '.join(map(repr, bad))} "
                         "in MQTT topics (it closes the client's connection)")
    return ".".join({"+": "*", "#": ">"}.get(level, level) for level in levels)


def _block_user(block, user_name):
    """(user name, publish subjects, subscribe subjects) of one make_acl block; NatsError
    naming the block (its comment says whose, and from which file) for a topic NATS
    cannot carry."""
    cn = next(line[5:] for line in block if line.startswith("user "))
    publish, subscribe = [], []
    try:
        for line in block:
            if line.startswith("topic write "):
                publish.append(mqtt_subject(line[12:]))
            elif line.startswith("topic read "):
                subscribe.append(mqtt_subject(line[11:]))
    except ValueError as e:
        raise NatsError(f"{block[0][2:]}: {e}; rename the site or gateway (no '.')") from None
    return user_name(cn), publish, subscribe


def _gateway_reads(entry, subjects):
    """A gateway's reads: its own windows' desired state becomes the site's three kind
    filters and the site's `desired` snapshot (see the design note: it reads the whole site
    either way); its receipt and central/status stay as they are."""
    own = {mqtt_subject(f"hall/v1/{entry.site}/window/{n}/{k}")
           for n in entry.windows for k in COMMAND_KINDS}
    kinds = [mqtt_subject(f"hall/v1/{entry.site}/window/+/{k}") for k in COMMAND_KINDS]
    site = mqtt_subject(f"hall/v1/{entry.site}/desired")
    return kinds + [site] + [s for s in subjects if s not in own and s != site]


def certificate_user(cn):
    """The user name nats-server's verify_and_map gives a make_test_ca certificate."""
    return f"CN={cn}"


def _user(name, publish, subscribe, comment):
    return {
        "user": name,
        "permissions": {"publish": {"allow": publish},
                        "subscribe": {"allow": [*subscribe, MQTT_DELIVERY]}},
        "allowed_connection_types": ["MQTT"],
        "_comment": comment,  # dropped when rendered; says whose user it is
    }


def nats_users(gateways, *, central=True, staff=True, kiosks=(), monitors=(),
               user_name=certificate_user):
    """The authorization users (list of dicts) for these gateways and a central service and
    staff app per site, from make_acl's rules; AclError as make_acl() raises it (two
    gateways on one window, two identities with one CN). `user_name(cn)` -> the NATS user
    name: the certificate's subject by default, the CN itself for password users (tests)."""
    make_acl(gateways, central=central, staff=staff, kiosks=kiosks, monitors=monitors)
    sites = sorted({e.site for e in gateways} | {s for s, _ in kiosks} | {s for s, _ in monitors})
    users = []
    for entry in gateways:
        block = gateway_block(entry)
        name, publish, subscribe = _block_user(block, user_name)
        users.append(_user(name, publish, _gateway_reads(entry, subscribe), block[0][2:]))
    blocks = []
    if central:
        blocks += [central_block(s) for s in sites]
    if staff:
        blocks += [staff_block(s) for s in sites]
    blocks += [kiosk_block(s, n) for s, n in kiosks]
    blocks += [monitor_block(s, n) for s, n in monitors]
    for block in blocks:
        name, publish, subscribe = _block_user(block, user_name)
        users.append(_user(name, publish, subscribe, block[0][2:]))
    return users


def strip_comments(users):
    """The users as nats-server takes them (without the `_comment` keys)."""
    return [{k: v for k, v in u.items() if not k.startswith("_")} for u in users]


def _q(value):
    return json.dumps(value)


def node_config(index, hosts, users, *, etc=ETC, store=STORE, ports=PORTS,
                max_file_store="20G", max_memory_store="1G"):
    """The config text of node `index` (1-based) of a cluster on `hosts` (one per node)."""
    if not 1 <= index <= len(hosts):
        raise ValueError(f"node {index}: 1-{len(hosts)}")
    host = hosts[index - 1]
    cluster_port, mqtt_port = ports["cluster"], ports["mqtt"]
    client_port, http_port = ports["client"], ports["http"]
    routes = [f"nats-route://{h}:{cluster_port}" for h in hosts if h != host]
    lines = [
        f"# node {index} of {len(hosts)} of the hallgate city cluster ({host}), written by",
        "# hardware/make_nats.py from the gateways' hall configs; re-run it when a gateway's",
        "# windows change, then `systemctl reload nats-hallgate@N` (hardware/nats/README.md).",
        f"server_name: {_q(f'hallgate-nats-{index}')}",
        "# NATS protocol port: operators' tools only (every hallgate client speaks MQTT).",
        f"listen: {_q(f'127.0.0.1:{client_port}')}",
        f"http: {_q(f'127.0.0.1:{http_port}')}",
        "",
        "jetstream {",
        f"  store_dir: {_q(store)}",
        f"  max_file_store: {max_file_store}",
        f"  max_memory_store: {max_memory_store}",
        "}",
        "",
        "cluster {",
        f"  name: {CLUSTER_NAME}",
        f"  listen: {_q(f'0.0.0.0:{cluster_port}')}",
        f"  routes: {_q(routes)}",
        "  # routes dial out too: the route certificate needs serverAuth and clientAuth",
        "  tls {",
        f"    cert_file: {_q(f'{etc}/route.crt')}",
        f"    key_file: {_q(f'{etc}/route.key')}",
        f"    ca_file: {_q(f'{etc}/ca.crt')}",
        "    verify: true",
        "    timeout: 2",
        "  }",
        "}",
        "",
        "mqtt {",
        f"  listen: {_q(f'0.0.0.0:{mqtt_port}')}",
        "  # sessions, QoS 1 messages and retained state on every node: one node's loss",
        "  # loses nothing acknowledged (hardware/nats/README.md, failure modes)",
        "  stream_replicas: 3" if len(hosts) >= 3 else f"  stream_replicas: {len(hosts)}",
        "  # a QoS 1 message with no PUBACK is sent again after this (a reconnecting",
        "  # client gets its unacknowledged messages at once anyway)",
        "  ack_wait: \"30s\"",
        "  tls {",
        f"    cert_file: {_q(f'{etc}/broker.crt')}",
        f"    key_file: {_q(f'{etc}/broker.key')}",
        f"    ca_file: {_q(f'{etc}/ca.crt')}",
        "    # the client certificate is required; its subject is the user name",
        "    verify_and_map: true",
        "    timeout: 2",
        "  }",
        "}",
        "",
        "authorization {",
        "  users: [",
    ]
    for user in users:
        lines.append(f"    # {user.get('_comment', user['user'])}")
        lines.append(f"    {_q(strip_comments([user])[0])}")
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


def _host(value):
    if not _HOST.fullmatch(value) or value.startswith(("-", ".")):
        raise argparse.ArgumentTypeError(f"{value!r}: a host name or IPv4 address of a node")
    return value


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="make_nats.py",
        description="Write the config of each node of the city's NATS cluster "
        "(hardware/nats/README.md) from the gateways' hall configs: the users and "
        "permissions equal to the mosquitto ACL's (hardware/make_acl.py), TLS with client "
        "certificates on the MQTT listener and the routes, JetStream.")
    p.add_argument("configs", nargs="+", type=Path, metavar="HALL.toml",
                   help="the hall config of every gateway the cluster serves")
    p.add_argument("--node", action="append", default=[], type=_host, metavar="HOST",
                   help="a node's host name (what the other nodes and the gateways use); "
                   "repeat for each node, 3 recommended")
    p.add_argument("--no-central", action="store_true",
                   help="no central service user (hallgate-central-{site}) for the sites")
    p.add_argument("--no-staff", action="store_true",
                   help="no staff app user (hallgate-staff-{site}) for the sites")
    p.add_argument("--kiosk", action="append", default=[], type=_site_and_name,
                   metavar="SITE:NAME", help="a ticket kiosk (hallgate-kiosk-{site}-{name})")
    p.add_argument("--monitor", action="append", default=[], type=_site_and_name,
                   metavar="SITE:NAME",
                   help="a read-only monitoring client (hallgate-monitor-{site}-{name})")
    p.add_argument("--etc", default=ETC, help=f"certificates' folder on a node (default {ETC})")
    p.add_argument("--store", default=STORE, help=f"JetStream store (default {STORE})")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="folder for nats-1.conf ... nats-N.conf")
    args = p.parse_args(argv)
    hosts = args.node or ["nats-1.city.example", "nats-2.city.example", "nats-3.city.example"]
    if len(set(hosts)) != len(hosts):
        p.error("--node: each node once")
    try:
        gateways, notes = read_gateways(args.configs)
        users = nats_users(gateways, central=not args.no_central, staff=not args.no_staff,
                           kiosks=args.kiosk, monitors=args.monitor)
    except (ConfigError, AclError) as e:  # NatsError is an AclError
        print(f"make_nats: {e}", file=sys.stderr)
        return 1
    for note in notes:
        print(f"make_nats: note: {note}", file=sys.stderr)
    if len(hosts) < 3:
        print(f"make_nats: note: {len(hosts)} node(s): a JetStream cluster survives a node's "
              "loss only with 3 or more", file=sys.stderr)
    args.output.mkdir(parents=True, exist_ok=True)
    for i in range(1, len(hosts) + 1):
        path = args.output / f"nats-{i}.conf"
        path.write_text(node_config(i, hosts, users, etc=args.etc, store=args.store),
                        encoding="utf-8")
        print(f"wrote {path}: {len(users)} user(s), {len(gateways)} gateway(s)",
              file=sys.stderr)
    return 0



if __name__ == "__main__":
    sys.exit(main())
