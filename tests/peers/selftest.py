#!/usr/bin/env python3
"""Self-test of the test peers: starts the stand-in, runs every client scenario and bad-client case
against it, checks the outputs. Needs no agent and no root. Prints 'N passed, N failed' last.

    .venv/bin/python tests/peers/selftest.py
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
PY = sys.executable
TTFT_MS = 50
ITL_MS = 20
MAX_TOKENS = 8

results: list[tuple[str, bool, str]] = []


def check(name: str, ok: bool, detail: str = "") -> None:
    results.append((name, ok, detail))
    print(f"{'ok  ' if ok else 'FAIL'} {name}{'' if ok else ': ' + detail}", flush=True)


class Standin:
    def __init__(self, tmp: str, *extra: str):
        self.ready = os.path.join(tmp, f"ready-{time.monotonic_ns()}")
        self.proc = subprocess.Popen(
            [PY, os.path.join(HERE, "vllm_standin.py"), "--port", "0", "--ready-file", self.ready,
             "--ttft-ms", str(TTFT_MS), "--token-interval-ms", str(ITL_MS), *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        deadline = time.monotonic() + 20
        while not os.path.exists(self.ready):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"stand-in did not start: {self.proc.stderr.read() if self.proc.stderr else ''}")
            time.sleep(0.05)
        self.port = int(open(self.ready).read())
        self.base = f"http://127.0.0.1:{self.port}/v1"

    def stats(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/standin/stats", timeout=5) as r:
            return json.load(r)

    def stop(self) -> None:
        self.proc.terminate()  # our own child, by its pid
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def client(base: str, out: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([PY, os.path.join(HERE, "client.py"), "--base-url", base, "--out", out,
                           "--max-tokens", str(MAX_TOKENS), *args],
                          capture_output=True, text=True, timeout=timeout)


def lines(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(x) for x in f if x.strip()]


def main() -> int:
    tmp = tempfile.mkdtemp(prefix="peers-selftest-")
    srv = Standin(tmp)
    try:
        canary = "CANARY-selftest42"
        streaming = {"chat-stream", "chat-stream-nousage", "completion-stream", "stream-error", "cancel", "server-abort"}
        content = {"chat-stream", "chat-stream-nousage", "chat", "completion-stream", "completion", "stream-error", "cancel"}
        for sc in ["chat-stream", "chat-stream-nousage", "chat", "completion-stream", "completion", "embeddings",
                   "error-404", "error-400", "stream-error", "cancel", "server-abort"]:
            out = os.path.join(tmp, f"{sc}.jsonl")
            p = client(srv.base, out, "--scenario", sc, "--count", "3", "--canary", canary)
            recs = lines(out)
            check(f"client {sc}: exit 0, 3 records", p.returncode == 0 and len(recs) == 3, p.stderr[-500:])
            for r in recs:
                tp = r.get("traceparent") or ""
                # flags: OTel SDK 1.45 sends 03 (sampled + W3C level-2 "random trace id"), not 01
                m = re.fullmatch(rf"00-{r['trace_id']}-{r['span_id']}-([0-9a-f]{{2}})", tp)
                if not m or not int(m.group(1), 16) & 1 or r.get("tracestate") != "infertap=test":
                    check(f"{sc}: W3C headers", False, f"{tp} {r.get('tracestate')}")
                    break
            else:
                check(f"{sc}: traceparent = client span, tracestate infertap=test", True)
            if sc in streaming and sc != "server-abort":
                ttfts = [r.get("ttft_ms") for r in recs]
                # the median, loosely: the machine may be busy (2 cores shared with builds)
                ok = all(t is not None and t >= TTFT_MS for t in ttfts) and sorted(ttfts)[1] <= TTFT_MS + 100
                check(f"{sc}: TTFT ~ {TTFT_MS} ms", ok, str(ttfts))
            if sc in content:
                check(f"{sc}: canary echoed", all(r["canary_in_output"] for r in recs))
            if sc in ("chat-stream", "chat", "stream-error", "cancel", "chat-stream-nousage"):
                ok = all(r.get("response_id") == f"chatcmpl-{r['request_id']}" for r in recs)
                check(f"{sc}: id = chatcmpl-<x-request-id>", ok, str([r.get("response_id") for r in recs]))
            if sc == "chat-stream":
                ports = {r["local_port"] for r in recs}
                check("chat-stream: 3 requests share one connection", len(ports) == 1, str(ports))
                dur = [(r["end_unix_ns"] - r["first_token_unix_ns"]) / 1e6 for r in recs]
                check("chat-stream: tokens paced", all(d >= (MAX_TOKENS - 1) * ITL_MS * 0.9 for d in dur), str(dur))

        # cancel really stops generation on the server
        before = srv.stats()
        out = os.path.join(tmp, "cancel2.jsonl")
        client(srv.base, out, "--scenario", "cancel", "--count", "2")
        time.sleep(0.3)
        mid = srv.stats()
        time.sleep(0.5)
        after = srv.stats()
        check("cancel: server saw 2 client disconnects",
              mid["streams_cancelled_by_client"] - before["streams_cancelled_by_client"] == 2, f"{before} {mid}")
        check("cancel: server stopped generating",
              after["tokens_streamed"] == mid["tokens_streamed"] and after["active_streams"] == 0, f"{mid} {after}")

        # connection behaviour
        out = os.path.join(tmp, "nodrain.jsonl")
        client(srv.base, out, "--scenario", "chat-stream", "--count", "3", "--no-drain")
        check("--no-drain: stock SDK opens a connection per stream", len({r["local_port"] for r in lines(out)}) == 3)
        out = os.path.join(tmp, "newconn.jsonl")
        client(srv.base, out, "--scenario", "chat", "--count", "3", "--new-connection-per-request")
        check("--new-connection-per-request: 3 connections", len({r["local_port"] for r in lines(out)}) == 3)
        out = os.path.join(tmp, "mixed.jsonl")
        p = client(srv.base, out, "--scenario", "mixed", "--count", "40", "--concurrency", "4")
        check("mixed x40, concurrency 4: all as expected", p.returncode == 0 and len(lines(out)) == 40, p.stderr[-500:])
        check("mixed: 4 concurrent connections at least", len({r["local_port"] for r in lines(out)}) >= 4)

        out = os.path.join(tmp, "bigfirst.jsonl")
        p = client(srv.base, out, "--scenario", "mixed", "--count", "10", "--messages-first", "--prompt-pad-words", "2000")
        recs = lines(out)
        check("--messages-first with a 14 KB prompt: all as expected", p.returncode == 0 and len(recs) == 10, p.stderr[-500:])
        u = next((r["usage"] for r in recs if r["scenario"] == "chat-stream"), None) or {}
        check("prompt tokens = words of all messages", u.get("prompt_tokens") == 5 + 8 + 2000, str(u))

        # usage hooks
        out = os.path.join(tmp, "cached.jsonl")
        client(srv.base, out, "--scenario", "chat-stream", "--count", "1", "--cached-tokens", "5")
        u = (lines(out) or [{}])[0].get("usage") or {}
        check("x-standin-cached-tokens -> prompt_tokens_details", u.get("prompt_tokens_details") == {"cached_tokens": 5}, str(u))

        # bad input: the server survives every case
        out = os.path.join(tmp, "bad.jsonl")
        before = srv.stats()
        p = subprocess.run([PY, os.path.join(HERE, "badclient.py"), "--port", str(srv.port), "--case", "all", "--out", out],
                           capture_output=True, text=True, timeout=120)
        recs = {r["case"]: r for r in lines(out)}
        check("badclient: all cases ran, server alive after each",
              p.returncode == 0 and len(recs) == 7 and all(r["server_alive_after"] for r in recs.values()), p.stderr[-500:])
        for c in ("garbage", "tls", "h2", "malformed"):
            check(f"badclient {c}: 400 then close", (recs.get(c) or {}).get("status_line") == "HTTP/1.1 400 Bad Request")
        check("badclient disconnect-mid-stream: read 2 events",
              (recs.get("disconnect-mid-stream") or {}).get("events_read") == 2)
        time.sleep(0.3)
        check("badclient disconnect-mid-stream: server aborted the stream",
              srv.stats()["streams_cancelled_by_client"] - before["streams_cancelled_by_client"] == 1)
    finally:
        srv.stop()

    # hold-connection: the rest of the requests reuse the first connection after the wait
    srv = Standin(tmp, "--timeout-keep-alive", "300")
    try:
        wait = os.path.join(tmp, "go")
        out = os.path.join(tmp, "hold.jsonl")
        p = subprocess.Popen([PY, os.path.join(HERE, "client.py"), "--base-url", srv.base, "--scenario", "chat-stream",
                              "--count", "4", "--hold-connection", "--wait-file", wait, "--out", out],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = p.stdout.readline().strip() if p.stdout else ""
        time.sleep(1.0)
        open(wait, "w").close()
        rc = p.wait(60)
        recs = lines(out)
        check("hold-connection: READY after the first request", first == "READY", first)
        check("hold-connection: 4 requests on one connection",
              rc == 0 and len(recs) == 4 and len({r["local_port"] for r in recs}) == 1, str([r["local_port"] for r in recs]))
    finally:
        srv.stop()

    passed = sum(1 for _, ok, _ in results if ok)
    failed = len(results) - passed
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
