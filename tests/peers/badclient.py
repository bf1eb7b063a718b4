#!/usr/bin/env python3
"""Sends bad or unusual bytes to a port on 127.0.0.1, for infertap's parser-robustness tests.

Each case writes one JSON line (what was sent, what came back, how the connection ended, and whether
the server still answers GET /health on a fresh connection afterwards). Exit status 0 unless the
server stopped answering /health.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import socket
import ssl
import struct
import sys
import time
import uuid
from typing import Any

HOST = "127.0.0.1"


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    s = socket.create_connection((HOST, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_all(s: socket.socket, limit: int = 1 << 20, timeout: float = 2.0) -> tuple[bytes, str]:
    """Reads until EOF, reset, timeout or limit. Returns (bytes, how it ended)."""
    s.settimeout(timeout)
    buf = bytearray()
    while len(buf) < limit:
        try:
            b = s.recv(65536)
        except socket.timeout:
            return bytes(buf), "timeout"
        except ConnectionResetError:
            return bytes(buf), "reset"
        if not b:
            return bytes(buf), "eof"
        buf += b
    return bytes(buf), "limit"


def abort(s: socket.socket) -> None:
    """Close with RST (SO_LINGER 0) rather than FIN."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def head(b: bytes, n: int = 160) -> str:
    return b[:n].decode("latin-1")


def health(port: int) -> bool:
    try:
        with connect(port, timeout=3.0) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            data, _ = read_all(s, timeout=3.0)
        return data.startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def tls_client_hello() -> bytes:
    """A real TLS ClientHello, as Python's ssl module would send it."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # empty SETTINGS frame, stream 0


def chat_request(canary: str, max_tokens: int = 32) -> bytes:
    body = json.dumps(
        {
            "messages": [{"role": "user", "content": f"Please repeat: {canary} alpha beta gamma"}],
            "model": "standin-model",
            "stream": True,
            "max_tokens": max_tokens,
            "stream_options": {"include_usage": True},
        }
    ).encode()
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\n"
        b"Host: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\n"
        b"Accept: text/event-stream\r\n"
        b"X-Request-Id: " + uuid.uuid4().hex.encode() + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


def read_sse_events(s: socket.socket, want: int, timeout: float = 5.0) -> tuple[bytes, int]:
    """Reads raw bytes until `want` complete SSE events (b'\\n\\n' after the header block) arrived."""
    s.settimeout(timeout)
    buf = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        b = s.recv(65536)
        if not b:
            break
        buf += b
        hdr_end = buf.find(b"\r\n\r\n")
        if hdr_end >= 0 and buf[hdr_end + 4 :].count(b"\n\n") >= want:
            break
    hdr_end = buf.find(b"\r\n\r\n")
    events = buf[hdr_end + 4 :].count(b"\n\n") if hdr_end >= 0 else 0
    return bytes(buf), events


def run_case(case: str, port: int, args: argparse.Namespace) -> dict[str, Any]:
    rec: dict[str, Any] = {"case": case, "port": port}
    t0 = time.monotonic()
    rng = random.Random(args.seed)
    s = connect(port)
    rec["local_port"] = s.getsockname()[1]
    try:
        if case == "garbage":
            payload = bytes(rng.getrandbits(8) for _ in range(4096))
            s.sendall(payload)
            data, end = read_all(s, timeout=1.0)
            s.close()
        elif case == "tls":
            payload = tls_client_hello()
            s.sendall(payload)
            data, end = read_all(s, timeout=1.0)
            s.close()
        elif case == "h2":
            payload = H2_PREFACE + H2_SETTINGS
            s.sendall(payload)
            data, end = read_all(s, timeout=1.0)
            s.close()
        elif case == "truncated":
            full = chat_request(args.canary)
            hdr = full[: full.index(b"\r\n\r\n")]
            payload = hdr[: len(hdr) // 2]
            s.sendall(payload)
            data, end = b"", "closed-by-client"
            s.close()
        elif case == "malformed":
            payload = b"GET /x HTTP/9.9 garbage\r\n\r\n"
            s.sendall(payload)
            data, end = read_all(s, timeout=1.0)
            s.close()
        elif case == "huge-headers":
            lines = []
            size = 0
            n = 0
            while size < 64 * 1024:
                line = f"X-Pad-{n:04d}: {'a' * 200}\r\n".encode()
                lines.append(line)
                size += len(line)
                n += 1
            payload = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"".join(lines) + b"\r\n"
            rec["header_block_bytes"] = size
            s.sendall(payload)
            data, end = read_all(s, timeout=1.0)
            s.close()
        elif case in ("disconnect-mid-stream", "disconnect-mid-stream-fin"):
            payload = chat_request(args.canary, max_tokens=64)
            s.sendall(payload)
            # the role chunk and the first token: the second event is the first content token
            data, events = read_sse_events(s, want=2)
            rec["events_read"] = events
            if case == "disconnect-mid-stream":
                abort(s)
                end = "closed-by-client-rst"
            else:
                s.close()
                end = "closed-by-client-fin"
        elif case == "dump-stream":
            payload = chat_request(args.canary, max_tokens=args.max_tokens)
            s.sendall(payload)
            data = bytearray()
            s.settimeout(5.0)
            while not data.endswith(b"0\r\n\r\n"):
                b = s.recv(65536)
                if not b:
                    break
                data += b
            data, end = bytes(data), "complete"
            rec["raw"] = data.decode("latin-1")
            s.close()
        else:
            raise SystemExit(f"unknown case {case}")
    except OSError as e:
        data, end = locals().get("data", b"") or b"", f"oserror: {e}"
        payload = locals().get("payload", b"")
        try:
            s.close()
        except OSError:
            pass
    rec["sent_bytes"] = len(payload)
    rec["sent_sha256"] = hashlib.sha256(payload).hexdigest()[:16]
    rec["sent_head"] = head(payload, 80)
    rec["received_bytes"] = len(data)
    rec["received_head"] = head(data)
    rec["status_line"] = head(data).split("\r\n", 1)[0] if data.startswith(b"HTTP/") else None
    rec["end"] = end
    rec["elapsed_ms"] = round((time.monotonic() - t0) * 1000, 1)
    time.sleep(0.05)
    rec["server_alive_after"] = health(port)
    return rec


CASES = ["garbage", "tls", "h2", "truncated", "malformed", "huge-headers", "disconnect-mid-stream"]
EXTRA = ["disconnect-mid-stream-fin", "dump-stream"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--case", required=True, choices=CASES + EXTRA + ["all"])
    ap.add_argument("--out", help="JSON lines (appended); stdout when absent")
    ap.add_argument("--canary", default="CANARY-" + uuid.uuid4().hex[:12])
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--max-tokens", type=int, default=4, help="dump-stream: tokens to ask for")
    args = ap.parse_args(argv)
    cases = CASES if args.case == "all" else [args.case]
    ok = True
    f = open(args.out, "a") if args.out else sys.stdout
    for c in cases:
        rec = run_case(c, args.port, args)
        ok = ok and rec["server_alive_after"]
        f.write(json.dumps(rec) + "\n")
        f.flush()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
