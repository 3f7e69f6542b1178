#!/usr/bin/env bash
# Load benchmark, side by side in one run on loopback: outpost serving the hello app (a fresh
# Wasm instance per request), the same outpost with its inline path off (`--no-inline`: every
# guest on a guest thread), and a native hyper hello with the same rustls settings, driven by
# the same clients: wrk (HTTP/1.1 over TLS, keep-alive), h2load (HTTP/2), oha (HTTP/2 and
# HTTP/3 from one client, if installed with its http3 feature), plus plain HTTP/1.1 from wrk
# against `outpost run` and nginx answering `return 200`, and full TLS handshakes per second
# (openssl s_time). Each row also gives the server's own CPU time per request.
# Each client runs RUNS times (default 3), alternating with the other targets, and the table
# gives medians and the ratio rows. Every run is bounded in time. PIN=1 runs every server on
# CPU 0 and every client on the other CPUs, so the servers' rates do not depend on how the
# kernel shares cores with the clients. Figures go to docs/benchmarks.md by hand.
# Usage: [RUNS=3] [DURATION=10] [CONNS=32] [PIN=1] benches/load.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/outpost-target}"
DURATION="${DURATION:-10}"
RUNS="${RUNS:-3}"
CONNS="${CONNS:-32}"
for tool in wrk h2load openssl bc nginx taskset; do
  command -v "$tool" >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nghttp2-client openssl bc nginx-light util-linux >/dev/null; break; }
done
PATH="$PATH:${OHA_ROOT:-/var/tmp/oha}/bin"
# Both run in a subshell (`&` or `$(...)`), which exec replaces: `$!` is the server's own PID.
if [ "${PIN:-0}" = 1 ]; then
  server_cpu() { exec taskset -c 0 "$@"; }
  client_cpu() { exec taskset -c "1-$(($(nproc) - 1))" "$@"; }
  nginx_workers=1
else
  server_cpu() { exec "$@"; }
  client_cpu() { exec "$@"; }
  nginx_workers=auto
fi
cargo build --release --quiet -p outpost -p outpost-benches --bins
cargo build --release --quiet --target wasm32-wasip1 --manifest-path examples/hello-rust/Cargo.toml \
  --target-dir "$CARGO_TARGET_DIR/guests/rust"
work=$(mktemp -d /tmp/outpost-load.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
cp "$CARGO_TARGET_DIR/guests/rust/wasm32-wasip1/release/hello.wasm" "$work/"
. benches/hello-node.sh
hello_node "$work/data" 18443 18901 "$work/hello.wasm" 1 >"$work/node.toml"
sed -e "s|$work/data|$work/data-pool|; s|:18443|:18445|g; s|:18901|:18902|" "$work/node.toml" >"$work/node-pool.toml"
RUST_LOG=warn server_cpu "$CARGO_TARGET_DIR/release/outpost" serve --config "$work/node.toml" 2>"$work/outpost.log" &
outpost_pid=$!
RUST_LOG=warn server_cpu "$CARGO_TARGET_DIR/release/outpost" serve --no-inline --config "$work/node-pool.toml" 2>"$work/outpost-pool.log" &
pool_pid=$!
server_cpu "$CARGO_TARGET_DIR/release/native-hello" 127.0.0.1:18444 "$work/native" 2>"$work/native.log" &
native_pid=$!
# Plain HTTP/1.1: `outpost run` (the local server, same sandbox) and nginx's `return 200`.
RUST_LOG=warn server_cpu "$CARGO_TARGET_DIR/release/outpost" run "$work/hello.wasm" --listen 127.0.0.1:18446 \
  --concurrency 1000 --data-dir "$work/data-run" 2>"$work/run.log" &
run_pid=$!
mkdir -p "$work/nginx"
cat >"$work/nginx/nginx.conf" <<NGINX
worker_processes $nginx_workers;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/nginx; proxy_temp_path $work/nginx; fastcgi_temp_path $work/nginx;
  uwsgi_temp_path $work/nginx; scgi_temp_path $work/nginx;
  server { listen 127.0.0.1:18447; location / { default_type text/plain; return 200 "Hello from outpost!\n"; } }
}
NGINX
server_cpu nginx -c "$work/nginx/nginx.conf" -g 'daemon off;' &
nginx_pid=$!
for url in https://localhost:18443/ https://localhost:18445/ https://localhost:18444/ http://127.0.0.1:18446/ http://127.0.0.1:18447/; do
  for _ in $(seq 100); do curl -ksf "$url" >/dev/null && break; sleep 0.1; done
