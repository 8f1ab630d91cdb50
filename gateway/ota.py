"""Firmware update over the bus: a signed bundle to a device, in checked chunks, resumable.

Design note
-----------
Operations: `prepare` checks a bundle's signature and files with the gateway's public key
(nothing is sent from a bundle that fails) and packs the image a device stages: every
bundle file but the boot loader (protocols/otawire.py). `Transfer` is one device's update
as a job for `BusMaster.run_job`, so the master's thread interleaves it with the poll
cycle and the other devices keep being served (at most `job_share` of the bus, 50% by
default). `update` runs transfers to completion and returns a summary per device.
Goals: an update either ends on the new version, confirmed healthy by the device, or
leaves the device on the version it had, saying why; a lost or garbled frame costs one
re-sent chunk; a device that drops off the bus (unplugged, reset, power cut) is waited for
and the transfer resumes from what it staged.
Plan: `Transfer` is a sans-I/O state machine, as `book.Book` is: next_request() says
what to send, handle() digests the device's OTA_STATUS (or the failure). Phases:
begin (OTA_BEGIN; the reply says how much is staged already) -> send (OTA_DATA from
there; each reply says how far the device is, so a lost reply or a rewind needs nothing
special) -> commit (OTA_COMMIT, answered "checking") -> reboot (OTA_QUERY every
QUERY_EVERY s until the device reports its new image confirmed, or rolled back).
"""

import hashlib
import time
from dataclasses import dataclass

from hallgate.gateway import bundle
from hallgate.protocols import bus
from hallgate.protocols import otawire as ow

QUERY_EVERY = 0.5  # seconds between OTA_QUERYs while a device checks, reboots, confirms
RETRY_EVERY = 1.0  # seconds between OTA_BEGINs to a device that stopped answering
FAILS_TO_PAUSE = 5  # failed exchanges in a row before a device counts as gone for now
GONE_TIMEOUT = 30.0  # a device gone this long fails its update (it keeps what it staged)
CONFIRM_TIMEOUT = 120.0  # from commit to the device's verdict (TRIAL_MS is 60 s on it)


class OtaError(Exception):
    """An update that cannot start (a bundle that does not verify, no such device)."""


@dataclass(frozen=True)
class Image:
    role: str
    board: str
    version: str
    data: bytes

    @property
    def sha256(self):
        return hashlib.sha256(self.data).digest()


def prepare(bundle_path, public_key_path):
    """The Image of a bundle; BundleError (the reason) if its signature or a file fails."""
    manifest, files = bundle.load(bundle_path, public_key_path)
    slot = {name: data for name, data in files.items() if not bundle.in_root(name)}
    data = ow.pack_image(manifest.version, slot)
    return Image(manifest.role, manifest.board, manifest.version, data)


