"""The daemon's firmware updates: started, followed, cancelled and remembered.

Design note
-----------
Operations: `Updates(gateway)` gives the control socket four commands. "ota" checks a
signed bundle and the devices (gateway/ota.py), starts one `ota.Transfer` per device as a
bus master job and streams their progress; "ota_status" lists the updates running;
"ota_cancel" stops those not yet committed; "ota_history" reads past results. Each update
that ends (updated, rolled back, failed, cancelled, or cut short by the gateway stopping) is
appended to the history, one JSON line in `ota-history.jsonl` beside the outbox, so it is
kept across restarts.
Goals: the technician can always tell what the daemon is doing to a device's firmware and
what it did: an update goes on when the command that started it is interrupted (the device
would resume it anyway), and can be followed or cancelled from another command; a device
that goes away fails its update after `[firmware] offline_s` with the reason, instead of
holding the command for minutes; a device is never sent two updates at once.
Plan: the transfers run in the masters' threads; everything here runs in control-socket
threads, and a result is written by whichever thread sees its transfer done first (under
a lock, once). The history file is appended and fsynced per result (a few per update run)
and trimmed to its last HISTORY_KEEP results when it grows past twice that.
"""

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from hallgate.gateway.commands import utc_ts
from hallgate.gateway.control import ControlError, arg
from hallgate.gateway.technician import masters_for

log = logging.getLogger("hallgate.updates")

PROGRESS_S = 0.5  # how often `ota` reports its transfers' progress
HISTORY_KEEP = 1000  # update results kept in the history file
CANCEL_WAIT_S = 5.0  # how long "ota_cancel" waits for the masters to stop the transfers


class History:
    """Update results, one JSON object per line, oldest first, kept across restarts."""

    def __init__(self, path, keep=HISTORY_KEEP):
        self.path = Path(path)
        self.keep = keep
        self._lock = threading.Lock()

    def add(self, record):
        line = json.dumps(record, sort_keys=True) + "\n"
        with self._lock:
            try:
                with open(self.path, "a+b") as f:
                    if f.tell() and (f.seek(-1, os.SEEK_END), f.read(1))[1] != b"\n":
                        line = "\n" + line  # a line torn by a power cut stays alone
                    f.write(line.encode())
                    f.flush()
                    os.fsync(f.fileno())
                lines = self._lines()
                if len(lines) > 2 * self.keep:
                    tmp = self.path.with_suffix(".tmp")
                    tmp.write_text("".join(lines[-self.keep:]), encoding="utf-8")
                    os.replace(tmp, self.path)
            except OSError as e:  # a full disk must not stop the update or the gateway
                log.error("update history %s: %s; this result is in the log only",
                          self.path, e)

    def read(self, bus=None, address=None, limit=None):
        """The results, oldest first; of one device when `address` is given. A line that
        does not parse (a torn write at a power cut) is skipped with a warning."""
        with self._lock:
            lines = self._lines()
        out = []
        for n, line in enumerate(lines, 1):
            try:
                rec = json.loads(line)
            except ValueError:
                log.warning("update history %s line %d is not JSON; skipped", self.path, n)
                continue
            if bus is not None and rec.get("bus") != bus:
                continue
            if address is not None and rec.get("address") != address:
                continue
            out.append(rec)
        return out[-limit:] if limit else out

    def _lines(self):
        try:
            return self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        except FileNotFoundError:
            return []


@dataclass
class Job:
    """One device's update as the daemon runs it."""

    bus: str
    transfer: object  # ota.Transfer
    bundle: str
    started: float = field(default_factory=time.time)
    was: str | None = None  # the firmware it ran before
    board_id: str | None = None
    recorded: bool = False

    def progress(self):
        return {**self.transfer.progress(self.bus), "bundle": self.bundle,
                "started": utc_ts(self.started)}


