#!/usr/bin/env python3
"""A stand-in for vLLM's OpenAI-compatible server (vLLM 0.19.1), for infertap's integration tests.

It runs the same HTTP stack as vLLM (FastAPI on uvicorn, httptools + uvloop, keep-alive) and writes the
same bytes vLLM writes, field for field: the JSON of every chunk is laid out as vLLM's pydantic models
dump it (`exclude_unset` for chat chunks, full dumps for completion chunks and non-streaming bodies),
and errors use vLLM's `{"error": {...}}` shape. Only the "model" is fake:

* Generated text ECHOES the words of the last user message (chat) or of the prompt (completions),
  cycled, one word per token ("w0", " w1", " w2", ...). A canary word in the prompt therefore also
  appears in the completion. Choice i of n starts the cycle at word i.
* Prompt tokens = the number of whitespace-separated words in the text of ALL messages (chat; text
  parts of list contents count too), of the prompt (completions) or of all inputs (embeddings).
* Completion tokens: `max_completion_tokens` or `max_tokens` when the request sets one (finish_reason
  "length"); otherwise 16 (finish_reason "stop", as if the model emitted EOS there).
* Timing: response headers go out at once (as vLLM's StreamingResponse does), then after --ttft-ms
  (prefill) the role chunk and the first token back to back, then one token per --token-interval-ms.

Test hooks (not part of vLLM):
* header `x-standin-cached-tokens: k` -> usage.prompt_tokens_details = {"cached_tokens": k}
  (what vLLM reports with --enable-prompt-tokens-details when k prompt tokens hit the prefix cache).
* body `"standin_fail_after": k` -> after k tokens the stream carries vLLM's in-stream error event
  then `data: [DONE]`; a non-streaming request gets a 500 error body.
* body `"standin_abort_after": k` -> after k tokens the server drops the connection (the chunked body
  is never terminated).
* body `"standin_eos_chunk": true` -> the finish chunk carries `"delta":{"content":""}` (an EOS token
  with no text, as vLLM sends when generation stops on EOS) instead of the last word.
* `GET /standin/stats` -> counters (requests, tokens streamed, streams cancelled by the client...).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import logging
import os
import struct
import sys
import time
import uuid
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse

DEFAULT_MAX_TOKENS = 16
EMBEDDING_DIM = 8


class Settings:
    model = "standin-model"
    token_interval_s = 0.020
    ttft_s = 0.050
    max_model_len = 4096
    # `--enable-per-request-metrics` (or STANDIN_PER_REQUEST_METRICS=1): a `metrics` object in
    # the final usage chunk of a stream, as vLLM's flag of that name.
    per_request_metrics = False


SETTINGS = Settings()

STATS: dict[str, int] = {
    "requests": 0,
    "streams_started": 0,
    "streams_completed": 0,
    "streams_cancelled_by_client": 0,
    "streams_failed": 0,
    "streams_aborted_by_server": 0,
    "tokens_streamed": 0,
    "active_streams": 0,
}


class StandinAbort(Exception):
    """Raised inside a stream to make uvicorn drop the connection (test hook)."""


# --------------------------------------------------------------------------------------------------
# helpers: ids, words, errors


def random_uuid() -> str:
    # vLLM 0.19: f"{uuid.uuid4().int & MASK_64_BITS:016x}" (16 hex chars)
    return f"{uuid.uuid4().int & ((1 << 64) - 1):016x}"


def base_request_id(raw: Request, body: dict[str, Any] | None = None) -> str:
    """vLLM takes X-Request-Id, else the body's request_id, else a random id."""
    rid = raw.headers.get("x-request-id")
    if rid is not None:
        return rid
    if body is not None and isinstance(body.get("request_id"), str):
        return body["request_id"]
    return random_uuid()


def content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for p in content:
            if isinstance(p, dict) and isinstance(p.get("text"), str):
                parts.append(p["text"])
            elif isinstance(p, str):
                parts.append(p)
        return " ".join(parts)
    return ""


def words_of(text: str) -> list[str]:
    return text.split()


def error_body(message: str, err_type: str, code: int, param: str | None = None) -> dict[str, Any]:
    # vLLM 0.19 ErrorResponse(error=ErrorInfo(message, type, param, code)).model_dump()
    return {"error": {"message": message, "type": err_type, "param": param, "code": code}}


def error_response(message: str, err_type: str, status: HTTPStatus, param: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, err_type, status.value, param), status_code=status.value)


