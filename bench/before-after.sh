#!/bin/bash
# Before/after runs of `mola bench`, alternating the two builds so that load from elsewhere hits both alike.
# usage: bench/before-after.sh BEFORE_DIR AFTER_DIR [SERIES]   (each a Release output folder holding Mola.Cli.dll;
# SERIES, e.g. s2, prefixes the result files so that a later series keeps the earlier ones), e.g.
#   git worktree add /tmp/before ee01b90 && dotnet build /tmp/before/src/Mola.Cli -c Release
#   dotnet build src/Mola.Cli -c Release
#   bench/before-after.sh /tmp/before/src/Mola.Cli/bin/Release/net10.0 src/Mola.Cli/bin/Release/net10.0
# then: python3 bench/summarize.py A baseline final; python3 bench/summarize.py B baseline final (with SERIES s2: s2A, s2B, s2W2)
# One thread and the CPU-time clock: on a shared machine these measure the work, not the queue for the cores.
set -e
out="$(dirname "$0")/results"
mkdir -p "$out"
declare -A dir=([baseline]="$1" [final]="$2")
series="${3:-}"
for i in 1 2 3; do
  for v in baseline final; do
    echo "$(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg) $v issue shapes run $i${series:+ (series $series)}" >> "$out/runs.log"
    dotnet "${dir[$v]}/Mola.Cli.dll" bench --threads 1 --clock cpu --json > "$out/${series}A-$v-$i.json" 2> "$out/${series}A-$v-$i.txt"
  done
done
for i in 1 2 3; do
  for v in baseline final; do
    echo "$(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg) $v D=1024 N=2048 run $i${series:+ (series $series)}" >> "$out/runs.log"
    dotnet "${dir[$v]}/Mola.Cli.dll" bench --threads 1 --clock cpu --hidden 1024 --tokens 2048 --rounds 15 --step-rounds 1 --json > "$out/${series}B-$v-$i.json" 2> "$out/${series}B-$v-$i.txt"
  done
done
# Two threads (libtorch's default on this machine), wall clock; OpenMP threads sleep instead of spinning while they
# wait (with spinning, two threads on two busy cores wait on each other for seconds: NOTES.md).
for i in 1 2; do
  for v in baseline final; do
    echo "$(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg) $v 2 threads wall run $i${series:+ (series $series)}" >> "$out/runs.log"
    OMP_WAIT_POLICY=PASSIVE dotnet "${dir[$v]}/Mola.Cli.dll" bench --rounds 9 --json > "$out/${series}W2-$v-$i.json" 2> "$out/${series}W2-$v-$i.txt"
  done
done
