#!/usr/bin/env bash
# Reproduces every figure in BENCHMARKS.md: the in-process decision benchmark (criterion) and
# the HTTP load runs (mandate-load against a spawned release server, one fresh server and
# temporary SQLite store per line). Run from anywhere; release builds take minutes on 2 cores.
#
#   crates/mandate-bench/bench.sh            # everything
#   crates/mandate-bench/bench.sh http       # only the HTTP runs
set -euo pipefail
cd "$(dirname "$0")/../.."
what=${1:-all}
cargo build --release -p mandate -p mandate-bench
echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD) nproc=$(nproc) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"

if [ "$what" = all ]; then
  cargo bench -p mandate-bench --bench decision -- --warm-up-time 1 --measurement-time 4
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
printf '[store]\ndurability = "normal"\n' > "$tmp/normal.toml"
printf '[store]\ndurability = "normal"\n[audit]\nsync_decisions = false\n' > "$tmp/async.toml"
load() { target/release/mandate-load --duration 5 "$@"; }

echo "== HTTP floor"
load --scenario healthz --connections 64
echo "== decisions, default settings (audit committed before the answer, synchronous = FULL)"
for c in 1 4 16 32 64; do load --scenario decide --connections "$c"; done
for cfg in normal async; do
  echo "== decisions, $cfg: $(tr '\n' ' ' < "$tmp/$cfg.toml")"
  for c in 1 16 64; do load --scenario decide --connections "$c" --config "$tmp/$cfg.toml"; done
done
echo "== decisions at a fixed rate (64 connections)"
for r in 2000 5000; do load --scenario decide --connections 64 --rate "$r"; done
echo "== AuthZEN"
load --scenario authzen --connections 32
echo "== task issuance"
for c in 1 16 32 64; do load --scenario token --connections "$c"; done
load --scenario token --connections 32 --config "$tmp/normal.toml"