def streaming_error_event(message: str, err_type: str, code: int) -> str:
    # vLLM serialises in-stream errors with json.dumps (default separators, so with spaces),
    # unlike the chunks, which are pydantic's compact model_dump_json.
    return f"data: {json.dumps(error_body(message, err_type, code))}\n\n"


def dumps(obj: Any) -> str:
    # pydantic's model_dump_json: compact, non-ASCII kept as is.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def usage_obj(prompt: int, completion: int, cached: int | None, *, with_details_null: bool) -> dict[str, Any]:
    # UsageInfo field order: prompt_tokens, total_tokens, completion_tokens, prompt_tokens_details
    u: dict[str, Any] = {"prompt_tokens": prompt, "total_tokens": prompt + completion, "completion_tokens": completion}
    if cached:
        u["prompt_tokens_details"] = {"cached_tokens": cached}
    elif with_details_null:
        u["prompt_tokens_details"] = None
    return u


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, err_type: str = "BadRequestError"):
        super().__init__(message)
        self.message = message
        self.param = param
        self.err_type = err_type


def int_field(body: dict[str, Any], name: str) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise BadRequest(f"{name} must be an integer, got {v!r}.", name, "Bad Request")
    return v


def kv_transfer_reply(body: dict[str, Any]) -> dict[str, Any] | None:
    """A prefill leg of a disaggregated request (`kv_transfer_params.do_remote_decode`, as llm-d's
    routing sidecar sends it) is answered, as vLLM's NixlConnector does, with the parameters the
    decode leg must carry: where to pull the KV blocks from."""
    ktp = body.get("kv_transfer_params")
    if not isinstance(ktp, dict) or not ktp.get("do_remote_decode"):
        return None
    return {
        "do_remote_prefill": True,
        "do_remote_decode": False,
        "remote_engine_id": f"standin-{os.getpid()}",
        "remote_block_ids": [1, 2, 3],
        "remote_host": "127.0.0.1",
        "remote_port": 5600,
        "tp_size": 1,
    }


class GenPlan:
    """What one request will generate."""

    def __init__(self, body: dict[str, Any], echo_words: list[str], prompt_tokens: int, cached: int | None):
        max_tokens = int_field(body, "max_completion_tokens")
        if max_tokens is None:
            max_tokens = int_field(body, "max_tokens")
        if max_tokens is not None and max_tokens < 1:
            # SamplingParams._verify_args -> VLLMValidationError(parameter="max_tokens")
            raise BadRequest(f"max_tokens must be at least 1, got {max_tokens}.", "max_tokens")
        n = int_field(body, "n")
        n = 1 if n is None else n
        if n < 1:
            raise BadRequest(f"n must be at least 1, got {n}.", "n")
        self.n = n
        self.tokens = max_tokens if max_tokens is not None else DEFAULT_MAX_TOKENS
        self.finish_reason = "length" if max_tokens is not None else "stop"
        self.words = echo_words or ["ok"]
        self.prompt_tokens = prompt_tokens
        self.cached = cached
        self.fail_after = int_field(body, "standin_fail_after")
        self.kv_transfer_params = kv_transfer_reply(body)
        self.abort_after = int_field(body, "standin_abort_after")
        self.eos_chunk = bool(body.get("standin_eos_chunk")) and self.finish_reason == "stop"
        so = body.get("stream_options")
        if body.get("stream") and isinstance(so, dict):
            # vLLM StreamOptions: include_usage defaults to True once stream_options is present.
            self.include_usage = bool(so.get("include_usage", True))
            self.continuous_usage = self.include_usage and bool(so.get("continuous_usage_stats", False))
        else:
            self.include_usage = False
            self.continuous_usage = False

    def token(self, choice: int, k: int) -> str:
        w = self.words[(choice + k) % len(self.words)]
        return w if k == 0 else " " + w

    def full_text(self, choice: int) -> str:
        return "".join(self.token(choice, k) for k in range(self.tokens))


def cached_hook(raw: Request) -> int | None:
    v = raw.headers.get("x-standin-cached-tokens")
    if v is None:
        return None
    try:
        return int(v)
    except ValueError:
        return None


# --------------------------------------------------------------------------------------------------
# app

app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)


@app.exception_handler(RequestValidationError)
async def validation_exception_handler(_req: Request, exc: RequestValidationError) -> JSONResponse:
    # vLLM's handler: type is the HTTP phrase "Bad Request", message = str(exc) [+ str(errors)]
    errors = exc.errors()
    exc_str, errors_str = str(exc), str(errors)
    message = f"{exc_str} {errors_str}" if errors and errors_str and errors_str != exc_str else exc_str
    return JSONResponse(error_body(message, HTTPStatus.BAD_REQUEST.phrase, 400), status_code=400)


