"""A small OpenAI-compatible chat server for testing the load-test harness (not the service).

It answers `/v1/chat/completions` (JSON or SSE) deterministically from the last user message,
with a route object and the `x-infopt-route` header like the real ingress. `state.mode`
decides the tiers: in "validator-only" the Validator answers everything; otherwise a third of
the prompts go to the Validator and the rest to the "Scout", half of whose answers differ from
the Validator's in the last word (so fidelity is below 100% by a known amount).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse


def _hash(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16)


def answer(messages: list[dict[str, Any]], max_tokens: int, mode: str) -> tuple[list[str], str]:
    """The tokens and the tier the fake gives for `messages` in `mode`."""
    h = _hash(messages[-1]["content"])
    n = max(1, min(max_tokens, 2 + h % 6))
    words = [f"w{(h >> (3 * i)) % 97}" for i in range(n)]
    tier = "validator" if mode == "validator-only" or h % 3 == 0 else "scout"
    if tier == "scout" and (h >> 7) % 2:
        words[-1] = "different"
    return [w + " " for w in words], tier


def route(tier: str, n: int, mode: str) -> dict[str, Any]:
    stages = []
    if mode != "validator-only":
        stages.append({"stage": "scout", "decision": "confident" if tier == "scout" else "escalate",
                       "latency_ms": 2.0 * n, "detail": {"tokens": n}})
    if tier == "validator":
        stages.append({"stage": "validator", "decision": "answered", "latency_ms": 5.0 * n, "detail": {"tokens": n}})
    return {"tier": tier, "requested_model": "auto", "reason": "confident" if tier == "scout" else "escalated",
            "stages": stages, "total_ms": 7.0 * n}


def build_app(state: dict[str, Any]) -> FastAPI:
    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        await asyncio.sleep(state.get("delay_s", 0.0))  # a slow service, when a test asks for one
        mode = state.get("mode", "validator-only")
        tokens, tier = answer(body["messages"], int(body.get("max_tokens") or 16), mode)
        trace = route(tier, len(tokens), mode)
        usage = {"prompt_tokens": 5, "completion_tokens": len(tokens), "total_tokens": 5 + len(tokens)}
        headers = {"x-infopt-route": tier}
        base = {"id": "chatcmpl-fake", "created": int(time.time()), "model": "auto"}
        if not body.get("stream"):
            return JSONResponse({**base, "object": "chat.completion", "usage": usage, "route": trace,
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": "".join(tokens)}}]},
                                headers=headers)

        async def events() -> Any:
            def sse(obj: Any) -> str:
                return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n"

            chunk = {**base, "object": "chat.completion.chunk"}
            yield sse({**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
            for tok in tokens:
                await asyncio.sleep(0.003)
                yield sse({**chunk, "choices": [{"index": 0, "delta": {"content": tok}}]})
            yield sse({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "route": trace})
            if (body.get("stream_options") or {}).get("include_usage"):
                yield sse({**chunk, "choices": [], "usage": usage, "route": trace})
            yield sse("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(state: dict[str, Any]) -> Iterator[str]:
    """Run the fake on 127.0.0.1 in a thread; yield its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(build_app(state), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the fake server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
