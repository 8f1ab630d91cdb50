"""The city's real hall: sim/hall.py's `Hall` (real gateway daemons, MicroPython firmware on
their buses, its own people on its hall clock) on the city's brokers and database.

Design note
-----------
What changes from `Hall`: its gateways' configs list every broker URL of the city (they
fail over when a node dies), its central stores into the city's PostgreSQL (`PgStore`, its
own site) when there is one, and the parts it would start (a broker, pages, a lab) are the
city's or left out. Its central and observer stay on the `home` URL, one node: a
`CentralService` takes a single URL, so sim/city.py gives it the node it never kills.
"""

from __future__ import annotations

import re

from hallgate.gateway.outbox import read_stats
from hallgate.sim.device import compile_firmware
from hallgate.sim.gwhost import GatewayHost
from hallgate.sim.hall import READY_TIMEOUT, Hall, Options
from hallgate.sim.hallconfig import gateway_config
from hallgate.sim.hubproc import HubProcess
from hallgate.sim.observer import Observer


def hall_options(city, centres, *, site, home, protocol):
    """The real hall's Options: `hall_windows` windows, the city's visitors per window
    (unless `hall_visitors`), its hours and speed."""
    per_window = sum(c.visitors for c in centres) / sum(c.windows for c in centres)
    visitors = city.hall_visitors or max(1, round(per_window * city.hall_windows))
    return Options(windows=city.hall_windows, visitors=visitors, hours=city.hours,
                   speed=city.speed, seed=city.seed, site=site, broker=home,
                   protocol=protocol)


class CityHall(Hall):
    def __init__(self, options, workdir, *, urls, dsn=None):
        super().__init__(options, workdir)
        self.urls = list(urls)
        self.dsn = dsn

    def start(self):
        opts = self.options
        self.url, self.protocol = opts.broker, opts.protocol
        host, port = self.url.split("://", 1)[1].rsplit(":", 1)
        self.observer = Observer(host, int(port), self.protocol, self.site)
        compile_firmware()
        for g in self.layout:
            devices = g.devices()
            hub = HubProcess({name: address for name, address, _, _ in devices}, opts.baud,
                             READY_TIMEOUT)
            self.hubs.append(hub)
            kinds = {"call-panel": self.panels, "window-display": self.displays,
                     "feedback-pad": self.pads}
            for name, address, role, n in devices:
                timings = self.panel_timings() if role == "call-panel" else {}
                kinds[role][n] = self._device(hub.port(name), name, address, role, n,
                                              **timings)
        for dev in self.devices:
            dev.start(READY_TIMEOUT)
        from hallgate.sim.hallclock import HallClock

        self.clock = HallClock(self.opening, max_speed=opts.speed)
        self.start_central()
        for g, hub in zip(self.layout, self.hubs, strict=True):
            path = gateway_config(
                self.dir / f"{g.id}.toml", self.site, g, broker_url=self.url,
                protocol=self.protocol, bus_path=hub.master_path, baud=opts.baud,
                outbox=self.dir / f"{g.id}.outbox.sqlite")
            urls = ", ".join(f'"{u}"' for u in self.urls)  # every node: failover
            path.write_text(re.sub(r"(?m)^urls = \[.*\]$", f"urls = [{urls}]",
                                   path.read_text()))
            run = self.dir / g.id
            run.mkdir(exist_ok=True)
            self.gateways.append(GatewayHost(path, self.dir / f"{g.id}.log",
                                             on_error=self.problem,
                                             status_file=run / "status.json"))
        for gw in self.gateways:
            gw.start(READY_TIMEOUT)
        return self

    def start_central(self):
        if self.dsn is None:
            return super().start_central()
        from hallgate.central.mqtt import CentralService
        from hallgate.central.pgstore import PgStore
        from hallgate.central.service import Central
        from hallgate.sim import SimError

        self.central = Central(self.queue_config, None, self.clock,
                               store=PgStore(self.dsn, self.site))
        self.service = CentralService(self.central, self.site, self.url,
                                      protocol=self.protocol, tick_s=0.1, stats_s=0.5,
                                      client_id=f"hallgate-sim-central-{self.site}").start()
        self.central_starts += 1
        if not self.service.wait_connected(READY_TIMEOUT):
            raise SimError(f"the hall's central could not connect to {self.url}")

    def outbox_counts(self):
        """Its gateways' outbox counters summed: added == delivered + depth + dropped."""
        out = {"added": 0, "delivered": 0, "depth": 0, "dropped_overflow": 0}
        for g in self.layout:
            try:
                s = read_stats(self.dir / f"{g.id}.outbox.sqlite")
            except Exception:  # noqa: BLE001 - a missing file: nothing added
                continue
            for k in out:
                out[k] += s.get(k, 0) or 0
        return out


__all__ = ["CityHall", "hall_options"]