async def read_json(raw: Request) -> dict[str, Any]:
    media = raw.headers.get("content-type", "").lower().split(";", 1)[0]
    if media != "application/json":
        raise RequestValidationError(errors=["Unsupported Media Type: Only 'application/json' is allowed"])
    data = await raw.body()
    try:
        body = json.loads(data)
    except ValueError as e:
        raise RequestValidationError(
            errors=[{"type": "json_invalid", "loc": ("body", 0), "msg": "JSON decode error", "input": {}, "ctx": {"error": str(e)}}]
        )
    if not isinstance(body, dict):
        raise RequestValidationError(
            errors=[{"type": "model_attributes_type", "loc": ("body",), "msg": "Input should be a valid dictionary or object", "input": body}]
        )
    return body


def missing(field: str, body: dict[str, Any]) -> RequestValidationError:
    return RequestValidationError(errors=[{"type": "missing", "loc": ("body", field), "msg": "Field required", "input": body}])


def check_model(body: dict[str, Any]) -> JSONResponse | None:
    model = body.get("model")
    if model is None or model == SETTINGS.model:
        return None
    return error_response(f"The model `{model}` does not exist.", "NotFoundError", HTTPStatus.NOT_FOUND, "model")


async def sleep_s(s: float) -> None:
    if s > 0:
        await asyncio.sleep(s)


def stream_response(gen) -> StreamingResponse:
    return StreamingResponse(content=gen, media_type="text/event-stream")


async def tracked(gen):
    """Wraps a stream: counts how it ended. A client disconnect cancels the task (CancelledError)."""
    STATS["streams_started"] += 1
    STATS["active_streams"] += 1
    try:
        async for ev in gen:
            yield ev
        STATS["streams_completed"] += 1
    except asyncio.CancelledError:
        STATS["streams_cancelled_by_client"] += 1
        raise
    except StandinAbort:
        STATS["streams_aborted_by_server"] += 1
        raise
    finally:
        STATS["active_streams"] -= 1


def hooks_before(plan: GenPlan, step: int) -> None:
    if plan.abort_after is not None and step >= plan.abort_after:
        raise StandinAbort(f"standin_abort_after={plan.abort_after}")


def fail_now(plan: GenPlan, step: int) -> bool:
    return plan.fail_after is not None and step >= plan.fail_after


# ---- chat ------------------------------------------------------------------------------------------


def chat_prompt(body: dict[str, Any]) -> tuple[list[str], int]:
    msgs = body["messages"]
    total = 0
    last_user = ""
    for m in msgs:
        if not isinstance(m, dict):
            continue
        text = content_text(m.get("content"))
        total += len(words_of(text))
        if m.get("role") == "user":
            last_user = text
    if not last_user:
        for m in reversed(msgs):
            if isinstance(m, dict) and content_text(m.get("content")):
                last_user = content_text(m.get("content"))
                break
    return words_of(last_user), total


@app.post("/v1/chat/completions")
async def chat_completions(raw: Request):
    STATS["requests"] += 1
    body = await read_json(raw)
    if "messages" not in body:
        raise missing("messages", body)
    if not isinstance(body["messages"], list):
        raise RequestValidationError(
            errors=[{"type": "list_type", "loc": ("body", "messages"), "msg": "Input should be a valid list", "input": body["messages"]}]
        )
    if (err := check_model(body)) is not None:
        return err
    echo, prompt_tokens = chat_prompt(body)
    try:
        plan = GenPlan(body, echo, prompt_tokens, cached_hook(raw))
    except BadRequest as e:
        return JSONResponse(error_body(e.message, e.err_type, 400, e.param), status_code=400)
    request_id = f"chatcmpl-{base_request_id(raw, body)}"
    created = int(time.time())
    model = SETTINGS.model
    if body.get("stream"):
        return stream_response(tracked(chat_stream(plan, request_id, created, model)))
    return await chat_full(plan, request_id, created, model)


