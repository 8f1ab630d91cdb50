"""A calibrated day (a profile: several sites, each with its gateways, buses and firmware
devices) in real seconds on this machine, each site's waits over the same plan's waits
through the central alone, and the chain's real latencies.

    python bench/sim_town.py --profile syzran        # target: the day within 90 s real
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

from hallgate.sim.hall import Options
from hallgate.sim.profile import load_profile
from hallgate.sim.town import Town, profile_sites
from sim_day import against_model

TARGET_S = {"syzran": 90.0}  # the target for the syzran day on 2 cores


def measure(profile_name, seed, tmp):
    profile = load_profile(profile_name)
    sites = profile_sites(profile, Options(speed=None, seed=seed))
    town = Town(sites, tmp / "town")
    try:
        town.start()
        report = town.run_day()
    finally:
        town.close()
    out = {}
    for hall in town.halls:
        out[hall.site] = {
            "windows": hall.options.windows, "gateways": len(hall.layout),
            "devices": len(hall.devices), "pads": len(hall.pads),
            "visitors": hall.options.visitors,
            **against_model(hall, report["sites"][hall.site], seed,
                            tmp / f"model-{hall.site}.db")}
    return {"profile": profile.name, "seed": seed, "real_s": report["real_s"],
            "target_s": TARGET_S.get(profile.name), "finished": report["finished"],
            "gateways": sum(s["gateways"] for s in out.values()),
            "devices": sum(s["devices"] for s in out.values()),
            "visitors": sum(s["visitors"] for s in out.values()), "sites": out}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="syzran", help="a bundled profile or a TOML file")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        r = measure(args.profile, args.seed, Path(tmp))
    if args.json:
        print(json.dumps(r, indent=1))
    else:
        print(f"{r['profile']}: {len(r['sites'])} sites, {r['gateways']} gateways, "
              f"{r['devices']} devices, {r['visitors']} visitors in {r['real_s']} s real "
              f"(target {r['target_s']})")
        for name, s in r["sites"].items():
            print(f"  {name}: wait avg full {s['wait_avg_s']['full']} model "
                  f"{s['wait_avg_s']['model']}; p95 full {s['wait_p95_s']['full']} model "
                  f"{s['wait_p95_s']['model']}; press to central "
                  f"{s['chain_ms']['press_to_central']}")
    return 0 if r["finished"] else 1


if __name__ == "__main__":
    sys.exit(main())
