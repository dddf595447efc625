"""Mail tool (Python source): send an e-mail over SMTP. Sending cannot be undone, so the tool is
`irreversible` (its step needs approval); it is still safe to retry: the Message-ID is derived
from the step's Idempotency-Key, and the outbox stores one message per Message-ID."""

from __future__ import annotations

import hashlib
import smtplib
from email.message import EmailMessage
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import BaseModel, Field

from shared.events import ErrorCode, TypedError
from shared.tools.registry import ToolContext, ToolError, tool

ADDRESS = r"^[^@\s]+@[^@\s]+$"


class Mail(BaseModel):
    to: list[Annotated[str, Field(pattern=ADDRESS)]] = Field(min_length=1, max_length=50)
    subject: str = Field(min_length=1, max_length=200)
    body: str = Field(min_length=1)


class Sent(BaseModel):
    message_id: str
    recipients: list[str]


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
    return Sent(message_id=message["Message-ID"], recipients=mail.to)
