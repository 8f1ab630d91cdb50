"""hardware/make_nats.py and hardware/nats/: the NATS users' permissions equal the mosquitto
ACL's rules (a gateway reads its site's three kind filters instead of its windows' topics,
NATS's one difference), nats-server's config test accepts what it writes (with the test CA's
files), the CLI says what is wrong and where, the example gateway config passes `hallgate
config check`, and the systemd unit verifies."""

import re
import shutil
import subprocess
import sys
import tomllib

import pytest
from conftest import ROOT
from hallgate.gateway.config import load_config
from hallgate.sim import natscluster

sys.path.insert(0, str(ROOT / "hardware"))
import make_acl  # noqa: E402  (hardware/ scripts, imported for their functions)
import make_nats  # noqa: E402
import make_test_ca  # noqa: E402
from make_acl import GatewayEntry  # noqa: E402

NATS = ROOT / "hardware" / "nats"
HALLS = [ROOT / "hardware" / "hall-12-windows.toml", ROOT / "hardware" / "branch-2-windows.toml",
         NATS / "gateway-city.toml"]
UNIT = NATS / "nats-hallgate@.service"


def nats_server():
    try:
        return natscluster.nats_binary()
    except natscluster.ClusterError as e:
        if __import__("os").environ.get("CI"):
            pytest.fail(str(e))
        pytest.skip(str(e))


def acl_users(text):
    """{user: (writes, reads)} of a mosquitto ACL's text, topics as NATS subjects."""
    users, current = {}, None
    for line in text.splitlines():
        if line.startswith("user "):
            current = users.setdefault(line[5:], (set(), set()))
        elif line.startswith("topic write "):
            current[0].add(make_nats.mqtt_subject(line[12:]))
        elif line.startswith("topic read "):
            current[1].add(make_nats.mqtt_subject(line[11:]))
    return users


def test_mqtt_topics_become_nats_subjects():
    assert make_nats.mqtt_subject("hall/v1/s1/window/+/event") == "hall.v1.s1.window.*.event"
    assert make_nats.mqtt_subject("hall/v1/s1/#") == "hall.v1.s1.>"
    with pytest.raises(ValueError, match="empty level"):
        make_nats.mqtt_subject("hall//x")


def test_a_dotted_site_is_refused_naming_the_gateway():
    """nats-server 2.9 closes a client that uses a '.' in a topic (measured), although the
    contract allows '.' in site and gateway ids."""
    with pytest.raises(ValueError, match="refuses '.'"):
        make_nats.mqtt_subject("hall/v1/msk.01/central/status")
    with pytest.raises(make_nats.NatsError, match=r"gateway gw-1 of site msk\.01.*hall\.toml"):
        make_nats.nats_users([GatewayEntry("msk.01", "gw-1", (1,), "hall.toml")])


def test_permissions_equal_the_mosquitto_acl():
    gateways, _ = make_acl.read_gateways(HALLS)
    monitors = [("msk-017", "ops")]
    acl = acl_users(make_acl.make_acl(gateways, monitors=monitors))
    users = make_nats.nats_users(gateways, monitors=monitors, user_name=lambda cn: cn)
    assert sorted(u["user"] for u in users) == sorted(acl)
    for user in users:
        writes, reads = acl[user["user"]]
        perms = user["permissions"]
        assert user["allowed_connection_types"] == ["MQTT"]
        assert set(perms["publish"]["allow"]) == writes, user["user"]
        subscribes = set(perms["subscribe"]["allow"]) - {make_nats.MQTT_DELIVERY}
        assert make_nats.MQTT_DELIVERY in perms["subscribe"]["allow"]
        gateway = next((g for g in gateways
                        if make_test_ca.gateway_cn(g.site, g.gateway) == user["user"]), None)
        if gateway is None:
            assert subscribes == reads, user["user"]
            continue
        # The one difference: the site's three kind filters and its `desired` snapshot for
        # the windows' own topics (the whole site either way).
        base = f"hall.v1.{gateway.site}.window"
        kinds = {f"{base}.*.{k}" for k in ("display", "panel", "vote")}
        own = {f"{base}.{n}.{k}" for n in gateway.windows for k in ("display", "panel", "vote")}
        assert subscribes == (reads - own) | kinds | {f"hall.v1.{gateway.site}.desired"}
        assert own <= reads
        # Writes: only its own windows' events, and its own gw/ topics.
        events = {s for s in writes if s.endswith(".event")}
        assert events == {f"{base}.{n}.event" for n in gateway.windows}
        assert all(s.startswith(f"hall.v1.{gateway.site}.gw.{gateway.gateway}.")
                   for s in writes - events)


