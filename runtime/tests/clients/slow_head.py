#!/usr/bin/env python3
"""A client on a slow link sending a request head far past the server's cap, as HTTP/1.1
clients do: it sends the whole head before it reads, and gives up if a send fails.

    slow_head.py PORT HOST KIB [CA.pem]

Sends `GET / HTTP/1.1`, Host, then KIB header lines of 1 KiB each, 16 at a time with 5 ms
between (TLS, verified with CA.pem, when given), then reads the response. Prints the response's
status line, or "send failed: ERROR" if the connection broke while the head was being sent
(a server that closes with unread input resets it, and curl reports exit 55 there).
"""
import socket
import ssl
import sys
import time

port, host, kib = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
s = socket.create_connection(("127.0.0.1", port))
if len(sys.argv) > 4:
    ctx = ssl.create_default_context(cafile=sys.argv[4])
    ctx.set_alpn_protocols(["http/1.1"])
    s = ctx.wrap_socket(s, server_hostname=host)
line = b"X-Big: " + b"a" * (1024 - 9) + b"\r\n"
try:
    s.sendall(b"GET / HTTP/1.1\r\nHost: " + host.encode() + b"\r\n")
    for i in range(0, kib, 16):
        s.sendall(line * min(16, kib - i))
        time.sleep(0.005)
    s.sendall(b"\r\n")
except OSError as e:
    print("send failed: %r" % e)
    sys.exit(0)
s.settimeout(10)
got = b""
try:
    while b"\r\n" not in got:
        chunk = s.recv(4096)
        if not chunk:
            break
        got += chunk
except OSError as e:
    print("recv failed: %r after %r" % (e, got))
    sys.exit(0)
print(got.split(b"\r\n")[0].decode(errors="replace"))
