#!/usr/bin/env bash
# The rows of issue 17's target table, measured in one go and printed with "met / not met".
#   bench/targets.sh                       builds src/Mola.Cli (Release) and measures it
#   MOLA=path/Mola.Cli.dll bench/targets.sh   measures that build instead (before/after pairs)
# Two `mola bench` runs, 2 threads (libtorch's default on 2 cores), wall clock: the bench step shape (float32) and the
# TinyLlama-1.1B shape (float32 and bfloat16, random weights, ~10 GB, so under $HEAVY_LOCK when that file exists).
# Then the decoding rows: 1.1B bf16 against llama.cpp F16 (~3 minutes, 6 GB). An estimated 8 minutes in all on a quiet
# 2-core machine (not yet timed on one). Ratios are paired within one run; run it on a quiet machine (the load
# average is printed with the rows) and repeat it: single runs on a busy one say little.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d /tmp/mola-targets.XXXXXX)}
mkdir -p "$OUT"
HEAVY_LOCK=${HEAVY_LOCK:-/work/heavy.lock}
if [[ -z ${MOLA:-} ]]; then
  dotnet build src/Mola.Cli -c Release -o "$OUT/build" > "$OUT/build.log"
  MOLA="$OUT/build/Mola.Cli.dll"
fi
heavy() { if [[ -e $HEAVY_LOCK ]]; then flock "$HEAVY_LOCK" "$@"; else "$@"; fi; }
load() { cut -d' ' -f1-3 /proc/loadavg; }
start=$SECONDS
echo "results in $OUT; load average at the start: $(load)" >&2

# The bench step shape (4 layers, hidden 1024, 512 tokens), float32; fewer layer rounds (the layer is not a row here).
echo "$(load)" > "$OUT/step-shape.load"
dotnet "$MOLA" bench --rounds 3 --json > "$OUT/step-shape.json" 2> "$OUT/step-shape.txt"
echo "$(load)" >> "$OUT/step-shape.load"
# The 1.1B shape: the step at 128 tokens (as the lead's run of main that measured 1.30; ~10 GB), float32 then bfloat16,
# and its decoding. Five step rounds: with the default two, one quiet run gave MoLA/frozen 1.108 and the next 1.459
# for builds that five rounds put at 1.30 and 1.44.
# Five decoding rounds (the read share is taken from this run): the VM's read rate moves 24-43 GB/s within minutes.
heavy bash -c "echo \"\$(cut -d' ' -f1-3 /proc/loadavg)\" > '$OUT/tinyllama.load'; dotnet '$MOLA' bench --shape tinyllama-1.1b --step-tokens 128 --step-rounds 5 --decode-rounds 5 --json > '$OUT/tinyllama.json' 2> '$OUT/tinyllama.txt'"
echo "$(load)" >> "$OUT/tinyllama.load"

echo "| figure | measured | target | verdict | load average (start, end) |"
echo "| --- | --- | --- | --- | --- |"

# --- step rows (issue 17 items 1-3: the training step) ---
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
def last_json(name):
    with open(f"{out}/{name}.json") as f:
        return json.loads(f.read().strip().splitlines()[-1])
def load(name):
    with open(f"{out}/{name}.load") as f:
        return " / ".join(line.split()[0] for line in f if line.strip())
def row(figure, value, target, ok, where):
    print(f"| {figure} | {value} | {target} | {'met' if ok else 'not met'} | {load(where)} |")
step = last_json("step-shape")
f32 = next(r for r in step["runs"] if r["dtype"] == "float32")
u = f32["step"]["frozen_utilisation"]
row(f"frozen step, FLOP/s / matmul rate (float32, bench step shape, {step['shapes']['threads']} threads; "
    f"{f32['step']['frozen_ms']:.0f} ms, matmul {f32['matmul_gflops']:.0f} GFLOP/s)", f"{u:.2f}", ">= 0.80", u >= 0.80, "step-shape")
r = f32["ratios"]["step_mola_over_frozen"]
row("MoLA step / frozen step (bench step shape, float32, paired)", f"{r:.3f}", "<= 1.15", r <= 1.15, "step-shape")
tiny = last_json("tinyllama")
runs = {x["dtype"]: x for x in tiny["runs"]}
bf = runs["bfloat16"]
r = bf["ratios"]["step_mola_over_frozen"]
row(f"MoLA step / frozen step (1.1B shape, bfloat16, {tiny['shapes']['step']['tokens']} tokens, paired; "
    f"{bf['step']['mola_ms']:.0f} / {bf['step']['frozen_ms']:.0f} ms)", f"{r:.3f}", "<= 1.10", r <= 1.10, "tinyllama")