def test_two_gateways_on_one_window_are_refused():
    with pytest.raises(make_acl.AclError, match="window 2 of site s"):
        make_nats.nats_users([GatewayEntry("s", "a", (1, 2), "a.toml"),
                              GatewayEntry("s", "b", (2, 3), "b.toml")])


def test_certificate_users_are_the_subject():
    users = make_nats.nats_users([GatewayEntry("s", "gw-1", (1,), "x")], central=False,
                                 staff=False)
    assert [u["user"] for u in users] == ["CN=hallgate-s-gw-1"]


def test_generated_configs_pass_the_nats_config_test(tmp_path):
    exe = nats_server()
    ca = tmp_path / "etc"
    assert make_test_ca.main(["--site", "msk-017", "--broker-name", "nats-1.city.example",
                              "--out", str(ca)]) == 0
    shutil.copy(ca / "broker.crt", ca / "route.crt")  # any certificate will do for -t
    shutil.copy(ca / "broker.key", ca / "route.key")
    out = tmp_path / "out"
    code = make_nats.main([*map(str, HALLS), "--monitor", "msk-017:ops", "--etc", str(ca),
                           "--store", str(tmp_path / "store"), "-o", str(out)])
    assert code == 0
    confs = sorted(out.glob("nats-*.conf"))
    assert [c.name for c in confs] == ["nats-1.conf", "nats-2.conf", "nats-3.conf"]
    for conf in confs:
        done = subprocess.run([exe, "-t", "-c", str(conf)], capture_output=True, text=True,
                              timeout=30)
        assert done.returncode == 0 and "is valid" in done.stdout + done.stderr, \
            done.stdout + done.stderr
    text = confs[1].read_text()
    assert 'server_name: "hallgate-nats-2"' in text
    assert "nats-route://nats-1.city.example:6222" in text
    assert "nats-route://nats-2.city.example" not in text  # not a route to itself
    assert "verify_and_map: true" in text and "stream_replicas: 3" in text
    assert '"user": "CN=hallgate-msk-017-gw-1"' in text


def test_cli_says_what_is_wrong_and_where(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[gateway]\nsite = "s"\n')
    assert make_nats.main([str(bad), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "make_nats:" in err and "bad.toml" in err
    with pytest.raises(SystemExit):
        make_nats.main([str(HALLS[0]), "--node", "a b", "-o", str(tmp_path)])
    assert "a host name" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        make_nats.main([str(HALLS[0]), "--node", "a", "--node", "a", "-o", str(tmp_path)])


def test_example_gateway_config_lists_every_node():
    config = load_config(NATS / "gateway-city.toml")
    assert [u.url for u in config.mqtt.urls] == [
        f"mqtts://nats-{i}.city.example:8883" for i in (1, 2, 3)]
    assert config.mqtt.protocol == "3.1.1" and config.mqtt.subscribe == "site"
    assert config.outbox.delivery == "receipt"
    done = subprocess.run([sys.executable, "-m", "hallgate.cli", "config", "check",
                           str(NATS / "gateway-city.toml")], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_subscribe_key_is_checked(tmp_path):
    text = (NATS / "gateway-city.toml").read_text().replace('subscribe = "site"',
                                                             'subscribe = "all"')
    path = tmp_path / "hall.toml"
    path.write_text(text)
    with pytest.raises(Exception, match="subscribe"):
        load_config(path)
    assert tomllib.loads(text)["mqtt"]["subscribe"] == "all"


def test_readme_names_the_nodes_and_the_failure_modes():
    text = (NATS / "README.md").read_text()
    for needed in ("subscribe = \"site\"", "protocol = \"3.1.1\"", "urls", "Failure modes",
                   "make_nats.py", "nats-hallgate@"):
        assert needed in text, needed


def test_unit_verifies(tmp_path):
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed")
    text = UNIT.read_text()
    server = shutil.which("nats-server") or "/usr/sbin/nats-server"
    if not __import__("os").access(server, __import__("os").X_OK):
        text = re.sub(r"^ExecStart=\S+", f"ExecStart={sys.executable}", text, flags=re.M)
    copy = tmp_path / "nats-hallgate@1.service"
    copy.write_text(text)
    done = subprocess.run([exe, "verify", "--man=no", str(copy)], capture_output=True,
                          text=True, timeout=60)
    output = (done.stdout + done.stderr).strip()
    ours = [line for line in output.splitlines() if "nats-hallgate" in line]
    assert done.returncode == 0 and not ours, output
    security = subprocess.run([exe, "security", "--offline=yes", str(copy)],
                              capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d)", security.stdout)
    if security.returncode != 0 and "offline" in security.stderr:
        pytest.skip("systemd-analyze has no security --offline (systemd < 250)")
    assert m and float(m.group(1)) <= 2.0, security.stdout
