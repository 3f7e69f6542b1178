#!/usr/bin/env bash
# Load benchmark, side by side in one run on loopback: outpost serving the hello app (a fresh
# Wasm instance per request) and a native hyper hello with the same rustls settings, driven by
# the same clients: wrk (HTTP/1.1 over TLS, keep-alive), h2load (HTTP/2), oha (HTTP/3, if
# installed with its http3 feature), plus full TLS handshakes per second (openssl s_time).
# Every run is bounded in time. Figures go to docs/benchmarks.md by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/outpost-target}"
DURATION="${DURATION:-10}"
CONNS="${CONNS:-32}"
for tool in wrk h2load openssl bc; do
  command -v "$tool" >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nghttp2-client openssl bc >/dev/null; break; }
done
cargo build --release --quiet -p outpost -p outpost-benches --bins
cargo build --release --quiet --target wasm32-wasip1 --manifest-path examples/hello-rust/Cargo.toml \
  --target-dir "$CARGO_TARGET_DIR/guests/rust"
work=$(mktemp -d /tmp/outpost-load.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
cp "$CARGO_TARGET_DIR/guests/rust/wasm32-wasip1/release/hello.wasm" "$work/"
cat > "$work/node.toml" <<TOML
[node]
data_dir = "$work/data"
[listen]
https = "127.0.0.1:18443"
http3 = "127.0.0.1:18443"
admin = "127.0.0.1:18901"
[tls]
self_signed = true
[limits]
concurrency = 1000
[[tenant]]
name = "bench"
allow_unsigned = true
[[app]]
name = "hello"
tenant = "bench"
source = "file:$work/hello.wasm"
[[route]]
host = "localhost"
app = "hello"
TOML
RUST_LOG=warn "$CARGO_TARGET_DIR/release/outpost" serve --config "$work/node.toml" 2>"$work/outpost.log" &
outpost_pid=$!
"$CARGO_TARGET_DIR/release/native-hello" 127.0.0.1:18444 "$work/native" 2>"$work/native.log" &
native_pid=$!
for port in 18443 18444; do
  for _ in $(seq 100); do curl -ksf "https://localhost:$port/" >/dev/null && break; sleep 0.1; done
done
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "outpost: $(git rev-parse --short HEAD 2>/dev/null || echo unknown), ${DURATION}s per run, $CONNS connections"
rps() { grep -E '^Requests/sec' | awk '{print $2}'; }
p99() { grep -E '^ +99%' | awk '{print $2}'; }
echo
echo "| client / protocol | target | req/s | p99 |"
echo "|---|---|---|---|"
for target in "outpost 18443" "native 18444"; do
  set -- $target
  out=$(wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency "https://localhost:$2/")
  echo "| wrk HTTP/1.1+TLS | $1 | $(echo "$out" | rps) | $(echo "$out" | p99) |"
done
for target in "outpost 18443" "native 18444"; do
  set -- $target
  out=$(h2load -D "$DURATION" -c "$CONNS" -m 4 -t 2 "https://localhost:$2/" 2>&1)
  reqs=$(echo "$out" | grep -E '^finished in' | sed -E 's/.* ([0-9.]+) req\/s.*/\1/')
  fails=$(echo "$out" | grep -E '^requests:' | sed -E 's/.* ([0-9]+) failed.*/\1/')
  lat=$(echo "$out" | grep -E '^time for request:' | awk '{print "mean " $6 ", max " $5 " (h2load reports no p99)"}')
  echo "| h2load HTTP/2 (failed: $fails) | $1 | $reqs | $lat |"
done
# oha's HTTP/3 client stalls for a while after a timed run, so its req/s undercounts: the rate
# comes from outpost's own counter over the run's duration; the p99 from oha.
h3_count() { curl -s http://127.0.0.1:18901/metrics | { grep -E '^outpost_requests_total\{.*protocol="HTTP/3".*status="200"' || true; } | awk '{s += $2} END {print s + 0}'; }
if command -v oha >/dev/null; then
  before=$(h3_count)
  out=$(timeout $((DURATION + 60)) oha --http-version 3 --insecure -z "${DURATION}s" -c "$CONNS" --no-tui "https://localhost:18443/" 2>&1 || true)
  after=$(h3_count)
  echo "| oha HTTP/3 | outpost | $(( (after - before) / DURATION )) (server count) | $(echo "$out" | { grep -E '99.00%' || true; } | awk '{print $3 " " $4}') |"
else
  echo "| oha HTTP/3 | outpost | not measured: install oha with its http3 feature (cargo install oha --features http3) | |"
fi
echo
# Full handshakes (no resumption) from two openssl clients at once; the server's own CPU time
# (utime + stime from /proc) gives handshakes per server core-second.
cpu_secs() { awk '{print ($14 + $15) / '"$(getconf CLK_TCK)"'}' "/proc/$1/stat"; }
for target in "outpost 18443 $outpost_pid" "native 18444 $native_pid"; do
  set -- $target
  before=$(cpu_secs "$3")
  for i in 1 2; do
    timeout $((DURATION + 10)) openssl s_time -connect "127.0.0.1:$2" -new -time "$DURATION" >"$work/hs.$i" 2>/dev/null &
  done
  wait $(jobs -p | tail -2) 2>/dev/null || true
  after=$(cpu_secs "$3")
  total=$(cat "$work"/hs.1 "$work"/hs.2 | grep -E '^[0-9]+ connections in' | awk '{s += $1} END {print s}')
  echo "full TLS handshakes, $1: $total in ${DURATION}s from 2 clients; server CPU $(echo "$after - $before" | bc -l | cut -c1-6) s; $(echo "$total / ($after - $before)" | bc -l | cut -d. -f1) per server core-second"
done
