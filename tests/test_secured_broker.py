"""The secured deployment (hardware/mosquitto/, issue 6) against a real mosquitto.

Each test starts the broker on the production config, hardware/mosquitto/mosquitto.conf,
copied to its tmp_path with the port (a free loopback one), the paths (the test CA of
hardware/make_test_ca.py, an ACL written by hardware/make_acl.py from the test's hall
configs) and the logging rewritten; every rewrite is checked, so a change of the production
file that the test would no longer exercise fails here.

- The gateway daemon (`hallgate run`, hall config with mqtts:// and its certificate) connects:
  an event of its outbox reaches a subscriber with the central service's certificate, and
  a vote opened by the central role reaches the daemon (its status shows the ballot).
- With the gateway's certificate, paho (MQTT 5, QoS 1) gets PUBACK 0x87 "Not authorized" for
  another gateway's status, a window the gateway does not serve and central's desired
  state; MQTT 3.1.1 is dropped silently (PUBACK success); the central subscriber never gets
  any of them. The gateway reads only its windows' desired state, and its certificate
  cannot take over another gateway's session (the client id is the CN).
- No client certificate, or one of another CA, or plain MQTT: no connection.
- A TLS misconfiguration of the daemon (wrong ca_file, expired or other-CA certificate, no
  certificate, hostname mismatch, a key of another certificate) is named in plain words in
  `hallgate status --json` (broker.last_error) and in its log.
- The scripts: make_test_ca.py --help, keys 0600, no overwrite without --force; make_acl.py
  refuses two gateways on one window and the committed hardware/mosquitto/acl is what it
  writes for the example configs.
"""

import datetime as dt
import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from conftest import ROOT, wait_for
from hallgate.gateway.commands import utc_ts
from hallgate.gateway.outbox import Outbox
from hallgate.sim.broker import Mosquitto, free_port
from harness import Daemon, hallgate, write_hall_config

HARDWARE = ROOT / "hardware"
sys.path.insert(0, str(HARDWARE))
import make_acl  # noqa: E402  (hardware/ scripts, imported for their functions)
import make_test_ca  # noqa: E402

PRODUCTION_CONF = HARDWARE / "mosquitto" / "mosquitto.conf"
SITE = "sec-site"
BASE = f"hall/v1/{SITE}"
GW1, GW2 = "gw-1", "gw-2"  # gw-1 serves windows 1 and 2, gw-2 window 3
GW1_CN, GW2_CN = make_test_ca.gateway_cn(SITE, GW1), make_test_ca.gateway_cn(SITE, GW2)
CENTRAL_CN = make_test_ca.central_cn(SITE)
WAIT = 10  # seconds, the bound of every wait for the broker


