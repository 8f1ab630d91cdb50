"""A simulated day against its model run: the hall's waits (full run: firmware, bus,
gateway, broker, central; hall time that never charges the chain's latency) over the
same plan's waits through the central alone, and the chain's real latencies.

    python bench/sim_day.py --windows 10 --visitors 160 --hours 8
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

from hallgate.sim.hall import Hall, Options
from hallgate.sim.model import run_model


def measure(windows, visitors, hours, seed, tmp):
    options = Options(windows=windows, visitors=visitors, hours=hours, speed=None, seed=seed)
    hall = Hall(options, tmp / "hall")
    try:
        hall.start()
        report = hall.run_day()
    finally:
        hall.close()
    return {"windows": windows, "visitors": visitors, "hours": hours, "seed": seed,
            "real_s": report["real_s"], **against_model(hall, report, seed, tmp / "model.db")}


def against_model(hall, report, seed, db):
    """A finished hall's figures beside the same plan's through the central alone."""
    ledger = run_model(hall.plan, hall.breaks, hall.queue_config, db, seed=seed,
                       start=hall.opening)
    full, model = report["central"]["all"], ledger.report["all"]

    def ratio(key):
        return round(full[key] / model[key], 3) if model[key] else None

    return {"finished": report["finished"], "problems": report["problems"],
            "hall_hours": report["sim_hours"],
            "wait_avg_s": {"full": full["wait_avg_s"], "model": model["wait_avg_s"],
                           "ratio": ratio("wait_avg_s")},
            "wait_p95_s": {"full": full["wait_p95_s"], "model": model["wait_p95_s"],
                           "ratio": ratio("wait_p95_s")},
            "over_norm_share": {"full": full["over_norm_share"],
                                "model": model["over_norm_share"]},
            "chain_ms": report["chain_ms"], "rejected_presses": report["rejected_presses"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--windows", type=int, default=10)
    p.add_argument("--visitors", type=int, default=160)
    p.add_argument("--hours", type=float, default=8)
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        r = measure(args.windows, args.visitors, args.hours, args.seed, Path(tmp))
    if args.json:
        print(json.dumps(r, indent=1))
    else:
        print(f"{r['windows']} windows, {r['visitors']} visitors: {r['hall_hours']} hall hours "
              f"in {r['real_s']} s real; wait avg full/model {r['wait_avg_s']['ratio']}, "
              f"p95 {r['wait_p95_s']['ratio']}; chain {r['chain_ms']}")
    return 0 if r["finished"] else 1


if __name__ == "__main__":
    sys.exit(main())
