"""Credentials of tool sources: named in config, read from the environment or a file, and kept
out of everything Goalrail emits (events, logs, spans) by redacting their values."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

REDACTED = "[REDACTED]"
T = TypeVar("T")


class SecretRef(BaseModel):
    """Where a secret comes from: `{env: NAME}` or `{file: PATH}`; a prefix such as "Bearer "
    is added in front of the value. The value itself is never written in config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    env: str | None = None
    file: Path | None = None
    prefix: str = ""
    optional: bool = Field(False, description="Missing secret = send no header (instead of failing).")

    @model_validator(mode="after")
    def _one_source(self) -> "SecretRef":
        if (self.env is None) == (self.file is None):
            raise ValueError("a secret needs exactly one of `env` or `file`")
        return self

    def resolve(self) -> SecretStr | None:
        if self.env is not None:
            value = os.environ.get(self.env)
            where = f"environment variable {self.env}"
        else:
            assert self.file is not None
            value = self.file.read_text().strip() if self.file.is_file() else None
            where = f"file {self.file}"
        if not value:
            if self.optional:
                return None
            raise LookupError(f"secret from {where} is not set")
        return SecretStr(self.prefix + value)


def redact(value: T, secrets: set[str]) -> T:
    """`value` with every occurrence of a secret replaced; works on strings, containers and
    pydantic models (returns a copy)."""
    if not secrets:
        return value
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, REDACTED)  # type: ignore[assignment]
        return value
    if isinstance(value, BaseModel):
        return type(value).model_validate(redact(value.model_dump(), secrets))  # type: ignore[return-value]
    if isinstance(value, dict):
        return {redact(k, secrets): redact(v, secrets) for k, v in value.items()}  # type: ignore[return-value]
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v, secrets) for v in value)  # type: ignore[return-value]
    return value


def secret_values(secrets: dict[str, SecretStr | None]) -> set[str]:
    values: set[str] = set()
    for secret in secrets.values():
        if secret is not None:
            raw = secret.get_secret_value()
            values.add(raw)
            # a prefixed value ("Bearer abc") also hides the bare token
            values.add(raw.split(" ", 1)[-1])
    return {v for v in values if len(v) >= 4}
