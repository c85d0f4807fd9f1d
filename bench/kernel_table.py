#!/usr/bin/env python3
"""kernel_table.py - per-kernel GPU time from an Nsight Compute CSV export.

    ncu --clock-control none --metrics gpu__time_duration.sum --csv \
        --print-units base PROGRAM ... > profile.csv
    bench/kernel_table.py profile.csv --steps N

Groups launches by kernel name (template arguments kept: they name the
weight type and tile), prints launches, total and mean microseconds per
kernel and, with --steps, launches and microseconds per step (the program
ran N forward steps; kernels launched once, e.g. weight upload, show as a
fraction).  Sorted by total time."""
import argparse
import csv
import sys
from collections import defaultdict


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--exclude", default="dequant_f16_kernel,fill_random_f16_kernel",
                    help="comma-separated kernel-name prefixes run once at set-up (weight upload, KV fill), "
                         "left out of the per-step numbers")
    a = ap.parse_args()
    with open(a.csv, newline="") as f:
        lines = [l for l in f if l.startswith('"')]  # ncu prints its own log lines first
    rows = list(csv.DictReader(lines))
    agg = defaultdict(lambda: [0, 0.0])
    setup = [0, 0.0]
    for r in rows:
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        unit = r.get("Metric Unit", "ns")
        v = float(r["Metric Value"].replace(",", ""))
        us = v / 1e3 if unit in ("ns", "nsecond") else v * 1e3 if unit in ("ms", "msecond") else v
        name = r["Kernel Name"]
        if any(name.startswith(e) for e in a.exclude.split(",") if e):
            setup[0] += 1
            setup[1] += us
            continue
        agg[name][0] += 1
        agg[name][1] += us
    if not agg:
        print("kernel_table: no gpu__time_duration rows in", a.csv, file=sys.stderr)
        return 1
    total = sum(v[1] for v in agg.values())
    n = sum(v[0] for v in agg.values())
    print(f"{n} launches, {total:.1f} us in all; per step ({a.steps} steps): "
          f"{n / a.steps:.1f} launches, {total / a.steps:.1f} us")
    print(f"(left out: {setup[0]} set-up launches, {setup[1]:.1f} us: {a.exclude})")
    print(f"{'launches/step':>13} {'us/step':>9} {'mean us':>8} {'%':>5}  kernel")
    for name, (cnt, us) in sorted(agg.items(), key=lambda kv: -kv[1][1])[: a.top]:
        print(f"{cnt / a.steps:13.2f} {us / a.steps:9.1f} {us / cnt:8.2f} {100 * us / total:5.1f}  {name[:110]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
