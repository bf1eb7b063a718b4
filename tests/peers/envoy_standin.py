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

The response phase: when the EPP's answer to the request headers carries a `mode_override` asking
for the response headers (`response_header_mode: SEND`, and `response_body_mode` other than NONE for
the body), the stream stays open while the request goes upstream, and — as Envoy's ext_proc filter
with `allow_mode_override` does — the upstream's response headers (`:status`, `content-type`, and a
`set-cookie` secret the agent must never copy) are sent as `response_headers`, then every body chunk
as it arrives as `response_body` (STREAMED: each answered before the next), the last one empty with
`end_of_stream`. `--deny-mode-override` ignores the override (the phase is not sent, the stream ends
after the decision). `--stream` asks for a streamed chat (`stream_options.include_usage`);
`--cached-tokens K` asks the vLLM stand-in to report K cached prompt tokens.

Prints one JSON line per request: request_id, traceparent, endpoint, immediate_status,
upstream_status, response_phase, and monotonic times.

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

from extproc_pb import core, mode_pb, pb, pb_grpc


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
    req = {
        "messages": [{"role": "user", "content": f"Please repeat: {args.canary} alpha beta"}],
        "model": args.model,
        "max_tokens": 4,
    }
    if args.stream:
        req.update(stream=True, stream_options={"include_usage": True})
    body = json.dumps(req).encode()
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
    response_phase = False
    try:
        first = next(responses)
        kind = first.WhichOneof("response")
        if first.HasField("mode_override") and not args.deny_mode_override:
            mo = first.mode_override
            response_phase = mo.response_header_mode == mode_pb.ProcessingMode.SEND
            rec["response_body_mode"] = mo.response_body_mode
        if kind == "immediate_response":
            rec["immediate_status"] = first.immediate_response.status.code
            response_phase = False
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
        if endpoint and response_phase:
            rec["response_phase"] = True
            upstream(args, rec, endpoint, body, rid, tp, sendq, responses, rec.get("response_body_mode", 0))
    finally:
        sendq.put(None)
        for _ in responses:  # the server's end of the stream (trailers)
            pass
    if endpoint and not response_phase:
        upstream(args, rec, endpoint, body, rid, tp, None, None, 0)
    return rec


def upstream(args, rec: dict, endpoint: str, body: bytes, rid: str, tp, sendq, responses, body_mode: int) -> None:
    """The routed request to the chosen endpoint; with `sendq`, its response phase to the EPP."""
    host, port = endpoint.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    h = {"Content-Type": "application/json", "X-Request-Id": rid, "Authorization": f"Bearer {args.secret}"}
    if tp:
        h["traceparent"] = tp
    if args.cached_tokens:
        h["x-standin-cached-tokens"] = str(args.cached_tokens)
    conn.request("POST", "/v1/chat/completions", body=body, headers=h)
    resp = conn.getresponse()
    rec["upstream_status"] = resp.status

    def exchange(msg) -> None:
        sendq.put(msg)
        next(responses)  # the EPP's answer (the filter waits for it)

    if sendq is not None:
        hs = [header(":status", str(resp.status)), header("set-cookie", f"session={args.secret}")]
        ct = resp.getheader("content-type")
        if ct:
            hs.append(header("content-type", ct))
        rec["t_response_headers"] = time.monotonic()
        exchange(pb.ProcessingRequest(response_headers=pb.HttpHeaders(headers=core.HeaderMap(headers=hs), end_of_stream=False)))
    chunks = 0
    while True:
        data = resp.read1(65536)
        if not data:
            break
        chunks += 1
        if sendq is not None and body_mode != mode_pb.ProcessingMode.NONE:
            rec.setdefault("t_first_body", time.monotonic())
            exchange(pb.ProcessingRequest(response_body=pb.HttpBody(body=data, end_of_stream=False)))
    if sendq is not None and body_mode != mode_pb.ProcessingMode.NONE:
        exchange(pb.ProcessingRequest(response_body=pb.HttpBody(body=b"", end_of_stream=True)))
    rec["t_response_end"] = time.monotonic()
    rec["response_chunks"] = chunks
    conn.close()


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
    ap.add_argument("--stream", action="store_true", help="a streamed chat request (with include_usage)")
    ap.add_argument("--cached-tokens", type=int, default=0, help="cached prompt tokens the vLLM stand-in reports")
    ap.add_argument(
        "--deny-mode-override",
        action="store_true",
        help="ignore the EPP's mode_override (Envoy's allow_mode_override: false): no response phase",
    )
    ap.add_argument(
        "--echo",
        help="instead: one call of the plain streaming method /infertap.test.Echo/Chat with these comma-separated messages",
    )
    args = ap.parse_args()

    target = args.epp
    if args.record:
        host, port = args.epp.rsplit(":", 1)
        target = f"127.0.0.1:{relay((host, int(port)), args.record)}"
    channel = grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)])
    grpc.channel_ready_future(channel).result(timeout=10)
    if args.echo is not None:
        call = channel.stream_stream("/infertap.test.Echo/Chat", request_serializer=lambda b: b, response_deserializer=lambda b: b)
        rec: dict = {"t_start": time.monotonic()}
        replies = 0
        try:
            for _ in call(iter([m.encode() for m in args.echo.split(",")])):
                replies += 1
            rec["code"] = "OK"
        except grpc.RpcError as e:
            rec["code"] = e.code().name
        rec.update(replies=replies, t_end=time.monotonic())
        print(json.dumps(rec), flush=True)
        channel.close()
        return
    stub = pb_grpc.ExternalProcessorStub(channel)
    for n in range(args.count):
        print(json.dumps(one_request(stub, args, n)), flush=True)
    channel.close()
    time.sleep(0.2)


if __name__ == "__main__":
    main()