fp = runs["float32"]
r = bf["step"]["mola_ms"] / fp["step"]["mola_ms"]
row(f"bf16 step / float32 step, time per token (1.1B shape, MoLA step; frozen: "
    f"{bf['step']['frozen_ms'] / fp['step']['frozen_ms']:.2f})", f"{r:.2f}", "<= 1.0", r <= 1.0, "tinyllama")
PY
# --- end of the step rows ---

# --- decode rows (issue 17 item 4) ---
# === decoding (issue 17 item 4): 1.1B shape, bf16, batch 1, against llama.cpp F16 on the same weights ===
# About 4 minutes and 6 GB: the bf16 step (one round, 128 tokens: not a step row), then decoding and the 512-token
# prefill of mola and llama.cpp alternating, 7 rounds (paired per round: with 3, rounds a minute apart gave ratios
# 0.70-0.99 for one build), 2 threads (libtorch's default on 2 cores).
heavy bash -c "cut -d' ' -f1-3 /proc/loadavg > '$OUT/decode.load'; dotnet '$MOLA' bench --shape tinyllama-1.1b --dtype bfloat16 --against llama.cpp --step-tokens 128 --step-rounds 1 \
    --decode-rounds 7 --json > '$OUT/decode.json' 2> '$OUT/decode.txt'"
cut -d' ' -f1-3 /proc/loadavg >> "$OUT/decode.load"
python3 - "$OUT/decode.json" "$OUT/decode.load" "$OUT/tinyllama.json" <<'EOF'
import json, sys
load = " / ".join(l.split()[0] for l in open(sys.argv[2]) if l.strip())
run = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])["runs"][0]
d, a = run["decode"], run["against"]
# The read share from the 1.1B run without llama.cpp in the process: with it loaded, the read rate timed in the same
# rounds came out at 17 GB/s where it is ~29 without (llama.cpp's threads still polling), a share above 1.
plain = next(r for r in json.loads(open(sys.argv[3]).read().strip().splitlines()[-1])["runs"] if r["dtype"] == "bfloat16")["decode"]
# Whole generations (the 16-token prompt and 32 tokens), for the record: first token + 31 / decode rate, each program.
n = 31
whole = (a["first_token_ms"] / 1000 + n / a["decode_tokens_per_second"]) / (d["base_first_token_ms"] / 1000 + n / d["base_tokens_per_second"])
print(f"read share in the llama.cpp run: {d['base_bandwidth_share']:.2f} of {d['read_gb_per_second']:.1f} GB/s (not used); "
      f"whole generations (prompt + 32 tokens), mola / llama.cpp: {whole:.2f}; first token mola {d['base_first_token_ms']:.0f} ms, "
      f"llama.cpp {a['first_token_ms']:.0f} ms")
rows = [
    (f"1.1B bf16 decode, weight bytes per second / measured read rate ({plain['base_tokens_per_second']:.2f} tokens/s, "
     f"{plain['read_gb_per_second']:.1f} GB/s, the run without llama.cpp)", plain["base_bandwidth_share"], 0.85, ">="),
    ("1.1B decode tokens/s after the first token, mola bf16 / llama.cpp F16", a["decode_mola_over_program"], 1.0, ">="),
    ("1.1B prefill of 512 tokens, mola bf16 / llama.cpp F16", a["prefill_mola_over_program"], 1.25, ">="),
]
print(f"decoding: mola {d['base_tokens_per_second']:.2f} tokens/s ({d['base_bytes_per_token'] / 1e9:.2f} GB a token, read rate "
      f"{d['read_gb_per_second']:.1f} GB/s), MoLA {d['mola_tokens_per_second']:.2f}; llama.cpp {a['decode_tokens_per_second']:.2f}; "
      f"prefill mola {d['prefill_tokens_per_second']:.0f}, llama.cpp {a['prefill_tokens_per_second']:.0f} tokens/s")
for name, value, target, op in rows:
    print(f"| {name} | {value:.2f} | {op} {target} | {'met' if value >= target else 'not met'} | {load} |")
EOF
# --- end of the decode rows ---

echo "total $((SECONDS - start)) s; results in $OUT" >&2
