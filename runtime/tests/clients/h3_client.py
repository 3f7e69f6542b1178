#!/usr/bin/env python3
"""An independent HTTP/3 client for outpost's tests, built on aioquic.

    h3_client.py --connect 127.0.0.1:PORT --url https://HOST/PATH --cacert CA.pem
                 [--method POST] [--data-file FILE] [--out FILE] [--repeat N --parallel P]
                 [--rounds R] [--stream-body] [--header "NAME: VALUE"]... [--header-file FILE]
                 [--idle-wait SECONDS] [--beside URL]

Prints one JSON line: {"status": N, "headers": [[name, value], ...], "bytes": N}; the body
goes to --out. With --repeat, sends N requests over the one connection, P at a time, and also
prints "statuses": {"200": count, ...} (status, headers and body are the last request's).
With --rounds R (R > 1), sends R such batches on the one connection: after each it prints
{"round": K, "statuses": {...}} and waits for a line on stdin before going on, so a test can
look at the server while the connection is open.
--header-file adds a header per line of FILE ("NAME: VALUE"), for heads too large for an
argument. With --idle-wait, the connection then stays open, sending nothing, until it ends
(the server's idle timeout, which the client adopts when it is the shorter) or SECONDS pass:
"closed_after" in the JSON is the time that took (null if it did not end).
When the server sent GOAWAY, "goaway" in the JSON is its id and "highest_stream" the highest
stream id this client opened.
With --beside URL (same host), one GET to URL is sent first on the same connection and the
other requests go beside it: "beside" in the JSON gives its status and "after", the seconds
from the start until it ended, and "others_after" those until the last other request ended.
Exits non-zero if a request fails or the certificate does not verify.
"""
import argparse
import asyncio
import json
import sys
import time
from urllib.parse import urlparse

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.buffer import Buffer, BufferReadError
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import StreamDataReceived


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.http = H3Connection(self._quic)
        self.done = {}
        self.events = {}
        self.extra_headers = []
        # The id in the server's GOAWAY, if it sent one: aioquic drops the frame's payload, so
        # the server's unidirectional streams are read here too (`_watch_control`).
        self.goaway = None
        self.highest_stream = None
        self.uni = {}

    def _watch_control(self, stream_id, data):
        seen = self.uni.setdefault(stream_id, bytearray())
        seen += data
        buf = Buffer(data=bytes(seen))
        try:
            if buf.pull_uint_var() != 0x0:  # not the control stream
                return
            while True:
                frame_type, length = buf.pull_uint_var(), buf.pull_uint_var()
                payload = buf.pull_bytes(length)
                if frame_type == 0x7:  # GOAWAY
                    self.goaway = Buffer(data=payload).pull_uint_var()
        except BufferReadError:
            pass  # the rest has not arrived yet

    def quic_event_received(self, event):
        if isinstance(event, StreamDataReceived) and event.stream_id % 4 == 3:
            self._watch_control(event.stream_id, event.data)
        for ev in self.http.handle_event(event):
            if isinstance(ev, (HeadersReceived, DataReceived)):
                self.events.setdefault(ev.stream_id, []).append(ev)
                if ev.stream_ended and ev.stream_id in self.done:
                    self.done.pop(ev.stream_id).set_result(self.events.pop(ev.stream_id))

    async def request(self, method, authority, path, body, streamed=False):
        sid = self._quic.get_next_available_stream_id()
        self.highest_stream = sid if self.highest_stream is None else max(self.highest_stream, sid)
        headers = [
            (b":method", method.encode()),
            (b":scheme", b"https"),
            (b":authority", authority.encode()),
            (b":path", path.encode()),
            (b"user-agent", b"aioquic-h3-test"),
        ] + self.extra_headers
        if body and not streamed:
            headers.append((b"content-length", str(len(body)).encode()))
        waiter = self._loop.create_future()
        self.done[sid] = waiter
        self.http.send_headers(sid, headers, end_stream=not body)
        if body and streamed:
            # No length declared; the body goes in 512-byte DATA frames, a turn apart.
            for at in range(0, len(body), 512):
                last = at + 512 >= len(body)
                try:
                    self.http.send_data(sid, body[at : at + 512], end_stream=last)
                except Exception:
                    # The server stopped reading (it refused the body): its answer follows.
                    break
                self.transmit()
                await asyncio.sleep(0)
        elif body:
            self.http.send_data(sid, body, end_stream=True)
        self.transmit()
        return await waiter


