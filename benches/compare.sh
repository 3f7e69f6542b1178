#!/usr/bin/env bash
# Two outpost binaries side by side (e.g. before and after a change), serving the Rust hello
# app over HTTP/1.1 + TLS on loopback, driven by wrk in alternating rounds so both see the same
# machine: prints req/s and the server's CPU per request for each round, then the ratio of the
# medians. Bounded: ROUNDS x 2 runs of DURATION seconds.
#   benches/compare.sh BEFORE_BINARY AFTER_BINARY
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/outpost-target}"
DURATION="${DURATION:-10}"
ROUNDS="${ROUNDS:-3}"
CONNS="${CONNS:-32}"
[ $# -eq 2 ] || { echo "usage: $0 BEFORE_BINARY AFTER_BINARY" >&2; exit 2; }
command -v wrk >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
cargo build --release --quiet --target wasm32-wasip1 --manifest-path examples/hello-rust/Cargo.toml \
  --target-dir "$CARGO_TARGET_DIR/guests/rust"
work=$(mktemp -d /tmp/outpost-compare.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
cp "$CARGO_TARGET_DIR/guests/rust/wasm32-wasip1/release/hello.wasm" "$work/"
. benches/hello-node.sh
start() { # name binary port admin
  mkdir -p "$work/$1"
  hello_node "$work/$1/data" "$3" "$4" "$work/hello.wasm" >"$work/$1/node.toml"
  RUST_LOG=warn "$2" serve --config "$work/$1/node.toml" >/dev/null 2>"$work/$1.log" &
  echo $!
}
a_pid=$(start before "$1" 18543 18941)
b_pid=$(start after "$2" 18544 18942)
for port in 18543 18544; do
  for _ in $(seq 200); do curl -ksf "https://localhost:$port/" >/dev/null && break; sleep 0.1; done
done
cpu_secs() { awk '{print ($14 + $15) / '"$(getconf CLK_TCK)"'}' "/proc/$1/stat"; }
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); ${DURATION}s x $ROUNDS rounds, $CONNS connections"
echo "| round | binary | req/s | p99 | server CPU per request |"
echo "|---|---|---|---|---|"
declare -A rates
for r in $(seq "$ROUNDS"); do
  for t in "before 18543 $a_pid" "after 18544 $b_pid"; do
    set -- $t
    c0=$(cpu_secs "$3")
    out=$(wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency "https://localhost:$2/")
    c1=$(cpu_secs "$3")
    n=$(echo "$out" | grep -E 'requests in' | awk '{print $1}')
    rps=$(echo "$out" | grep -E '^Requests/sec' | awk '{print $2}')
    rates[$1]="${rates[$1]:-} $rps"
    echo "| $r | $1 | $rps | $(echo "$out" | grep -E '^ +99%' | awk '{print $2}') | $(echo "($c1 - $c0) * 1000000 / $n" | bc) µs |"
  done
done
median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}'; }
mb=$(echo "${rates[before]}" | median); ma=$(echo "${rates[after]}" | median)
echo
echo "median req/s: before $mb, after $ma, after/before $(echo "scale=3; $ma / $mb" | bc)"
