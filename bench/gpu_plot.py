#!/usr/bin/env python3
"""Merge gpu_sweep / hf_peer CSVs into one CSV, a summary table (stdout,
markdown) and a PNG: decode tok/s vs batch per context (paraserve solid,
HF transformers dashed) and paraserve's % of the HBM roofline.

  gpu_plot.py --out bench/results/gpu-sweep-H100 a.csv b.csv ...
writes OUT.csv, OUT.md and OUT.png (PNG only when matplotlib is present).
"""
import argparse
import csv
import sys


def load(paths):
    rows = []
    for p in paths:
        with open(p) as f:
            rows.extend(csv.DictReader(f))
    return rows


def num(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def table(rows):
    key = lambda r: (r["model"], r["kind"], int(r["ctx"]), int(r["batch"]))
    ps = {key(r): r for r in rows if r["engine"] == "paraserve"}
    hf = {key(r): r for r in rows if r["engine"] == "hf-transformers"}
    lines = ["| model | kind | ctx | batch | paraserve ms/step | tok/s | host us | graph nodes | GB/s | % roofline | HF tok/s | x HF |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for k in sorted(set(ps) | set(hf)):
        p, h = ps.get(k, {}), hf.get(k, {})
        pt, ht = num(p.get("tok_s")), num(h.get("tok_s"))
        ratio = f"{pt / ht:.2f}" if pt and ht else ""
        lines.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            k[0], k[1], k[2], k[3], p.get("step_ms", "") or p.get("path", ""), p.get("tok_s", ""), p.get("host_us", ""),
            p.get("graph_nodes", "") or "", p.get("gbs", ""), p.get("roofline_pct", ""), h.get("tok_s", "") or h.get("path", ""), ratio))
    return "\n".join(lines)


def plot(rows, png):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("gpu_plot: matplotlib not installed, no PNG", file=sys.stderr)
        return False
    dec = [r for r in rows if r["kind"] == "decode" and num(r["tok_s"])]
    models = sorted({r["model"] for r in dec})
    card = next((r["card"] for r in rows if r["engine"] == "paraserve"), "?")
    fig, axes = plt.subplots(len(models), 2, figsize=(12, 4 * max(1, len(models))), squeeze=False)
    for i, m in enumerate(models):
        ax, ax2 = axes[i]
        for ctx in sorted({int(r["ctx"]) for r in dec if r["model"] == m}):
            for eng, style in (("paraserve", "-o"), ("hf-transformers", "--x")):
                pts = sorted((int(r["batch"]), num(r["tok_s"])) for r in dec
                             if r["model"] == m and r["engine"] == eng and int(r["ctx"]) == ctx)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=f"{eng} ctx {ctx}")
            pts = sorted((int(r["batch"]), num(r["roofline_pct"])) for r in dec
                         if r["model"] == m and r["engine"] == "paraserve" and int(r["ctx"]) == ctx
                         and num(r["roofline_pct"]) is not None)
            if pts:
                ax2.plot([p[0] for p in pts], [p[1] for p in pts], "-o", label=f"ctx {ctx}")
        ax.set(xscale="log", yscale="log", xlabel="batch", ylabel="decode tok/s", title=f"{m} on {card}")
        ax2.set(xscale="log", xlabel="batch", ylabel="% of HBM roofline", ylim=(0, 100), title=f"{m}: bandwidth use")
        ax.legend(fontsize=7)
        ax2.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
        ax2.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    return True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, help="path prefix for .csv/.md/.png")
    ap.add_argument("csvs", nargs="+")
    a = ap.parse_args()
    rows = load(a.csvs)
    if not rows:
        print("gpu_plot: no rows", file=sys.stderr)
        return 1
    with open(a.out + ".csv", "w", newline="") as f:
        fields = []  # union of the columns, in first-seen order (the HF peer writes fewer)
        for r in rows:
            fields += [k for k in r if k not in fields]
        w = csv.DictWriter(f, fieldnames=fields, restval="")
        w.writeheader()
        w.writerows(rows)
    md = table(rows)
    with open(a.out + ".md", "w") as f:
        f.write(md + "\n")
    print(md)
    plot(rows, a.out + ".png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
