"""Real HTTP upstreams for tool tests: uvicorn on a free loopback port in a thread, and a
business API that fails in every way a tool's upstream can (each operation in its OpenAPI
document, so the tools are imported from it like any third-party API)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from typing import Annotated, Any

import uvicorn
from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel


class LoopbackServer:
    """An ASGI app served by uvicorn on 127.0.0.1:<free port> in a background thread."""

    def __init__(self, app: Any, lifespan: str = "off") -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                                    lifespan=lifespan))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "LoopbackServer":
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    @property
    def url(self) -> str:
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


class Thing(BaseModel):
    id: str
    value: int


SECRET_HEADER = "Authorization"


def failing_api(slow_s: float = 2.0) -> tuple[FastAPI, Counter[str]]:
    """Operations that answer 429 (+Retry-After), 500, 404, slowly, with an invalid body, with
    401 echoing the credential (a careless upstream), or well (a write honouring Idempotency-Key)."""
    app = FastAPI(title="Failing upstream", version="1.0.0")
    calls: Counter[str] = Counter()
    things: dict[str, Thing] = {}

    @app.get("/limited", operation_id="rate_limited", response_model=Thing)
    async def rate_limited() -> Any:
        calls["rate_limited"] += 1
        return JSONResponse({"error": "slow down"}, 429, headers={"Retry-After": "120"})

    @app.get("/limited-once", operation_id="rate_limited_once", response_model=Thing)
    async def rate_limited_once() -> Any:
        calls["rate_limited_once"] += 1
        if calls["rate_limited_once"] == 1:
            return JSONResponse({"error": "slow down"}, 429, headers={"Retry-After": "1"})
        return Thing(id="ok", value=1)

    @app.get("/broken", operation_id="broken", response_model=Thing)
    async def broken() -> Any:
        calls["broken"] += 1
        return JSONResponse({"error": "database on fire"}, 500)

    @app.get("/things/{thing_id}", operation_id="get_thing", response_model=Thing)
    async def get_thing(thing_id: str) -> Any:
        calls["get_thing"] += 1
        if thing_id not in things:
            return JSONResponse({"error": "not_found", "message": f"no thing {thing_id}"}, 404)
        return things[thing_id]

    @app.get("/slow", operation_id="slow", response_model=Thing)
    async def slow() -> Any:
        calls["slow"] += 1
        await asyncio.sleep(slow_s)
        return Thing(id="late", value=0)

    @app.get("/bad-output", operation_id="bad_output", responses={200: {"model": Thing}})
    async def bad_output() -> Any:
        calls["bad_output"] += 1
        return JSONResponse({"id": 7, "value": "not a number"})

    @app.get("/secure", operation_id="secure", response_model=Thing)
    async def secure(request: Request) -> Any:
        calls["secure"] += 1
        given = request.headers.get(SECRET_HEADER, "")
        if given != "Bearer right-token-123":
            return JSONResponse({"error": "unauthorized", "you_sent": given}, 401)
        return Thing(id="secure", value=1)

    @app.post("/things", operation_id="create_thing", status_code=201, response_model=Thing)
    async def create_thing(thing: Thing, idempotency_key: Annotated[str | None, Header()] = None) -> Any:
        calls["create_thing"] += 1
        if idempotency_key is None:
            return JSONResponse({"error": "missing Idempotency-Key"}, 400)
        things.setdefault(idempotency_key, thing)
        return things[idempotency_key]

    @app.delete("/things/{thing_id}", operation_id="delete_thing", status_code=204)
    async def delete_thing(thing_id: str) -> None:
        calls["delete_thing"] += 1

    return app, calls
