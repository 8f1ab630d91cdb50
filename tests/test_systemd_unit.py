"""hardware/systemd: the daemon's unit runs as the system user `hallgate` in a sandbox that
`systemd-analyze security` rates 4.0 or better, and still reaches the hardware it needs; the
sysusers.d file beside it makes that user.

The systemd-analyze checks skip where it is missing (or older than `security --offline`,
systemd 250). Its rating is read from the text output: in systemd 252 `--json` lists the
individual checks only, without the overall figure, and `--threshold` counts in tenths.
"""

import json
import re
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT

SYSTEMD = ROOT / "hardware" / "systemd"
UNIT = SYSTEMD / "hallgate.service"
SYSUSERS = SYSTEMD / "hallgate.sysusers"
TMPFILES = SYSTEMD / "hallgate.tmpfiles"
MAX_EXPOSURE = 4.0

# Checks of `systemd-analyze security` that must stay passed (by their JSON names).
MUST_PASS = [
    "UserOrDynamicUser", "PrivateUsers", "NoNewPrivileges", "AmbientCapabilities",
    "CapabilityBoundingSet_CAP_SYS_ADMIN", "CapabilityBoundingSet_CAP_SET_UID_GID_PCAP",
    "CapabilityBoundingSet_CAP_SYS_RAWIO", "CapabilityBoundingSet_CAP_NET_ADMIN",
    "ProtectSystem", "ProtectHome", "PrivateTmp", "ProtectKernelTunables",
    "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups", "ProtectClock",
    "ProtectHostname", "ProtectProc", "LockPersonality", "MemoryDenyWriteExecute",
    "RestrictRealtime", "RestrictSUIDSGID", "RestrictNamespaces_user",
    "RestrictAddressFamilies_AF_NETLINK", "RestrictAddressFamilies_AF_PACKET",
    "RestrictAddressFamilies_OTHER", "SystemCallArchitectures",
    "SystemCallFilter_privileged", "SystemCallFilter_resources", "SystemCallFilter_mount",
]


def parse_unit(path):
    """{section: [(key, value), ...]} in file order, repeated keys kept (systemd's syntax:
    # and ; comments, a trailing backslash continues the line)."""
    sections, current, pending = {}, None, ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        key, _, value = line.partition("=")
        current.append((key.strip(), value.strip()))
    return sections


def values(unit, key, section="Service"):
    """The effective list of a list setting: each assignment adds, an empty one resets."""
    out = []
    for k, v in unit[section]:
        if k == key:
            out = out + v.split() if v else []
    return out


def last(unit, key, section="Service"):
    found = [v for k, v in unit[section] if k == key]
    return found[-1] if found else None


