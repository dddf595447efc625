"""Settings: defaults, environment overrides, clear errors, and the README table kept complete."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.settings import Settings, env_names

README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No GOALRAIL_* / OTEL_* variable of the developer's shell leaks into a test."""
    for name in env_names():
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_defaults_run_the_embedded_stack():
    settings = Settings()
    assert settings.kafka_bootstrap == "127.0.0.1:9092"
    assert settings.kafka_idempotence is False  # Tansu rejects the idempotent producer
    assert settings.kafka_partitions == 4
    assert settings.kafka_session_timeout_ms == 10_000
    assert settings.kafka_fetch_max_wait_ms == 20
    assert settings.mongo_url == "embedded://.goalrail/store"
    assert settings.demo_api_url == "http://127.0.0.1:8123"
    assert settings.otlp_endpoint is None
    assert settings.trace_content is False
    assert settings.handler_attempts == 3
    assert settings.log_level == "INFO"
    assert settings.playbooks_dir.is_dir()
    assert settings.routing_table.is_file()


def test_environment_overrides_every_kind_of_field(clean_env: pytest.MonkeyPatch, tmp_path: Path):
    values = {
        "GOALRAIL_KAFKA_BOOTSTRAP": "kafka-1:9092,kafka-2:9092",
        "GOALRAIL_KAFKA_IDEMPOTENCE": "true",
        "GOALRAIL_KAFKA_PARTITIONS": "12",
        "GOALRAIL_KAFKA_FETCH_MAX_WAIT_MS": "500",
        "GOALRAIL_MONGO_URL": "mongodb://mongo:27017",
        "GOALRAIL_PLAYBOOKS_DIR": str(tmp_path),
        "GOALRAIL_TOOL_TIMEOUT_S": "2.5",
        "GOALRAIL_HANDLER_ATTEMPTS": "5",
        "GOALRAIL_LOG_LEVEL": "DEBUG",
    }
    for name, value in values.items():
        clean_env.setenv(name, value)
    settings = Settings()
    assert settings.kafka_bootstrap == "kafka-1:9092,kafka-2:9092"
    assert settings.kafka_idempotence is True
    assert settings.kafka_partitions == 12
    assert settings.kafka_fetch_max_wait_ms == 500
    assert settings.mongo_url == "mongodb://mongo:27017"
    assert settings.playbooks_dir == tmp_path
    assert settings.tool_timeout_s == 2.5
    assert settings.handler_attempts == 5
    assert settings.log_level == "DEBUG"


def test_settings_are_frozen():
    with pytest.raises(ValidationError):
        Settings().kafka_bootstrap = "elsewhere:9092"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("variable", "value", "field", "message"),
    [
        ("GOALRAIL_KAFKA_BOOTSTRAP", "kafka", "kafka_bootstrap", "host:port"),
        ("GOALRAIL_KAFKA_BOOTSTRAP", "kafka:9092,kafka:abc", "kafka_bootstrap", "host:port"),
        ("GOALRAIL_KAFKA_BOOTSTRAP", ":9092", "kafka_bootstrap", "host:port"),
        ("GOALRAIL_MONGO_URL", "postgres://db:5432", "mongo_url", "must start with mongodb://"),
        ("GOALRAIL_MONGO_URL", "mongo:27017", "mongo_url", "must start with mongodb://"),
        ("GOALRAIL_HANDLER_ATTEMPTS", "0", "handler_attempts", "greater than or equal to 1"),
        ("GOALRAIL_HANDLER_ATTEMPTS", "three", "handler_attempts", "valid integer"),
        ("GOALRAIL_KAFKA_PARTITIONS", "0", "kafka_partitions", "greater than or equal to 1"),
        ("GOALRAIL_KAFKA_FETCH_MAX_WAIT_MS", "0", "kafka_fetch_max_wait_ms", "greater than or equal to 1"),
        ("GOALRAIL_KAFKA_IDEMPOTENCE", "maybe", "kafka_idempotence", "valid boolean"),
        ("GOALRAIL_TOOL_TIMEOUT_S", "0", "tool_timeout_s", "greater than 0"),
        ("GOALRAIL_LOG_LEVEL", "TRACE", "log_level", "'DEBUG', 'INFO', 'WARNING' or 'ERROR'"),
    ],
)
def test_invalid_value_names_the_field_and_the_rule(
    clean_env: pytest.MonkeyPatch, variable: str, value: str, field: str, message: str
):
    clean_env.setenv(variable, value)
    with pytest.raises(ValidationError) as caught:
        Settings()
    errors = caught.value.errors()
    assert len(errors) == 1
    assert errors[0]["loc"] == (field,)
    assert message in errors[0]["msg"]
    assert field in str(caught.value)


def test_otel_standard_variable_is_an_alias_of_the_otlp_endpoint(clean_env: pytest.MonkeyPatch):
    clean_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4318")
    endpoint = Settings().otlp_endpoint
    assert endpoint is not None
    assert (endpoint.scheme, endpoint.host, endpoint.port) == ("http", "jaeger", 4318)
    # ServiceRuntime appends /v1/traces to this string.
    assert str(endpoint).rstrip("/") == "http://jaeger:4318"


def test_goalrail_otlp_endpoint_wins_over_the_otel_variable(clean_env: pytest.MonkeyPatch):
    clean_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4318")
    clean_env.setenv("GOALRAIL_OTLP_ENDPOINT", "http://collector:4318")
    endpoint = Settings().otlp_endpoint
    assert endpoint is not None and endpoint.host == "collector"


def test_invalid_otlp_endpoint_is_rejected(clean_env: pytest.MonkeyPatch):
    clean_env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "not a url")
    with pytest.raises(ValidationError, match="URL"):
        Settings()


def test_env_names_cover_every_field_and_both_otlp_names():
    names = env_names()
    assert {"GOALRAIL_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"} <= names
    for field in Settings.model_fields:
        if field != "otlp_endpoint":
            assert f"GOALRAIL_{field.upper()}" in names
    assert all(name.startswith("GOALRAIL_") for name in names - {"OTEL_EXPORTER_OTLP_ENDPOINT"})


def _readme_settings_rows() -> dict[str, str]:
    """`GOALRAIL_*`/`OTEL_*` names in the README's settings table → the row's default column."""
    text = README.read_text()
    section = text.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 3:
            continue
        for name in re.findall(r"`((?:GOALRAIL|OTEL)_[A-Z_]+)`", cells[0]):
            rows[name] = cells[1]
    return rows


def test_every_setting_is_documented_in_the_readme_table():
    documented = set(_readme_settings_rows())
    assert env_names() - documented == set(), "add these rows to README.md's settings table"
    assert documented - env_names() == set(), "README.md documents settings the code does not read"


def test_readme_defaults_are_the_real_defaults(clean_env: pytest.MonkeyPatch):
    """A default shown as a literal in the table, read through the model, gives the field's default."""
    defaults = Settings()
    checked = 0
    for name, default in _readme_settings_rows().items():
        literal = re.fullmatch(r"`([^`]+)`", default)
        if not literal or not name.startswith("GOALRAIL_"):
            continue  # "built-in", "unset"
        field = name.removeprefix("GOALRAIL_").lower()
        clean_env.setenv(name, literal.group(1))
        assert getattr(Settings(), field) == getattr(defaults, field), name
        clean_env.delenv(name)
        checked += 1
    assert checked >= 10