class Transfer:
    """One device's update: a job for BusMaster.run_job (see the design note).

    on_progress(transfer) is called in the master's thread after every reply: keep it
    short. `result` is None while running, then "updated", "rolled-back" or "failed",
    with `reason`.
    """

    def __init__(self, addr, image, *, on_progress=None, clock=time.monotonic,
                 gone_timeout=GONE_TIMEOUT, confirm_timeout=CONFIRM_TIMEOUT):
        self.addr = addr
        self.image = image
        self._digest = image.sha256
        self.size = len(image.data)
        self.on_progress = on_progress
        self._clock = clock
        self.gone_timeout = gone_timeout
        self.confirm_timeout = confirm_timeout
        self.phase = "begin"
        self.offset = 0  # what the device has staged, as it last said
        self.result = None
        self.reason = ""
        self.started = clock()
        self.finished = None
        self.last_reply = self.started
        self.committed_at = None
        self._wait_until = 0.0  # no request before this (pacing queries and retries)
        self._fails = 0  # failed exchanges in a row
        self.fresh_starts = 0  # images thrown away by the device (BAD_IMAGE) and begun again
        self.resumed_from = []  # offsets a BEGIN found already staged
        self.chunks = 0  # OTA_DATA sent, re-sent ones included
        self.resent = 0  # OTA_DATA sent again after a failed exchange
        self.failures = {}  # failed exchanges by outcome ("timeout", "garbled", ...)
        self.interruptions = 0  # times the device stopped answering mid-update
        self.firmware = None  # (x, y, z) the device last reported running
        self.device_state = None  # its last OTA state name
        self._cancel = None  # the reason, once cancel() was asked

    @property
    def done(self):
        return self.result is not None

    @property
    def committed(self):
        """True once OTA_COMMIT may have reached the device: from then on the device
        decides (it confirms the new image or rolls back) and it cannot be cancelled."""
        return self.phase in ("commit", "reboot")

    def cancel(self, reason):
        """Ask the transfer to stop before its commit (any thread; it ends at its next
        turn in the master's thread, with result "cancelled"). False when it is done or
        already committed."""
        if self.done or self.committed:
            return False
        self._cancel = reason
        return True

    def next_request(self):
        now = self._clock()
        if self._cancel is not None and not self.done and not self.committed:
            self._finish("cancelled", f"{self._cancel} at {self.offset} of {self.size} "
                         "bytes; the device runs its old firmware and keeps what it staged "
                         "(the next update resumes there)")
        if self.done or now < self._wait_until:
            return None
        if self.phase == "begin":
            return ow.encode_begin(self.addr, self.size, self._digest)
        if self.phase == "send":
            self.chunks += 1
            end = min(self.offset + ow.CHUNK, self.size)
            return ow.encode_data(self.addr, self.offset, self.image.data[self.offset:end])
        if self.phase == "commit":
            return ow.encode_commit(self.addr, self._digest)
        self._wait_until = now + QUERY_EVERY
        return ow.encode_query(self.addr)

    def handle(self, outcome):
        """The outcome of the last request: a Frame, or master.TIMEOUT / GARBLED."""
        now = self._clock()
        if isinstance(outcome, bus.Frame) and outcome.mtype == bus.OTA_STATUS:
            try:
                status = ow.decode_status(outcome.payload)
            except ValueError as e:
                return self._failed_exchange(now, f"bad OTA_STATUS: {e}")
            self._fails = 0
            self.last_reply = now
            self._status(status, now)
        elif isinstance(outcome, bus.Frame) and outcome.mtype == bus.NAK:
            _, reason = bus.decode_nak(outcome.payload)
            self._finish("failed", "the device refused the update (NAK reason "
                         f"{reason}): its firmware predates updates over the bus; use "
                         "hallgate flash")
        else:
            self._failed_exchange(now, outcome)
        if self.on_progress is not None:
            self.on_progress(self)

    def _status(self, st, now):
        self.firmware = st.firmware
        self.device_state = st.state_name
        phase = self.phase
        if st.state == ow.RECEIVING and phase in ("begin", "send", "commit"):
            if phase == "begin" and st.have:
                self.resumed_from.append(st.have)
            self.offset = st.have
            self.phase = "commit" if st.have >= self.size else "send"
        elif st.state == ow.BAD_IMAGE:
            if st.reason.startswith("no slots") or self.fresh_starts >= 1:
                self._finish("failed", f"the device could not use the image: {st.reason}")
            else:  # it threw the staged bytes away: once more from the start
                self.fresh_starts += 1
                self.phase, self.offset = "begin", 0
        elif phase == "commit" and st.state == ow.CHECKING:
            self.phase, self.committed_at = "reboot", now
        elif phase == "reboot":
            if st.state == ow.UPDATED and st.reason == self.image.version:
                # What runs is what the new code says of itself (its OTA_STATUS, as its
                # INFO), not the bundle's label: they differ if the manifest's was forced.
                runs = ".".join(map(str, st.firmware))
                label = "" if runs == self.image.version else (
                    f" (the bundle was labelled {self.image.version}: its code says {runs})")
                self._finish("updated", f"running {runs}, confirmed healthy{label}")
            elif st.state == ow.ROLLED_BACK:
                self._finish("rolled-back", st.reason)
            elif st.state not in (ow.CHECKING, ow.STAGED, ow.TRIAL):
                self._finish("failed", f"after the commit the device reports {st!r}")
        else:  # the device restarted without the transfer (a reset mid-way): resume
            self.phase = "begin"
        if self.phase == "reboot" and not self.done:
            self._check_confirm_time(now)

    def _failed_exchange(self, now, outcome):
        self._fails += 1
        self.failures[str(outcome)] = self.failures.get(str(outcome), 0) + 1
        if self.phase == "send":
            self.resent += 1
        if self.phase == "reboot":  # expected while it checks and restarts
            self._check_confirm_time(now)
            return
        if self._fails == FAILS_TO_PAUSE:
            self.interruptions += 1
        if self._fails >= FAILS_TO_PAUSE:  # gone for now: ask again, now and then
            self.phase = "begin"
            self._wait_until = now + RETRY_EVERY
            if now - self.last_reply > self.gone_timeout:
                self._finish("failed", f"offline: no answer for {self.gone_timeout:.0f} s "
                             f"({outcome}); it keeps {self.offset} of {self.size} bytes "
                             "staged, and the next update resumes there")

    def _check_confirm_time(self, now):
        if self.committed_at is not None and now - self.committed_at > self.confirm_timeout:
            self._finish("failed", f"no verdict {self.confirm_timeout:.0f} s after the "
                         f"commit (last state: {self.device_state})")

    def _finish(self, result, reason):
        self.result, self.reason = result, reason
        self.finished = self._clock()

    def progress(self, bus_name):
        """summary() with where it is: a row of `hallgate ota`'s progress and results."""
        return {"bus": bus_name, "phase": self.phase, "offset": self.offset,
                "device_state": self.device_state, **self.summary()}

    def summary(self):
        fw = ".".join(map(str, self.firmware)) if self.firmware else None
        end = self.finished if self.finished is not None else self._clock()
        return {
            "address": self.addr, "result": self.result, "reason": self.reason,
            "version": self.image.version, "firmware": fw, "bytes": self.size,
            "chunks": self.chunks, "resent": self.resent, "failures": self.failures,
            "resumed_from": self.resumed_from, "interruptions": self.interruptions,
            "fresh_starts": self.fresh_starts, "seconds": round(end - self.started, 2),
        }


