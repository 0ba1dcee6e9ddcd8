#!/usr/bin/env python3
"""Summarises `mola bench --json` outputs: per version, the median over runs of each figure and of each paired ratio.
usage: bench/summarize.py PREFIX VERSION... (reads bench/results/PREFIX-VERSION-N.json)"""
import glob, json, statistics, sys, os

here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
prefix, versions = sys.argv[1], sys.argv[2:]
for v in versions:
    files = sorted(glob.glob(os.path.join(here, f"{prefix}-{v}-*.json")))
    runs = [json.load(open(f)) for f in files if os.path.getsize(f) > 0]   # a run still going has an empty file
    if not runs:
        continue
    med = lambda get: statistics.median(get(r) for r in runs)
    L, S = (lambda k: med(lambda r: r["layer"][k])), (lambda k: med(lambda r: r["step"][k]))
    print(f"## {prefix} {v}: {len(runs)} runs, shapes {json.dumps(runs[0]['shapes'])}")
    print(f"layer ms   frozen {L('frozen_ms'):7.1f}  lora {L('lora_ms'):7.1f}  mola {L('mola_ms'):7.1f}  mola_loop {L('mola_loop_ms'):7.1f}")
    print(f"step ms    frozen {S('frozen_ms'):7.1f}  lora {S('lora_ms'):7.1f}  mola {S('mola_ms'):7.1f}  tokens/s {S('tokens_per_second'):.0f}")
    print(f"matmul {med(lambda r: r['matmul_gflops']):.1f} GFLOP/s, generate {med(lambda r: r['generate_tokens_per_second']):.1f} tokens/s")
    for k in runs[0]["ratios"]:
        vals = [r["ratios"][k] for r in runs]
        print(f"  {k:30s} median {statistics.median(vals):.3f}   runs {' '.join(f'{x:.3f}' for x in vals)}")
