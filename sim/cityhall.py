"""The city's real hall: sim/hall.py's `Hall` (real gateway daemons, MicroPython firmware on
their buses, its own people on its hall clock) on the city's brokers and database.

Design note
-----------
What changes from `Hall`: its gateways' configs list every broker URL of the city (they
fail over when a node dies), its central stores into the city's PostgreSQL (`PgStore`, its
own site) when there is one, and the parts it would start (a broker, pages, a lab) are the
city's or left out. Its central and observer stay on the `home` URL, the node
sim/city.py never kills (the observer reads one broker).
"""

from __future__ import annotations

from hallgate.gateway.outbox import read_stats
from hallgate.sim.hall import Hall, Options


def hall_options(city, centres, *, site, home, protocol):
    """The real hall's Options: `hall_windows` windows, the city's visitors per window
    (unless `hall_visitors`), its hours and speed."""
    per_window = sum(c.visitors for c in centres) / sum(c.windows for c in centres)
    visitors = city.hall_visitors or max(1, round(per_window * city.hall_windows))
    return Options(windows=city.hall_windows, visitors=visitors, hours=city.hours,
                   speed=city.speed, seed=city.seed, site=site, broker=home,
                   protocol=protocol, desired=city.desired)


class CityHall(Hall):
    def __init__(self, options, workdir, *, urls, dsn=None):
        super().__init__(options, workdir)
        self.gateway_urls = list(urls)  # every node: the gateways fail over
        self.dsn = dsn

    def central_store(self):
        if self.dsn is None:
            return None
        from hallgate.central.pgstore import PgStore

        return PgStore(self.dsn, self.site)

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
