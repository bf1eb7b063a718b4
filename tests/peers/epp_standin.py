#!/usr/bin/env python3
"""A stand-in for the llm-d / Gateway API Inference Extension endpoint picker (EPP), for infertap's
integration tests: a real gRPC server (grpcio) of Envoy's ext_proc v3 `Process` stream, plaintext.

Per stream (one HTTP request through the gateway), as the EPP does: it reads the request headers
(answering them with an empty HeadersResponse when a body follows), reads the request body, then
"schedules" (sleeps --decision-delay-ms) and answers the body with a header mutation
`x-gateway-destination-endpoint: <endpoint>` plus the same in dynamic metadata `envoy.lb`.
Endpoints are taken round-robin from --endpoint. Like llm-d's EPP, which counts the tokens of the
response, its answer to the request headers asks Envoy for the response phase through
`mode_override` (response headers SEND, response body STREAMED; `--no-response-phase`: SKIP/NONE);
response headers and body chunks are answered with empty responses.

Test hook (not part of the EPP): request header `x-standin-reject: 429|503` -> an ImmediateResponse
with that status (429: shed, 503: no endpoint), as the EPP sends when it sheds or has no endpoint.

Also a plain gRPC streaming method for the agent's gRPC spans (not part of the EPP):
`/infertap.test.Echo/Chat` (raw bytes, bidirectional): for every request message it answers
--echo-replies messages, --echo-interval-ms apart, then ends with status UNAVAILABLE when a request
message is `fail`, else OK.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import threading
import time
from concurrent import futures

import grpc

from extproc_pb import core, http_status, mode_pb, pb, pb_grpc, struct_pb2


class Processor(pb_grpc.ExternalProcessorServicer):
    def __init__(self, endpoints: list[str], delay_s: float, response_phase: bool):
        self.endpoints = itertools.cycle(endpoints)
        self.lock = threading.Lock()
        self.delay_s = delay_s
        M = mode_pb.ProcessingMode
        self.mode = (
            M(response_header_mode=M.SEND, response_body_mode=M.STREAMED)
            if response_phase
            else M(response_header_mode=M.SKIP, response_body_mode=M.NONE)
        )

    def decide(self) -> "pb.ProcessingResponse":
        time.sleep(self.delay_s)
        with self.lock:
            ep = next(self.endpoints)
        mutation = pb.HeaderMutation(
            set_headers=[
                core.HeaderValueOption(header=core.HeaderValue(key="x-gateway-destination-endpoint", raw_value=ep.encode()))
            ]
        )
        md = struct_pb2.Struct()
        md.update({"envoy.lb": {"x-gateway-destination-endpoint": ep}})
        return pb.ProcessingResponse(
            request_body=pb.BodyResponse(response=pb.CommonResponse(header_mutation=mutation, clear_route_cache=True)),
            dynamic_metadata=md,
        )

    def Process(self, request_iterator, context):
        for req in request_iterator:
            kind = req.WhichOneof("request")
            if kind == "request_headers":
                headers = {
                    h.key: (h.raw_value.decode() if h.raw_value else h.value) for h in req.request_headers.headers.headers
                }
                reject = headers.get("x-standin-reject")
                if reject:
                    yield pb.ProcessingResponse(
                        immediate_response=pb.ImmediateResponse(
                            status=http_status.HttpStatus(code=int(reject)),
                            body=b"request shed by the stand-in",
                            details="standin_reject",
                        )
                    )
                    return
                if req.request_headers.end_of_stream:
                    resp = self.decide()
                    yield pb.ProcessingResponse(
                        request_headers=pb.HeadersResponse(response=resp.request_body.response),
                        dynamic_metadata=resp.dynamic_metadata,
                        mode_override=self.mode,
                    )
                else:
                    yield pb.ProcessingResponse(request_headers=pb.HeadersResponse(), mode_override=self.mode)
            elif kind == "request_body":
                if req.request_body.end_of_stream:
                    yield self.decide()
            elif kind == "response_headers":
                yield pb.ProcessingResponse(response_headers=pb.HeadersResponse())
            elif kind == "response_body":
                yield pb.ProcessingResponse(response_body=pb.BodyResponse())


def echo_handler(replies: int, interval_s: float):
    def chat(request_iterator, context):
        # Response headers at once, on their own (then each message in its own write).
        context.send_initial_metadata(())
        fail = False
        for msg in request_iterator:
            fail = fail or msg == b"fail"
            for i in range(replies):
                time.sleep(interval_s)
                yield b"reply-%d" % i
        if fail:
            context.abort(grpc.StatusCode.UNAVAILABLE, "stand-in failure")

    ident = lambda b: b  # noqa: E731 (raw bytes, no protobuf)
    return grpc.method_handlers_generic_handler(
        "infertap.test.Echo",
        {"Chat": grpc.stream_stream_rpc_method_handler(chat, request_deserializer=ident, response_serializer=ident)},
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9002, help="the EPP's ext_proc port (0: any free port)")
    ap.add_argument("--endpoint", action="append", required=True, help="ip:port of a model server (repeatable)")
    ap.add_argument("--decision-delay-ms", type=float, default=20.0, help="simulated scheduling time")
    ap.add_argument("--no-response-phase", action="store_true", help="mode_override skips the response phase")
    ap.add_argument("--ready-file", help="written (with the port) once the server listens")
    ap.add_argument("--echo-replies", type=int, default=3)
    ap.add_argument("--echo-interval-ms", type=float, default=50.0)
    args = ap.parse_args()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb_grpc.add_ExternalProcessorServicer_to_server(Processor(args.endpoint, args.decision_delay_ms / 1000, not args.no_response_phase), server)
    server.add_generic_rpc_handlers((echo_handler(args.echo_replies, args.echo_interval_ms / 1000),))
    port = server.add_insecure_port(f"{args.host}:{args.port}")
    server.start()
    if args.ready_file:
        tmp = args.ready_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(port))
        os.replace(tmp, args.ready_file)
    print(f"epp stand-in listening on {args.host}:{port}", file=sys.stderr, flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
