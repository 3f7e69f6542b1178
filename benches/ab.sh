#!/usr/bin/env bash
# Pinned A/B of outpost binaries (e.g. before and after a change) serving the Rust hello app:
# a fresh node per run on CPU 0 (`benches/hello-node.sh`, one guest thread), the client on
# CPU 1, the binaries alternating within every run, so all see the same machine. Prints each
# run's rate, the guest runs by path, and the median per binary. Bounded: RUNS x binaries runs
# of DURATION seconds.
#   [CLIENT=wrk|wrkpost|h2load|h2post|oha2|oha3] [RUNS=3] [DURATION=8] benches/ab.sh BIN...
# wrk: HTTP/1.1+TLS, 1 thread, 32 connections; wrkpost: the same with 1 KiB POSTs; h2load:
# HTTP/2, 32 connections x 4 streams; h2post: the same with 1 KiB bodies; oha2/oha3: oha's
# HTTP/2 or HTTP/3 client, 8 connections x 4 in flight, its rate read from the node's
# outpost_requests_total (oha's HTTP/3 client can stall after a timed run). oha with its http3
# feature is looked for on PATH and in /var/tmp/oha/bin (`cargo install --locked oha --features
# http3 --root /var/tmp/oha`).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/outpost-target}"
CLIENT="${CLIENT:-wrk}"
RUNS="${RUNS:-3}"
DURATION="${DURATION:-8}"
[ $# -ge 1 ] || { echo "usage: [CLIENT=...] $0 BIN..." >&2; exit 2; }
[ "$(nproc)" -ge 2 ] || { echo "needs 2 CPUs: the node on CPU 0, the client on CPU 1" >&2; exit 2; }
PATH="$PATH:/var/tmp/oha/bin"
case "$CLIENT" in
  wrk | wrkpost) need=wrk ;;
  h2load | h2post) need=h2load ;;
  oha2 | oha3) need=oha ;;
  *) echo "CLIENT is wrk, wrkpost, h2load, h2post, oha2 or oha3" >&2; exit 2 ;;
esac
command -v "$need" >/dev/null || {
  [ "$need" = oha ] && { echo "oha is not installed (see the comment at the top)" >&2; exit 2; }
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nghttp2-client >/dev/null
}
cargo build --release --quiet --target wasm32-wasip1 --manifest-path examples/hello-rust/Cargo.toml \
  --target-dir "$CARGO_TARGET_DIR/guests/rust"
work=$(mktemp -d /tmp/outpost-ab.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
cp "$CARGO_TARGET_DIR/guests/rust/wasm32-wasip1/release/hello.wasm" "$work/"
head -c 1024 /dev/zero | tr '\0' x >"$work/body"
printf 'wrk.method = "POST"\nwrk.body = string.rep("x", 1024)\n' >"$work/post.lua"
. benches/hello-node.sh
url=https://localhost:18443/
served() { # protocol: 200s the node answered over it
  curl -s http://127.0.0.1:18901/metrics |
    awk -v p="HTTP/$1" 'index($0, "outpost_requests_total") == 1 && index($0, p) && index($0, "\"200\"") { s += $2 } END { print s + 0 }'
}
load() { # the client's rate in req/s
  local c=(taskset -c 1)
  case "$CLIENT" in
    wrk) "${c[@]}" wrk -t1 -c32 -d"${DURATION}s" "$url" | awk '/Requests\/sec/ { print $2 }' ;;
    wrkpost) "${c[@]}" wrk -t1 -c32 -d"${DURATION}s" -s "$work/post.lua" "$url" | awk '/Requests\/sec/ { print $2 }' ;;
    h2load | h2post)
      local body=()
      [ "$CLIENT" = h2post ] && body=(-d "$work/body")
      "${c[@]}" h2load -D "$DURATION" -c 32 -m 4 -t 1 "${body[@]}" "$url" 2>&1 |
        sed -nE 's/^finished in .* ([0-9.]+) req\/s.*/\1/p' ;;
    oha2 | oha3)
      local p=${CLIENT#oha} n0 n1
      n0=$(served "$p")
      "${c[@]}" timeout $((DURATION + 30)) oha --http-version "$p" --insecure -z "${DURATION}s" \
        -c 8 -p 4 --no-tui "$url" >/dev/null 2>&1 || true
      n1=$(served "$p")
      echo $(((n1 - n0) / DURATION)) ;;
  esac
}
for run in $(seq "$RUNS"); do
  for bin in "$@"; do
    hello_node "$work/data" 18443 18901 "$work/hello.wasm" 1 >"$work/node.toml"
    RUST_LOG=warn taskset -c 0 "$bin" serve --config "$work/node.toml" 2>"$work/node.log" &
    pid=$!
    for _ in $(seq 100); do curl -ksf "$url" >/dev/null && break; sleep 0.1; done
    rate=$(load)
    paths=$(curl -s http://127.0.0.1:18901/metrics |
      sed -nE 's/^outpost_guest_runs_total\{path="([a-z]+)".*\} ([0-9]+)$/\1=\2/p' | tr '\n' ' ')
    echo "run $run $bin $CLIENT $rate req/s ($paths)"
    echo "$bin $rate" >>"$work/rates"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    rm -rf "$work/data"
  done
done
echo
for bin in "$@"; do
  median=$(awk -v b="$bin" '$1 == b { print $2 }' "$work/rates" | sort -n |
    awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
  echo "median $bin $CLIENT $median req/s"
done
