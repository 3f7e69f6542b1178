#!/usr/bin/env bash
# Fairness benchmark, on loopback in one run: tenant B's hello latency (wrk, HTTP/1.1, plain
# listener, 2 connections) alone, then while tenant A keeps its whole concurrency (32) busy with
# guests sleeping in poll_oneoff, then with guests spinning on the CPU until their deadline.
# Every load is bounded in time and count. Figures go to docs/benchmarks.md by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/outpost-target}"
DURATION="${DURATION:-10}"
command -v wrk >/dev/null && command -v wat2wasm >/dev/null \
  || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk wabt >/dev/null; }
# OUTPOST_BIN runs a given binary (e.g. one built from another commit) instead of building.
outpost="${OUTPOST_BIN:-}"
if [ -z "$outpost" ]; then
  cargo build --release --quiet -p outpost --bins
  outpost="$CARGO_TARGET_DIR/release/outpost"
fi
work=$(mktemp -d /tmp/outpost-fair.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
cat > "$work/sleep.wat" <<'WAT'
(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (i64.store (i32.const 24) (i64.const 3600000000000))
    (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))))
WAT
cat > "$work/spin.wat" <<'WAT'
(module (memory (export "memory") 1) (func (export "_start") (loop $spin (br $spin))))
WAT
cat > "$work/hello.wat" <<'WAT'
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "Content-Type: text/plain\n\nhello\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 32))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
WAT
for m in sleep spin hello; do wat2wasm --enable-all -o "$work/$m.wasm" "$work/$m.wat"; done
cat > "$work/node.toml" <<TOML
[node]
data_dir = "$work/data"
[listen]
http = "127.0.0.1:18480"
admin = "127.0.0.1:18981"
[[tenant]]
name = "a"
allow_unsigned = true
[tenant.limits]
timeout = "2s"
fuel = 1_000_000_000_000
concurrency = 32
[[tenant]]
name = "b"
allow_unsigned = true
[[app]]
name = "sleep"
tenant = "a"
source = "file:$work/sleep.wasm"
[[app]]
name = "spin"
tenant = "a"
source = "file:$work/spin.wasm"
[[app]]
name = "hello"
tenant = "b"
source = "file:$work/hello.wasm"
[[route]]
host = "127.0.0.1"
path = "/sleep"
app = "sleep"
[[route]]
host = "127.0.0.1"
path = "/spin"
app = "spin"
[[route]]
host = "127.0.0.1"
path = "/hello"
app = "hello"
TOML
RUST_LOG=warn "$outpost" serve --config "$work/node.toml" 2>"$work/outpost.log" &
for _ in $(seq 200); do curl -sf http://127.0.0.1:18480/hello >/dev/null && break; sleep 0.1; done
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "outpost: $(git rev-parse --short HEAD 2>/dev/null || echo unknown), ${DURATION}s per row"
# Keeps A at its concurrency for the whole row: 32 parallel requests, re-sent as they end.
saturate() {
  local path=$1 until=$((SECONDS + DURATION + 1))
  while [ $SECONDS -lt $until ]; do
    curl -s --max-time 5 --parallel --parallel-immediate --parallel-max 32 $(for _ in $(seq 32); do echo "-o /dev/null http://127.0.0.1:18480$path"; done) 2>/dev/null || true
  done
}
row() {
  local label=$1 out
  out=$(wrk -t1 -c2 -d"${DURATION}s" --latency http://127.0.0.1:18480/hello)
  echo "| $label | $(echo "$out" | grep -E '^Requests/sec' | awk '{print $2}') | $(echo "$out" | grep -E '^ +50%' | awk '{print $2}') | $(echo "$out" | grep -E '^ +99%' | awk '{print $2}') |"
}
echo
echo "| tenant A | B's hello req/s | B p50 | B p99 |"
echo "|---|---|---|---|"
row "idle"
saturate /sleep & sat=$!; sleep 1; row "32 guests sleeping"; kill $sat 2>/dev/null || true; wait $sat 2>/dev/null || true
saturate /spin & sat=$!; sleep 1; row "32 guests spinning"; kill $sat 2>/dev/null || true; wait $sat 2>/dev/null || true