done
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "outpost: $(git rev-parse --short HEAD 2>/dev/null || echo unknown), ${DURATION}s per run, $CONNS connections"
rps() { grep -E '^Requests/sec' | awk '{print $2}'; }
p99() { grep -E '^ +99%' | awk '{print $2}'; }
# Server CPU per request: the process's utime + stime over the run, divided by the requests it
# answered (outpost's own counter; the client's count for the native server). It does not
# depend on how much CPU the client takes from the shared cores.
cpu_secs() { awk '{print ($14 + $15) / '"$(getconf CLK_TCK)"'}' "/proc/$1/stat"; }
# Requests a node answered over protocol $1, from its admin listener $2's metrics.
served() { curl -s "http://127.0.0.1:$2/metrics" | { grep -E '^outpost_requests_total\{.*status="200"' || true; } | awk -v p="$1" 'index($0, "protocol=\"" p "\"") {s += $2} END {print s + 0}'; }
per_req() { echo "($2 - $1) * 1000000 / $3" | bc; }
# One measurement: prints "req/s cpu_us_per_request latency" for a client against a target.
admin_of() { case $1 in outpost) echo 18901;; pool) echo 18902;; *) echo "";; esac; }
measure() { # measure CLIENT NAME PORT PID
  local client=$1 name=$2 port=$3 pid=$4 admin c0 c1 n0 n1 n out rate lat
  admin=$(admin_of "$name")
  case $client in
    wrk | wrkplain)
      local url="https://localhost:$port/"
      [ "$client" = wrkplain ] && url="http://127.0.0.1:$port/"
      c0=$(cpu_secs "$pid"); [ -n "$admin" ] && n0=$(served HTTP/1.1 "$admin")
      out=$(client_cpu wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency "$url")
      c1=$(cpu_secs "$pid"); [ -n "$admin" ] && n1=$(served HTTP/1.1 "$admin")
      if [ -n "$admin" ]; then n=$((n1 - n0)); else n=$(echo "$out" | grep -E 'requests in' | awk '{print $1}'); fi
      rate=$(echo "$out" | rps); lat="p99 $(echo "$out" | p99)" ;;
    h2load)
      c0=$(cpu_secs "$pid"); [ -n "$admin" ] && n0=$(served HTTP/2 "$admin")
      out=$(client_cpu h2load -D "$DURATION" -c "$CONNS" -m 4 -t 2 "https://localhost:$port/" 2>&1)
      c1=$(cpu_secs "$pid"); [ -n "$admin" ] && n1=$(served HTTP/2 "$admin")
      if [ -n "$admin" ]; then n=$((n1 - n0)); else n=$(echo "$out" | grep -E '^requests:' | awk '{print $8}'); fi
      rate=$(echo "$out" | grep -E '^finished in' | sed -E 's/.* ([0-9.]+) req\/s.*/\1/')
      lat="mean $(echo "$out" | grep -E '^time for request:' | awk '{print $6}'), failed $(echo "$out" | grep -E '^requests:' | sed -E 's/.* ([0-9]+) failed.*/\1/')" ;;
    oha2 | oha3)
      # oha's HTTP/3 client can stall after a timed run: the rate is outpost's own count.
      local proto=${client#oha}
      c0=$(cpu_secs "$pid"); n0=$(served "HTTP/$proto" "$admin")
      out=$(client_cpu timeout $((DURATION + 60)) oha --http-version "$proto" --insecure -z "${DURATION}s" -c 8 -p 4 --no-tui "https://localhost:$port/" 2>&1) || true
      c1=$(cpu_secs "$pid"); n1=$(served "HTTP/$proto" "$admin")
      n=$((n1 - n0)); rate=$((n / DURATION))
      lat="p99 $(echo "$out" | { grep -E '99.00%' || true; } | awk '{print $3 $4}')" ;;
  esac
  echo "${rate:-0} $(per_req "$c0" "$c1" "${n:-1}") $lat"
}
median() { sort -g | awk '{v[NR] = $1} END {if (NR == 0) print 0; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
rows=("wrk outpost 18443 $outpost_pid" "wrk pool 18445 $pool_pid" "wrk native 18444 $native_pid"
  "h2load outpost 18443 $outpost_pid" "h2load pool 18445 $pool_pid" "h2load native 18444 $native_pid"
  "wrkplain run 18446 $run_pid" "wrkplain nginx 18447 $nginx_pid")
if command -v oha >/dev/null; then
  rows+=("oha2 outpost 18443 $outpost_pid" "oha3 outpost 18443 $outpost_pid")
fi
# Runs alternate the targets, so both see the same noise.
for run in $(seq "$RUNS"); do
  for row in "${rows[@]}"; do
    set -- $row
    echo "$(measure "$1" "$2" "$3" "$4")" >>"$work/$1-$2"
    echo "run $run: $1 $2: $(tail -1 "$work/$1-$2")" >&2
  done
done
rate_of() { cut -d' ' -f1 "$work/$1" | median; }
cpu_of() { cut -d' ' -f2 "$work/$1" | median; }
echo
echo "median of $RUNS runs (each run alternates the targets; per-run figures on stderr)"
echo
echo "| client / protocol | target | req/s (median) | server CPU per request (median) | per run: req/s, CPU µs, latency |"
echo "|---|---|---|---|---|"
for row in "${rows[@]}"; do
  set -- $row
  label=$(case $1 in wrk) echo "wrk HTTP/1.1+TLS";; h2load) echo "h2load HTTP/2 (4 streams per connection)";; oha2) echo "oha HTTP/2 (8 x 4)";; oha3) echo "oha HTTP/3 (8 x 4)";; wrkplain) echo "wrk plain HTTP/1.1";; esac)
  target=$(case $2 in outpost) echo "outpost serve";; pool) echo "outpost serve --no-inline";; native) echo "native hyper";; run) echo "outpost run";; nginx) echo "nginx return 200";; esac)
  echo "| $label | $target | $(rate_of "$1-$2") | $(cpu_of "$1-$2") µs | $(paste -sd';' "$work/$1-$2" | sed 's/;/; /g') |"
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "n/a"}'; }
echo
echo "| ratio (medians) | value | target |"
echo "|---|---|---|"
echo "| HTTP/1.1+TLS outpost / native hyper (wrk) | $(ratio "$(rate_of wrk-outpost)" "$(rate_of wrk-native)")x | 0.5x (hardening), 0.75x (throughput) |"
echo "| HTTP/2 outpost / native hyper (h2load) | $(ratio "$(rate_of h2load-outpost)" "$(rate_of h2load-native)")x | 0.7x |"
echo "| plain HTTP/1.1 outpost run / nginx (wrk) | $(ratio "$(rate_of wrkplain-run)" "$(rate_of wrkplain-nginx)")x | 0.6x |"
echo "| HTTP/1.1+TLS inline / --no-inline (wrk) | $(ratio "$(rate_of wrk-outpost)" "$(rate_of wrk-pool)")x | |"
echo "| HTTP/2 inline / --no-inline (h2load) | $(ratio "$(rate_of h2load-outpost)" "$(rate_of h2load-pool)")x | |"
if command -v oha >/dev/null; then
  echo "| HTTP/3 / HTTP/2, outpost, same client (oha) | $(ratio "$(rate_of oha3-outpost)" "$(rate_of oha2-outpost)")x | 1.0x |"
else
  echo "| HTTP/3 / HTTP/2 | not measured: install oha with its http3 feature (cargo install oha --features http3) | |"
fi
echo
# Full handshakes (no resumption) from two openssl clients at once; the server's own CPU time
# (utime + stime from /proc) gives handshakes per server core-second.
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
