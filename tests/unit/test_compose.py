"""docker-compose.yml and infra/Dockerfile, checked without Docker: the stack's wiring agrees with
the settings model, the service modules, and the commands the READMEs tell people to run."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from shared.settings import Settings, env_names

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
GOALRAIL_SERVICES = ("planner", "router", "executor", "auditor")
# Names a service's environment may hold besides those Settings reads (env_names(), which already
# includes OTEL_EXPORTER_OTLP_ENDPOINT): each is read by something else in the process.
NON_SETTINGS_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP",  # litellm: use the bundled cost map, no network at import
    "PYTHONUNBUFFERED",  # CPython: unbuffered stdout/stderr
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {name: str(value) for name, value in env.items()}


def ports(service: dict[str, Any]) -> dict[int, int]:
    """Published ports as {container port: host port}."""
    published: dict[int, int] = {}
    for entry in service.get("ports", []):
        *host, container = str(entry).split("/")[0].split(":")
        published[int(container)] = int(host[-1]) if host else int(container)
    return published


def listeners(value: str) -> dict[str, tuple[str, int]]:
    """`NAME://host:port,…` → {NAME: (host, port)}."""
    result = {}
    for item in value.split(","):
        name, _, address = item.strip().partition("://")
        host, _, port = address.rpartition(":")
        result[name] = (host, int(port))
    return result


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in env_names():
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def settings_of(service: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name, value in environment(service).items():
        monkeypatch.setenv(name, value)
    return Settings()


def test_stack_has_the_infrastructure_and_the_four_services(services: dict[str, Any]):
    assert set(services) >= {"kafka", "mongo", "jaeger", "demo-api", *GOALRAIL_SERVICES}
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["mongo"]["image"] == "mongo:7"
    assert services["jaeger"]["image"].startswith("jaegertracing/all-in-one:")


def test_services_share_one_anchored_definition(compose: dict[str, Any], services: dict[str, Any]):
    assert "x-goalrail-service" in compose
    text = COMPOSE.read_text()
    assert "&goalrail-service" in text
    for name in GOALRAIL_SERVICES:
        assert services[name]["environment"] == services["planner"]["environment"]
        assert services[name]["build"] == compose["x-goalrail-service"]["build"]


@pytest.mark.parametrize("name", GOALRAIL_SERVICES)
def test_service_environment_names_are_all_read_by_the_code(services: dict[str, Any], name: str):
    unknown = set(environment(services[name])) - env_names() - NON_SETTINGS_ENV
    assert unknown == set(), f"{name} sets variables nothing reads"


@pytest.mark.parametrize("name", GOALRAIL_SERVICES)
def test_service_environment_validates_into_settings(
    services: dict[str, Any], clean_env: pytest.MonkeyPatch, name: str
):
    settings = settings_of(services[name], clean_env)
    assert settings.kafka_bootstrap == "kafka:9092"
    assert settings.kafka_idempotence is True
    assert settings.kafka_fetch_max_wait_ms == 500
    assert urlsplit(settings.mongo_url).scheme == "mongodb"
    assert settings.demo_api_url == "http://demo-api:8123"
    assert settings.otlp_endpoint is not None
    assert (settings.otlp_endpoint.host, settings.otlp_endpoint.port) == ("jaeger", 4318)
    assert environment(services[name])["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"


def test_service_addresses_point_at_services_of_the_stack(
    services: dict[str, Any], clean_env: pytest.MonkeyPatch
):
    settings = settings_of(services["planner"], clean_env)
    kafka_env = environment(services["kafka"])
    advertised = set(listeners(kafka_env["KAFKA_ADVERTISED_LISTENERS"]).values())
    for server in settings.kafka_bootstrap.split(","):
        host, _, port = server.rpartition(":")
        assert (host, int(port)) in advertised, "bootstrap must be an advertised listener"
        assert host == services["kafka"].get("hostname", "kafka")
    mongo = urlsplit(settings.mongo_url)
    assert mongo.hostname in services and "mongo" in services[mongo.hostname]["image"]
    demo = urlsplit(settings.demo_api_url)
    demo_command = services[demo.hostname]["command"]
    assert str(demo.port) == demo_command[demo_command.index("--port") + 1]
    assert settings.otlp_endpoint is not None
    assert settings.otlp_endpoint.host in services
    assert settings.otlp_endpoint.port in ports(services[settings.otlp_endpoint.host])


@pytest.mark.parametrize("name", GOALRAIL_SERVICES)
def test_service_runs_its_module_from_the_shared_image(services: dict[str, Any], name: str):
    service = services[name]
    assert service["command"] == ["python", "-m", f"services.{name}"]
    assert importlib.util.find_spec(f"services.{name}.__main__") is not None
    build = service["build"]
    assert (ROOT / build["context"] / build["dockerfile"]).is_file()
    assert service["restart"] == "on-failure"


@pytest.mark.parametrize("name", GOALRAIL_SERVICES)
def test_service_waits_for_healthy_kafka_and_mongo(services: dict[str, Any], name: str):
    depends = services[name]["depends_on"]
    for dependency in ("kafka", "mongo"):
        assert depends[dependency]["condition"] == "service_healthy"
        assert "test" in services[dependency]["healthcheck"]
    assert "jaeger" in depends


def test_executor_waits_for_the_demo_api(services: dict[str, Any]):
    assert services["executor"]["depends_on"]["demo-api"]["condition"] == "service_healthy"
    assert "/healthz" in " ".join(services["demo-api"]["healthcheck"]["test"])


def test_demo_api_command_listens_on_all_interfaces(services: dict[str, Any], monkeypatch: pytest.MonkeyPatch):
    import uvicorn

    from shared.embedded import demo_api

    command = services["demo-api"]["command"]
    assert command[:3] == ["python", "-m", "shared.embedded.demo_api"]
    assert importlib.util.find_spec(command[2]) is not None
    started: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: started.update(options))
    demo_api.main(command[3:])
    assert (started["host"], started["port"]) == ("0.0.0.0", 8123)
    assert ports(services["demo-api"])[8123] == 8123
    assert services["demo-api"]["build"] == services["planner"]["build"]


def test_kafka_is_a_single_kraft_node(services: dict[str, Any]):
    env = environment(services["kafka"])
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    bound = listeners(env["KAFKA_LISTENERS"])
    advertised = listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(bound) == set(protocols)
    assert set(advertised) <= set(bound)
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] not in advertised  # a broker must not advertise it
    for name, (_, port) in advertised.items():
        assert bound[name][1] == port
    voter_id, _, voter = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].partition("@")
    assert voter_id == env["KAFKA_NODE_ID"]
    assert voter == f"{services['kafka']['hostname']}:{bound[env['KAFKA_CONTROLLER_LISTENER_NAMES']][1]}"
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert len(env["CLUSTER_ID"]) == 22  # 16 bytes, base64url without padding
    assert "kafka-broker-api-versions.sh" in " ".join(services["kafka"]["healthcheck"]["test"])


def test_readmes_tell_kcat_to_use_the_advertised_host_listener(services: dict[str, Any]):
    env = environment(services["kafka"])
    advertised = listeners(env["KAFKA_ADVERTISED_LISTENERS"]).values()
    published = ports(services["kafka"])
    commands = []
    for readme in (ROOT / "README.md", ROOT / "infra" / "README.md"):
        commands += re.findall(r"kcat [^`\n]*-b (\S+)", readme.read_text())
    assert commands, "the READMEs show kcat commands"
    for bootstrap in commands:
        host, _, port = bootstrap.rpartition(":")
        assert (host, int(port)) in advertised
        assert published.get(int(port)) == int(port), f"{port} must be published to the host"
    assert ("localhost", 29092) in advertised


def test_jaeger_accepts_otlp_and_serves_its_ui(services: dict[str, Any]):
    jaeger = services["jaeger"]
    assert {4317, 4318, 16686} <= set(ports(jaeger))
    assert environment(jaeger)["COLLECTOR_OTLP_ENABLED"] == "true"


def test_stateful_services_keep_their_data_in_volumes(compose: dict[str, Any], services: dict[str, Any]):
    for name, path in (("mongo", "/data/db"), ("kafka", "/var/lib/kafka/data")):
        volume, _, target = next(v for v in services[name]["volumes"] if v.endswith(path)).partition(":")
        assert target == path and volume in compose["volumes"]
    assert environment(services["kafka"])["KAFKA_LOG_DIRS"] == "/var/lib/kafka/data"
    assert "mongosh" in services["mongo"]["healthcheck"]["test"]


def test_dockerfile_builds_a_non_root_image_of_the_project():
    dockerfile = (ROOT / "infra" / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.M)
    for source in ("pyproject.toml", "README.md", "shared", "services"):
        assert re.search(rf"^COPY .*\b{re.escape(source)}\b", dockerfile, re.M), source
    assert "pip install" in dockerfile
    users = re.findall(r"^USER (\S+)$", dockerfile, re.M)
    assert users and users[-1] not in {"root", "0"}
    assert "PYTHONUNBUFFERED=1" in dockerfile
    assert "LITELLM_LOCAL_MODEL_COST_MAP=True" in dockerfile
    command = re.findall(r"^CMD (.+)$", dockerfile, re.M)[-1]
    module = yaml.safe_load(command)[2]
    assert importlib.util.find_spec(f"{module}.__main__") is not None


def test_dockerignore_keeps_local_state_out_of_the_build_context():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".venv", ".git", ".goalrail", "tests"} <= ignored
    assert any("__pycache__" in line for line in ignored)
    assert not ignored & {"shared", "services", "pyproject.toml", "README.md"}


def test_mail_tool_reaches_the_demo_outbox_and_executors_share_the_artifacts(services):
    smtp = urlsplit(environment(services["executor"])["GOALRAIL_SMTP_URL"])
    command = services["demo-api"]["command"]
    assert smtp.hostname == "demo-api"
    assert command[command.index("--smtp-port") + 1] == str(smtp.port)
    artifacts = environment(services["executor"])["GOALRAIL_ARTIFACTS_DIR"]
    assert f"artifacts:{artifacts}" in services["executor"]["volumes"]
    assert "/data/artifacts" in (ROOT / "infra" / "Dockerfile").read_text()
