"""Redaction: API keys and bearer tokens stay out of failed markers, rejects, logs and status.

Server error bodies, exception messages and URLs are copied into files that whole teams read (and
into run directories that get copied between teams). Everything that writes such text passes it
through redact(), which removes the keys this process knows (registered by the engine that holds
them) and anything shaped like a credential.
"""

from __future__ import annotations

import os
import re

MASK = "[redacted]"

# Secrets this process holds, e.g. the endpoint's API key; a set, so that registering twice is harmless.
_known: set[str] = set()

_PATTERNS = (
    # "Authorization: Bearer abc...", "bearer=abc..." as servers echo them back.
    (re.compile(r"(?i)\b(bearer|basic|token)(\s+|=)[A-Za-z0-9._~+/=-]{6,}"), rf"\1\2{MASK}"),
    # key=..., "api_key": "...", password: ... in JSON, query strings and messages.
    (re.compile(r"(?i)((?:api[_-]?key|access[_-]?token|auth[_-]?token|secret|password|passwd|authorization)"
                r"[\"']?\s*[:=]\s*[\"']?)[^\s\"',;&}]{4,}"), rf"\1{MASK}"),
    # Well-known key formats: OpenAI-style sk-..., Hugging Face hf_..., GitHub ghp_...
    (re.compile(r"\b(?:sk|pk|rk)-[A-Za-z0-9_-]{16,}|\bhf_[A-Za-z0-9]{20,}|\bgh[pousr]_[A-Za-z0-9]{20,}"), MASK),
    # user:password@ in URLs.
    (re.compile(r"(//)[^/@\s:]+:[^/@\s]+@"), rf"\1{MASK}@"),
)


def register_secret(secret: str) -> None:
    """Remember a secret so that redact() removes it wherever it shows up, whatever its shape."""
    if len(secret) >= 4:  # shorter "secrets" would blank out ordinary words
        _known.add(secret)


def register_env_secret(variable: str) -> None:
    """The value of an environment variable named in the config (endpoint.api_key_env), if set."""
    if variable:
        register_secret(os.environ.get(variable, ""))


def redact(text: str) -> str:
    """text with every registered secret and anything shaped like a credential replaced by [redacted]."""
    if not text:
        return text
    for secret in sorted(_known, key=len, reverse=True):
        text = text.replace(secret, MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text
