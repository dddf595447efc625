"""Typed settings for every Goalrail process, read from `GOALRAIL_*` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, HttpUrl, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

CONFIG_DIR = Path(__file__).parent / "config"

ServiceName = Literal["planner", "router", "executor", "auditor"]


class Settings(BaseSettings):
    """One settings model for all services; each service reads the fields it needs."""

    model_config = SettingsConfigDict(env_prefix="GOALRAIL_", extra="ignore", frozen=True)

    kafka_bootstrap: str = Field(
        "127.0.0.1:9092", description="Kafka bootstrap servers, comma separated host:port."
    )
    kafka_idempotence: bool = Field(
        False,
        description="Idempotent producer. On for real Kafka; the embedded Tansu broker rejects it.",
    )
    kafka_partitions: int = Field(4, ge=1, le=256, description="Partitions per topic when created.")
    kafka_session_timeout_ms: int = Field(
        10_000, ge=1_000, description="Consumer group session timeout (how fast a dead member is noticed)."
    )
    kafka_fetch_max_wait_ms: int = Field(
        20,
        ge=1,
        le=10_000,
        description="Longest a fetch waits for data. Tansu answers a fetch only when this expires, "
        "so it bounds every hop's latency there; on Kafka, 500 saves requests.",
    )
    mongo_url: str = Field(
        "embedded://.goalrail/store",
        description="mongodb://… for MongoDB; embedded://PATH for the embedded file store; memory:// for tests.",
    )
    playbooks_dir: Path = Field(CONFIG_DIR / "playbooks", description="Folder of YAML playbooks.")
    routing_table: Path = Field(CONFIG_DIR / "routing.yaml", description="YAML routing table.")
    demo_api_url: str = Field(
        "http://127.0.0.1:8123", description="Base URL of the demo business systems (demo tools)."
    )
    otlp_endpoint: HttpUrl | None = Field(
        None,
        validation_alias=AliasChoices("GOALRAIL_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"),
        description="OTLP/HTTP endpoint (e.g. http://jaeger:4318); unset = no export.",
    )
    trace_content: bool = Field(
        False, description="Put (redacted) prompt and output text on spans."
    )
    tool_timeout_s: float = Field(30.0, gt=0, description="Default timeout of one tool call.")
    tools_config: Path = Field(
        CONFIG_DIR / "tools.yaml", description="YAML of tool sources (OpenAPI documents, MCP servers)."
    )
    tool_policy: Path = Field(CONFIG_DIR / "tool_policy.yaml", description="YAML: tenant -> tool scopes.")
    tool_concurrency: int = Field(16, ge=1, le=1024, description="Tool calls in flight per executor.")
    tool_concurrency_per_tool: int = Field(
        4, ge=1, le=1024, description="Calls in flight per tool, so one slow tool cannot take every slot."
    )
    max_in_flight: int = Field(
        256,
        ge=1,
        le=100_000,
        description="Events in flight per service process (handled concurrently across goals, in order "
        "within a goal); at the cap the consumer pauses fetching.",
    )
    artifacts_dir: Path = Field(
        Path(".goalrail/artifacts"), description="Where document tools (spreadsheets, charts) write files."
    )
    smtp_url: str = Field("smtp://127.0.0.1:8025", description="SMTP server of the mail tool (smtp://host:port).")
    smtp_from: str = Field("goalrail@localhost", description="Sender address of the mail tool.")
    model_timeout_s: float = Field(60.0, gt=0, description="Timeout of one model call.")
    handler_attempts: int = Field(
        3, ge=1, le=20, description="Tries of a failing handler before its event goes to the DLQ."
    )
    auditor_http_port: int = Field(
        8130, ge=0, le=65535, description="Port of the auditor's HTTP API (KPIs, audit trail); 0 = off."
    )
    auditor_http_host: str = Field(
        "127.0.0.1", description="Interface the auditor's HTTP API binds (0.0.0.0 in a container)."
    )
    planner_repair_rounds: int = Field(
        2, ge=0, le=5, description="Times an invalid model plan is sent back with its errors before the goal fails."
    )
    planner_max_replans: int = Field(
        1, ge=0, le=10, description="Revised plans per goal after permanent step failures before it is escalated."
    )
    planner_max_tools: int = Field(
        12, ge=1, le=200, description="Most relevant tools shown to the planning model (keyword retrieval)."
    )
    planner_sweep_interval_s: float = Field(
        2.0, gt=0, le=3600, description="How often the planner ends goals past their deadline or time budget."
    )
    approval_amount_usd: float | None = Field(
        1000.0, ge=0, description="Steps whose estimated cost or `amount` input is above this wait for approval."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("mongo_url")
    @classmethod
    def _known_store_scheme(cls, value: str) -> str:
        if not value.startswith(("mongodb://", "mongodb+srv://", "embedded://", "memory://")):
            raise ValueError(
                "must start with mongodb://, mongodb+srv://, embedded:// or memory:// "
                f"(got {value!r})"
            )
        return value

    @field_validator("kafka_bootstrap")
    @classmethod
    def _host_port_list(cls, value: str) -> str:
        for server in value.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port…] (got {value!r})")
        return value


def env_names() -> set[str]:
    """Every environment variable name the settings model reads."""
    names: set[str] = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(choice) for choice in alias.choices)
        else:
            names.add(f"GOALRAIL_{name.upper()}")
    return names
