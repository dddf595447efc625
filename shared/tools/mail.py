"""Mail tool (Python source): send an e-mail over SMTP, optionally with files of the artifacts
folder attached (a chart, a spreadsheet). Sending cannot be undone, so the tool is
`irreversible` (its step needs approval); it is still safe to retry: the Message-ID is derived
from the step's Idempotency-Key, and the outbox stores one message per Message-ID."""

from __future__ import annotations

import hashlib
import mimetypes
import smtplib
from email.message import EmailMessage
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, field_validator

from shared.events import ErrorCode, TypedError
from shared.tools.registry import ToolContext, ToolError, tool

ADDRESS = r"^[^@\s]+@[^@\s]+$"


class FileRef(BaseModel):
    """A file to attach: a document tool's output (path, sha256) or just a path."""

    path: str = Field(min_length=1, description="A file in the artifacts folder.")
    filename: str | None = Field(None, max_length=120, pattern=r"^[^/\\]+$", description="Name in the mail.")
    sha256: str | None = Field(None, description="When given, the file must still have this content.")


class Mail(BaseModel):
    to: list[Annotated[str, Field(pattern=ADDRESS)]] = Field(min_length=1, max_length=50)
    subject: str = Field(min_length=1, max_length=200)
    body: str = Field(min_length=1)
    attachments: list[FileRef] = Field(default_factory=list, max_length=10)

    @field_validator("to", mode="before")
    @classmethod
    def _one_address_is_a_list(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value


class Sent(BaseModel):
    message_id: str
    recipients: list[str]
    attachments: list[str] = Field(default_factory=list, description="File names attached.")


def message_id(idempotency_key: str) -> str:
    return f"<{hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]}@goalrail>"


@tool("mail.deliver", side_effect="irreversible", permission_scope="mail.deliver", timeout_s=20,
      data_classes=["pii"])
def deliver_mail(mail: Mail, ctx: ToolContext) -> Sent:
    """Mail: deliver an e-mail (plain text) to one or more people through the SMTP server.
    Retries are safe: the Message-ID comes from the step."""
    url = urlsplit(ctx.config.get("smtp_url") or "smtp://127.0.0.1:8025")
    message = EmailMessage()
    message["From"] = ctx.config.get("smtp_from") or "goalrail@localhost"
    message["To"] = ", ".join(mail.to)
    message["Subject"] = mail.subject
    message["Message-ID"] = message_id(ctx.idempotency_key)
    message.set_content(mail.body)
    for ref in mail.attachments:
        data, filename = _attachment(ref, Path(ctx.config.get("artifacts_dir") or ".goalrail/artifacts"))
        kind = (mimetypes.guess_type(filename)[0] or "application/octet-stream").split("/", 1)
        message.add_attachment(data, maintype=kind[0], subtype=kind[1], filename=filename)
    try:
        with smtplib.SMTP(url.hostname or "127.0.0.1", url.port or 25, timeout=15) as smtp:
            smtp.send_message(message)
    except smtplib.SMTPRecipientsRefused as exc:
        raise ToolError(TypedError(
            code=ErrorCode.INVALID_INPUT, message=f"mail.deliver: recipients refused: {sorted(exc.recipients)}",
            details={"tool": "mail.deliver", "refused": sorted(exc.recipients)},
        )) from None
    except smtplib.SMTPResponseException as exc:
        raise ToolError(TypedError(
            code=ErrorCode.UPSTREAM_ERROR,
            message=f"mail.deliver: the SMTP server answered {exc.smtp_code}",
            retryable=400 <= exc.smtp_code < 500,  # 4xx is transient in SMTP, 5xx is final
            details={"tool": "mail.deliver", "status": exc.smtp_code, "error": str(exc.smtp_error)[:300]},
        )) from None
    except (OSError, smtplib.SMTPException) as exc:
        raise ToolError(TypedError(
            code=ErrorCode.UPSTREAM_ERROR,
            message=f"mail.deliver: cannot reach the SMTP server at {url.netloc} ({type(exc).__name__})",
            retryable=True,
            details={"tool": "mail.deliver", "status": None, "cause": type(exc).__name__},
        )) from None
    return Sent(message_id=message["Message-ID"], recipients=mail.to,
                attachments=[part.get_filename() or "" for part in message.iter_attachments()])


def _attachment(ref: FileRef, folder: Path) -> tuple[bytes, str]:
    """The bytes of a file of the artifacts folder; anything outside it is refused, so a plan
    cannot mail files of the executor's host."""
    path = Path(ref.path).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise _invalid(f"attachment {ref.path!r} is not in the artifacts folder", ref)
    if not path.is_file():
        raise _invalid(f"attachment {ref.path!r} does not exist", ref)
    data = path.read_bytes()
    if ref.sha256 and hashlib.sha256(data).hexdigest() != ref.sha256:
        raise _invalid(f"attachment {ref.path!r} changed since it was written (sha256 differs)", ref)
    return data, ref.filename or path.name


def _invalid(message: str, ref: FileRef) -> ToolError:
    return ToolError(TypedError(code=ErrorCode.INVALID_INPUT, message=f"mail.deliver: {message}",
                                details={"tool": "mail.deliver", "attachment": ref.path}))
