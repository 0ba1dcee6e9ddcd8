#!/usr/bin/env bash
# Data-parallel throughput: 1 process x all cores against N ranks (mpirun) x cores/N threads, the same run
# (same effective batch, same loss curve); alternating, ROUNDS times. Prints the mean tokens/s over the steps
# after the first and, for the ranks, the all-reduce line the trainer logs.
#   bench/data-parallel.sh MODEL_DIR DATA [ROUNDS] [RANKS] [mola train options...]
# Build first: dotnet build src/Mola.Cli -c Release. Needs Open MPI (README: distributed training).
set -euo pipefail
cd "$(dirname "$0")/.."
model=$1 data=$2 rounds=${3:-2} ranks=${4:-2}
shift $(( $# < 4 ? $# : 4 ))
cli=src/Mola.Cli/bin/Release/net10.0/Mola.Cli.dll
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 TERM=dumb
out=$(mktemp -d)
mean_tps() { python3 -c "import json,sys; v=[json.loads(l)['tokens_per_second'] for l in open(sys.argv[1])][1:]; print(f'{sum(v)/len(v):.0f} tok/s over {len(v)} steps')" "$1"; }
for r in $(seq "$rounds"); do
  rm -rf "$out/one" "$out/ranks"
  dotnet "$cli" train --base-model "$model" --data "$data" --output "$out/one" "$@" > "$out/one.log" 2>&1
  echo "round $r: 1 process x $(nproc) threads: $(mean_tps "$out/one/metrics.jsonl")"
  mpirun --oversubscribe -np "$ranks" dotnet "$cli" train --base-model "$model" --data "$data" --output "$out/ranks" "$@" > "$out/ranks.log" 2>&1
  echo "round $r: $ranks ranks x $(( $(nproc) / ranks > 0 ? $(nproc) / ranks : 1 )) threads: $(mean_tps "$out/ranks/metrics.jsonl"); $(grep -o 'gradient all-reduce.*' "$out/ranks.log")"
done
rm -rf "$out"
