"""Keeping storage credentials out of logs, reported properties and stored errors.

Storage errors and SDK log lines can carry a connection string's AccountKey or a SAS token's signature (in a
URL's query). Everything the uploader writes out goes through `redact`; `RedactingFilter` does it for log
records.
"""

from __future__ import annotations

import logging
import re
import urllib.parse
from collections.abc import Iterable

MASK = "***"
_PATTERNS = (
    # Connection-string fields holding a secret, up to the next ';' (or the end).
    re.compile(r"(?i)(AccountKey|SharedAccessSignature|SharedAccessKey)=[^;\s'\"]+"),
    # SAS query parameters: the signature is the secret; the rest is kept for diagnosis.
    re.compile(r"(?i)([?&](?:sig|signature|secret|token|code))=[^&\s'\"#]+"),
)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: f"{m.group(1)}={MASK}", text)
    for secret in secrets:
        if len(secret) >= 8:
            for form in {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)}:
                text = text.replace(form, MASK)
    return text


def secrets_of(connection: str) -> list[str]:
    """The secret values inside a connection string or SAS URL, so they are masked wherever they turn up."""
    found = [m.group(0).split("=", 1)[1] for m in _PATTERNS[0].finditer(connection)]
    found += [m.group(0).split("=", 1)[1] for m in _PATTERNS[1].finditer(connection)]
    decoded = [urllib.parse.unquote(s) for s in found]
    return sorted({*found, *decoded}, key=len, reverse=True)


class RedactingFilter(logging.Filter):
    """Renders each record's message (and traceback) and masks credentials in it."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = list(secrets)
        self._formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage(), self._secrets)
        record.args = None
        if record.exc_info:
            record.exc_text = redact(self._formatter.formatException(record.exc_info), self._secrets)
            record.exc_info = None
        return True
