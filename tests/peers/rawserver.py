#!/usr/bin/env python3
"""A raw HTTP/1.1 server that answers with adversarial responses, for infertap's fault tests.

Every connection carries one request (read up to the end of its head and its Content-Length body);
the response depends on the path (or on an `x-raw-case` header naming one of the paths below, so
that the request itself can be a normal chat completion), and the connection is closed after it:

* `/sse-unterminated`: a streaming chat response whose first event is normal and whose second event
  never ends (`data: xxxx…`, 2 MiB without a blank line) before the body ends.
* `/chunk-extensions`: a chunked JSON response whose chunk-size line carries 1 MiB of extensions.
* `/deep-json`: a JSON body nested 100,000 levels deep.
* `/many-headers`: 20,000 response header fields.
* anything else: `200` with a small JSON body.

Usage: rawserver.py --port 0 --ready-file PATH (the port is written there once listening).
"""

from __future__ import annotations

import argparse
import socket
import socketserver

FIRST = b'{"id":"chatcmpl-raw","object":"chat.completion.chunk","model":"raw-model","choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}]}'


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        s: socket.socket = self.request
        buf = b""
        while b"\r\n\r\n" not in buf:
            b = s.recv(65536)
            if not b:
                return
            buf += b
        head, _, body = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        path = lines[0].split(" ")[1] if len(lines[0].split(" ")) > 1 else "/"
        length = 0
        for line in lines[1:]:
            k, _, v = line.partition(":")
            if k.strip().lower() == "content-length":
                length = int(v.strip())
            if k.strip().lower() == "x-raw-case":
                path = v.strip()
        while len(body) < length:
            b = s.recv(65536)
            if not b:
                break
            body += b
        try:
            if path == "/sse-unterminated":
                # Written piece by piece, as a server streams, so that every byte is traced.
                s.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n")
                s.sendall(chunk(b"data: " + FIRST + b"\n\n"))
                s.sendall(chunk(b"data: "))
                for _ in range(256):
                    s.sendall(chunk(b"x" * 8192))
                s.sendall(b"0\r\n\r\n")
            else:
                s.sendall(self.response(path))
        except OSError:
            pass

    def response(self, path: str) -> bytes:
        if path == "/chunk-extensions":
            body = b'{"id":"cmpl-raw","model":"raw-model"}'
            ext = b";ext=value" * (1 << 17)
            return (
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
                + b"%x%s\r\n%s\r\n0\r\n\r\n" % (len(body), ext, body)
            )
        if path == "/deep-json":
            body = b"[" * 100_000 + b"]" * 100_000
            return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
        if path == "/many-headers":
            fields = b"".join(b"x-field-%d: v\r\n" % i for i in range(20_000))
            return b"HTTP/1.1 200 OK\r\n" + fields + b"content-length: 2\r\nconnection: close\r\n\r\n{}"
        return b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}'


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--ready-file", required=True)
    args = ap.parse_args()
    with Server(("127.0.0.1", args.port), Handler) as srv:
        with open(args.ready_file, "w") as f:
            f.write(str(srv.server_address[1]))
        srv.serve_forever()


if __name__ == "__main__":
    main()
