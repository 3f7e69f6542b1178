#!/usr/bin/env python3
"""An HTTP/2 client that keeps a connection busy with pings but sends no request after its
first, to see when the server closes it (outpost's tests: pings are not activity).

    h2_idle.py PORT CA.pem HOST [SECONDS]

Sends one GET / over TLS (ALPN h2), reads the response, then sends a PING every 0.25 s and
acknowledges the server's, until the server closes the connection (or sends GOAWAY) or
SECONDS (default 20) pass. Prints "closed T", "goaway T" or "open T": T is the seconds since
the response ended. Written on raw frames so nothing but the script decides what is sent.
"""
import socket
import ssl
import struct
import sys
import time

port, ca, host = int(sys.argv[1]), sys.argv[2], sys.argv[3]
limit = float(sys.argv[4]) if len(sys.argv) > 4 else 20.0
ctx = ssl.create_default_context(cafile=ca)
ctx.set_alpn_protocols(["h2"])
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname=host)
assert s.selected_alpn_protocol() == "h2", s.selected_alpn_protocol()


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


buf = b""


def read_frame():
    global buf
    while len(buf) < 9 or len(buf) < 9 + int.from_bytes(buf[:3], "big"):
        chunk = s.recv(65536)
        if not chunk:
            raise EOFError
        buf += chunk
    n = int.from_bytes(buf[:3], "big")
    kind, flags = buf[3], buf[4]
    stream = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
    payload, buf = buf[9 : 9 + n], buf[9 + n :]
    return kind, flags, stream, payload


def answer(kind, flags, payload):
    """Acknowledge SETTINGS and PING; True for GOAWAY."""
    if kind == 4 and not flags & 1:
        s.sendall(frame(4, 1, 0))
    elif kind == 6 and not flags & 1:
        s.sendall(frame(6, 1, 0, payload))
    return kind == 7


s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0))
# :method GET, :scheme https, :path / (static table), :authority HOST (literal, indexed name).
block = b"\x82\x87\x84\x01" + bytes([len(host)]) + host.encode()
s.sendall(frame(1, 0x5, 1, block))
while True:
    kind, flags, stream, payload = read_frame()
    answer(kind, flags, payload)
    if stream == 1 and kind in (0, 1) and flags & 1:
        break
served = time.time()
s.settimeout(0.25)
how = "open"
while time.time() - served < limit and how == "open":
    try:
        s.sendall(frame(6, 0, 0, b"outpost!"))
        while True:
            kind, flags, stream, payload = read_frame()
            if answer(kind, flags, payload):
                how = "goaway"
                break
    except socket.timeout:
        continue
    except (EOFError, ssl.SSLError, OSError):
        how = "closed"
print("%s %.2f" % (how, time.time() - served))