class Updates:
    """The firmware update commands of one Gateway's control socket."""

    def __init__(self, gateway, history_path):
        self.gw = gateway
        self.history = History(history_path)
        self._jobs = []  # Jobs running, and finished ones until recorded
        self._lock = threading.Lock()

    def handlers(self):
        return {"ota": self.start, "ota_status": self.status, "ota_cancel": self.cancel,
                "ota_history": self.past}

    def running(self):
        """Progress rows of the updates still running (for `hallgate status`)."""
        self.record_finished()
        with self._lock:
            return [j.progress() for j in self._jobs if not j.transfer.done]

    # ---- commands -------------------------------------------------------------------

    def start(self, req, session):
        """Updates devices' firmware from a signed bundle: "bundle" (a path this daemon
        can read), "addresses" (a list) or "role", optionally "bus" and "force". Checks
        the bundle with the config's [firmware] public_key and each device's board before
        anything goes on the bus; streams {"progress": [...]} every PROGRESS_S; the final
        object has "results". A client that goes away does not stop the updates."""
        from hallgate.gateway import ota
        from hallgate.gateway.bundle import BundleError

        gw = self.gw
        key = gw.config.firmware.public_key
        if key is None:
            raise ControlError(f"{gw.config.file or 'the config'} has no [firmware] "
                               "public_key: this gateway updates no firmware over the bus")
        path = arg(req, "bundle", str, required=True)
        addresses = arg(req, "addresses", list)
        if addresses is not None and not all(
                isinstance(a, int) and not isinstance(a, bool) for a in addresses):
            raise ControlError(f"'addresses' must be a list of integers, not "
                               f"{json.dumps(addresses)}")
        role = arg(req, "role", str)
        masters = masters_for(gw, req)
        try:
            image = ota.prepare(path, key)
        except BundleError as e:
            raise ControlError(f"bundle refused, nothing sent: {e}") from None
        rows = [r for r in gw.device_rows() if r["bus"] in masters]
        try:
            targets, skipped = ota.choose_targets(rows, image, addresses, role,
                                                  force=arg(req, "force", bool, False))
        except ota.OtaError as e:
            raise ControlError(str(e)) from None
        offline_s = gw.config.firmware.offline_s
        by_key = {(r["bus"], r["address"]): r for r in rows}
        with self._lock:
            busy = {(j.bus, j.transfer.addr): j for j in self._jobs if not j.transfer.done}
            for target in targets:
                if target in busy:
                    j = busy[target]
                    raise ControlError(
                        f"device {target[1]} on bus {target[0]} is already being updated to "
                        f"{j.transfer.image.version} (since {utc_ts(j.started)}): follow it "
                        "with `hallgate ota --status`, stop it with `hallgate ota --cancel`")
            jobs = []
            for name, addr in targets:
                row = by_key[(name, addr)]
                transfer = masters[name].run_job(
                    ota.Transfer(addr, image, gone_timeout=offline_s))
                jobs.append(Job(name, transfer, os.path.basename(path), was=row["firmware"],
                                board_id=row.get("board_id")))
            self._jobs += jobs
        log.info("firmware update to %s %s: %s", image.role, image.version,
                 ", ".join(f"{n}:{a}" for n, a in targets) or "no device online")
        while not all(j.transfer.done for j in jobs) and not gw.stopping:
            self.record_finished()
            if session.alive():
                session.send({"progress": [j.progress() for j in jobs]})
            if not session.wait(PROGRESS_S):  # the client left: the updates go on
                time.sleep(PROGRESS_S)
        self.record_finished(stopping=gw.stopping)
        return {"version": image.version, "role": image.role,
                "results": [j.progress() for j in jobs] + skipped}

    def status(self, req, session):
        """The updates running now, and the results of the last hour."""
        running = self.running()
        hour_ago = utc_ts(time.time() - 3600)
        recent = [r for r in self.history.read(limit=50) if r.get("ended", "") >= hour_ago]
        return {"running": running, "recent": recent}

    def cancel(self, req, session):
        """Stops the running updates of "addresses" (all of them when absent, optionally
        of one "bus") that have not been committed: the device keeps running its old
        firmware and what it staged (a later update resumes there). An update already
        committed cannot be stopped: the device is checking or restarting into the new
        image and confirms it or rolls back by itself."""
        addresses = arg(req, "addresses", list)
        bus = arg(req, "bus", str)
        with self._lock:
            chosen = [j for j in self._jobs if not j.transfer.done
                      and (bus is None or j.bus == bus)
                      and (not addresses or j.transfer.addr in addresses)]
        if not chosen:
            which = (f"of device(s) {', '.join(map(str, addresses))}" if addresses else
                     "on this gateway")
            raise ControlError(f"no update is running {which}")
        asked = [j for j in chosen if j.transfer.cancel("cancelled by the technician")]
        deadline = time.monotonic() + CANCEL_WAIT_S
        while (not all(j.transfer.done or j.transfer.committed for j in asked)
               and time.monotonic() < deadline):
            time.sleep(0.05)
        self.record_finished()
        return {"results": [j.progress() for j in chosen]}

    def past(self, req, session):
        """Past update results from the history file, newest last."""
        limit = arg(req, "limit", int, 50)
        address = arg(req, "address", int)
        return {"history": self.history.read(arg(req, "bus", str), address, limit or None),
                "file": str(self.history.path)}

    # ---- the record ------------------------------------------------------------------

    def record_finished(self, stopping=False):
        """Appends each update that has ended to the history (once), and forgets it; with
        `stopping`, the unfinished ones too, as cut short by the gateway stopping."""
        with self._lock:
            ended = [j for j in self._jobs if not j.recorded and (j.transfer.done or stopping)]
            for j in ended:
                j.recorded = True
            self._jobs = [j for j in self._jobs if not j.recorded]
        for j in ended:
            t = j.transfer
            outcome = t.result or "interrupted"
            reason = t.reason or (f"the gateway stopped at {t.offset} of {t.size} bytes "
                                  "(the device keeps them; the next update resumes there)")
            record = {
                "started": utc_ts(j.started), "ended": utc_ts(), "bus": j.bus,
                "address": t.addr, "board_id": j.board_id, "role": t.image.role,
                "from": j.was, "to": t.image.version, "runs": t.summary()["firmware"],
                "outcome": outcome, "reason": reason, "bundle": j.bundle,
                "bytes": t.size, "seconds": t.summary()["seconds"],
            }
            self.history.add(record)
            log.info("firmware update of %s:%s: %s %s", j.bus, t.addr, outcome, reason)
