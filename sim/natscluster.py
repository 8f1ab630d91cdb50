"""A real NATS JetStream cluster with MQTT listeners on free loopback ports, for the tests and
the city simulator (the city's broker: Debian's nats-server 2.9, hardware/nats/).

Design note
-----------
Operations: `start_cluster(workdir, nodes=3, users=None, tls=None, timeout=30)` writes one
config per node into `workdir/node-N/`, starts every `nats-server` and returns a
`NatsCluster` once the cluster is ready; `urls` are the MQTT URLs (one per node, the list a
gateway's `[mqtt] urls` holds), `protocol` is "3.1.1" (NATS speaks nothing else), `kill(i)`
SIGKILLs node i, `restart(i)` brings it back on the same ports and store, `stop()` ends all
(also as a context manager), `alive(i)` says whether node i runs.
Goals: the tests and the city run on the broker the city runs, not a fake; every wait is
bounded, and a cluster that does not come up says why (the tail of each node's log).
Plan:
- Each node: `server_name`, a client port, a monitoring port (`/jsz` says who is the
  JetStream meta leader), `jetstream { store_dir }`, `cluster { name, listen, routes }` with
  routes to the other nodes, `mqtt { listen }`, a log file in its folder. Ports are picked
  free by the kernel once and kept, so `restart(i)` comes back where the others look for it.
- `mqtt { stream_replicas: 3 }` (at most the node count): every MQTT session, its QoS 1
  messages and the retained messages live in JetStream streams replicated on every node, so
  a SIGKILLed node loses nothing that was acknowledged and a client that reconnects to
  another node finds its session. With the default (1 replica on the node where the
  account's first MQTT client connected) that node's kill loses the sessions and retained
  state of the whole account. `ack_wait` is left at NATS's 30 s: it is when a QoS 1 message
  with no PUBACK (the subscriber died with it) is sent again; a reconnecting client gets its
  unacknowledged messages at once anyway (the session's consumers are re-bound).
- Ready means: every node has a JetStream meta leader (monitoring `/jsz`), then every MQTT
  port takes a real paho CONNECT (clean session). The first MQTT connection of an account
  creates the account's MQTT streams (~2 s here, and before the meta leader it fails), so
  the probe also saves that time to the first real client. With `users` a probe user is
  added (random password, may publish and subscribe nothing) since the probe must log in.
  With `tls` (client certificates, verify_and_map) the probe presents `probe_cert` if
  given, else readiness stops at "the TLS port accepts" and the first client pays the ~2 s.
- `users`: the authorization users, as hardware/make_nats.py writes them: a list of dicts
  {"user", "password"?, "permissions": {"publish": {"allow": [...]}, "subscribe": ...}}.
  They are written as JSON, which nats-server's config parser reads, so the tests run the
  very permissions the generator makes.
- `tls`: {"cert_file", "key_file", "ca_file", "verify_and_map": bool} for the MQTT listener
  (mqtts:// URLs); the routes stay plain on loopback here (hardware/nats/ has them TLS).

Measured here (nats-server 2.9.10): meta leader within ~0.5 s of the start, the first MQTT
CONNECT of the account ~2 s after; a 3-node start to ready ~2.5-3.5 s. `restart(i)` after
a SIGKILL takes ~2-12 s: until the streams the node led have new leaders, a CONNECT waits 4 s
(nats-server's internal request timeout) and is closed. With `stream_replicas=1` a SIGKILL
of the node holding the account's MQTT streams left no node taking any MQTT connection;
with 3, one link lost 0 of 3,000 QoS 1 events through it (bench/nats_city.py).

Example (starts real servers, so not a doctest)::

    with start_cluster(tmp_path) as cluster:
        link = MqttLink("msk-01", "gw-1", cluster.urls, protocol=cluster.protocol, ...)
        cluster.kill(1)
"""

import atexit
import contextlib
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

from hallgate.sim.broker import BrokerError, free_port, port_accepts

BINARY_PATHS = ("/usr/sbin/nats-server", "/usr/local/bin/nats-server", "/usr/bin/nats-server")
STOP_TIMEOUT = 5.0
PROBE_USER = "hallgate-cluster-probe"  # added by the simulator only, never by make_nats.py
CLUSTER_NAME = "hallgate"


class ClusterError(BrokerError):
    """nats-server is missing, a node did not start, or the cluster did not become ready."""


def nats_binary():
    """The nats-server executable: the Debian path, else PATH; ClusterError if none."""
    for path in BINARY_PATHS:
        if os.access(path, os.X_OK):
            return path
    found = shutil.which("nats-server")
    if found:
        return found
    raise ClusterError("nats-server not found (looked in /usr/sbin and PATH): "
                       "apt-get install nats-server (make test installs it)")


def conf_value(value):
    """A Python value as nats-server config text (its parser reads JSON values)."""
    return json.dumps(value)


