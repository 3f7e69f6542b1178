# Sourced by the load scripts: the bench node's configuration, one tenant serving the hello app
# at host localhost over HTTPS (self-signed) and, when HTTP3 is set, HTTP/3 on the same port.
# hello_node DATA_DIR HTTPS_PORT ADMIN_PORT MODULE [HTTP3=1]
hello_node() {
  cat <<TOML
[node]
data_dir = "$1"
[listen]
https = "127.0.0.1:$2"
$([ "${5:-}" = 1 ] && echo "http3 = \"127.0.0.1:$2\"")
admin = "127.0.0.1:$3"
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
source = "file:$4"
[[route]]
host = "localhost"
app = "hello"
TOML
}
