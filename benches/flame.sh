#!/usr/bin/env bash
# Flame graph of `outpost serve` under wrk (HTTP/1.1 + TLS, keep-alive), or under h2load
# (CLIENT=h2load: HTTP/2, 4 streams per connection), answering the hello app: perf samples the
# node's threads (user and kernel stacks, DWARF unwinding) while the client runs, and inferno
# renders the SVG. MODE=inline (default) or MODE=pool (`--no-inline`: every
# guest on a guest thread) shows the two paths. PIN=1 (default) runs the node on CPU 0 and wrk
# on the others, as `PIN=1 benches/load.sh` does.
# Usage: [MODE=inline|pool] [CLIENT=wrk|h2load] [PIN=1] [DURATION=5] [CONNS=32] [FREQ=499]
#        [OUTPOST_BIN=a prebuilt outpost, e.g. an older commit's] benches/flame.sh OUT.svg
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:?usage: benches/flame.sh OUT.svg}")
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/outpost-target}"
MODE="${MODE:-inline}"
CLIENT="${CLIENT:-wrk}"
DURATION="${DURATION:-5}"
CONNS="${CONNS:-32}"
FREQ="${FREQ:-499}"
if [ "${PIN:-1}" = 1 ]; then
  server=(taskset -c 0)
  client=(taskset -c "1-$(($(nproc) - 1))")
else
  server=()
  client=()
fi
command -v perf >/dev/null && command -v wrk >/dev/null && command -v h2load >/dev/null || {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf wrk nghttp2-client >/dev/null
}
PATH="$PATH:${INFERNO_ROOT:-/var/tmp/inferno}/bin"
command -v inferno-flamegraph >/dev/null ||
  cargo install --quiet --locked inferno --root "${INFERNO_ROOT:-/var/tmp/inferno}"
bin="${OUTPOST_BIN:-}"
if [ -z "$bin" ]; then
  cargo build --release --quiet -p outpost
  bin="$CARGO_TARGET_DIR/release/outpost"
fi
cargo build --release --quiet --target wasm32-wasip1 --manifest-path examples/hello-rust/Cargo.toml \
  --target-dir "$CARGO_TARGET_DIR/guests/rust"
work=$(mktemp -d /tmp/outpost-flame.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
cp "$CARGO_TARGET_DIR/guests/rust/wasm32-wasip1/release/hello.wasm" "$work/"
. benches/hello-node.sh
hello_node "$work/data" 18453 18911 "$work/hello.wasm" >"$work/node.toml"
flags=()
[ "$MODE" = pool ] && flags=(--no-inline)
RUST_LOG=warn "${server[@]}" "$bin" serve "${flags[@]}" --config "$work/node.toml" 2>"$work/outpost.log" &
pid=$!
for _ in $(seq 100); do curl -ksf https://localhost:18453/ >/dev/null && break; sleep 0.1; done
load() { # load SECONDS: the client's rate
  case "$CLIENT" in
    wrk) "${client[@]}" wrk -t2 -c"$CONNS" -d"$1s" https://localhost:18453/ | grep -E 'Requests/sec' ;;
    h2load) "${client[@]}" h2load -D "$1" -c "$CONNS" -m 4 -t 1 https://localhost:18453/ | grep -E '^finished in' ;;
    *) echo "CLIENT is wrk or h2load" >&2; exit 2 ;;
  esac
}
load 2 >/dev/null
perf record -q -F "$FREQ" -g --call-graph dwarf,16384 -p "$pid" -o "$work/perf.data" -- sleep "$DURATION" 2>/dev/null &
perf_pid=$!
load "$DURATION"
curl -s http://127.0.0.1:18911/metrics | grep -E '^outpost_guest_runs_total' || true
wait "$perf_pid" || true
perf script -i "$work/perf.data" 2>/dev/null | inferno-collapse-perf | \
  inferno-flamegraph --minwidth 0.5 --title "outpost serve ($MODE), hello app, $([ "$CLIENT" = wrk ] && echo 'wrk HTTP/1.1+TLS' || echo 'h2load HTTP/2'), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)" >"$out"
echo "wrote $out"
