#!/usr/bin/env python3
"""A stand-in for Envoy in front of an endpoint picker, for infertap's integration tests.

For each request it does what Envoy's ext_proc filter does with the EPP (a real gRPC client, grpcio,
plaintext, one channel = one HTTP/2 connection, one `Process` stream per request): it sends
`request_headers` (the client's headers: `:method`, `:path`, `x-request-id`, optionally
`traceparent`, the routing headers, plus an `authorization` secret the agent must never copy), waits
for the answer, sends the request body (an OpenAI chat request whose prompt holds a canary) and waits
for the decision: the `x-gateway-destination-endpoint` header mutation, or an immediate response.
Routed requests are then sent as HTTP/1.1 to the chosen endpoint (the vLLM stand-in) with the same
`x-request-id` (and `traceparent`), as Envoy forwards them.

Prints one JSON line per request: request_id, traceparent, endpoint, immediate_status,
upstream_status, and monotonic times.

`--record FILE` relays the gRPC connection through a local TCP relay that saves both directions'
bytes, chunk by chunk (`C`/`S`, u32 big-endian length, bytes), for the agent's fixture tests.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import secrets
import socket
import struct
import sys
import threading
import time

import grpc

from extproc_pb import core, pb, pb_grpc


def relay(target: tuple[str, int], record_path: str) -> int:
    """Listens on a free port; relays one connection to `target`, recording chunks."""
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    out = open(record_path, "wb")
    lock = threading.Lock()

    def pump(src: socket.socket, dst: socket.socket, tag: bytes) -> None:
        while True:
            try:
                b = src.recv(65536)
            except OSError:
                b = b""
            if not b:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            with lock:
                out.write(tag + struct.pack(">I", len(b)) + b)
                out.flush()
            dst.sendall(b)

    def serve() -> None:
        c, _ = ls.accept()
        u = socket.create_connection(target)
        threading.Thread(target=pump, args=(c, u, b"C"), daemon=True).start()
        threading.Thread(target=pump, args=(u, c, b"S"), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return ls.getsockname()[1]


def header(k: str, v: str) -> "core.HeaderValue":
    return core.HeaderValue(key=k, raw_value=v.encode())


def one_request(stub, args, n: int) -> dict:
    rid = f"{args.id_prefix}-{n}-{secrets.token_hex(4)}"
    rec: dict = {"request_id": rid}
    tp = None
    if args.traceparent:
        tp = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
        rec["traceparent"] = tp
    body = json.dumps(
        {
            "messages": [{"role": "user", "content": f"Please repeat: {args.canary} alpha beta"}],
            "model": args.model,
            "max_tokens": 4,
        }
    ).encode()
    hs = [
        header(":method", "POST"),
        header(":path", "/v1/chat/completions"),
        header(":authority", "gateway.example"),
        header("content-type", "application/json"),
        header("x-request-id", rid),
        header("authorization", f"Bearer {args.secret}"),
        header("x-gateway-inference-objective", args.objective),
        header("x-gateway-inference-fairness-id", args.fairness_id),
    ]
    if tp:
        hs.append(header("traceparent", tp))
    if args.reject and n >= args.reject_from:
        hs.append(header("x-standin-reject", args.reject))

    sendq: queue.Queue = queue.Queue()

    def requests():
        while True:
            m = sendq.get()
            if m is None:
                return
            yield m

    sendq.put(pb.ProcessingRequest(request_headers=pb.HttpHeaders(headers=core.HeaderMap(headers=hs), end_of_stream=False)))
    rec["t_headers"] = time.monotonic()
    responses = stub.Process(requests())
    endpoint = None
    try:
        first = next(responses)
        kind = first.WhichOneof("response")
        if kind == "immediate_response":
            rec["immediate_status"] = first.immediate_response.status.code
        else:
            # Envoy streams the body in chunks: two here, so a message boundary falls mid-JSON.
            half = len(body) // 2
            sendq.put(pb.ProcessingRequest(request_body=pb.HttpBody(body=body[:half], end_of_stream=False)))
            sendq.put(pb.ProcessingRequest(request_body=pb.HttpBody(body=body[half:], end_of_stream=True)))
            decision = next(responses)
            rec["t_decision"] = time.monotonic()
            for opt in decision.request_body.response.header_mutation.set_headers:
                if opt.header.key == "x-gateway-destination-endpoint":
                    endpoint = opt.header.raw_value.decode() or opt.header.value
            rec["endpoint"] = endpoint
    finally:
        sendq.put(None)
        for _ in responses:  # the server's end of the stream (trailers)
            pass
    if endpoint:
        host, port = endpoint.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        h = {"Content-Type": "application/json", "X-Request-Id": rid, "Authorization": f"Bearer {args.secret}"}
        if tp:
            h["traceparent"] = tp
        conn.request("POST", "/v1/chat/completions", body=body, headers=h)
        resp = conn.getresponse()
        resp.read()
        rec["upstream_status"] = resp.status
        conn.close()
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epp", required=True, help="host:port of the EPP's ext_proc server")
    ap.add_argument("--count", type=int, default=1)
    ap.add_argument("--model", default="standin-model")
    ap.add_argument("--objective", default="critical-chat")
    ap.add_argument("--fairness-id", default="tenant-a")
    ap.add_argument("--traceparent", action="store_true", help="send a fresh traceparent per request")
    ap.add_argument("--reject", help="ask the EPP stand-in to reject (429 or 503)")
    ap.add_argument("--reject-from", type=int, default=0, help="only requests from this index on are rejected")
    ap.add_argument("--canary", default="canary-prompt-text")
    ap.add_argument("--secret", default="secret-token")
    ap.add_argument("--id-prefix", default="req")
    ap.add_argument("--record", help="save the gRPC connection's bytes to this file")
    args = ap.parse_args()

    target = args.epp
    if args.record:
        host, port = args.epp.rsplit(":", 1)
        target = f"127.0.0.1:{relay((host, int(port)), args.record)}"
    channel = grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)])
    grpc.channel_ready_future(channel).result(timeout=10)
    stub = pb_grpc.ExternalProcessorStub(channel)
    for n in range(args.count):
        print(json.dumps(one_request(stub, args, n)), flush=True)
    channel.close()
    time.sleep(0.2)


if __name__ == "__main__":
    main()