class _Node:
    """One nats-server: its ports, folder and process."""

    def __init__(self, index, workdir, host):
        self.index = index
        self.name = f"n{index}"
        self.dir = Path(workdir) / f"node-{index}"
        self.host = host
        self.client_port = free_port(host)
        self.cluster_port = free_port(host)
        self.mqtt_port = free_port(host)
        self.http_port = free_port(host)
        self.proc = None

    @property
    def config_path(self):
        return self.dir / "nats.conf"

    @property
    def log_path(self):
        return self.dir / "nats.log"

    @property
    def store_dir(self):
        return self.dir / "jetstream"

    def log_tail(self, lines=15):
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


class NatsCluster:
    """N nats-server processes in one JetStream cluster, each with an MQTT listener."""

    protocol = "3.1.1"  # nats-server's MQTT is 3.1.1 only

    def __init__(self, workdir, nodes=3, *, users=None, tls=None, probe_cert=None,
                 stream_replicas=None, host="127.0.0.1"):
        if not isinstance(nodes, int) or isinstance(nodes, bool) or not 1 <= nodes <= 9:
            raise ValueError(f"nodes {nodes!r}: an integer 1-9")
        if users is not None and not isinstance(users, list | tuple):
            raise ValueError("users: a list of user dicts (hardware/make_nats.py), or None")
        for i, user in enumerate(users or ()):
            if not isinstance(user, dict) or not isinstance(user.get("user"), str):
                raise ValueError(f"users[{i}]: a dict with a 'user' string, not {user!r}")
        if tls is not None:
            missing = {"cert_file", "key_file"} - set(tls)
            if missing:
                raise ValueError(f"tls: missing {', '.join(sorted(missing))}")
        self.workdir = Path(workdir)
        self.host = host
        self.binary = nats_binary()
        self.users = None if users is None else [dict(u) for u in users]
        self.tls = None if tls is None else dict(tls)
        self.probe_cert = probe_cert  # (cert, key) for the readiness probe under TLS
        self.stream_replicas = min(nodes, 3) if stream_replicas is None else stream_replicas
        self._probe_password = secrets.token_hex(12)
        self.nodes = [_Node(i, self.workdir, host) for i in range(nodes)]
        self.start_seconds = None  # how long the last start() took to ready
        # Nodes run in their own sessions (a SIGINT to the tests does not reach them): at
        # least a normal interpreter exit stops them.
        atexit.register(self.stop)

    # -- config ------------------------------------------------------------------------------

    @property
    def urls(self):
        scheme = "mqtts" if self.tls else "mqtt"
        return [f"{scheme}://{self.host}:{n.mqtt_port}" for n in self.nodes]

    @property
    def client_urls(self):
        """NATS protocol URLs (for a NATS client; the halls use MQTT)."""
        return [f"nats://{self.host}:{n.client_port}" for n in self.nodes]

    def authorization_users(self):
        if self.users is None:
            return None
        probe = {"user": PROBE_USER, "password": self._probe_password,
                 "permissions": {"publish": {"deny": [">"]}, "subscribe": {"deny": [">"]}}}
        return [*self.users, probe]

    def config_text(self, node):
        routes = [f"nats-route://{self.host}:{n.cluster_port}"
                  for n in self.nodes if n is not node]
        mqtt = {"listen": f"{self.host}:{node.mqtt_port}",
                "stream_replicas": self.stream_replicas}
        lines = [
            f"# node {node.index} of a hallgate test cluster, written by sim/natscluster.py",
            f"server_name: {conf_value(node.name)}",
            f"listen: {conf_value(f'{self.host}:{node.client_port}')}",
            f"http: {conf_value(f'{self.host}:{node.http_port}')}",
            f"log_file: {conf_value(str(node.log_path))}",
            f"jetstream: {{ store_dir: {conf_value(str(node.store_dir))} }}",
        ]
        if len(self.nodes) > 1:  # one node alone is a plain JetStream server (TLS tests)
            lines.append(f"cluster: {{ name: {CLUSTER_NAME}, "
                         f"listen: {conf_value(f'{self.host}:{node.cluster_port}')}, "
                         f"routes: {conf_value(routes)} }}")
        if self.tls is not None:
            mqtt["tls"] = self.tls
        lines.append(f"mqtt: {conf_value(mqtt)}")
        users = self.authorization_users()
        if users is not None:
            lines.append(f"authorization: {conf_value({'users': users})}")
        return "\n".join(lines) + "\n"

    # -- processes ---------------------------------------------------------------------------

    def alive(self, i):
        proc = self.nodes[i].proc
        return proc is not None and proc.poll() is None

    def _spawn(self, node):
        node.dir.mkdir(parents=True, exist_ok=True)
        node.config_path.write_text(self.config_text(node))
        with open(node.dir / "stderr.log", "ab") as err:
            node.proc = subprocess.Popen(
                [self.binary, "-c", str(node.config_path)],
                stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True)

    def start(self, timeout=30.0):
        """Starts every node; returns once ready (see the design note), ClusterError with
        every node's log tail if not within `timeout` seconds."""
        started = time.monotonic()
        deadline = started + timeout
        for node in self.nodes:
            if not self.alive(node.index):
                self._spawn(node)
        try:
            for node in self.nodes:
                self._wait_meta_leader(node, deadline)
            for node in self.nodes:
                self._wait_mqtt(node, deadline)
        except ClusterError:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - started
        return self

    def restart(self, i, timeout=30.0):
        """Starts node i again (same ports, same store); returns once its MQTT port takes a
        connection. A node that still runs is stopped first (SIGTERM)."""
        node = self.nodes[i]
        if self.alive(i):
            self._signal(node, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        self._spawn(node)
        self._wait_meta_leader(node, deadline)
        self._wait_mqtt(node, deadline)
        return self

    def kill(self, i):
        """SIGKILL node i: no goodbye to its clients or its peers."""
        self._signal(self.nodes[i], signal.SIGKILL)

    def stop(self):
        """SIGTERM to every node at once, then bounded waits (SIGKILL after STOP_TIMEOUT)."""
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes:
            self._signal(node, signal.SIGTERM)

    def _signal(self, node, sig):
        proc = node.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT)
        node.proc = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        atexit.unregister(self.stop)

    def __repr__(self):
        up = sum(self.alive(i) for i in range(len(self.nodes)))
        return f"NatsCluster({len(self.nodes)} nodes, {up} alive, {self.urls})"

    # -- readiness ---------------------------------------------------------------------------

    def _failure(self, what):
        tails = "\n".join(f"--- node {n.index} ({n.log_path}):\n{n.log_tail()}"
                          for n in self.nodes)
        return ClusterError(f"{what}\n{tails}")

    def _check_running(self, node):
        if node.proc is None or node.proc.poll() is not None:
            code = None if node.proc is None else node.proc.returncode
            raise self._failure(f"nats-server node {node.index} exited (code {code}); "
                                f"config {node.config_path}")

    def meta_leader(self, i):
        """The server name of the JetStream meta leader as node i sees it, or None (a
        single node, without a cluster, is its own)."""
        node = self.nodes[i]
        try:
            with urllib.request.urlopen(f"http://{node.host}:{node.http_port}/jsz",
                                        timeout=1.0) as r:
                info = json.load(r)
        except (OSError, ValueError):
            return None
        if len(self.nodes) == 1:
            return node.name if info.get("config") or info.get("memory") is not None else None
        return (info.get("meta_cluster") or {}).get("leader") or None

    def _wait_meta_leader(self, node, deadline):
        while True:
            self._check_running(node)
            if self.meta_leader(node.index):
                return
            if time.monotonic() > deadline:
                raise self._failure(f"node {node.index}: no JetStream meta leader in time")
            time.sleep(0.05)

    def _wait_mqtt(self, node, deadline):
        why = "port closed"
        while True:
            self._check_running(node)
            if port_accepts(node.host, node.mqtt_port):
                if self.tls is not None and self.probe_cert is None:
                    return  # no identity to log in with: the listener is up, that is all
                why = self._probe(node, max(0.5, min(5.0, deadline - time.monotonic())))
                if why is None:
                    return
            if time.monotonic() > deadline:
                raise self._failure(f"node {node.index}: MQTT port {node.mqtt_port} did "
                                    f"not take a connection in time ({why})")
            time.sleep(0.1)

    def _probe(self, node, timeout):
        """One clean-session CONNECT; None when CONNACK says success, else why not."""
        import paho.mqtt.client as mqtt

        result = []
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311,
                             client_id=f"{PROBE_USER}-{node.index}-{secrets.token_hex(3)}",
                             clean_session=True)
        client.on_connect = lambda c, u, f, rc, p: result.append(rc)
        if self.users is not None and self.tls is None:
            client.username_pw_set(PROBE_USER, self._probe_password)
        if self.tls is not None:
            client.tls_set(ca_certs=self.tls.get("ca_file"), certfile=self.probe_cert[0],
                           keyfile=self.probe_cert[1], cert_reqs=ssl.CERT_REQUIRED)
        try:
            client.connect(node.host, node.mqtt_port, keepalive=10)
            end = time.monotonic() + timeout
            while not result and time.monotonic() < end:
                if client.loop(0.05) != mqtt.MQTT_ERR_SUCCESS:
                    return "connection closed before CONNACK"
            if not result:
                return "no CONNACK"
            return None if not result[0].is_failure else f"CONNACK {result[0]}"
        except (OSError, ssl.SSLError) as e:
            return str(e)
        finally:
            with contextlib.suppress(Exception):
                client.disconnect()
                client.socket() and client.socket().close()


def start_cluster(workdir, nodes=3, *, users=None, tls=None, probe_cert=None,
                  stream_replicas=None, timeout=30.0):
    """A started, ready `NatsCluster` of `nodes` nodes in `workdir` (see the design note).
    `users`: authorization users (hardware/make_nats.py's), None for no authorization; `tls`:
    the MQTT listener's tls block; `probe_cert`: (cert, key) the readiness probe presents;
    `stream_replicas`: of the MQTT streams, default min(nodes, 3)."""
    return NatsCluster(workdir, nodes, users=users, tls=tls, probe_cert=probe_cert,
                       stream_replicas=stream_replicas).start(timeout=timeout)
