"""Keeping secrets (the Slack token, webhook URLs) out of log lines and error messages.

slack-sdk logs request URLs at INFO (an incoming-webhook URL *is* a secret) and, at DEBUG, request and response
dumps. Its clients therefore log through a private logger that never emits DEBUG and whose filter rewrites every
record with the secrets replaced; every error message the alerts code stores or logs goes through ``Redactor.text``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from urllib.parse import quote, urlsplit

MASK = "***"
# Fragments shorter than this are not worth masking (they would mangle ordinary words).
MIN_SECRET_LEN = 6


class Redactor:
    """Replaces each known secret (and its URL-quoted form) with ``***``."""

    def __init__(self, secrets: Iterable[str | None] = ()):
        self._secrets: list[str] = []
        for s in secrets:
            self.add(s)

    def add(self, secret: str | None) -> None:
        if not secret or len(secret) < MIN_SECRET_LEN:
            return
        forms = {secret, quote(secret, safe=""), quote(secret)}
        parts = urlsplit(secret)
        if parts.scheme and parts.netloc:
            # A URL's path and query usually carry the secret part (Slack: /services/T../B../<secret>).
            tail = secret.split(parts.netloc, 1)[1]
            if len(tail) >= MIN_SECRET_LEN:
                forms.add(tail)
        for f in forms:
            if f not in self._secrets:
                self._secrets.append(f)
        self._secrets.sort(key=len, reverse=True)  # longest first, so a URL is masked whole

    def text(self, value: object) -> str:
        out = str(value)
        for s in self._secrets:
            if s in out:
                out = out.replace(s, MASK)
        return out


class RedactingFilter(logging.Filter):
    """A logging filter that formats each record once and masks the secrets in it (message and traceback)."""

    def __init__(self, redactor: Redactor):
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not leak its arguments either
            message = str(record.msg)
        record.msg = self.redactor.text(message)
        record.args = None
        if record.exc_info:
            # Render the traceback now, masked, and drop the live exception so no handler renders it again.
            formatted = logging.Formatter().formatException(record.exc_info)
            record.exc_text = self.redactor.text(formatted)
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = self.redactor.text(record.exc_text)
        return True


# One process-wide set of secrets: several Alerting instances (tests, a reload) may share slack-sdk's loggers,
# and masking a secret that another instance uses too is harmless.
SECRETS = Redactor()


def sdk_logger(name: str) -> logging.Logger:
    """The private logger handed to a slack-sdk client: INFO and up only, every known secret masked.

    Its level is pinned to INFO because slack-sdk's DEBUG dumps contain request bodies and headers; the level is
    set on this private logger only (no handlers are configured), so the application's logging setup decides
    where the records go. Register the secrets with ``SECRETS.add`` first.
    """
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    if not any(isinstance(f, RedactingFilter) for f in logger.filters):
        logger.addFilter(RedactingFilter(SECRETS))
    return logger