async def main(args):
    url = urlparse(args.url)
    host, port = args.connect.rsplit(":", 1)
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name=url.hostname)
    config.load_verify_locations(args.cacert)
    body = open(args.data_file, "rb").read() if args.data_file else b""
    path = url.path or "/"
    if url.query:
        path += "?" + url.query
    statuses = {}
    async with connect(host.strip("[]"), int(port), configuration=config, create_protocol=Client) as client:
        if args.header_file:
            with open(args.header_file) as f:
                args.header += [line.rstrip("\r\n") for line in f if line.strip()]
        for header in args.header:
            name, value = header.split(":", 1)
            client.extra_headers.append((name.strip().lower().encode(), value.strip().encode()))
        left = args.repeat

        async def one():
            nonlocal left
            events = []
            while left > 0:
                left -= 1
                events = await asyncio.wait_for(client.request(args.method, url.netloc, path, body, args.stream_body), args.timeout)
                code = next((v.decode() for ev in events if isinstance(ev, HeadersReceived) for k, v in ev.headers if k == b":status"), "none")
                statuses[code] = statuses.get(code, 0) + 1
            return events

        started = time.monotonic()
        beside = None
        if args.beside:
            other = urlparse(args.beside)
            other_path = (other.path or "/") + ("?" + other.query if other.query else "")

            async def timed():
                events = await asyncio.wait_for(client.request("GET", other.netloc, other_path, b""), args.timeout)
                code = next((int(v) for ev in events if isinstance(ev, HeadersReceived) for k, v in ev.headers if k == b":status"), 0)
                return {"status": code, "after": round(time.monotonic() - started, 3)}

            beside = asyncio.ensure_future(timed())
            await asyncio.sleep(0.05)  # its request is on the wire before the others
        for batch in range(1, max(1, args.rounds) + 1):
            left = args.repeat
            results = await asyncio.gather(*(one() for _ in range(max(1, args.parallel))))
            others_after = round(time.monotonic() - started, 3)
            events = next((r for r in results if r), [])
            if args.rounds > 1:
                print(json.dumps({"round": batch, "statuses": statuses}), flush=True)
                statuses = {}
                line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
                if not line:
                    raise RuntimeError("stdin closed between rounds")
        if beside is not None:
            beside = await beside
        goaway, highest_stream = client.goaway, client.highest_stream
        closed_after = None
        if args.idle_wait:
            idle_from = time.monotonic()
            try:
                await asyncio.wait_for(client.wait_closed(), args.idle_wait)
                closed_after = float("%.2f" % (time.monotonic() - idle_from))
            except asyncio.TimeoutError:
                pass
    status, headers, data = 0, [], bytearray()
    for ev in events:
        if isinstance(ev, HeadersReceived):
            for name, value in ev.headers:
                if name == b":status":
                    status = int(value)
                else:
                    headers.append([name.decode(), value.decode()])
        elif isinstance(ev, DataReceived):
            data.extend(ev.data)
    if args.out:
        with open(args.out, "wb") as f:
            f.write(data)
    reply = {"status": status, "headers": headers, "bytes": len(data)}
    if args.repeat > 1:
        reply["statuses"] = statuses
    if args.idle_wait:
        reply["closed_after"] = closed_after
    if goaway is not None:
        reply["goaway"] = goaway
        reply["highest_stream"] = highest_stream
    if beside is not None:
        reply["beside"] = beside
        reply["others_after"] = others_after
    print(json.dumps(reply))


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--connect", required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--cacert", required=True)
    p.add_argument("--method", default="GET")
    p.add_argument("--data-file")
    p.add_argument("--out")
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--header", action="append", default=[], help="NAME: VALUE, sent on every request")
    p.add_argument("--header-file", help="a file of NAME: VALUE lines, sent on every request")
    p.add_argument("--idle-wait", type=float, default=0, help="then wait this long for the connection to end")
    p.add_argument("--stream-body", action="store_true", help="send the body without a content-length")
    p.add_argument("--beside", help="a URL on the same host, requested once beside the others")
    try:
        asyncio.run(main(p.parse_args()))
    except Exception as e:  # any failure is a failed request for the test
        print(f"h3_client: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
