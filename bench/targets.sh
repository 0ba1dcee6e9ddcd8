#!/usr/bin/env bash
# The targets of issue 17 ("Performance of the whole step and of decoding"), measured in one go on a quiet machine:
#   bench/targets.sh [OUT]     (a Release build first: dotnet build -c Release src/Mola.Cli)
# Each section runs `mola bench`, keeps its JSON under OUT (default bench/results/targets-<time>) and prints its rows
# as "figure | measured | target | met/not met". Runs over 3 GiB take /work/heavy.lock when that file exists.
set -euo pipefail
cd "$(dirname "$0")/.."
CLI=${CLI:-src/Mola.Cli/bin/Release/net10.0/Mola.Cli.dll}
OUT=${1:-bench/results/targets-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
[ -f "$CLI" ] || { echo "error: $CLI: not built (dotnet build -c Release src/Mola.Cli)" >&2; exit 1; }
heavy() { if [ -e /work/heavy.lock ]; then flock /work/heavy.lock "$@"; else "$@"; fi; }
echo "load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)"

# === decoding (issue 17 item 4): 1.1B shape, bf16, batch 1, against llama.cpp F16 on the same weights ===
# About 3 minutes and 6 GB: the bf16 step (one round, 128 tokens: not a step row), then decoding and the 512-token
# prefill of mola and llama.cpp alternating, 3 rounds, 2 threads (libtorch's default on 2 cores).
heavy dotnet "$CLI" bench --shape tinyllama-1.1b --dtype bfloat16 --against llama.cpp --step-tokens 128 --step-rounds 1 \
    --decode-rounds 3 --json > "$OUT/decode.json" 2> "$OUT/decode.txt"
python3 - "$OUT/decode.json" <<'EOF'
import json, sys
run = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])["runs"][0]
d, a = run["decode"], run["against"]
rows = [
    ("1.1B bf16 decode, weight bytes per second / measured read rate", d["base_bandwidth_share"], 0.85, ">="),
    ("1.1B decode tokens/s, mola bf16 / llama.cpp F16", a["decode_mola_over_program"], 1.0, ">="),
    ("1.1B prefill of 512 tokens, mola bf16 / llama.cpp F16", a["prefill_mola_over_program"], 1.25, ">="),
]
print(f"decoding: mola {d['base_tokens_per_second']:.2f} tokens/s ({d['base_bytes_per_token'] / 1e9:.2f} GB a token, read rate "
      f"{d['read_gb_per_second']:.1f} GB/s), MoLA {d['mola_tokens_per_second']:.2f}; llama.cpp {a['decode_tokens_per_second']:.2f}; "
      f"prefill mola {d['prefill_tokens_per_second']:.0f}, llama.cpp {a['prefill_tokens_per_second']:.0f} tokens/s")
for name, value, target, op in rows:
    print(f"| {name} | {value:.2f} | {op} {target} | {'met' if value >= target else 'not met'} |")
EOF
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