# ---- the PKI and the broker ------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """The test CA and certificates (make_test_ca.py; the broker's names only 127.0.0.1),
    plus a certificate from another CA and an expired one from ours, in pki/bad/."""
    out = tmp_path_factory.mktemp("pki")
    rc = make_test_ca.main(["--site", SITE, "--gateway", GW1, "--gateway", GW2, "--central",
                            "--broker-name", "127.0.0.1", "--out", str(out), "--days", "2"])
    assert rc == 0
    bad = out / "bad"
    bad.mkdir()
    other_key, other_ca = make_test_ca.make_ca("some other CA")
    make_test_ca.write_pair(bad, "other-ca", other_key, other_ca)
    key, cert = make_test_ca.make_cert(other_key, other_ca, GW1_CN)
    make_test_ca.write_pair(bad, "other-ca-gw-1", key, cert)
    ca_key, ca_cert = make_test_ca.load_ca(out)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    key, cert = make_test_ca.make_cert(ca_key, ca_cert, GW1_CN, days=1, not_before=past)
    make_test_ca.write_pair(bad, "expired-gw-1", key, cert)
    return out


def hall_config(folder, broker_url, gateway, windows, tls):
    """A hall.toml in `folder` for `gateway` serving `windows` (a like / dislike pair each,
    GPIO mock pins), [mqtt] with `tls` {ca_file, cert_file, key_file} (None values left out)."""
    folder.mkdir(parents=True, exist_ok=True)
    text = "".join(f"[[windows]]\nnumber = {n}\nlike_pin = {4 + 2 * i}\n"
                   f"dislike_pin = {5 + 2 * i}\n\n" for i, n in enumerate(windows))
    path = write_hall_config(folder, site=SITE, gateway=gateway, broker_url=broker_url,
                             windows=text)
    lines = "".join(f'{k} = "{v}"\n' for k, v in tls.items() if v is not None)
    body = path.read_text()
    url_line = f'urls = ["{broker_url}"]\n'
    assert url_line in body
    path.write_text(body.replace(url_line, url_line + lines, 1))
    return path


def gateway_tls(pki, cn=GW1_CN):
    return {"ca_file": pki / "ca.crt", "cert_file": pki / f"{cn}.crt",
            "key_file": pki / f"{cn}.key"}


def production_config(workdir, port, pki, acl):
    """hardware/mosquitto/mosquitto.conf for a test: each rewrite must apply."""
    lines = PRODUCTION_CONF.read_text().splitlines(keepends=True)
    text = "".join(line for line in lines if not line.lstrip().startswith("#"))
    rewrites = [
        (r"(?m)^listener 8883$", f"listener {port} 127.0.0.1"),
        (r"(?m)^pid_file .*\n", ""),
        (r"(?m)^persistence_location .*$", f"persistence_location {workdir / 'data'}/"),
        (r"(?m)^log_dest syslog$", f"log_dest file {workdir / 'mosquitto.log'}"),
        (r"(?m)^acl_file .*$", f"acl_file {acl}"),
        (r"/etc/mosquitto/hallgate/", f"{pki}/"),  # cafile, certfile, keyfile
    ]
    for pattern, new in rewrites:
        text, n = re.subn(pattern, lambda m, new=new: new, text)
        assert n, f"{PRODUCTION_CONF.name}: nothing matched {pattern!r}"
    assert "/etc/" not in text and "8883" not in text, text
    for required in ("require_certificate true", "use_identity_as_username true",
                     "allow_anonymous false", "use_username_as_clientid true"):
        assert re.search(rf"(?m)^{required}$", text), required
    if os.geteuid() == 0:
        text += "user root\n"
    return text


class SecuredMosquitto(Mosquitto):
    """The Mosquitto test class on the production config (rewritten for the test)."""

    def __init__(self, workdir, pki, acl, port=None):
        super().__init__(workdir, port)
        self.pki, self.acl = pki, acl

    def config_text(self):
        return production_config(self.workdir, self.port, self.pki, self.acl)

    @property
    def url(self):
        return f"mqtts://127.0.0.1:{self.port}"


@pytest.fixture
def broker(tmp_path, pki):
    """The secured broker; its ACL made by make_acl.py from gw-1's and gw-2's hall configs."""
    port = free_port()
    url = f"mqtts://127.0.0.1:{port}"
    configs = [hall_config(tmp_path / "acl-src" / GW1, url, GW1, [1, 2], gateway_tls(pki)),
               hall_config(tmp_path / "acl-src" / GW2, url, GW2, [3], gateway_tls(pki, GW2_CN))]
    gateways, notes = make_acl.read_gateways(configs)
    assert notes == []
    acl = tmp_path / "acl"
    acl.write_text(make_acl.make_acl(gateways))
    b = SecuredMosquitto(tmp_path / "broker", pki, acl, port).start()
    try:
        yield b
    finally:
        b.stop()


# ---- paho clients with certificates ---------------------------------------------------------


class TlsClient:
    """A paho client with a certificate (or none): what came, the PUBACKs, the CONNACK."""

    def __init__(self, port, pki, cn=None, *, v5=True, cert=None, key=None, client_id=""):
        self.messages = []
        self.pubacks = {}
        self.connack = None
        self.subscribed = threading.Event()
        self.connected = threading.Event()
        self.lock = threading.Lock()
        c = self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                      protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)
        if cn is not None:
            cert, key = pki / f"{cn}.crt", pki / f"{cn}.key"
        c.tls_set(ca_certs=str(pki / "ca.crt"), certfile=cert and str(cert),
                  keyfile=key and str(key))
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.on_publish = self._on_publish
        c.on_subscribe = lambda *a: self.subscribed.set()
        self.port = port
        self.error = None

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connack = reason_code
        if not reason_code.is_failure:
            self.connected.set()

    def _on_message(self, client, userdata, msg):
        with self.lock:
            self.messages.append((msg.topic, msg.payload))

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        with self.lock:
            self.pubacks[mid] = reason_code

    def start(self, expect=True):
        """Connects; waits for the CONNACK when `expect`."""
        try:
            self.client.connect("127.0.0.1", self.port, keepalive=30)
        except OSError as e:  # ssl.SSLError included: the handshake failed at once
            self.error = e
            return self
        self.client.loop_start()
        if expect:
            assert self.connected.wait(WAIT), f"no CONNACK within {WAIT} s ({self.connack})"
        return self

    def subscribe(self, *topics):
        self.subscribed.clear()
        self.client.subscribe([(t, 1) for t in topics])
        assert self.subscribed.wait(WAIT), "no SUBACK"

    def publish(self, topic, payload, retain=False):
        """QoS 1; returns the PUBACK's reason code."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        wait_for(lambda: info.mid in self.pubacks, WAIT, f"the PUBACK for {topic}")
        return self.pubacks[info.mid]

    def got(self, topic_filter):
        with self.lock:
            return [p for t, p in self.messages if mqtt.topic_matches_sub(topic_filter, t)]

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def clients(broker, pki):
    made = []

    def make(cn=None, **kw):
        c = TlsClient(broker.port, pki, cn, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def central_subscriber(make):
    """What the central service reads: events, and the gateways' status and errors."""
    central = make(CENTRAL_CN).start()
    central.subscribe(f"{BASE}/window/+/event", f"{BASE}/gw/+/status", f"{BASE}/gw/+/errors")
    return central


# ---- 1. the daemon works over TLS with its certificate ----------------------------------------


def test_daemon_connects_with_its_certificate_event_up_command_down(tmp_path, broker, pki,
                                                                   clients):
    central = central_subscriber(clients)
    config = hall_config(tmp_path / "gw", broker.url, GW1, [1, 2], gateway_tls(pki))
    with Outbox(tmp_path / "gw" / "outbox.sqlite", GW1) as outbox:  # a press taken earlier
        entry = outbox.add(1, {"ts": utc_ts(), "type": "key", "key": "call",
                               "action": "press", "source": {"gpio": 4}})
    daemon = Daemon(tmp_path / "gw", config, env={"GPIOZERO_PIN_FACTORY": "mock"})
    try:
        daemon.start()
        st = daemon.wait_status(lambda s: s["broker"]["connected"], "daemon connected")
        assert st["broker"]["url"] == broker.url and st["broker"]["last_error"] is None
        wait_for(lambda: central.got(f"{BASE}/window/1/event"), WAIT, "the event at central")
        event = json.loads(central.got(f"{BASE}/window/1/event")[0])
        assert event["id"] == entry.id and event["gateway"] == GW1 and event["window"] == 1
        daemon.wait_status(lambda s: s["outbox"]["depth"] == 0, "the outbox emptied")
        assert json.loads(central.got(f"{BASE}/gw/{GW1}/status")[-1])["state"] == "online"

        # Central opens voting on window 2: the daemon's ballot opens.
        assert not central.publish(f"{BASE}/window/2/vote", json.dumps(
            {"version": 1, "open": True, "ticket": "A042"}), retain=True).is_failure
        st = daemon.wait_status(lambda s: s["feedback"]["2"]["open"], "vote open on window 2")
        assert st["feedback"]["2"]["ticket"] == "A042"
        assert central.got(f"{BASE}/gw/+/errors") == []
    finally:
        daemon.close()


# ---- 2. the ACL ----------------------------------------------------------------------------------


def test_gateway_certificate_cannot_publish_as_another_gateway_or_for_other_windows(clients):
    central = central_subscriber(clients)
    gw = clients(GW1_CN).start()
    event = b'{"id": "forged"}'
    forbidden = [
        f"{BASE}/window/3/event",  # gw-2's window
        f"{BASE}/window/5/event",  # nobody's window
        f"{BASE}/gw/{GW2}/status",  # as another gateway
        f"{BASE}/gw/{GW2}/errors",
        f"{BASE}/window/1/display",  # central's desired state, even of its own window
        "hall/v1/other-site/window/1/event",
    ]
    for topic in forbidden:
        rc = gw.publish(topic, event)
        assert rc.value == 0x87 and rc.getName() == "Not authorized", (topic, rc)
    allowed = [f"{BASE}/window/1/event", f"{BASE}/window/2/event", f"{BASE}/gw/{GW1}/status"]
    for topic in allowed:
        assert gw.publish(topic, b'{"id": "ok"}').value == 0, topic
    wait_for(lambda: len(central.got("#")) == len(allowed), WAIT, "the allowed ones at central")

    # MQTT 3.1.1 has no reason codes: mosquitto acknowledges and drops.
    gw.close()
    old = clients(GW1_CN, v5=False).start()
    assert old.publish(f"{BASE}/window/3/event", event).value == 0
    assert old.publish(f"{BASE}/window/1/event", b'{"id": "ok-311"}').value == 0
    wait_for(lambda: b'{"id": "ok-311"}' in central.got("#"), WAIT, "the 3.1.1 event")
    time.sleep(0.2)  # mosquitto delivers in order: anything forged would be here by now
    topics = sorted({t for t, _ in central.messages})
    assert topics == sorted(allowed), topics
    assert event not in central.got("#")


def test_gateway_reads_only_its_windows_desired_state(clients):
    central = clients(CENTRAL_CN).start()
    for n in (1, 2, 3):
        assert not central.publish(f"{BASE}/window/{n}/display",
                                   json.dumps({"version": 1, "text": f"W{n}"}),
                                   retain=True).is_failure
    gw = clients(GW1_CN).start()
    gw.subscribe(f"{BASE}/window/+/display", f"{BASE}/window/3/panel", f"{BASE}/window/+/event")
    wait_for(lambda: len(gw.got("#")) >= 2, WAIT, "windows 1 and 2's displays")
    assert central.publish(f"{BASE}/window/3/display", b'{"version": 2, "text": "x"}',
                           retain=True).value == 0
    assert central.publish(f"{BASE}/window/1/display", b'{"version": 2, "text": "W1b"}',
                           retain=True).value == 0
    wait_for(lambda: len(gw.got("#")) >= 3, WAIT, "window 1's new display")
    time.sleep(0.2)
    assert sorted({t for t, _ in gw.messages}) == [f"{BASE}/window/1/display",
                                                   f"{BASE}/window/2/display"]


def test_a_certificate_cannot_take_over_another_clients_session(clients, broker):
    gw2 = clients(GW2_CN).start()
    # gw-1's certificate asks for gw-2's client id: the broker uses the CN instead.
    intruder = clients(GW1_CN, client_id=f"hallgate-{SITE}-{GW2}").start()
    time.sleep(0.3)
    assert gw2.client.is_connected() and intruder.client.is_connected()
    assert f"as {GW1_CN} " in broker.log_text()


# ---- 3. who cannot connect at all -------------------------------------------------------------


@pytest.mark.parametrize("who", ["no certificate", "certificate of another CA", "plain MQTT"])
def test_cannot_connect(who, clients, broker, pki):
    if who == "plain MQTT":
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        got = []
        c.on_connect = lambda *a: got.append(a[3])
        c.connect("127.0.0.1", broker.port)
        c.loop_start()
        try:
            time.sleep(1.0)
            assert got == [] or all(rc.is_failure for rc in got)
        finally:
            c.loop_stop()
            c.disconnect()
        return
    if who == "no certificate":
        c = clients().start(expect=False)
    else:
        c = clients(cert=pki / "bad" / "other-ca-gw-1.crt",
                    key=pki / "bad" / "other-ca-gw-1.key").start(expect=False)
    # TLS 1.3: our side of the handshake ends before the broker has checked our certificate;
    # it then closes the connection before any CONNACK.
    assert not c.connected.wait(1.5), "connected without a certificate from our CA"
    assert c.connack is None
    log = broker.log_text()
    wanted = ("peer did not return a certificate" if who == "no certificate"
              else "certificate verify failed")
    wait_for(lambda: wanted in broker.log_text(), WAIT, f"'{wanted}' in the broker's log")
    assert "New client connected" not in log


# ---- 4. the daemon names a TLS misconfiguration ------------------------------------------------

MISCONFIGURED = {
    "wrong ca_file": (
        {"ca_file": "bad/other-ca.crt"},
        ["certificate verify failed: unknown CA", "the broker's certificate is not signed by a "
         "CA in ca_file", "other-ca.crt"]),
    "expired client certificate": (
        {"cert_file": "bad/expired-gw-1.crt", "key_file": "bad/expired-gw-1.key"},
        ["the broker refused our certificate", "expired-gw-1.crt: it expired on "]),
    "client certificate of another CA": (
        {"cert_file": "bad/other-ca-gw-1.crt", "key_file": "bad/other-ca-gw-1.key"},
        ["the broker refused our certificate", "issued by CN=some other CA, a CA that is "
         "not in ca_file"]),
    "no client certificate": (
        {"cert_file": None, "key_file": None},
        ["the broker refused our certificate", "no client certificate is configured"]),
    "hostname mismatch": (
        {"host": "localhost"},
        ["certificate verify failed: hostname mismatch", "not valid for 'localhost'"]),
}


def test_a_key_of_another_certificate_is_refused_before_the_daemon_starts(tmp_path, pki):
    """What the link would fail on at connect, `config check` says first: so `run`."""
    tls = {**gateway_tls(pki), "key_file": pki / f"{GW2_CN}.key"}
    config = hall_config(tmp_path / "gw", "mqtts://127.0.0.1:8883", GW1, [1], tls)
    for command in ("config", "run"):
        args = ("config", "check", config) if command == "config" else (
            "run", "--config", config, "--status-file", tmp_path / "status.json")
        out = hallgate(*args)
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
        assert (f"mqtt.key_file: {pki}/{GW2_CN}.key is not the private key of cert_file "
                f"{pki}/{GW1_CN}.crt") in out.stdout + out.stderr


@pytest.mark.parametrize("case", list(MISCONFIGURED))
def test_daemon_names_a_tls_misconfiguration(case, tmp_path, broker, pki):
    change, phrases = MISCONFIGURED[case]
    tls = gateway_tls(pki)
    url = broker.url
    for k, v in change.items():
        if k == "host":
            url = f"mqtts://{v}:{broker.port}"
        else:
            tls[k] = None if v is None else pki / v
    config = hall_config(tmp_path / "gw", url, GW1, [1], tls)
    daemon = Daemon(tmp_path / "gw", config, env={"GPIOZERO_PIN_FACTORY": "mock"})
    try:
        daemon.start()
        st = daemon.wait_status(lambda s: s["broker"]["last_error"], "a broker error")
        assert not st["broker"]["connected"]
        out = hallgate("status", "--json", "--status-file", daemon.status_file)
        error = json.loads(out.stdout)["broker"]["last_error"]
        print(f"{case}: {error}")
        assert error.startswith(f"{url}: TLS: "), error
        for phrase in phrases:
            assert phrase.format(pki=pki) in error, (phrase, error)
        wait_for(lambda: error.split(": ", 2)[-1][:60] in daemon.log(200), WAIT,
                 "the error in the daemon's log")
    finally:
        daemon.close()


# ---- 5. the scripts ------------------------------------------------------------------------------


def run_script(name, *args):
    return subprocess.run([sys.executable, str(HARDWARE / name), *map(str, args)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_make_test_ca_help_modes_and_no_overwrite(tmp_path):
    out = run_script("make_test_ca.py", "--help")
    assert out.returncode == 0 and "--gateway" in out.stdout and "--force" in out.stdout
    folder = tmp_path / "ca"
    args = ["--site", "s", "--gateway", "g", "--central", "--out", folder]
    out = run_script("make_test_ca.py", *args)
    assert out.returncode == 0, out.stderr
    keys = sorted(p.name for p in folder.glob("*.key"))
    assert keys == ["broker.key", "ca.key", "hallgate-central-s.key", "hallgate-s-g.key"]
    for k in folder.glob("*.key"):
        assert stat.S_IMODE(k.stat().st_mode) == 0o600, k
    before = (folder / "hallgate-s-g.key").read_bytes()
    out = run_script("make_test_ca.py", *args)
    assert out.returncode == 1 and "refusing to overwrite" in out.stderr
    assert (folder / "hallgate-s-g.key").read_bytes() == before
    # A gateway added later: signed by the same CA, nothing else touched.
    ca = (folder / "ca.crt").read_bytes()
    out = run_script("make_test_ca.py", "--site", "s", "--gateway", "g2", "--no-broker",
                     "--out", folder)
    assert out.returncode == 0, out.stderr
    assert (folder / "ca.crt").read_bytes() == ca and (folder / "hallgate-s-g2.key").exists()
    ok = subprocess.run(["openssl", "verify", "-CAfile", folder / "ca.crt",
                         folder / "hallgate-s-g2.crt"], capture_output=True, text=True,
                        timeout=30)
    assert ok.returncode == 0, ok.stderr
    (folder / "hallgate-s-g.key").chmod(0o644)
    out = run_script("make_test_ca.py", *args, "--force")
    assert out.returncode == 0, out.stderr
    assert (folder / "hallgate-s-g.key").read_bytes() != before
    assert stat.S_IMODE((folder / "hallgate-s-g.key").stat().st_mode) == 0o600


def test_make_acl_committed_file_and_refusals(tmp_path):
    examples = ["hardware/hall-12-windows.toml", "hardware/branch-2-windows.toml"]
    out = run_script("make_acl.py", *examples, "--monitor", "syzran-main:noc")
    assert out.returncode == 0, out.stderr
    committed = (HARDWARE / "mosquitto" / "acl").read_text()
    assert out.stdout == committed, "hardware/mosquitto/acl is stale: run make_acl.py again"

    url = "mqtts://broker.example:8883"
    a = hall_config(tmp_path / "a", url, "gw-a", [1, 2], {"ca_file": tmp_path / "nowhere.crt"})
    b = hall_config(tmp_path / "b", url, "gw-b", [2, 3], {})
    out = run_script("make_acl.py", a, b)
    assert out.returncode == 1
    assert "window 2 of site sec-site is served by both gateway gw-a" in out.stderr
    out = run_script("make_acl.py", a)  # a gateway's ca_file is not on the broker's machine
    assert out.returncode == 0, out.stderr
    assert "ca_file: not on this machine" in out.stderr
    assert "topic write hall/v1/sec-site/window/2/event" in out.stdout
    assert "window/3" not in out.stdout.replace("window/+", "")


def test_acl_reload_with_sighup_takes_a_moved_window(tmp_path, broker, pki, clients):
    """The README's procedure: a window moves to gw-1, make_acl.py again, SIGHUP."""
    central = central_subscriber(clients)
    gw = clients(GW1_CN).start()
    assert gw.publish(f"{BASE}/window/3/event", b'{"id": "early"}').value == 0x87
    gw.client.loop_stop()
    gw.client.socket().close()  # gone without a DISCONNECT, as a power cut
    url = broker.url
    configs = [hall_config(tmp_path / "new" / GW1, url, GW1, [1, 2, 3], gateway_tls(pki)),
               hall_config(tmp_path / "new" / GW2, url, GW2, [4], gateway_tls(pki, GW2_CN))]
    broker.acl.write_text(make_acl.make_acl(make_acl.read_gateways(configs)[0]))
    broker.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "Reloading config" in broker.log_text(), WAIT, "the broker's reload")
    gw = clients(GW1_CN).start()
    assert gw.publish(f"{BASE}/window/3/event", b'{"id": "moved"}').value == 0
    wait_for(lambda: b'{"id": "moved"}' in central.got("#"), WAIT, "the event of window 3")
    gw.client.loop_stop()
    gw.client.socket().close()
    time.sleep(0.3)
    assert broker.running, broker.log_text()[-2000:]
    assert b'{"id": "early"}' not in central.got("#")


# ---- 5. the central service with its certificate ----------------------------------------------


def test_central_service_connects_with_its_certificate_and_takes_a_gateways_event(
        tmp_path, broker, pki, clients):
    from hallgate.central.config import load_config_dict
    from hallgate.central.mqtt import CentralService
    from hallgate.central.service import Central

    cfg = load_config_dict({
        "site": SITE, "broker": broker.url, "database": "central.db",
        "services": {"A": "Passports"}, "windows": [{"n": 1, "services": ["A"]}],
        "ca_file": str(pki / "ca.crt"), "cert_file": str(pki / f"{CENTRAL_CN}.crt"),
        "key_file": str(pki / f"{CENTRAL_CN}.key")}, tmp_path)
    assert cfg.client_id == CENTRAL_CN
    svc = CentralService(Central(cfg.queue, cfg.database), cfg.site, cfg.broker,
                         client_id=cfg.client_id, ca_file=str(cfg.ca_file),
                         cert_file=str(cfg.cert_file), key_file=str(cfg.key_file))
    svc.start()
    try:
        wait_for(lambda: svc.counters["connects"] >= 1, WAIT, "central connected")
        gw = clients(GW1_CN).start()
        gw.subscribe(f"{BASE}/gw/{GW1}/receipt", f"{BASE}/central/status")
        other = clients(GW2_CN).start()  # may not read gw-1's receipts
        other.subscribe(f"{BASE}/gw/+/receipt")
        event = {"id": "gw-1.1", "gateway": GW1, "window": 1, "ts": utc_ts(), "type": "key",
                 "key": "call", "action": "press"}
        assert not gw.publish(f"{BASE}/window/1/event", json.dumps(event)).is_failure
        wait_for(lambda: svc.counters["events"] >= 1, WAIT, "the event at central")
        assert svc.counters["malformed"] == 0
        # the ACL lets the central send the receipt and only its gateway read it
        wait_for(lambda: gw.got(f"{BASE}/gw/{GW1}/receipt"), WAIT, "the receipt at gw-1")
        assert json.loads(gw.got(f"{BASE}/gw/{GW1}/receipt")[0])["ids"] == ["gw-1.1"]
        assert json.loads(gw.got(f"{BASE}/central/status")[-1])["state"] == "online"
        time.sleep(0.3)
        assert other.got("#") == []
    finally:
        svc.stop()


def test_central_config_refuses_half_a_client_certificate(tmp_path, pki):
    from hallgate.central.config import ConfigError, load_config_dict

    base = {"site": SITE, "database": "c.db", "services": {"A": "P"},
            "windows": [{"n": 1, "services": ["A"]}]}
    with pytest.raises(ConfigError, match="cert_file and key_file: give both"):
        load_config_dict({**base, "broker": "mqtts://h", "cert_file": str(
            pki / f"{CENTRAL_CN}.crt")}, tmp_path)
    with pytest.raises(ConfigError, match="only for an mqtts:// broker"):
        load_config_dict({**base, "broker": "mqtt://h", "ca_file": str(pki / "ca.crt")},
                         tmp_path)
    with pytest.raises(ConfigError, match="ca_file: .*nope.crt: no such file"):
        load_config_dict({**base, "broker": "mqtts://h", "ca_file": "nope.crt"}, tmp_path)
