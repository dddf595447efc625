"""A scriptable OpenAI-compatible chat-completions server on loopback, for driving litellm's real
HTTP path in tests.

    with FakeOpenAI() as server:
        server.script("cheap", [Status(429), "hello"])        # first call 429, then "hello"
        server.script("slow", [Slow(5.0, "late")])
        server.script("held", [Held(release, "late")])          # answers once release.set()
        litellm model "openai/cheap", api_base=server.base_url, api_key="test"
        server.count("cheap")        # requests received for model "cheap"
        server.requests_for("cheap") # their JSON bodies

Each scripted response is a string (the assistant content; JSON text for structured answers),
a dict (sent as JSON content), `Status(code, retry_after=…)` (an OpenAI-style error),
`Slow(seconds, content)` (answers after a delay), `Held(release, content)` (answers once the
`threading.Event` release is set: a call that hangs until the test lets it go), or
`Reply(content, prompt_tokens, completion_tokens)` (fixed usage). A script that runs out
repeats its last response; a model with no script answers `"fake answer from <model>"`.
Responses carry `usage` so litellm can price them (give the deployment
`input_cost_per_token`/`output_cost_per_token`).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Union

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

__all__ = ["FakeOpenAI", "Held", "Reply", "Response", "Slow", "Status"]


@dataclass(frozen=True)
class Status:
    code: int
    retry_after: float | None = None
    message: str = ""


@dataclass(frozen=True)
class Slow:
    seconds: float
    content: str | dict[str, Any] = "slow answer"


@dataclass(frozen=True)
class Held:
    release: threading.Event
    content: str | dict[str, Any] = "held answer"
    timeout: float = 120.0  # a test that never releases still ends


@dataclass(frozen=True)
class Reply:
    content: str | dict[str, Any]
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


Response = Union[str, dict, Status, Slow, Held, Reply]

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 429: "rate_limit_error"}


def _model_name(model: str) -> str:
    return model.split("/", 1)[1] if model.startswith("openai/") else model


def _words(value: Any) -> int:
    return len(json.dumps(value).split()) if not isinstance(value, str) else len(value.split())


class FakeOpenAI:
    """Context manager running the fake server in a background thread on a free loopback port."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scripts: dict[str, list[Response]] = {}
        self._served: dict[str, int] = defaultdict(int)
        self.requests: list[dict[str, Any]] = []
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # --- scripting and inspection ----------------------------------------------------------

    def script(self, model: str, responses: list[Response]) -> "FakeOpenAI":
        """Answers for `model` ("name" or "openai/name"), in order; the last one repeats."""
        with self._lock:
            self._scripts[_model_name(model)] = list(responses)
            self._served[_model_name(model)] = 0
        return self

    def requests_for(self, model: str) -> list[dict[str, Any]]:
        name = _model_name(model)
        with self._lock:
            return [body for body in self.requests if body.get("model") == name]

    def count(self, model: str) -> int:
        return len(self.requests_for(model))

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self._served.clear()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # --- serving ---------------------------------------------------------------------------

    def _next(self, body: dict[str, Any]) -> Response:
        name = str(body.get("model", ""))
        with self._lock:
            self.requests.append(body)
            script = self._scripts.get(name)
            if not script:
                return f"fake answer from {name}"
            index = min(self._served[name], len(script) - 1)
            self._served[name] += 1
            return script[index]

    def _app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        @app.post("/chat/completions")
        async def chat(request: Request) -> JSONResponse:
            body = await request.json()
            response = self._next(body)
            if isinstance(response, Status):
                headers = {} if response.retry_after is None else {"retry-after": f"{response.retry_after:g}"}
                error = {
                    "message": response.message or f"fake error {response.code}",
                    "type": _ERROR_TYPES.get(response.code, "server_error"),
                    "code": str(response.code),
                }
                return JSONResponse({"error": error}, status_code=response.code, headers=headers)
            if isinstance(response, Slow):
                await asyncio.sleep(response.seconds)
                response = response.content
            if isinstance(response, Held):
                deadline = time.monotonic() + response.timeout
                while not response.release.is_set() and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                response = response.content
            if not isinstance(response, Reply):
                response = Reply(response)
            return JSONResponse(_completion(body, response))

        @app.get("/v1/models")
        async def models() -> dict[str, Any]:
            names = sorted(self._scripts)
            return {"object": "list", "data": [{"id": n, "object": "model", "owned_by": "fake"} for n in names]}

        return app

    def __enter__(self) -> "FakeOpenAI":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self._app(), log_level="warning", lifespan="off", access_log=False, timeout_graceful_shutdown=0.2
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("fake OpenAI server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)


def _completion(body: dict[str, Any], reply: Reply) -> dict[str, Any]:
    content = reply.content if isinstance(reply.content, str) else json.dumps(reply.content)
    prompt_tokens = reply.prompt_tokens
    if prompt_tokens is None:
        prompt_tokens = max(1, sum(_words(m.get("content", "")) for m in body.get("messages", [])))
    completion_tokens = reply.completion_tokens if reply.completion_tokens is not None else max(1, _words(content))
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "fake"),
        "choices": [
            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
