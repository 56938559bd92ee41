"""Markdown table of the preflight JSON lines in docs/preflight/*.jsonl (the README's table).

python docs/preflight/table.py
"""

from __future__ import annotations

import glob
import json
import os

GIB = 1024**3
HERE = os.path.dirname(os.path.abspath(__file__))


def _model(r: dict) -> str:
    name = {"resnet50": "R50", "resnet200": "R200"}.get(r["encoder"], r["encoder"])
    width = f" {r['width']}x" if r["width"] != 1 else ""
    return f"{name}{width} {'bf16' if r['dtype'] == 'bfloat16' else 'f32'}"


def main() -> None:
    rows, best, points = [], {}, {}
    for path in sorted(glob.glob(os.path.join(HERE, "*.jsonl"))):
        with open(path) as f:
            for line in f:
                r = json.loads(line)
                if "max_per_chip_batch" in r:
                    key = (r["target"], r["encoder"], r["width"], r["dtype"])
                    best[key] = r["max_per_chip_batch"]
                elif r.get("memory"):
                    key = (r["target"], r["encoder"], r["width"], r["dtype"])
                    if key not in points:  # the first compile of a setup: the paper's batch
                        rows.append(r)
                    points.setdefault(key, []).append(r)
    print(
        "| model | target | chips | per-chip batch | memory per chip, GiB (temp) | usable "
        "| fits | largest per-chip batch (compiled) | linear fit | GFLOP/image XLA | hand count "
        "| compile s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        m = r["memory"]
        key = (r["target"], r["encoder"], r["width"], r["dtype"])
        flops = r.get("flops_per_image")
        xla = "" if flops is None else f"{flops / 1e9:.1f}"
        if xla and r["flops_source"].startswith("pre-optimization"):
            xla += " (est.)"
        hand = r.get("flop_count_per_image")
        largest = best.get(key, "")
        fitted = sorted(points[key], key=lambda p: p["per_chip_batch"])
        fits = [p for p in fitted if p["fits"]]
        linear = ""
        if len(fitted) >= 2:  # the line through the two smallest compiles (no rematerialization)
            (b1, m1), (b2, m2) = [(p["per_chip_batch"], p["memory"]["total"]) for p in fitted[:2]]
            slope = (m2 - m1) / (b2 - b1)
            linear = f"≈{int(b1 + (r['usable_memory'] - m1) / slope) // 8 * 8}"
        elif fitted[0]["fits"]:  # one compile: temporaries taken as proportional to the batch
            m = fitted[0]["memory"]
            per_image = m["temporaries"] / fitted[0]["per_chip_batch"]
            fixed = m["total"] - m["temporaries"]
            linear = f"≈{int((r['usable_memory'] - fixed) / per_image) // 8 * 8} (1 compile)"
        if largest == "" and len(fitted) > 2 and fits:  # a search that was cut short
            largest = f"≥{fits[-1]['per_chip_batch']} (search cut short)"
        if fits and flops and fits[-1].get("flops_per_image"):
            # The TPU compiler fits large batches by rematerializing: more FLOPs per image.
            extra = fits[-1]["flops_per_image"] / flops - 1
            if extra > 0.02:
                largest = f"{largest} (remat: +{100 * extra:.1f}% FLOPs)"
        print(
            f"| {_model(r)} | {r['target']} | {r['chips']} | {r['per_chip_batch']} "
            f"| {m['total'] / GIB:.2f} ({m['temporaries'] / GIB:.2f}) "
            f"| {r['usable_memory'] / GIB:.0f} | {'yes' if r['fits'] else 'no'} "
            f"| {largest} | {linear} | {xla} | {'' if hand is None else f'{hand / 1e9:.1f}'} "
            f"| {r['compile_s']:.0f} |"
        )


if __name__ == "__main__":
    main()
