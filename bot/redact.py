"""A logging filter that keeps secrets (the bot token) out of every log line.

PTB logs its API URLs at DEBUG, httpx and httpcore log request URLs, and an
exception's text can quote a URL: the token is part of every Bot API URL. The
filter sits on the root logger's handlers, so it sees every record that is
written, from any logger, at any level, and rewrites its message, its
arguments, its exception text and its stack before a formatter reads them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

MASK = "[REDACTED]"
MIN_SECRET = 6  # shorter fragments would mangle ordinary words, and guard nothing


def token_secrets(token: str | None) -> list[str]:
    """What to hide of a bot token ``<bot id>:<secret>``: the whole token and its secret
    part (which is what matters, and may appear alone or URL-encoded next to the id)."""
    if not token:
        return []
    parts = [token]
    _, _, secret = token.partition(":")
    if len(secret) >= MIN_SECRET:
        parts.append(secret)
    return parts


class RedactSecrets(logging.Filter):
    """Replaces every occurrence of the given secrets in a record by ``[REDACTED]``."""

    def __init__(self, secrets: Iterable[str]):
        super().__init__()
        # Longest first, so a token is masked whole before its secret part is looked for.
        self.secrets = sorted({s for s in secrets if s and len(s) >= MIN_SECRET},
                              key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep what there is, redacted
            message = f"{record.msg} {record.args}"
        record.msg, record.args = self.redact(message), None
        if record.exc_info and not record.exc_text:
            # Formatters reuse exc_text when it is set: render the traceback once, here.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


def install(secrets: Iterable[str], logger: logging.Logger | None = None) -> RedactSecrets:
    """Put one :class:`RedactSecrets` on every handler of ``logger`` (default: root)."""
    redactor = RedactSecrets(secrets)
    for handler in (logger or logging.getLogger()).handlers:
        handler.addFilter(redactor)
    return redactor
