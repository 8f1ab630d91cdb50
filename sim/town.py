"""Several sites of one town on one broker: what `hallgate sim --sites N` and `--profile`
run.

Each site is a whole `Hall` (sim/hall.py): its own central service, gateways, buses, firmware
devices, people and hall clock. Sites share nothing but the broker, as the centres of a town
share nothing but the network, so their days run side by side (each hall clock stops only
for its own site's chain) and the town's day takes as long as its slowest site.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

from hallgate.sim import dayplan
from hallgate.sim.hall import Hall

__all__ = ["Town", "profile_sites", "copies"]


def copies(options, sites):
    """`sites` sites alike (`--sites`): each with `options`' windows, gateways and visitors,
    its own seed, named site-1, site-2... (one site keeps `options` as they are)"""
    if sites == 1:
        return [dict(options=options)]
    return [dict(options=dataclasses.replace(options, site=f"site-{k + 1}",
                                             seed=options.seed + k))
            for k in range(sites)]


def profile_sites(profile, options):
    """The sites of `profile` (sim/profile.py) as Hall arguments; `options` gives the
    speed, the seed and the broker."""
    from hallgate.sim.profile import site_plan

    out = []
    for site in profile.sites:
        opts = dataclasses.replace(options, site=site.name, windows=site.windows,
                                   gateways=site.gateways, visitors=site.visitors,
                                   hours=profile.hours)
        out.append(dict(options=opts, services=profile.services,
                        plan=site_plan(profile, site, options.seed), by_window=site.skills))
    return out


class Town:
    """`sites`: a list of Hall keyword arguments (`options`, and `services`, `plan`,
    `by_window` where a profile gives them)."""

    def __init__(self, sites, workdir):
        self.dir = Path(workdir)
        self.sites = sites
        self.broker = None
        self.halls = [Hall(workdir=self.dir / s["options"].site,
                           **{"services": dayplan.DEFAULT_SERVICES, **s}) for s in sites]

    @property
    def load(self):
        return {h.site: h.load for h in self.halls}

    def start(self):
        from hallgate.sim.broker import start_broker

        first = self.halls[0].options
        if first.broker:
            url, protocol = first.broker, first.protocol or "5"
        else:
            self.broker = start_broker(self.dir / "broker", prefer=first.broker_kind)
            url, protocol = self.broker.url, first.protocol or self.broker.protocol
        for k, h in enumerate(self.halls):
            http = h.options.http
            if http is not None and http[1]:  # the sites' pages side by side: PORT, PORT+1...
                http = (http[0], http[1] + k)
            h.options = dataclasses.replace(h.options, broker=url, protocol=protocol,
                                            http=http)
            h.start()
        return self

    def run_day(self, progress=None):
        """Every site's day side by side; the town's report."""
        real0 = time.monotonic()
        reports = {}

        def one(hall):
            try:
                reports[hall.site] = hall.run_day()
            except Exception as e:  # noqa: BLE001 - reported as the site's problem
                hall.problem(f"the day failed: {e!r}")

        threads = [threading.Thread(target=one, args=(h,), name=f"day-{h.site}", daemon=True)
                   for h in self.halls]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(0.25)
            if progress is not None:
                progress(self)
        return town_report(reports, time.monotonic() - real0)

    def snapshots(self):
        return [h.snapshot() for h in self.halls]

    def close(self):
        for h in self.halls:
            h.close()
        if self.broker is not None:
            self.broker.stop()


def town_report(reports, real_s):
    """The sites' reports and the town's totals (tickets, waits weighted by the served)."""
    total = {"issued": 0, "served": 0, "noshow": 0, "votes": 0, "likes": 0, "dislikes": 0}
    waited = 0.0
    over = 0.0
    for r in reports.values():
        a = (r.get("central") or {}).get("all", {})
        for k in total:
            total[k] += a.get(k, 0) or 0
        waited += (a.get("wait_avg_s") or 0) * a.get("served", 0)
        over += (a.get("over_norm_share") or 0) * a.get("served", 0)
    served = total["served"] or 1
    total["wait_avg_s"] = round(waited / served, 1)
    total["over_norm_share"] = round(over / served, 4)
    return {"town": True, "real_s": round(real_s, 1),
            "finished": bool(reports) and all(r["finished"] for r in reports.values()),
            "problems": [f"{site}: {p}" for site, r in reports.items() for p in r["problems"]],
            "all": total, "sites": reports}
