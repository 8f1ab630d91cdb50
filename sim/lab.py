"""A simulated hall that stays up for a technician to practise on: `hallgate sim lab`, and
`hallgate sim --stay` after a day.

Design note
-----------
The lab is the simulated hall with what a real installation has besides: a signing key
pair, whose public half is in every gateway's config (`[firmware] public_key`), so updates
over the bus are accepted; devices booted from a signed bundle laid out as `hallgate flash`
lays it on a board (boot loader and slots), so `hallgate ota` really swaps their firmware;
each gateway's status file with its control socket beside it, so every technician command
goes through the daemon as on a Pi; and a spare board on the bench: a blank MicroPython
(the unix port) behind its own pty, as a Pico on USB, for `hallgate flash`. `Lab.text()`
is the list of commands to try, with this lab's paths in them.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from hallgate.sim import SimError

__all__ = ["Lab"]

ROLES = ("call-panel", "window-display", "feedback-pad")


class Lab:
    def __init__(self, folder):
        self.dir = Path(folder)
        self.private = self.dir / "signing.pem"
        self.public = self.dir / "signing.pub"
        self.bundles = {}  # role -> the lab's bundle for the unix board
        self.files = {}  # role -> {name: bytes}, checked against the key
        self.spare = None  # the spare board's socat process
        self.spare_tty = self.dir / "spare-board.tty"

    def prepare(self):
        """Keys and one signed bundle per role (compiled with mpy-cross, board unix)."""
        from hallgate.gateway import bundle

        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.private.exists():
            bundle.keygen(self.private, self.public)
        for role in ROLES:
            if role not in bundle.ROLE_MODULES:
                continue
            out = self.dir / f"{role}.zip"
            bundle.build(role, out, self.private, board="unix")
            self.bundles[role] = out
            self.files[role] = bundle.load(out, self.public)[1]
        return self

    def flash_dir(self, name, role):
        """A board's flash with the role's bundle installed (`hallgate flash`'s layout)."""
        from hallgate.sim.device import install_slots

        return install_slots(self.dir / "flash" / name, self.files[role])

    def start_spare(self, timeout=10.0):
        """A blank board on USB: a MicroPython REPL behind a pty at `spare_tty`."""
        from hallgate.sim.device import micropython_command

        socat = shutil.which("socat")
        if socat is None:
            raise SimError("the spare board needs socat (make installs it)")
        root = self.dir / "spare-board"
        root.mkdir(parents=True, exist_ok=True)
        self.spare = subprocess.Popen(
            [socat, f"pty,raw,echo=0,link={self.spare_tty}",
             f"exec:{micropython_command()},pty,raw,echo=0,stderr,setsid,ctty"],
            cwd=root, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not self.spare_tty.exists():
            if time.monotonic() > deadline or self.spare.poll() is not None:
                raise SimError(f"the spare board did not come up on {self.spare_tty}")
            time.sleep(0.05)
        return self

    def close(self):
        if self.spare is not None and self.spare.poll() is None:
            self.spare.terminate()
            try:
                self.spare.wait(5)
            except subprocess.TimeoutExpired:
                self.spare.kill()
                self.spare.wait(5)

    def text(self, hall):
        """What to try, with this lab's paths: one gateway's commands, then the others'."""
        g, gw = hall.layout[0], hall.gateways[0]
        status = f"--status-file {gw.status_file}"
        n = g.windows[0]
        spare_window = hall.options.windows + 1
        lines = [
            f"The hall stays up: {len(hall.gateways)} gateway(s), {len(hall.devices)} "
            "firmware devices, the central and the broker. Try, in another terminal "
            "(the venv active; Ctrl-C here ends it):",
            f"  hallgate status {status}",
            f"  hallgate devices {status}",
            f"  hallgate identify {g.local(n)} --seconds 5 {status}   # window {n}'s panel",
            f"  hallgate bus stats {status}",
            f"  hallgate bus sniff --seconds 3 {status}",
            f"  hallgate ota {g.local(n)} {self.bundles['call-panel']} --force {status}"
            "   # an update over the bus, beside the polling (the version it runs: --force)",
            f"  hallgate firmware build --role call-panel --board unix --key {self.private}"
            f" --out {self.dir / 'my-panel.zip'}   # your own signed bundle",
            f"  hallgate flash --port {self.spare_tty} --resume --no-reset --role "
            f"call-panel --address {spare_window} --window {spare_window} --bundle "
            f"{self.bundles['call-panel']} --key {self.public}   # the spare board on USB",
        ]
        lines.append(f"  (or `export HALLGATE_STATUS_FILE={gw.status_file}` once, and drop "
                     "--status-file)")
        for other in hall.gateways[1:]:
            lines.append(f"  (gateway {other.config.stem}: --status-file {other.status_file})")
        lines.append(f"Broker {hall.url}: mosquitto_sub -h 127.0.0.1 -p "
                     f"{hall.url.rsplit(':', 1)[1]} -t 'hall/v1/#' -v")
        return "\n".join(lines)
