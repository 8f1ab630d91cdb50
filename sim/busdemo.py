"""A bus you can watch: real firmware devices on one simulated RS-485 line, polled by the
real bus master, with simulated operators pressing keys.

Each window has a call panel and a window display (MicroPython processes running
firmware/main.py). Operators press call, start and finish on their panels through the
panels' control channel; the master takes the events off the bus and a minimal ticket
counter (a stand-in until the central queue service arrives) decides what each window's
display and panel show, which the master pushes back down as desired state. Every line
printed is something that crossed the bus; what the displays show is read back from the
firmware.
"""

import random
import tempfile
import threading
import time
from pathlib import Path

from hallgate.gateway.master import BusMaster
from hallgate.protocols import bus
from hallgate.sim.device import FirmwareDevice
from hallgate.sim.hub import BusHub

PANEL_BASE = 1  # panel of window n at address n, display at DISPLAY_BASE + n
DISPLAY_BASE = 100


class TicketCounter:
    """Numbers tickets and tracks what each window does: just enough to drive the displays."""

    def __init__(self, master):
        self.master = master
        self.next_number = 1
        self.lock = threading.Lock()

    def on_key(self, window, key):
        with self.lock:
            if key == "call":
                ticket = f"A{self.next_number:03d}"
                self.next_number += 1
                self.show(window, ticket, mode=1, blink_s=10)
                return ticket
            if key == "start":
                return self.show(window, None, mode=2)
            if key == "finish":
                return self.show(window, "", mode=0)
            return None

    def show(self, window, ticket, mode, blink_s=0):
        panel = self.master.device(PANEL_BASE + window - 1) or {}
        if ticket is None:  # keep the ticket, change the mode
            ticket = getattr(panel.get("desired"), "text", "")
        self.master.set_state(DISPLAY_BASE + window, bus.DisplayState(ticket, blink_s, 8))
        self.master.set_state(PANEL_BASE + window - 1, bus.PanelState(ticket, mode, 0, 0))
        return ticket


def run(windows=3, seconds=20.0, baud=115200, seed=1, out=print):
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp, BusHub(baud=baud) as hub:
        panels, displays = {}, {}
        try:
            for w in range(1, windows + 1):
                addr = PANEL_BASE + w - 1
                panels[w] = FirmwareDevice(Path(tmp) / f"p{w}", addr, "call-panel", w,
                                           hub.add_port(f"panel-{w}"), ready_timeout=60)
                addr = DISPLAY_BASE + w
                displays[w] = FirmwareDevice(Path(tmp) / f"d{w}", addr, "window-display", w,
                                             hub.add_port(f"display-{w}"), ready_timeout=60)
            counter = None

            def on_event(addr, ev):
                window = addr - PANEL_BASE + 1
                ticket = counter.on_key(window, ev.key_name)
                out(f"{time.strftime('%H:%M:%S')}  window {window:>2}  {ev.key_name:8}"
                    f" seq {ev.seq:<4} -> {ticket or ''}")

            def on_device(addr, online, info):
                role = info.role_name if info else "device"
                state = "online" if online else "OFFLINE"
                out(f"{time.strftime('%H:%M:%S')}  {role} {addr} {state}")

            addrs = [PANEL_BASE + w - 1 for w in panels] + [DISPLAY_BASE + w for w in displays]
            master = BusMaster(hub.master_path, baudrate=baud, timeout=0.1,
                               on_event=on_event, on_device=on_device, devices=addrs)
            counter = TicketCounter(master)
            with master:
                script = {w: ["call", "start", "finish"] for w in panels}
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline:
                    w = rng.choice(list(panels))
                    key = script[w].pop(0)
                    script[w].append(key)
                    panels[w].press(key, hold_ms=60)
                    time.sleep(rng.uniform(0.3, 1.2))
                time.sleep(0.5)
                out("")
                out("what each window display shows (read back from the firmware):")
                for w, dev in displays.items():
                    shown = dev.shown() or {}
                    out(f"  window {w:>2}: {shown.get('text', '')!r:8}"
                        f" {'blinking' if shown.get('blink') else ''}")
                s = master.stats
                out(f"bus: {s['cycles']} poll cycles, mean {s['cycle_mean'] * 1000:.2f} ms;"
                    f" {s['events']} events, {s['duplicates']} duplicates dropped,"
                    f" {s['timeouts']} timeouts; line collisions {hub.stats.collisions}")
        finally:
            for dev in list(panels.values()) + list(displays.values()):
                dev.close()
