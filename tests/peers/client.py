#!/usr/bin/env python3
"""A real LLM client for infertap's integration tests: the `openai` SDK, traced with the OpenTelemetry SDK.

Every request runs inside a CLIENT span of the OTel SDK; the W3C context (traceparent + tracestate
`infertap=test`) is injected with opentelemetry.propagate.inject and sent with `extra_headers`,
together with a fresh `x-request-id`. One JSON line per request goes to --out.

Exit status 0 when every request behaved as its scenario expects (errors included where expected).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import threading
import time
import uuid
from typing import Any, Iterator

import httpx2
import openai
from httpx2._content import ByteStream
from openai._streaming import ServerSentEvent, SSEDecoder
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import SpanKind, TraceState

SCENARIOS = [
    "chat-stream",
    "chat-stream-nousage",
    "chat",
    "completion-stream",
    "completion",
    "embeddings",
    "error-404",
    "error-400",
    "stream-error",
    "cancel",
]
# not in "mixed": the server drops the connection mid-stream (standin_abort_after)
EXTRA_SCENARIOS = ["server-abort"]

CANCEL_AFTER = 3  # content chunks read before the client closes the stream
FAIL_AFTER = 3  # standin_fail_after for stream-error / server-abort


class TraceStateSampler(Sampler):
    """Always samples and stamps `infertap=test` into the tracestate of every new trace."""

    def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None, trace_state=None):
        parent = trace.get_current_span(parent_context).get_span_context()
        ts = parent.trace_state if parent.is_valid else TraceState()
        if "infertap" not in ts:
            ts = ts.add("infertap", "test")
        return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes, ts)

    def get_description(self) -> str:
        return "TraceStateSampler"


EXPORTER = InMemorySpanExporter()
PROVIDER = TracerProvider(sampler=TraceStateSampler())
PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))
TRACER = PROVIDER.get_tracer("infertap-test-client")


class DrainingSSEDecoder(SSEDecoder):
    """Reads the rest of the body before handing the SDK its `[DONE]` (or an in-stream error) event.

    The stock SDK stops reading at `data: [DONE]` and closes the response; the chunked body's last
    chunk (`0\\r\\n\\r\\n`) usually comes in a later read, so httpx drops the connection instead of
    pooling it, and every streamed request opens a new TCP connection. Draining keeps the connection
    alive for the next request, as a keep-alive client (or a proxy) does.
    """

    def iter_bytes(self, iterator: Iterator[bytes]) -> Iterator[ServerSentEvent]:
        iterator = iter(iterator)
        for sse in super().iter_bytes(iterator):
            if sse.data.startswith("[DONE]") or sse.data.startswith('{"error"'):
                for _ in iterator:
                    pass
            yield sse


class OpenAI(openai.OpenAI):
    """openai.OpenAI with the draining decoder. Keeps the class name: the SDK's User-Agent is
    f"{class name}/Python {version}", so it still says OpenAI/Python 3.x."""

    def _make_sse_decoder(self) -> SSEDecoder:
        return DrainingSSEDecoder()


class PromptFirstTransport(httpx2.HTTPTransport):
    """--messages-first: moves messages/prompt/input to the front of the JSON body, as openai-python
    1.x and many other clients send it (3.x sends model and stream first), so that the model name
    comes after the whole prompt."""

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        if request.method == "POST" and request.headers.get("content-type", "").startswith("application/json"):
            body = json.loads(request.read())
            first = [k for k in ("messages", "prompt", "input") if k in body]
            if first:
                body = {**{k: body[k] for k in first}, **{k: v for k, v in body.items() if k not in first}}
                data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
                request.headers["Content-Length"] = str(len(data))
                request.stream = ByteStream(data)
                request._content = data
        return super().handle_request(request)


class Conn:
    """An openai.OpenAI client over its own httpx2 pool; remembers the local port of each response."""

    def __init__(self, base_url: str, keepalive_expiry: float | None, drain: bool = True, messages_first: bool = False):
        self.local = threading.local()
        limits = httpx2.Limits(max_connections=1, max_keepalive_connections=1, keepalive_expiry=keepalive_expiry)

        def on_response(resp: httpx2.Response) -> None:
            stream = resp.extensions.get("network_stream")
            addr = stream.get_extra_info("client_addr") if stream is not None else None
            self.local.port = addr[1] if addr else None

        kw: dict[str, Any] = {"limits": limits, "verify": VERIFY}
        if messages_first:
            kw = {"transport": PromptFirstTransport(limits=limits)}
        self.http = openai.DefaultHttpxClient(event_hooks={"response": [on_response]}, **kw)
        cls = OpenAI if drain else openai.OpenAI
        self.client = cls(
            base_url=base_url, api_key="EMPTY", max_retries=0, timeout=60.0, http_client=self.http
        )
        # the SDK imports its resources lazily (~35 ms): do it now, not inside the first timed request
        _ = (self.client.chat.completions, self.client.completions, self.client.embeddings)

    def last_port(self) -> int | None:
        return getattr(self.local, "port", None)

    def close(self) -> None:
        self.client.close()


PAD_WORDS = 0


def prompt_text(canary: str, i: int) -> str:
    pad = "".join(f" pad{k % 1000:03d}" for k in range(PAD_WORDS))
    return f"Please repeat: {canary} alpha beta gamma request {i}{pad}"


def messages(canary: str, i: int) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You are a test model."},
        {"role": "user", "content": prompt_text(canary, i)},
    ]


def usage_dict(u: Any) -> dict[str, Any] | None:
    if u is None:
        return None
    d = u.model_dump(exclude_none=True) if hasattr(u, "model_dump") else dict(u)
    return d


def run_one(conn: Conn, scenario: str, i: int, args: argparse.Namespace) -> dict[str, Any]:
    c = conn.client
    model = "no-such-model" if scenario == "error-404" else args.model
    stream = scenario in ("chat-stream", "chat-stream-nousage", "completion-stream", "stream-error", "cancel", "server-abort")
    max_tokens = args.max_tokens
    if scenario == "cancel":
        max_tokens = max(args.max_tokens, 64)  # long enough that the close is mid-stream
    request_id = str(uuid.uuid4())
    op = "embeddings" if scenario == "embeddings" else ("text_completion" if scenario.startswith("completion") else "chat")
    rec: dict[str, Any] = {
        "i": i,
        "scenario": scenario,
        "model": model,
        "stream": stream,
        "request_id": request_id,
        "status": None,
        "chunks": 0,
        "usage": None,
        "error": None,
        "first_token_unix_ns": None,
        "max_tokens": max_tokens if scenario != "embeddings" else None,
    }
    with TRACER.start_as_current_span(f"{op} {model}", kind=SpanKind.CLIENT) as span:
        sc = span.get_span_context()
        rec["trace_id"] = f"{sc.trace_id:032x}"
        rec["span_id"] = f"{sc.span_id:016x}"
        span.set_attribute("gen_ai.operation.name", op)
        span.set_attribute("gen_ai.request.model", model)
        span.set_attribute("gen_ai.request.stream", stream)
        headers: dict[str, str] = {}
        propagate.inject(headers)
        headers["x-request-id"] = request_id
        rec["traceparent"] = headers.get("traceparent")
        rec["tracestate"] = headers.get("tracestate")
        if args.cached_tokens:
            headers["x-standin-cached-tokens"] = str(args.cached_tokens)
        rec["start_unix_ns"] = time.time_ns()
        text_parts: list[str] = []
        try:
            if scenario in ("chat-stream", "chat-stream-nousage", "stream-error", "cancel", "server-abort"):
                kw: dict[str, Any] = {}
                if scenario != "chat-stream-nousage":
                    kw["stream_options"] = {"include_usage": True}
                extra_body: dict[str, Any] = {}
                if scenario == "stream-error":
                    extra_body["standin_fail_after"] = FAIL_AFTER
                if scenario == "server-abort":
                    extra_body["standin_abort_after"] = FAIL_AFTER
                s = c.chat.completions.create(
                    model=model,
                    messages=messages(args.canary, i),
                    stream=True,
                    max_tokens=max_tokens,
                    extra_headers=headers,
                    extra_body=extra_body or None,
                    **kw,
                )
                rec["status"] = 200
                try:
                    for chunk in s:
                        rec["response_id"] = chunk.id
                        if chunk.usage is not None:
                            rec["usage"] = usage_dict(chunk.usage)
                        for ch in chunk.choices:
                            if ch.delta is not None and ch.delta.content:
                                if rec["first_token_unix_ns"] is None:
                                    rec["first_token_unix_ns"] = time.time_ns()
                                rec["chunks"] += 1
                                text_parts.append(ch.delta.content)
                            if ch.finish_reason:
                                rec["finish_reason"] = ch.finish_reason
                        if scenario == "cancel" and rec["chunks"] >= CANCEL_AFTER:
                            s.close()
                            rec["status"] = "cancelled"
                            break
                finally:
                    s.close()
            elif scenario == "chat" or scenario == "error-404" or scenario == "error-400":
                r = c.chat.completions.create(
                    model=model,
                    messages=messages(args.canary, i),
                    max_tokens=0 if scenario == "error-400" else max_tokens,
                    extra_headers=headers,
                )
                rec["status"] = 200
                rec["response_id"] = r.id
                rec["usage"] = usage_dict(r.usage)
                rec["finish_reason"] = r.choices[0].finish_reason
                text_parts.append(r.choices[0].message.content or "")
            elif scenario == "completion-stream":
                s = c.completions.create(
                    model=model,
                    prompt=prompt_text(args.canary, i),
                    stream=True,
                    max_tokens=max_tokens,
                    stream_options={"include_usage": True},
                    extra_headers=headers,
                )
                rec["status"] = 200
                with s:
                    for chunk in s:
                        rec["response_id"] = chunk.id
                        if chunk.usage is not None:
                            rec["usage"] = usage_dict(chunk.usage)
                        for ch in chunk.choices:
                            if ch.text:
                                if rec["first_token_unix_ns"] is None:
                                    rec["first_token_unix_ns"] = time.time_ns()
                                rec["chunks"] += 1
                                text_parts.append(ch.text)
                            if ch.finish_reason:
                                rec["finish_reason"] = ch.finish_reason
            elif scenario == "completion":
                r = c.completions.create(
                    model=model, prompt=prompt_text(args.canary, i), max_tokens=max_tokens, extra_headers=headers
                )
                rec["status"] = 200
                rec["response_id"] = r.id
                rec["usage"] = usage_dict(r.usage)
                rec["finish_reason"] = r.choices[0].finish_reason
                text_parts.append(r.choices[0].text)
            elif scenario == "embeddings":
                r = c.embeddings.create(
                    model=model, input=[prompt_text(args.canary, i), "second input"], extra_headers=headers
                )
                rec["status"] = 200
                rec["response_id"] = r.id
                rec["usage"] = usage_dict(r.usage)
                rec["embeddings"] = len(r.data)
                rec["embedding_dim"] = len(r.data[0].embedding) if r.data else 0
            else:
                raise ValueError(f"unknown scenario {scenario}")
        except openai.APIStatusError as e:
            rec["status"] = e.status_code
            rec["error"] = {"class": type(e).__name__, "body": e.body}
        except openai.APIConnectionError as e:
            rec["status"] = "error"
            rec["error"] = {"class": type(e).__name__, "message": str(e.__cause__ or e)}
        except openai.APIError as e:  # an error event inside a 200 stream
            rec["error"] = {"class": type(e).__name__, "body": e.body}
        rec["end_unix_ns"] = time.time_ns()
        rec["local_port"] = conn.last_port()
        if rec["error"]:
            span.set_attribute("error.type", rec["error"]["class"])
        span.set_attribute("infertap.test.status", str(rec["status"]))
    rec["canary_in_output"] = args.canary in "".join(text_parts) if text_parts else False
    if rec["first_token_unix_ns"] is not None:
        rec["ttft_ms"] = round((rec["first_token_unix_ns"] - rec["start_unix_ns"]) / 1e6, 3)
    rec["ok"], rec["why"] = judge(rec, args)
    return rec


def judge(r: dict[str, Any], args: argparse.Namespace) -> tuple[bool, str]:
    """Did the request behave as its scenario expects?"""
    s = r["scenario"]
    mt = r["max_tokens"]
    u = r["usage"] or {}
    if s in ("chat-stream", "completion-stream"):
        if r["status"] != 200 or r["error"]:
            return False, f"status {r['status']} error {r['error']}"
        if r["chunks"] != mt:
            return False, f"{r['chunks']} chunks, expected {mt}"
        if u.get("completion_tokens") != mt:
            return False, f"usage {u}"
        return True, ""
    if s == "chat-stream-nousage":
        if r["status"] != 200 or r["error"] or r["chunks"] != mt or r["usage"] is not None:
            return False, f"status {r['status']} chunks {r['chunks']} usage {r['usage']}"
        return True, ""
    if s in ("chat", "completion"):
        if r["status"] != 200 or u.get("completion_tokens") != mt:
            return False, f"status {r['status']} usage {u} error {r['error']}"
        return True, ""
    if s == "embeddings":
        if r["status"] != 200 or r.get("embeddings") != 2 or not u.get("prompt_tokens"):
            return False, f"status {r['status']} {r.get('embeddings')} usage {u}"
        return True, ""
    if s == "error-404":
        return (r["status"] == 404, f"status {r['status']}")
    if s == "error-400":
        return (r["status"] == 400, f"status {r['status']}")
    if s == "stream-error":
        ok = r["status"] == 200 and r["error"] is not None and r["chunks"] == FAIL_AFTER
        return ok, "" if ok else f"status {r['status']} chunks {r['chunks']} error {r['error']}"
    if s == "server-abort":
        ok = r["status"] == "error" and r["chunks"] == FAIL_AFTER
        return ok, "" if ok else f"status {r['status']} chunks {r['chunks']} error {r['error']}"
    if s == "cancel":
        ok = r["status"] == "cancelled" and r["chunks"] == CANCEL_AFTER
        return ok, "" if ok else f"status {r['status']} chunks {r['chunks']}"
    return False, "unknown scenario"


def scenario_for(args: argparse.Namespace, i: int) -> str:
    if args.scenario == "mixed":
        return SCENARIOS[i % len(SCENARIOS)]
    return args.scenario


class Output:
    def __init__(self, path: str | None):
        self.lock = threading.Lock()
        self.f = open(path, "a") if path else None
        self.bad = 0
        self.n = 0

    def write(self, rec: dict[str, Any]) -> None:
        with self.lock:
            self.n += 1
            if not rec["ok"]:
                self.bad += 1
                print(f"UNEXPECTED {rec['scenario']} #{rec['i']}: {rec['why']}", file=sys.stderr, flush=True)
            if self.f:
                self.f.write(json.dumps(rec) + "\n")
                self.f.flush()


def run_workers(args: argparse.Namespace, out: Output) -> None:
    counter = itertools.count()
    lock = threading.Lock()

    def next_index() -> int | None:
        with lock:
            i = next(counter)
        return i if i < args.count else None

    def worker() -> None:
        conn = None if args.new_connection_per_request else Conn(args.base_url, args.keepalive_expiry, not args.no_drain, args.messages_first)
        try:
            while (i := next_index()) is not None:
                if args.new_connection_per_request:
                    one = Conn(args.base_url, args.keepalive_expiry, not args.no_drain, args.messages_first)
                    try:
                        out.write(run_one(one, scenario_for(args, i), i, args))
                    finally:
                        one.close()
                else:
                    out.write(run_one(conn, scenario_for(args, i), i, args))
                if args.pause_ms:
                    time.sleep(args.pause_ms / 1000.0)
        finally:
            if conn is not None:
                conn.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, args.concurrency))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def run_hold(args: argparse.Namespace, out: Output) -> None:
    """One request opens the connection; wait for --wait-file; the rest go over the SAME connection."""
    conn = Conn(args.base_url, None, not args.no_drain, args.messages_first)
    try:
        first = run_one(conn, scenario_for(args, 0), 0, args)
        out.write(first)
        print("READY", flush=True)
        deadline = time.monotonic() + args.wait_timeout
        while not os.path.exists(args.wait_file):
            if time.monotonic() > deadline:
                print(f"timed out waiting for {args.wait_file}", file=sys.stderr, flush=True)
                out.bad += 1
                return
            time.sleep(0.05)
        for i in range(1, args.count):
            rec = run_one(conn, scenario_for(args, i), i, args)
            rec["same_connection"] = rec["local_port"] == first["local_port"]
            if not rec["same_connection"] and rec["ok"]:
                rec["ok"], rec["why"] = False, f"new connection (port {rec['local_port']} != {first['local_port']})"
            out.write(rec)
    finally:
        conn.close()


# TLS verification of the server: True (system CAs), or a CA file (--ca-file).
VERIFY: Any = True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8000/v1")
    ap.add_argument("--scenario", default="chat-stream", choices=SCENARIOS + EXTRA_SCENARIOS + ["mixed"])
    ap.add_argument("--count", type=int, default=1)
    ap.add_argument("--concurrency", type=int, default=1, help="threads, each with its own client and connection")
    ap.add_argument("--canary", default="CANARY-" + uuid.uuid4().hex[:12], help="word put into every prompt")
    ap.add_argument("--model", default="standin-model")
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--cached-tokens", type=int, default=0, help="send x-standin-cached-tokens (stand-in test hook)")
    ap.add_argument("--prompt-pad-words", type=int, default=0, help="append N filler words (7 bytes each) to prompts")
    ap.add_argument(
        "--messages-first",
        action="store_true",
        help="send messages/prompt/input before model in the JSON body (openai-python 1.x order)",
    )
    ap.add_argument("--out", help="JSON lines, one per request (appended)")
    ap.add_argument("--new-connection-per-request", action="store_true")
    ap.add_argument(
        "--no-drain",
        action="store_true",
        help="stock SDK: stop reading at [DONE], so each stream ends its connection (see DrainingSSEDecoder)",
    )
    ap.add_argument("--keepalive-expiry", type=float, default=5.0, help="client pool's idle expiry (s)")
    ap.add_argument("--pause-ms", type=float, default=0, help="pause between requests of one worker")
    ap.add_argument("--hold-connection", action="store_true", help="see --wait-file")
    ap.add_argument("--wait-file", help="with --hold-connection: wait for this file after the first request")
    ap.add_argument("--wait-timeout", type=float, default=120.0)
    ap.add_argument("--ca-file", help="verify an HTTPS server against this CA certificate (PEM)")
    args = ap.parse_args(argv)
    if args.ca_file:
        global VERIFY
        VERIFY = args.ca_file
    global PAD_WORDS
    PAD_WORDS = args.prompt_pad_words
    if args.hold_connection and not args.wait_file:
        ap.error("--hold-connection needs --wait-file")

    out = Output(args.out)
    if args.hold_connection:
        run_hold(args, out)
    else:
        run_workers(args, out)
    PROVIDER.shutdown()
    print(f"{out.n} requests, {out.bad} unexpected", file=sys.stderr, flush=True)
    return 0 if out.bad == 0 and out.n == args.count else 1


if __name__ == "__main__":
    sys.exit(main())