def choose_targets(rows, image, addresses=None, role=None, force=False):
    """The devices to update: ([(bus, address)], [skipped summary]) from device `rows`
    (dicts with bus, address, role, online, firmware, board: the daemon's table or a
    direct scan), by `addresses` or by `role`. OtaError names a device that is unknown,
    ambiguous or of another role than the image's. Skipped, with the reason: offline
    devices, boards of another kind than the bundle's (its HAL would not start: nothing is
    sent), and unless `force`, boards that do not say their kind (older firmware)
    and devices already running the image's version."""
    if (addresses is None) == (role is None):
        raise OtaError("say which devices: their addresses, or a role")
    if role is not None:
        if role != image.role:
            raise OtaError(f"the bundle is for {image.role}, not {role}")
        chosen = [r for r in rows if r["role"] == role]
        if not chosen:
            raise OtaError(f"no {role} on the bus")
    else:
        chosen = []
        for addr in addresses:
            found = [r for r in rows if r["address"] == addr]
            if not found:
                raise OtaError(f"device {addr} is not on the bus (not configured, and it "
                               "did not answer)")
            if len(found) > 1:
                raise OtaError(f"device {addr} is on buses "
                               f"{', '.join(r['bus'] for r in found)}: say which bus")
            if found[0]["role"] != image.role:
                raise OtaError(f"device {addr} is a {found[0]['role']}; the bundle is for "
                               f"{image.role}")
            chosen += found
    def why_not(r):
        if not r["online"]:
            return "offline"
        board = r.get("board")
        if board in (None, "unknown"):
            if not force:
                return (f"its firmware ({r.get('firmware')}) does not report its board, so "
                        f"the bundle's ({image.board}) cannot be checked (--force sends it)")
        elif board != image.board:
            return f"a {board} board; the bundle is for {image.board} boards"
        if not force and r.get("firmware") == image.version:
            return f"already runs {image.version} (--force sends it again)"
        return None

    reasons = [(r, why_not(r)) for r in chosen]
    targets = [(r["bus"], r["address"]) for r, why in reasons if why is None]
    skipped = [{"bus": r["bus"], "address": r["address"], "result": "skipped",
                "reason": why, "version": image.version} for r, why in reasons if why]
    return targets, skipped


def update(master, addresses, image, *, on_progress=None, timeout=None, poll=0.05):
    """Update `addresses` on a started BusMaster with `image`, all at once (their chunks
    interleave); returns their Transfers when every one is done, or when `timeout`
    seconds have passed (those still running have result None)."""
    transfers = [master.run_job(Transfer(a, image, on_progress=on_progress))
                 for a in addresses]
    deadline = None if timeout is None else time.monotonic() + timeout
    while not all(t.done for t in transfers):
        if deadline is not None and time.monotonic() > deadline:
            break
        time.sleep(poll)
    return transfers