def config_lines(path):
    return [line.split() for line in path.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


@pytest.fixture(scope="module")
def unit():
    return parse_unit(UNIT)


def test_runs_as_the_hallgate_user_with_the_device_groups(unit):
    user = last(unit, "User")
    assert user and user not in ("root", "0"), "the daemon must not run as root"
    assert last(unit, "Group") == user
    groups = values(unit, "SupplementaryGroups")
    assert {"gpio", "dialout"} <= set(groups), groups
    assert last(unit, "DynamicUser") in (None, "no"), "a dynamic user has no fixed groups"


def test_sysusers_file_makes_the_user_and_its_groups(unit):
    user = last(unit, "User")
    lines = config_lines(SYSUSERS)
    users = [f for f in lines if f[0] == "u" and f[1] == user]
    assert users, f"{SYSUSERS.name} makes no user {user!r}"
    assert users[0][2] in ("-", "") or int(users[0][2]) != 0
    members = {f[2] for f in lines if f[0] == "m" and f[1] == user}
    assert set(values(unit, "SupplementaryGroups")) <= members, members


def test_config_folder_is_for_the_daemons_group(unit):
    rows = [f for f in config_lines(TMPFILES) if f[1] == "/etc/hallgate"]
    assert rows, f"{TMPFILES.name} does not set up /etc/hallgate"
    kind, _path, mode, owner, group = rows[0][:5]
    assert kind == "d" and owner == "root" and group == last(unit, "Group")
    assert int(mode, 8) & 0o007 == 0, "keys and passwords live there: no access for others"


def test_the_sandbox_still_reaches_the_hardware(unit):
    # PrivateDevices= would hide /dev/tty* and /dev/gpiochip*; ProcSubset=pid hides
    # /proc/cpuinfo and /proc/device-tree, where gpiozero finds the Pi's revision.
    assert last(unit, "PrivateDevices") in (None, "no", "false")
    assert last(unit, "ProcSubset") in (None, "all")
    assert last(unit, "DevicePolicy") == "closed"
    allowed = dict(v.split() for k, v in unit["Service"] if k == "DeviceAllow")
    for name in ("char-ttyUSB", "char-ttyACM", "char-ttyAMA", "char-gpiochip"):
        assert allowed.get(name) == "rw", f"DeviceAllow={name} rw is missing"
    # lgpio makes a FIFO in the working directory when imported: it must be writable.
    runtime = values(unit, "RuntimeDirectory")
    assert last(unit, "WorkingDirectory") in [f"/run/{d}" for d in runtime]
    assert {"AF_UNIX", "AF_INET", "AF_INET6"} <= set(values(unit, "RestrictAddressFamilies"))
    assert last(unit, "Type") == "notify" and last(unit, "WatchdogSec")


def systemd_analyze():
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed")
    return exe


def security(*args):
    done = subprocess.run([systemd_analyze(), "security", "--offline=yes", *args, str(UNIT)],
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0 and "offline" in done.stderr:
        pytest.skip(f"systemd-analyze has no security --offline (systemd < 250): "
                    f"{done.stderr.strip()}")
    return done


def test_security_exposure_is_at_most_4():
    done = security()
    assert done.returncode == 0, done.stderr
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d)", done.stdout)
    assert m, done.stdout
    failed = "\n".join(line for line in done.stdout.splitlines() if line.startswith("✗"))
    assert float(m.group(1)) <= MAX_EXPOSURE, f"exposure {m.group(1)}; not passed:\n{failed}"
    # The same through the exit code (the threshold counts tenths).
    assert security(f"--threshold={int(MAX_EXPOSURE * 10)}").returncode == 0


def test_security_checks_that_must_stay_passed():
    done = security("--json=short")
    assert done.returncode == 0, done.stderr
    checks = {c["json_field"]: c["set"] for c in json.loads(done.stdout)}
    lost = [name for name in MUST_PASS if checks.get(name) is False]
    assert not lost, f"no longer passed: {lost}"


def test_unit_verifies(tmp_path):
    """`systemd-analyze verify` also insists that ExecStart's program exists, and the venv
    in /opt/hallgate is only on the gateway: a copy with this Python in its place is
    verified, so every other line (keys, values, device rights, filters) is checked."""
    exe = systemd_analyze()
    text = UNIT.read_text()
    copy = tmp_path / UNIT.name
    copy.write_text(re.sub(r"^ExecStart=\S+", f"ExecStart={sys.executable}", text,
                           flags=re.M))
    done = subprocess.run([exe, "verify", "--man=no", str(copy)],
                          capture_output=True, text=True, timeout=60)
    output = (done.stdout + done.stderr).strip()
    # Warnings about this unit name its file; other units' are the host's business.
    ours = [line for line in output.splitlines() if UNIT.name in line]
    assert done.returncode == 0 and not ours, output


def test_sysusers_file_is_valid(tmp_path):
    """systemd-sysusers reads it (a dry run on an empty root: nothing is written)."""
    exe = shutil.which("systemd-sysusers")
    if exe is None:
        pytest.skip("systemd-sysusers is not installed")
    done = subprocess.run([exe, "--dry-run", f"--root={tmp_path}", str(SYSUSERS)],
                          capture_output=True, text=True, timeout=60)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Creating user 'hallgate'" in output, output
    assert not list(tmp_path.iterdir()), "a dry run wrote files"
