"""The daemon's firmware updates as a technician follows them: `hallgate ota --status`,
`--cancel`, `--history` (kept across a restart), `hallgate status`, a second update of the
same device refused, a device gone mid-update failing after `[firmware] offline_s`, and a
bundle for another board refused before a byte is sent.

The real firmware on MicroPython in slots, the real daemon, the real commands; the bus
share of updates is set to its minimum so a transfer lasts long enough to be watched."""

import json
import subprocess
import sys

import pytest
from conftest import wait_for
from hallgate.gateway import bundle
from harness import daemon_env, hallgate
from test_ota import TARGET, bundles, ota_daemon  # noqa: F401 (bundles: a fixture)

pytestmark = pytest.mark.micropython


@pytest.fixture
def slow_line(tmp_path, bundles):  # noqa: F811
    """test_ota's daemon line, with updates at 20% of the bus. Yields (device, daemon,
    config)."""
    with ota_daemon(tmp_path, bundles, "job_share = 20\n") as made:
        yield made


def ota(daemon, *args, timeout=60):
    return hallgate("ota", *args, "--status-file", daemon.status_file, timeout=timeout)


def ota_json(daemon, *args, timeout=60):
    out = ota(daemon, *args, "--json", timeout=timeout)
    assert out.stdout, out.stderr
    return out.returncode, json.loads(out.stdout)


def start_update(daemon, bundle_path):
    """`hallgate ota TARGET BUNDLE` in the background, once its transfer is sending."""
    proc = subprocess.Popen([sys.executable, "-m", "hallgate.cli", "ota", str(TARGET),
                             str(bundle_path), "--json", "--status-file",
                             str(daemon.status_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=daemon_env())

    def sending():
        assert proc.poll() is None, proc.communicate()
        _, st = ota_json(daemon, "--status")
        return [r for r in st["running"] if r["phase"] == "send" and r["offset"] > 0]

    wait_for(sending, 30, "the update to be sending")
    return proc


def history(daemon):
    code, doc = ota_json(daemon, "--history")
    assert code == 0
    return doc["history"]


def test_an_update_is_followed_cancelled_kept_across_a_restart_and_resumed(slow_line, bundles):  # noqa: F811
    dev, daemon, config = slow_line
    assert history(daemon) == []
    proc = start_update(daemon, bundles["new"])
    try:
        # hallgate status lists it, in its JSON and its text
        st = daemon.wait_status(lambda s: s["updates"], "the update in the status file")
        [u] = st["updates"]
        assert (u["address"], u["version"], u["bundle"]) == (TARGET, "0.2.0", "new.zip")
        out = hallgate("status", "--status-file", daemon.status_file)
        assert "firmware updates running" in out.stdout and "-> 0.2.0" in out.stdout
        # the same device cannot be given a second update meanwhile
        out = ota(daemon, TARGET, bundles["new"])
        assert out.returncode == 1 and "is already being updated to 0.2.0" in out.stderr
        assert "--cancel" in out.stderr
        code, doc = ota_json(daemon, "--cancel", TARGET)
        assert code == 0, doc
        [r] = doc["results"]
        assert r["result"] == "cancelled" and "keeps what it staged" in r["reason"], r
        staged = r["offset"]
        assert staged > 0
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err  # not every device updated
    assert json.loads(out)["results"][0]["result"] == "cancelled"
    code, st = ota_json(daemon, "--status")
    assert st["running"] == [] and [r["outcome"] for r in st["recent"]] == ["cancelled"]
    out = hallgate("devices", "--json", "--status-file", daemon.status_file)
    assert json.loads(out.stdout)["devices"][0]["firmware"] == "0.1.0"  # the old one runs

    assert daemon.terminate() == 0
    # the history is on disk: a new run of the daemon still has it (this run gives updates
    # their usual half of the bus: nothing left to watch, only the resumed transfer to end)
    config.write_text(config.read_text().replace("job_share = 20", "job_share = 50"))
    daemon.start()
    daemon.wait_status(lambda s: s["devices"]["online"] == 1, "the panel online again", 30)
    [h] = history(daemon)
    assert (h["address"], h["from"], h["to"], h["outcome"], h["runs"]) == (
        TARGET, "0.1.0", "0.2.0", "cancelled", "0.1.0"), h
    assert h["started"] <= h["ended"] and h["role"] == "call-panel"
    assert h["board_id"] is None or len(h["board_id"]) == 16

    code, doc = ota_json(daemon, TARGET, bundles["new"], timeout=240)
    [r] = doc["results"]
    assert code == 0 and r["result"] == "updated", r
    assert r["resumed_from"] and r["resumed_from"][0] >= staged  # not from byte 0
    h = history(daemon)
    assert [x["outcome"] for x in h] == ["cancelled", "updated"]
    assert (h[1]["from"], h[1]["runs"]) == ("0.1.0", "0.2.0")
    out = ota(daemon, "--history")
    assert out.returncode == 0 and "0.1.0 -> 0.2.0 CANCELLED" in out.stdout
    assert "UPDATED: running 0.2.0, confirmed healthy" in out.stdout
    out = ota(daemon, "--cancel")
    assert out.returncode == 1 and "no update is running on this gateway" in out.stderr


def test_a_device_gone_mid_update_fails_after_offline_s_with_the_reason(tmp_path, bundles):  # noqa: F811
    with ota_daemon(tmp_path, bundles, "job_share = 20\noffline_s = 5\n") as (dev, daemon, _):
        proc = start_update(daemon, bundles["new"])
        try:
            dev.kill()  # power cut
            out, err = proc.communicate(timeout=60)  # offline_s is 5: well before that
        finally:
            if proc.poll() is None:
                proc.kill()
        h = history(daemon)
    assert proc.returncode == 1, err
    [r] = json.loads(out)["results"]
    assert r["result"] == "failed" and r["reason"].startswith("offline: no answer for 5 s"), r
    assert "the next update resumes there" in r["reason"]
    [h] = h
    assert (h["outcome"], h["from"], h["runs"]) == ("failed", "0.1.0", "0.1.0")


def test_a_bundle_for_another_board_is_refused_before_a_byte_is_sent(slow_line, bundles,  # noqa: F811
                                                                     tmp_path):
    dev, daemon, _ = slow_line
    pico = tmp_path / "pico.zip"  # the same firmware, built for a Pico
    bundle.build("call-panel", pico, bundles["pub"].with_name("key.pem"), version="0.2.0",
                 compile=False, board="rp2")
    before = json.loads(hallgate("bus", "stats", "--json", "--status-file",
                                 daemon.status_file).stdout)
    code, doc = ota_json(daemon, TARGET, pico)
    [r] = doc["results"]
    assert code == 1 and r["result"] == "skipped", r
    assert r["reason"] == "a unix board; the bundle is for rp2 boards"
    after = json.loads(hallgate("bus", "stats", "--json", "--status-file",
                                daemon.status_file).stdout)

    def jobs(doc):
        return [b["stats"]["job_exchanges"] for b in doc["buses"].values()]

    assert jobs(after) == jobs(before) == [0]  # not one update request on the line
    out = hallgate("devices", "--json", "--status-file", daemon.status_file)
    [row] = json.loads(out.stdout)["devices"]
    assert (row["firmware"], row["board"]) == ("0.1.0", "unix")
    assert history(daemon) == []  # a skip is not an update
