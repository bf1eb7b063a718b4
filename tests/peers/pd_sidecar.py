"""A stand-in for llm-d's routing sidecar in prefill/decode disaggregation: one request made as the
sidecar makes it, in two legs.

1. The prefill leg, to the prefill server: a completion with `max_tokens: 1` and
   `kv_transfer_params: {"do_remote_decode": true, ...}` (vLLM's NixlConnector schema); its response
   carries the `kv_transfer_params` the decode leg needs.
2. After `--gap-ms` (the KV-cache transfer the sidecar waits for), the decode leg, to the decode
   server: the original request with the prefill's `kv_transfer_params` (`do_remote_prefill: true`).

Both legs carry the same `x-request-id` and, unless `--no-traceparent`, the same `traceparent`, as
the sidecar forwards them. The gap the sidecar made is measured here, between reading the last byte
of the prefill response and sending the first byte of the decode request (`time.monotonic_ns`), on
connections opened (and used once) beforehand, so no connect falls inside it.

Prints one JSON line: `trace_id` (null with `--no-traceparent`), `request_id`, `gap_s`, both
statuses, and whether the prefill answered with transfer parameters.
"""

from __future__ import annotations

import argparse
import json
import secrets
import socket
import sys
import time


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def request_bytes(path: str, body: dict, headers: dict[str, str]) -> bytes:
    data = json.dumps(body).encode()
    head = f"POST {path} HTTP/1.1\r\nhost: standin\r\ncontent-type: application/json\r\ncontent-length: {len(data)}\r\n"
    for k, v in headers.items():
        head += f"{k}: {v}\r\n"
    return head.encode() + b"\r\n" + data


def read_response(s: socket.socket) -> tuple[int, bytes]:
    """One response with a Content-Length (uvicorn's JSON answers): status and body."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise RuntimeError(f"connection closed in the head: {buf!r}")
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        k, _, v = line.partition(":")
        if k.strip().lower() == "content-length":
            length = int(v.strip())
    while len(body) < length:
        chunk = s.recv(65536)
        if not chunk:
            raise RuntimeError("connection closed in the body")
        body += chunk
    return status, body[:length]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--prefill-port", type=int, required=True)
    ap.add_argument("--decode-port", type=int, required=True)
    ap.add_argument("--gap-ms", type=float, default=100.0, help="the KV-transfer wait between the legs")
    ap.add_argument("--model", default="standin-model")
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--no-traceparent", action="store_true", help="correlate by x-request-id alone")
    args = ap.parse_args(argv)

    prefill = connect(args.prefill_port)
    decode = connect(args.decode_port)
    # Warm both connections (the servers' keep-alive), so that the decode leg's first byte is read
    # by a server already waiting on this connection.
    for s in (prefill, decode):
        s.sendall(b"GET /health HTTP/1.1\r\nhost: standin\r\n\r\n")
        status, _ = read_response(s)
        assert status == 200, status

    request_id = secrets.token_hex(16)
    trace_id = None if args.no_traceparent else secrets.token_hex(16)
    headers = {"x-request-id": request_id}
    if trace_id is not None:
        headers["traceparent"] = f"00-{trace_id}-{secrets.token_hex(8)}-01"
    original = {"model": args.model, "prompt": "one two three four", "max_tokens": args.max_tokens}

    leg1 = dict(original)
    leg1["max_tokens"] = 1
    leg1["stream"] = False
    leg1["kv_transfer_params"] = {
        "do_remote_decode": True,
        "do_remote_prefill": False,
        "remote_engine_id": None,
        "remote_block_ids": None,
        "remote_host": None,
        "remote_port": None,
    }
    prefill.sendall(request_bytes("/v1/completions", leg1, headers))
    prefill_status, body = read_response(prefill)
    read_end = time.monotonic_ns()

    params = json.loads(body).get("kv_transfer_params")
    leg2 = dict(original)
    leg2["kv_transfer_params"] = dict(params or {}, do_remote_prefill=True, do_remote_decode=False)
    data = request_bytes("/v1/completions", leg2, headers)
    time.sleep(max(0.0, args.gap_ms / 1000.0 - (time.monotonic_ns() - read_end) / 1e9))
    sent = time.monotonic_ns()
    decode.sendall(data)
    decode_status, _ = read_response(decode)
    prefill.close()
    decode.close()

    print(
        json.dumps(
            {
                "trace_id": trace_id,
                "request_id": request_id,
                "gap_s": (sent - read_end) / 1e9,
                "prefill_status": prefill_status,
                "decode_status": decode_status,
                "prefill_returned_params": params is not None,
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