def per_request_metrics(plan: GenPlan) -> dict[str, Any]:
    """vLLM's per-request `metrics` object (`--enable-per-request-metrics`): the stand-in's
    first-token wait split as a fifth queued, the rest prefill; decode is the token intervals."""
    ttft_ms = SETTINGS.ttft_s * 1000
    gen_ms = max(0, plan.tokens - 1) * SETTINGS.token_interval_s * 1000
    return {
        "queue_time_ms": round(ttft_ms * 0.2, 3),
        "time_to_first_token_ms": round(ttft_ms * 0.8, 3),
        "generation_time_ms": round(gen_ms, 3),
        "mean_itl_ms": round(SETTINGS.token_interval_s * 1000, 3),
        "tokens_per_second": round(plan.tokens / max(1e-9, (ttft_ms + gen_ms) / 1000), 3),
    }


async def chat_stream(plan: GenPlan, request_id: str, created: int, model: str):
    head = {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model}
    generated = [0] * plan.n
    await sleep_s(SETTINGS.ttft_s)
    # first output of the engine: one role chunk per choice, no token.
    for i in range(plan.n):
        c = dict(head)
        c["choices"] = [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]
        if plan.continuous_usage:
            c["usage"] = usage_obj(plan.prompt_tokens, 0, None, with_details_null=False)
        c["prompt_token_ids"] = None
        yield f"data: {dumps(c)}\n\n"
    for k in range(plan.tokens):
        if k > 0:
            await sleep_s(SETTINGS.token_interval_s)
        hooks_before(plan, k)
        if fail_now(plan, k):
            STATS["streams_failed"] += 1
            yield streaming_error_event("Internal server error", "InternalServerError", 500)
            break
        last = k == plan.tokens - 1
        for i in range(plan.n):
            text = "" if (last and plan.eos_chunk) else plan.token(i, k)
            choice: dict[str, Any] = {"index": i, "delta": {"content": text}, "logprobs": None}
            if last:
                choice["finish_reason"] = plan.finish_reason
                choice["stop_reason"] = None
            else:
                choice["finish_reason"] = None
            choice["token_ids"] = None
            generated[i] += 1
            c = dict(head)
            c["choices"] = [choice]
            if plan.continuous_usage:
                c["usage"] = usage_obj(plan.prompt_tokens, generated[i], None, with_details_null=False)
            STATS["tokens_streamed"] += 1
            yield f"data: {dumps(c)}\n\n"
    else:
        if plan.include_usage:
            c = dict(head)
            c["choices"] = []
            c["usage"] = usage_obj(plan.prompt_tokens, sum(generated), plan.cached, with_details_null=False)
            if SETTINGS.per_request_metrics:
                c["metrics"] = per_request_metrics(plan)
            yield f"data: {dumps(c)}\n\n"
    yield "data: [DONE]\n\n"


async def full_wait(plan: GenPlan) -> JSONResponse | None:
    """Non-streaming: wait as long as generation takes; apply the failure hooks."""
    steps = plan.tokens
    if plan.fail_after is not None:
        steps = min(steps, plan.fail_after)
    await sleep_s(SETTINGS.ttft_s + max(0, steps - 1) * SETTINGS.token_interval_s)
    if plan.fail_after is not None and plan.fail_after < plan.tokens:
        return error_response("Internal server error", "InternalServerError", HTTPStatus.INTERNAL_SERVER_ERROR)
    return None


async def chat_full(plan: GenPlan, request_id: str, created: int, model: str) -> JSONResponse:
    if (err := await full_wait(plan)) is not None:
        return err
    choices = []
    for i in range(plan.n):
        text = plan.full_text(i)
        if plan.eos_chunk:
            text = "".join(plan.token(i, k) for k in range(plan.tokens - 1))
        choices.append(
            {
                "index": i,
                "message": {
                    "role": "assistant",
                    "content": text,
                    "refusal": None,
                    "annotations": None,
                    "audio": None,
                    "function_call": None,
                    "tool_calls": [],
                    "reasoning": None,
                },
                "logprobs": None,
                "finish_reason": plan.finish_reason,
                "stop_reason": None,
                "token_ids": None,
            }
        )
    body = {
        "id": request_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "service_tier": None,
        "system_fingerprint": None,
        "usage": usage_obj(plan.prompt_tokens, plan.tokens * plan.n, plan.cached, with_details_null=True),
        "prompt_logprobs": None,
        "prompt_token_ids": None,
        "kv_transfer_params": plan.kv_transfer_params,
    }
    return JSONResponse(body)


# ---- Responses API and Anthropic Messages API ------------------------------------------------------


def sse_event(name: str, obj: dict[str, Any]) -> str:
    """A typed SSE event, as vLLM writes them for /v1/responses and /v1/messages."""
    return f"event: {name}\ndata: {dumps(obj)}\n\n"


