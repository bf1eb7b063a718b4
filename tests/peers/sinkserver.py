#!/usr/bin/env python3
"""A TCP server that reads every byte its clients send and answers nothing, for infertap's hostile
input tests: what an attacker sends to a traced port is all read (so all traced), whatever it is.

Usage: sinkserver.py --port 0 --ready-file PATH (the port is written there once listening).
"""

from __future__ import annotations

import argparse
import socketserver


class Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while True:
            try:
                if not self.request.recv(1 << 20):
                    return
            except OSError:
                return


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 1024


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
