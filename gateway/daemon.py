"""The gateway daemon: `hallgate run --config hall.toml`.

Design note
-----------
Operations: wires the parts together. Bus masters (one per RS-485 bus) and the GPIO
samplers (feedback buttons, GPIO call panels) produce events; each event is committed to
the durable outbox *inside* the producer's callback, so a bus device is acked, and a GPIO
press is taken, only once the event is on disk. A sender thread feeds the outbox, oldest
first, into the MQTT link, which calls back when events are confirmed: by the central
service's receipt (in its database), or by the broker's PUBACK with `[outbox] delivery =
"puback"`; only then are the rows deleted.
Desired state comes down from the link as typed commands and is reconciled onto devices
(`Reconciler`): an older version never overwrites a newer one.

Ordering: after a restart the backlog goes out before new events, because the sender
publishes strictly by the outbox's seq, and every leftover row has a lower seq than
anything taken after the restart. That keeps each window's call / start / finish in the
order the operator pressed them, which the central service's state machine relies on; the
cost is that new presses wait behind a backlog (seconds even for a large one).

Faults: broker down, or crashed and restarted without its disk state, or the central away ->
events wait in the outbox until receipted (bounded, drops reported); disk full ->
the outbox raises, the bus master does not ack (the device keeps the event and sends it
again), GPIO presses are retried by the feedback module; a malformed command -> the errors
topic; SIGTERM -> stop taking input, drain the outbox for a few seconds, say offline, exit.
"""

import json
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path

from hallgate.gateway.commands import (
    DisplayCommand,
    PanelCommand,
    VoteCommand,
    supersedes,
    utc_ts,
)
from hallgate.gateway.control import ControlError, ControlServer
from hallgate.gateway.mqtt import MqttLink, Tls
from hallgate.gateway.outbox import Outbox, OutboxError
from hallgate.gateway.technician import Technician
from hallgate.gateway.updates import Updates
from hallgate.protocols import bus

from hallgate import __version__

log = logging.getLogger("hallgate.daemon")

DRAIN_S = 5.0  # on SIGTERM, how long to keep sending the outbox before saying offline
OUTBOX_REPORT_S = 10.0  # a failing outbox is reported at most this often
DROP_REPORT_S = 5.0  # drops past the outbox cap are summed up and reported this often


def _str(path):
    return None if path is None else str(path)


def _bus_keys(bus_name, addr, boot, seq):
    """The outbox's dedupe keys of a bus device's event: a copy the device sends again
    (after a lost ack, or a gateway restart) is stored once."""
    stream = f"bus:{bus_name}:{addr}"
    return {"source": f"{stream}:b{boot}:s{seq}", "stream": stream}