def plan_of(raw: Request, body: dict[str, Any], max_key: str, messages: Any) -> GenPlan:
    """A generation plan from another API's body: its max-tokens name, its messages."""
    text = messages if isinstance(messages, str) else ""
    if isinstance(messages, list):
        for m in messages:
            if isinstance(m, dict):
                text = content_text(m.get("content")) or text
    words = words_of(text)
    b = {"max_tokens": body.get(max_key), "stream": body.get("stream")}
    return GenPlan(b, words, len(words), cached_hook(raw))


@app.post("/v1/responses")
async def responses(raw: Request):
    STATS["requests"] += 1
    body = await read_json(raw)
    if (err := check_model(body)) is not None:
        return err
    try:
        plan = plan_of(raw, body, "max_output_tokens", body.get("input"))
    except BadRequest as e:
        return JSONResponse(error_body(e.message, e.err_type, 400, e.param), status_code=400)
    rid = f"resp_{base_request_id(raw, body)}"
    status = "incomplete" if plan.finish_reason == "length" else "completed"

    def response(state: str, output: list[Any], usage: Any) -> dict[str, Any]:
        return {
            "id": rid, "object": "response", "created_at": int(time.time()), "status": state,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if state == "incomplete" else None,
            "model": SETTINGS.model, "output": output, "text": {"format": {"type": "text"}}, "usage": usage,
        }

    def usage() -> dict[str, Any]:
        return {
            "input_tokens": plan.prompt_tokens, "input_tokens_details": {"cached_tokens": plan.cached or 0},
            "output_tokens": plan.tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": plan.prompt_tokens + plan.tokens,
        }

    def message(text: str) -> dict[str, Any]:
        return {"id": "msg_1", "type": "message", "status": status, "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}]}

    if not body.get("stream"):
        await full_wait(plan)
        return JSONResponse(response(status, [message(plan.full_text(0))], usage()))

    async def gen():
        seq = 0
        yield sse_event("response.created", {"type": "response.created", "sequence_number": seq, "response": response("in_progress", [], None)})
        await sleep_s(SETTINGS.ttft_s)
        for k in range(plan.tokens):
            if k > 0:
                await sleep_s(SETTINGS.token_interval_s)
            seq += 1
            STATS["tokens_streamed"] += 1
            yield sse_event("response.output_text.delta", {"type": "response.output_text.delta", "sequence_number": seq, "item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": plan.token(0, k), "logprobs": []})
        seq += 1
        done = response(status, [message(plan.full_text(0))], usage())
        yield sse_event(f"response.{status}", {"type": f"response.{status}", "sequence_number": seq, "response": done})

    return stream_response(tracked(gen()))


@app.post("/v1/messages")
async def messages(raw: Request):
    STATS["requests"] += 1
    body = await read_json(raw)
    if "messages" not in body:
        raise missing("messages", body)
    if (err := check_model(body)) is not None:
        return err
    try:
        plan = plan_of(raw, body, "max_tokens", body["messages"])
    except BadRequest as e:
        return JSONResponse(error_body(e.message, e.err_type, 400, e.param), status_code=400)
    mid = f"msg_{base_request_id(raw, body)}"
    stop = "max_tokens" if plan.finish_reason == "length" else "end_turn"
    cached = plan.cached or 0
    if not body.get("stream"):
        await full_wait(plan)
        return JSONResponse({
            "id": mid, "type": "message", "role": "assistant", "model": SETTINGS.model,
            "content": [{"type": "text", "text": plan.full_text(0)}], "stop_reason": stop, "stop_sequence": None,
            "usage": {"input_tokens": plan.prompt_tokens - cached, "output_tokens": plan.tokens,
                      "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached},
        })

    async def gen():
        start = {"id": mid, "type": "message", "role": "assistant", "content": [], "model": SETTINGS.model,
                 "stop_reason": None, "stop_sequence": None,
                 "usage": {"input_tokens": plan.prompt_tokens - cached, "output_tokens": 1,
                           "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached}}
        yield sse_event("message_start", {"type": "message_start", "message": start})
        yield sse_event("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
        await sleep_s(SETTINGS.ttft_s)
        for k in range(plan.tokens):
            if k > 0:
                await sleep_s(SETTINGS.token_interval_s)
            STATS["tokens_streamed"] += 1
            yield sse_event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": plan.token(0, k)}})
        yield sse_event("content_block_stop", {"type": "content_block_stop", "index": 0})
        yield sse_event("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None}, "usage": {"output_tokens": plan.tokens}})
        yield sse_event("message_stop", {"type": "message_stop"})

    return stream_response(tracked(gen()))


# ---- completions -----------------------------------------------------------------------------------


def completion_prompt(body: dict[str, Any]) -> tuple[list[str], int]:
    p = body["prompt"]
    if isinstance(p, list):
        texts = [x for x in p if isinstance(x, str)]
        if not texts and p and all(isinstance(x, int) for x in p):
            return [str(x) for x in p], len(p)  # token ids
        text = " ".join(texts)
    else:
        text = str(p)
    w = words_of(text)
    return w, len(w)


@app.post("/v1/completions")
async def completions(raw: Request):
    STATS["requests"] += 1
    body = await read_json(raw)
    if "prompt" not in body or body["prompt"] is None:
        raise missing("prompt", body)
    if (err := check_model(body)) is not None:
        return err
    echo, prompt_tokens = completion_prompt(body)
    try:
        plan = GenPlan(body, echo, prompt_tokens, cached_hook(raw))
    except BadRequest as e:
        return JSONResponse(error_body(e.message, e.err_type, 400, e.param), status_code=400)
    request_id = f"cmpl-{base_request_id(raw, body)}"
    created = int(time.time())
    model = SETTINGS.model
    if body.get("stream"):
        return stream_response(tracked(completion_stream(plan, request_id, created, model)))
    return await completion_full(plan, request_id, created, model)


async def completion_stream(plan: GenPlan, request_id: str, created: int, model: str):
    head = {"id": request_id, "object": "text_completion", "created": created, "model": model}
    generated = [0] * plan.n
    await sleep_s(SETTINGS.ttft_s)
    for k in range(plan.tokens):
        if k > 0:
            await sleep_s(SETTINGS.token_interval_s)
        hooks_before(plan, k)
        if fail_now(plan, k):
            STATS["streams_failed"] += 1
            yield streaming_error_event("Internal server error", "InternalServerError", 500)
            break
        last = k == plan.tokens - 1
        for i in range(plan.n):
            generated[i] += 1
            text = "" if (last and plan.eos_chunk) else plan.token(i, k)
            # vLLM dumps completion chunks with exclude_unset=False: every field, "usage": null.
            c = dict(head)
            c["choices"] = [
                {
                    "index": i,
                    "text": text,
                    "logprobs": None,
                    "finish_reason": plan.finish_reason if last else None,
                    "stop_reason": None,
                    "prompt_token_ids": None,
                    "token_ids": None,
                }
            ]
            c["usage"] = (
                usage_obj(plan.prompt_tokens, generated[i], None, with_details_null=True) if plan.continuous_usage else None
            )
            STATS["tokens_streamed"] += 1
            yield f"data: {dumps(c)}\n\n"
    else:
        if plan.include_usage:
            c = dict(head)
            c["choices"] = []
            c["usage"] = usage_obj(plan.prompt_tokens, sum(generated), plan.cached, with_details_null=False)
            yield f"data: {dumps(c)}\n\n"
    yield "data: [DONE]\n\n"


async def completion_full(plan: GenPlan, request_id: str, created: int, model: str) -> JSONResponse:
    if (err := await full_wait(plan)) is not None:
        return err
    choices = []
    for i in range(plan.n):
        text = plan.full_text(i)
        if plan.eos_chunk:
            text = "".join(plan.token(i, k) for k in range(plan.tokens - 1))
        choices.append(
            {
                "index": i,
                "text": text,
                "logprobs": None,
                "finish_reason": plan.finish_reason,
                "stop_reason": None,
                "token_ids": None,
                "prompt_logprobs": None,
                "prompt_token_ids": None,
            }
        )
    body = {
        "id": request_id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
        "service_tier": None,
        "system_fingerprint": None,
        "usage": usage_obj(plan.prompt_tokens, plan.tokens * plan.n, plan.cached, with_details_null=True),
        "kv_transfer_params": plan.kv_transfer_params,
    }
    return JSONResponse(body)


# ---- embeddings ------------------------------------------------------------------------------------


def embedding_of(text: str) -> list[float]:
    h = hashlib.sha256(text.encode()).digest()
    v = [((h[2 * j] << 8 | h[2 * j + 1]) / 65535.0) * 2 - 1 for j in range(EMBEDDING_DIM)]
    norm = sum(x * x for x in v) ** 0.5 or 1.0
    # round-trip through float32, as the model's tensor would be
    return [struct.unpack("<f", struct.pack("<f", x / norm))[0] for x in v]


@app.post("/v1/embeddings")
async def embeddings(raw: Request):
    STATS["requests"] += 1
    body = await read_json(raw)
    if "input" not in body:
        raise missing("input", body)
    if (err := check_model(body)) is not None:
        return err
    inp = body["input"]
    if isinstance(inp, str):
        inputs = [inp]
    elif isinstance(inp, list) and inp and all(isinstance(x, int) for x in inp):
        inputs = [" ".join(str(x) for x in inp)]
    elif isinstance(inp, list):
        inputs = [x if isinstance(x, str) else " ".join(str(t) for t in x) for x in inp]
    else:
        return JSONResponse(error_body("input must be a string or a list", "BadRequestError", 400, "input"), status_code=400)
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        return JSONResponse(
            error_body(f"encoding_format {fmt!r} is not supported by the stand-in", "BadRequestError", 400, "encoding_format"),
            status_code=400,
        )
    await sleep_s(SETTINGS.ttft_s)
    data = []
    prompt_tokens = 0
    for idx, text in enumerate(inputs):
        vec = embedding_of(text)
        prompt_tokens += len(words_of(text))
        emb: Any = vec if fmt == "float" else base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
        data.append({"index": idx, "object": "embedding", "embedding": emb})
    out = {
        "id": f"embd-{base_request_id(raw)}",
        "object": "list",
        "created": int(time.time()),
        "model": SETTINGS.model,
        "data": data,
        "usage": usage_obj(prompt_tokens, 0, None, with_details_null=True),
    }
    return JSONResponse(out)


# ---- misc ------------------------------------------------------------------------------------------


@app.get("/health")
async def health() -> Response:
    return Response(status_code=200)


@app.get("/metrics")
async def metrics() -> Response:
    """vLLM-shaped load figures (names as vLLM ≥ 0.10 exposes them): running = the streams in
    flight, KV-cache usage = a tenth per stream; waiting and preemptions stay 0 — unless a test
    drives them (`POST /standin/gauges`), when the figures it set are served as they are."""
    labels = f'{{engine="0",model_name="{SETTINGS.model}"}}'
    running = STATS["active_streams"]
    g = GAUGES
    lines = [
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        "# TYPE vllm:num_requests_running gauge",
        f"vllm:num_requests_running{labels} {float(g.get('running', running))}",
        "# TYPE vllm:num_requests_waiting gauge",
        f"vllm:num_requests_waiting{labels} {float(g.get('waiting', STATS.get('waiting', 0)))}",
        "# TYPE vllm:kv_cache_usage_perc gauge",
        f"vllm:kv_cache_usage_perc{labels} {float(g.get('kv_cache_usage', min(1.0, running / 10)))}",
        "# TYPE vllm:num_preemptions_total counter",
        f"vllm:num_preemptions_total{labels} {float(g.get('preemptions', STATS.get('preemptions', 0)))}",
    ]
    if "prefix_cache_queries" in g:
        lines += [
            "# TYPE vllm:prefix_cache_queries_total counter",
            f"vllm:prefix_cache_queries_total{labels} {float(g['prefix_cache_queries'])}",
            "# TYPE vllm:prefix_cache_hits_total counter",
            f"vllm:prefix_cache_hits_total{labels} {float(g.get('prefix_cache_hits', 0))}",
        ]
    return Response("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4; charset=utf-8")


# Load figures a test sets for /metrics (`running`, `waiting`, `kv_cache_usage`, `preemptions`,
# `prefix_cache_hits`, `prefix_cache_queries`); unset ones follow the stand-in's own state.
GAUGES: dict[str, float] = {}


@app.post("/standin/gauges")
async def set_gauges(raw: Request) -> JSONResponse:
    """Test hook: merge the posted figures into what /metrics serves; answers all of them."""
    body = await read_json(raw)
    for k, v in body.items():
        if v is None:
            GAUGES.pop(k, None)
        else:
            GAUGES[k] = float(v)
    return JSONResponse(GAUGES)


@app.get("/v1/models")
async def models() -> JSONResponse:
    created = int(time.time())
    card = {
        "id": SETTINGS.model,
        "object": "model",
        "created": created,
        "owned_by": "vllm",
        "root": SETTINGS.model,
        "parent": None,
        "max_model_len": SETTINGS.max_model_len,
        "permission": [
            {
                "id": f"modelperm-{random_uuid()}",
                "object": "model_permission",
                "created": created,
                "allow_create_engine": False,
                "allow_sampling": True,
                "allow_logprobs": True,
                "allow_search_indices": False,
                "allow_view": True,
                "allow_fine_tuning": False,
                "organization": "*",
                "group": None,
                "is_blocking": False,
            }
        ],
    }
    return JSONResponse({"object": "list", "data": [card]})


@app.get("/standin/stats")
async def stats() -> JSONResponse:
    return JSONResponse(STATS)


class XRequestIdMiddleware:
    """vLLM's --enable-request-id-headers: echo X-Request-Id (or a new uuid hex) on every response."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = None
        for k, v in scope["headers"]:
            if k == b"x-request-id":
                rid = v
        rid = rid or uuid.uuid4().hex.encode()

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                message = dict(message)
                message["headers"] = list(message.get("headers", [])) + [(b"x-request-id", rid)]
            await send(message)

        return await self.app(scope, receive, send_with_id)


class _DropStandinAbort(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        while exc is not None:
            if isinstance(exc, StandinAbort):
                return False
            if isinstance(exc, BaseExceptionGroup) and any(isinstance(e, StandinAbort) for e in exc.exceptions):
                return False
            exc = exc.__cause__ or exc.__context__
        return True


def _instrument_in_process() -> None:
    """What a team does without infertap: the OpenTelemetry SDK in the server process, FastAPI's
    instrumentation (one server span per request plus ASGI send/receive spans, as shipped), a
    BatchSpanProcessor, and an exporter that discards (so the comparison measures instrumentation,
    not a network or a collector)."""
    from opentelemetry import trace
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Discard(SpanExporter):
        def export(self, spans):  # noqa: ANN001
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Discard()))
    trace.set_tracer_provider(provider)
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--model", default="standin-model")
    ap.add_argument("--token-interval-ms", type=float, default=20.0, help="pause between streamed tokens")
    ap.add_argument("--ttft-ms", type=float, default=50.0, help="simulated prefill before the first token")
    ap.add_argument("--ready-file", help="written (with the port) once the server listens")
    ap.add_argument("--timeout-keep-alive", type=int, default=5, help="idle keep-alive timeout (vLLM: 5 s)")
    ap.add_argument("--enable-request-id-headers", action="store_true", help="as vLLM's flag: X-Request-Id on responses")
    ap.add_argument("--enable-per-request-metrics", action="store_true", help="as vLLM's flag: a `metrics` object in a stream's final usage chunk")
    ap.add_argument("--ssl-keyfile", help="as vLLM's flag: serve HTTPS with this private key (PEM)")
    ap.add_argument("--ssl-certfile", help="as vLLM's flag: serve HTTPS with this certificate (PEM)")
    ap.add_argument(
        "--otel-instrument",
        action="store_true",
        help="in-process tracing for the overhead comparison (cargo xtask bench-overhead): the "
        "OpenTelemetry SDK's FastAPI instrumentation, spans batched and discarded (no network)",
    )
    args = ap.parse_args(argv)

    SETTINGS.model = args.model
    SETTINGS.token_interval_s = args.token_interval_ms / 1000.0
    SETTINGS.ttft_s = args.ttft_ms / 1000.0
    SETTINGS.per_request_metrics = args.enable_per_request_metrics or os.environ.get("STANDIN_PER_REQUEST_METRICS") == "1"
    if args.enable_request_id_headers:
        app.add_middleware(XRequestIdMiddleware)
    if args.otel_instrument:
        _instrument_in_process()

    import uvicorn

    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        http="httptools",
        loop=loop,
        log_level="warning",
        access_log=False,
        timeout_keep_alive=args.timeout_keep_alive,
        lifespan="off",
        ssl_keyfile=args.ssl_keyfile,
        ssl_certfile=args.ssl_certfile,
    )
    server = uvicorn.Server(config)
    logging.getLogger("uvicorn.error").addFilter(_DropStandinAbort())

    async def serve() -> None:
        task = asyncio.ensure_future(server.serve())
        while not server.started:
            if task.done():
                await task
                return
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        if args.ready_file:
            tmp = args.ready_file + ".tmp"
            with open(tmp, "w") as f:
                f.write(f"{port}\n")
            os.replace(tmp, args.ready_file)
        await task

    if loop == "uvloop":
        import uvloop

        uvloop.run(serve())
    else:
        asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
