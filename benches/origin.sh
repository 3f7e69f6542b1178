#!/usr/bin/env bash
# Origin benchmark, in one run on loopback against one nginx origin serving a 1 KiB file:
#  1. pass-through: wrk through outpost (the router app names the backend; outpost forwards
#     the request and streams the origin's answer) against wrk through nginx's own
#     proxy_pass (keep-alive upstream) to the same origin, same client settings;
#  2. subrequests: the fetch app sending N sequential subrequests in one request, per call
#     ((time for N) - (time for 1)) / (N - 1), against a native hyper-util client doing the
#     same N GETs (benches/src/bin/native-fetch.rs).
# Every run is bounded in time. Figures go to docs/benchmarks.md by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/outpost-target}"
DURATION="${DURATION:-10}"
CONNS="${CONNS:-32}"
CALLS="${CALLS:-32}"
# PROFILE=dev measures the debug build (only to check the script, or when a release build is
# out of reach); figures for docs/benchmarks.md come from release.
PROFILE="${PROFILE:-release}"
if [ "$PROFILE" = release ]; then build_flag=--release; bin_dir=release; else build_flag=; bin_dir=debug; fi
command -v wrk >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
[ -x /usr/sbin/nginx ] || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null; }
cargo build $build_flag --quiet -p outpost -p outpost-benches --bins
for ex in router fetch; do
  cargo build --release --quiet --target wasm32-wasip1 --manifest-path "examples/$ex-rust/Cargo.toml" \
    --target-dir "$CARGO_TARGET_DIR/guests/rust"
done
work=$(mktemp -d /tmp/outpost-origin.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/www" "$work/nginx/tmp"
head -c 1024 /dev/urandom | base64 -w0 | head -c 1024 > "$work/www/small.txt"
cp "$CARGO_TARGET_DIR/guests/rust/wasm32-wasip1/release/router.wasm" "$CARGO_TARGET_DIR/guests/rust/wasm32-wasip1/release/fetch.wasm" "$work/"
user=""; [ "$(id -u)" = 0 ] && user="user root;"
cat > "$work/nginx/nginx.conf" <<CONF
$user
daemon off;
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $work/nginx/tmp/body;
    proxy_temp_path $work/nginx/tmp/proxy;
    fastcgi_temp_path $work/nginx/tmp/fastcgi;
    uwsgi_temp_path $work/nginx/tmp/uwsgi;
    scgi_temp_path $work/nginx/tmp/scgi;
    keepalive_requests 1000000;
    upstream origin { server 127.0.0.1:19080; keepalive 64; }
    server { listen 127.0.0.1:19080; root $work/www; }
    server {
        listen 127.0.0.1:19082;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            add_header X-Routed-By nginx;
        }
    }
}
CONF
/usr/sbin/nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" &
cat > "$work/node.toml" <<TOML
[node]
data_dir = "$work/data"
[listen]
http = "127.0.0.1:19081"
admin = "127.0.0.1:19901"
[limits]
concurrency = 1000
[[tenant]]
name = "bench"
allow_unsigned = true
[[backend]]
name = "static"
tenant = "bench"
url = "http://127.0.0.1:19080"
max_connections = 256
[[app]]
name = "router"
tenant = "bench"
source = "file:$work/router.wasm"
backends = ["static"]
[[app]]
name = "fetch"
tenant = "bench"
source = "file:$work/fetch.wasm"
backends = ["static"]
[[route]]
host = "localhost"
app = "router"
[[route]]
host = "localhost"
path = "/fetch"
app = "fetch"
TOML
RUST_LOG=warn "$CARGO_TARGET_DIR/$bin_dir/outpost" serve --config "$work/node.toml" 2>"$work/outpost.log" &
for url in http://127.0.0.1:19080/small.txt http://127.0.0.1:19082/small.txt http://localhost:19081/small.txt; do
  for _ in $(seq 100); do curl -sf "$url" >/dev/null && break; sleep 0.1; done
  curl -sf "$url" >/dev/null || { echo "not up: $url"; cat "$work/outpost.log"; exit 1; }
done
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "outpost: $(git rev-parse --short HEAD 2>/dev/null || echo unknown) ($PROFILE build), ${DURATION}s per run, $CONNS connections"
run() { # name url
  local out; out=$(timeout $((DURATION + 30)) wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency -H "Host: localhost" "$2")
  printf '%-34s %10s req/s  p50 %8s  p99 %8s\n' "$1" \
    "$(echo "$out" | awk '/^Requests\/sec/ {print $2}')" \
    "$(echo "$out" | awk '$1 == "50%" {print $2}')" \
    "$(echo "$out" | awk '$1 == "99%" {print $2}')"
}
run "origin direct (nginx static)" http://127.0.0.1:19080/small.txt
run "nginx proxy_pass -> origin" http://127.0.0.1:19082/small.txt
run "outpost pass-through -> origin" http://127.0.0.1:19081/small.txt
# Subrequests: per call inside one request (at most 32 per request), the best of 5 tries of
# each request, against the native client's mean over 1000 requests on a warm connection.
ms() { # repeat -> seconds for one request of the fetch app (fails unless 200)
  local best=999 t code
  for _ in 1 2 3 4 5; do
    read -r code t < <(curl -s -o /dev/null -w '%{http_code} %{time_total}\n' -H 'Host: localhost' \
      "http://127.0.0.1:19081/fetch?backend=static&path=/small.txt&repeat=$1")
    [ "$code" = 200 ] || { echo "fetch answered $code" >&2; exit 1; }
    best=$(echo "if ($t < $best) $t else $best" | bc -l)
  done
  echo "$best"
}
CALLS=$(( CALLS > 32 ? 32 : CALLS ))
for round in 1 2 3; do
  one=$(ms 1); many=$(ms "$CALLS")
  per=$(echo "($many - $one) * 1000000 / ($CALLS - 1)" | bc -l)
  native=$("$CARGO_TARGET_DIR/$bin_dir/native-fetch" http://127.0.0.1:19080/small.txt 1000)
  printf 'round %s: subrequest %.1f us per call; native hyper-util client %s us per call\n' "$round" "$per" "$native"
done