def sd_notify(message):
    """systemd's notify protocol: one datagram to $NOTIFY_SOCKET; a no-op outside systemd."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]  # abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.sendto(message.encode(), path)
        except OSError:
            return False
    return True


class Reconciler:
    """Desired state per (window, kind): applies a command only if it supersedes the one
    applied (protocols/MQTT.md: a higher version replaces; the same or a lower one is stale;
    a clear returns the window to idle).

    So a retained command delivered again after a reconnect changes nothing, and a late
    older one never overwrites a newer one.
    """

    def __init__(self, apply):
        self._apply = apply  # apply(window, kind, command or None)
        self._current = {}
        self._lock = threading.Lock()
        self.stale = 0  # commands older than the one applied

    def offer(self, window, kind, command):
        with self._lock:
            current = self._current.get((window, kind))
            if not supersedes(command, current):
                if command is not None and current is not None and (
                        command.version < current.version):
                    self.stale += 1
                    log.info("window %s %s: version %d is older than %d, ignored",
                             window, kind, command.version, current.version)
                return False
            self._current[(window, kind)] = command
            self._apply(window, kind, command)  # under the lock: applied in offer order
        return True


class Gateway:
    """One gateway: its config's buses, GPIO, outbox and MQTT link."""

    def __init__(self, config, *, status_file=None, pin_factory=None, control_path=None):
        self.config = config
        self.site = config.gateway.site
        self.name = config.gateway.id
        self.status_file = Path(status_file) if status_file else None
        if control_path is None and self.status_file is not None:
            control_path = self.status_file.with_name("control.sock")
        self.control_error = None
        self._stop = threading.Event()
        self._stopped = False
        self._wake = threading.Event()
        self.started = time.time()
        self.outbox_errors = 0
        self._refused = 0  # adds refused since the outbox last worked
        self._outbox_reported_at = None
        self.event_rejects = 0

        path = Path(config.outbox.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.outbox = Outbox(path, self.name, max_events=config.outbox.max_events)
        # The technician's commands (gateway/technician.py, gateway/updates.py); the
        # update history is kept beside the outbox, on the gateway's own disk.
        self.updates = Updates(self, path.with_name("ota-history.jsonl"))
        self.control = None if control_path is None else ControlServer(
            control_path, {**Technician(self).handlers(), **self.updates.handlers()})
        self.reconciler = Reconciler(self._apply)
        self.devices = {}  # (bus name, address) -> config BusDevice
        self.by_window = {}  # window -> {role: [(bus name, address)]}
        for b in config.buses:
            for d in b.devices:
                self.devices[(b.name, d.address)] = d
                self.by_window.setdefault(d.window, {}).setdefault(d.role, []).append(
                    (b.name, d.address))
        # The board id last seen at each bus address, kept beside the outbox: a board
        # swapped while the gateway was down is reported at the next start.
        from hallgate.gateway.boards import KnownBoards

        self.boards = KnownBoards(path.with_name("boards.json"))
        self.masters = self._make_masters(pin_factory)
        self.feedback = self._make_feedback(pin_factory)
        self.gpio_panels, self._panel_sampler = self._make_gpio_panels(pin_factory)
        self.link = self._make_link()
        self._sender = threading.Thread(target=self._send_loop, name="outbox-sender",
                                        daemon=True)
        self._last_fed = 0
        self._devices_due = True  # the table goes out once at start
        self._drops_taken_at = 0.0
        # The technician's page ([http] listen; hallgate/web/gatewaypage.py): the web stack
        # is imported only then. Made here, so it keeps every error the link reports.
        self.page = None
        self.page_error = None
        if config.http.listen is not None:
            from hallgate.web.gatewaypage import GatewayPage

            self.page = GatewayPage(self, *config.http.address, token=config.http.read_token())

    # ---- construction ----------------------------------------------------------------

    def _make_masters(self, pin_factory):
        from hallgate.gateway.master import BusMaster

        masters = {}
        t = self.config.timings
        for b in self.config.buses:
            tx = None
            if b.de_pin is not None:
                from gpiozero import OutputDevice

                tx = OutputDevice(b.de_pin, pin_factory=pin_factory)
            masters[b.name] = BusMaster(
                b.port, baudrate=b.baud, timeout=t.poll_timeout_ms / 1000,
                offline_after=t.offline_after, tx_enable=tx,
                on_event=lambda addr, ev, name=b.name: self.on_bus_event(name, addr, ev),
                on_device=lambda addr, online, info: self._devices_changed(),
                on_nak=lambda addr, t, r, name=b.name: self.link.publish_error(
                    "device-nak", f"bus {name} device {addr} refused "
                    f"{bus.TYPE_NAMES.get(t, t)} (reason {r})"),
                devices=[d.address for d in b.devices],
                job_share=self.config.firmware.job_share / 100,
                on_board=lambda addr, old, new, name=b.name: self._board_changed(
                    name, addr, old, new),
                boards=self.boards.of(b.name),
            )
        return masters

    def _board_changed(self, bus_name, addr, old, new):
        """A board id learnt (old None) or changed at an address: kept, and a change (a
        board swapped, now or while the gateway was down) is logged and reported on the
        errors topic. Called in the master's thread."""
        self.boards.set(bus_name, addr, new)
        if old is None:
            return
        dev = self.devices.get((bus_name, addr))
        what = f"{dev.role} of window {dev.window}" if dev else "device"
        reason = (f"bus {bus_name} address {addr}: the {what} is another board now "
                  f"(board id {old} -> {new}); its counters start fresh")
        log.warning("%s", reason)
        self.link.publish_error("board-swapped", reason, bus=bus_name, address=addr,
                                old_board_id=old, board_id=new)

    def _make_feedback(self, pin_factory):  # GPIO buttons and feedback pads, by window
        from hallgate.gateway.feedback import make_feedback

        return make_feedback(self.config, self.masters, self.on_gpio_press, pin_factory)

    def _make_gpio_panels(self, pin_factory):
        from hallgate.gateway.gpio import Sampler
        from hallgate.gateway.gpiopanel import GpioCallPanel

        panels = {
            w.number: GpioCallPanel(w.number, w.panel.keys, w.panel.led_pin, w.panel.buzzer_pin,
                                    on_key=self.on_gpio_press,
                                    debounce_ms=self.config.timings.debounce_ms,
                                    pin_factory=pin_factory)
            for w in self.config.windows
            if w.panel is not None
        }
        sampler = Sampler(panels.values(), period_s=0.005, name="panel-sampler") if panels else None
        return panels, sampler

    def _make_link(self):
        m = self.config.mqtt
        tls = None
        if m.ca_file or m.cert_file:
            tls = Tls(ca=_str(m.ca_file), cert=_str(m.cert_file), key=_str(m.key_file))
        return MqttLink(
            self.site, self.name, [u.url for u in m.urls], protocol=m.protocol,
            username=m.username, password=m.read_password(), tls=tls,
            keepalive=m.keepalive_s, windows=self.config.window_numbers,
            on_command=self.reconciler.offer, on_delivered=self._delivered,
            on_connection=self._connection, delivery=self.config.outbox.delivery,
            receipt_timeout=self.config.outbox.receipt_timeout_s, subscribe=m.subscribe,
        )

    # ---- events up -------------------------------------------------------------------

    def on_bus_event(self, bus_name, addr, ev):
        """Called by the bus master; returning means taken (the device gets its ack)."""
        dev = self.devices.get((bus_name, addr))
        pad = dev is not None and dev.role == "feedback-pad"
        if dev is None or ev.key_name not in (bus.VOTE_KEYS if pad else bus.KEYS) or (
                ev.action not in (1, 2)):
            # Not a key this device has: reported, and taken so it does not block the
            # device's queue forever.
            self.event_rejects += 1
            self.link.publish_error("device-event", f"bus {bus_name} device {addr}: {ev!r} "
                                    "is not a known key event; dropped")
            return
        if pad:  # a vote: judged by the window's feedback rules, stored by on_gpio_press
            self.feedback[dev.window].take(ev)
            return
        pressed = time.time() - ev.age_ds / 10
        fields = {
            "type": "key", "key": ev.key_name, "action": ev.action_name,
            "ts": utc_ts(pressed),
            "source": {"bus": bus_name, "address": addr, "boot": ev.boot, "seq": ev.seq},
        }
        self._store(dev.window, fields, **_bus_keys(bus_name, addr, ev.boot, ev.seq))

    def on_gpio_press(self, window, record):
        """Called for votes (GPIO buttons, feedback pads) and GPIO call panels; returning
        means taken."""
        fields = {k: v for k, v in record.items() if k != "window"}
        src = fields.get("source") or {}
        if "bus" in src:  # a feedback pad's press: kept once per device event, as keys are
            self._store(window, fields, **_bus_keys(src["bus"], src["address"], src["boot"],
                                                    src["seq"]))
        else:
            self._store(window, fields)

    def _store(self, window, fields, **kw):
        try:
            self.outbox.add(window, fields, **kw)
        except OutboxError as e:
            # The source keeps the event and offers it again every poll cycle: report the
            # fault once per OUTBOX_REPORT_S, with how many adds were refused meanwhile.
            self.outbox_errors += 1
            self._refused += 1
            now = time.monotonic()
            if self._outbox_reported_at is None or now - self._outbox_reported_at >= (
                    OUTBOX_REPORT_S):
                self._outbox_reported_at = now
                why = (f"{e}; {self._refused} add(s) refused so far, the events stay with "
                       "their sources and are retried")
                log.error("outbox: %s", why)
                self.link.publish_error("outbox-error", why)
            raise
        if self._outbox_reported_at is not None:
            log.warning("outbox: writable again (%d add(s) were refused meanwhile)",
                        self._refused)
            self._outbox_reported_at = None
            self._refused = 0
        self._wake.set()

    def _delivered(self, seqs):
        self.outbox.delete(*seqs)  # one transaction for a receipt's events
        self._wake.set()

    def _connection(self, connected, url):
        log.info("broker %s %s", url, "connected" if connected else "lost")
        self._wake.set()

    def _send_loop(self):
        """Feeds the outbox into the link in seq order, as far as the link has room."""
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            try:
                if self._devices_due:
                    self._devices_due = False
                    self.link.publish_devices(self.device_table())
                self._feed()
                if time.monotonic() - self._drops_taken_at < DROP_REPORT_S:
                    continue
                self._drops_taken_at = time.monotonic()
                for report in self.outbox.take_drop_reports():
                    self.link.publish_error(
                        "outbox-overflow",
                        f"outbox full: {report.count} oldest events of window {report.window}"
                        f" dropped (seq {report.first_seq}-{report.last_seq}, "
                        f"{report.dropped_total} in all)")
            except Exception:
                log.exception("outbox sender")
                time.sleep(0.5)

    def _feed(self):
        # Only while connected: during an outage the outbox alone holds the backlog, so its
        # cap and its drop reports speak for every waiting event. (The few events already in
        # the link's window when a connection drops are re-sent from there; if the cap drops
        # their rows meanwhile, they still arrive: a report may then overstate a loss, never
        # hide one.)
        room = self.link.room
        if room <= 0 or not self.link.connected:
            return
        # Rows are fed in seq order, so every row above _last_fed is not in the link yet.
        if self.link.in_flight == 0:
            self._last_fed = 0  # the link is empty: start again from the oldest row
        for entry in self.outbox.pending(limit=room, after_seq=self._last_fed or None):
            if entry.payload is None:
                continue
            self.link.publish_event(entry.window, entry.payload, token=entry.seq,
                                    event_id=entry.id)
            self._last_fed = entry.seq

    # ---- desired state down ----------------------------------------------------------

    def _apply(self, window, kind, command):
        # Only a new version gets here (the Reconciler), and a new version is news even with
        # the same content (MQTT.md: a recall): the device gets a new bus version too.
        roles = self.by_window.get(window, {})
        if kind == "display":
            c = command or DisplayCommand(version=0, text="")
            for bus_name, addr in roles.get("window-display", ()):
                self.masters[bus_name].set_state(
                    addr, bus.DisplayState(c.text, c.blink_s, c.brightness), renew=True)
        elif kind == "panel":
            c = command or PanelCommand(version=0, mode="idle")
            for bus_name, addr in roles.get("call-panel", ()):
                self.masters[bus_name].set_state(addr, bus.PanelState(
                    c.text, bus.PANEL_MODES.index(c.mode), c.queue, c.wait_s, c.tea, c.beep),
                    renew=True)
            if window in self.gpio_panels:
                self.gpio_panels[window].show(c.mode, c.beep)
        elif kind == "vote" and self.feedback is not None and window in self.feedback.panels:
            if isinstance(command, VoteCommand) and command.open:
                self.feedback.open_vote(window, command.ticket, command.version,
                                        command.timeout_s)
            else:
                self.feedback.close_vote(window, command.version if command else None)

    def device_table(self):
        """The devices as the MQTT contract publishes them (protocols/MQTT.md)."""
        keys = ("bus", "address", "role", "window", "firmware", "online", "last_seen")
        return [{k: r[k] for k in keys} for r in self.device_rows()]

    def device_rows(self):
        """device_table() with what a technician asks for: uptime and counters from the
        device's last INFO, the master's counters of the exchanges with it."""
        rows = []
        now = time.monotonic()
        for name, master in self.masters.items():
            for addr, snap in master.devices().items():
                dev = self.devices.get((name, addr))
                info = snap["info"]
                st = snap["stats"]
                seen = st.get("last_seen")
                rows.append({
                    "bus": name, "address": addr,
                    "role": dev.role if dev else (info.role_name if info else "unknown"),
                    "window": dev.window if dev else (info.window if info else None),
                    "firmware": info.firmware_text if info else None,
                    "board": getattr(info, "board_name", None) if info else None,
                    "board_id": info.asdict().get("board_id") if info else None,
                    "uptime_s": info.uptime_s if info else None,
                    "online": snap["online"],
                    "last_seen": utc_ts(time.time() - (now - seen)) if seen else None,
                    "seen_ago_s": round(now - seen, 3) if seen else None,
                    "device": {k: getattr(info, k) for k in (
                        "crc_errors", "overflows", "resets", "queued", "version")}
                    if info else None,
                    "link": {k: st[k] for k in (
                        "exchanges", "timeouts", "garbled", "retries", "crc_errors",
                        "events", "duplicates", "naks")},
                })
        return rows

    def bus_port(self, name):
        for b in self.config.buses:
            if b.name == name:
                return b.port
        return None

    def _devices_changed(self):
        # Called in a master's thread under its lock: the table is built in the sender's
        # thread, because reading every master from here could deadlock two masters.
        self._devices_due = True
        self._wake.set()

    # ---- life cycle ------------------------------------------------------------------

    def start(self):
        self.link.start()
        self._sender.start()
        for m in self.masters.values():
            m.start()
        if self.feedback is not None:
            self.feedback.start()
        if self._panel_sampler is not None:
            self._panel_sampler.start()
        if self.control is not None:
            try:
                self.control.start()
            except (ControlError, OSError) as e:
                # The gateway's real work goes on; only the technician commands are missing.
                self.control_error = str(e)
                log.error("control socket %s: %s; `hallgate devices` and the like cannot "
                          "go through this daemon", self.control.path, e)
                self.control = None
        if self.page is not None:
            try:
                self.page.start()
            except (OSError, RuntimeError) as e:
                # As the control socket: the gateway's real work goes on without its page.
                self.page_error = str(e)
                log.error("technician page on %s: %s; the gateway runs without it",
                          self.config.http.listen, e)
                self.page = None
        log.info("gateway %s/%s started: %d bus(es), %d window(s), outbox %s (%d waiting)",
                 self.site, self.name, len(self.masters), len(self.config.windows),
                 self.config.outbox.path, self.outbox.depth())
        return self

    def stop(self, drain_s=DRAIN_S):
        """Stop taking input, send what the outbox holds for up to drain_s, go offline.
        Returns the events left in the outbox (sent at the next start)."""
        if self._stopped:
            return None
        self._stopped = True
        if self.control is not None:
            self.control.stop()
        if self.page is not None:  # before the outbox closes: the page reads it
            self.page.stop()
        if self.feedback is not None:
            self.feedback.close()
        if self._panel_sampler is not None:
            self._panel_sampler.close()
        for panel in self.gpio_panels.values():
            panel.close()
        for m in self.masters.values():
            m.close()
        self.updates.record_finished(stopping=True)
        deadline = time.monotonic() + drain_s
        # Drain even while disconnected: the broker may be back within the time allowed.
        while self.outbox.depth() and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.05)
        self._stop.set()
        self._wake.set()
        self._sender.join(2)
        self.link.stop()
        left = self.outbox.depth()
        self.write_status()
        self.outbox.close()
        log.info("gateway stopped; %d event(s) kept in the outbox for the next start", left)
        return left

    @property
    def stopping(self):
        return self._stopped

    def status(self):
        ob = self.outbox.stats()
        masters = {name: m.stats for name, m in self.masters.items()}
        table = self.device_table()
        return {
            "gateway": self.name, "site": self.site, "version": __version__,
            "state": "stopped" if self._stopped else "running",
            "pid": os.getpid(), "started": utc_ts(self.started),
            "ts": utc_ts(),
            "broker": {"connected": self.link.connected, "url": self.link.url,
                       "last_error": self.link.last_error, **self.link.stats.asdict()},
            "outbox": {**ob, "errors": self.outbox_errors, **self._delivery_status()},
            "rejected_device_events": self.event_rejects,
            "devices": {"online": sum(r["online"] for r in table), "total": len(table),
                        "table": table},
            "buses": {n: {"port": self.bus_port(n), **{
                k: s[k] for k in ("cycles", "cycle_mean", "timeouts", "events", "duplicates",
                                  "adapter")}}
                for n, s in masters.items()},
            "control": str(self.control.path) if self.control is not None else None,
            "page": None if self.config.http.listen is None else {
                "listen": self.config.http.listen, "error": self.page_error},
            "feedback": self.feedback.state() if self.feedback is not None else {},
            "gpio_panels": {w: p.state() for w, p in self.gpio_panels.items()},
            "stale_commands": self.reconciler.stale,
            "updates": self.updates.running(),
        }

    def _delivery_status(self):
        """Where the outbox's events are: waiting to be sent, or sent and awaiting the
        central's receipt (or the PUBACK), and how old the oldest one is."""
        _, sent = self.link.unconfirmed()
        oldest = self.outbox.pending(limit=1)
        return {
            "delivery": self.link.delivery,
            "waiting_to_send": max(0, self.outbox.depth() - sent),
            "awaiting_receipt" if self.link.delivery == "receipt" else "awaiting_puback": sent,
            "oldest_age_s": round(time.time() - oldest[0].created, 1) if oldest else None,
            "central_online": self.link.central_online,
        }

    def write_status(self):
        if self.status_file is None or self.outbox is None:
            return
        try:
            tmp = self.status_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.status(), default=str))
            os.replace(tmp, self.status_file)
        except OSError as e:
            log.warning("status file %s: %s", self.status_file, e)

    def healthy(self):
        """For the systemd watchdog: the threads that carry events are alive."""
        link_alive = self.link._thread is not None and self.link._thread.is_alive()
        return link_alive and self._sender.is_alive() and all(
            m._thread is not None and m._thread.is_alive() for m in self.masters.values())


def run(config, *, status_file=None, stop_event=None):
    """The daemon's main loop: start, notify systemd, keep the watchdog fed, stop on
    SIGTERM / SIGINT. Returns the process exit code."""
    stop_event = stop_event or threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop_event.set())
    gw = Gateway(config, status_file=status_file).start()
    sd_notify("READY=1\nSTATUS=running")
    watchdog_usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
    beat = min(watchdog_usec / 2e6, 1.0) if watchdog_usec else 1.0
    try:
        while not stop_event.wait(beat):
            gw.write_status()
            if gw.healthy():
                sd_notify("WATCHDOG=1")
            else:
                log.error("a worker thread died: withholding the watchdog ping")
    finally:
        sd_notify("STOPPING=1")
        gw.stop()
    return 0
