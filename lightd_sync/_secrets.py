"""
The token rule, written once: what replaces the token wherever text might hold it.

A remote may echo anything (the token in a body, a header, a reason phrase),
and exceptions of the standard library or urllib3 may quote a request head.
Every piece of text the library shows, logs or raises that could hold the
token goes through :func:`scrub` first. :func:`redact_token` is the short form
that may be shown on purpose (``lightd_…abcd``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Optional

__all__ = ["PLACEHOLDER", "redact_token", "scrub", "scrub_all"]

#: What stands in for a secret in any text the library produces.
PLACEHOLDER = "<token>"


def redact_token(token: Optional[str]) -> Optional[str]:
    """
    Return a form of *token* that is safe to show: ``lightd_…`` plus its last 4 characters.

    Tokens shorter than 16 characters show no characters at all.
    """
    if token is None:
        return None
    prefix = "lightd_" if token.startswith("lightd_") else ""
    tail = token[-4:] if len(token) >= 16 else ""
    return f"{prefix}…{tail}"


def scrub(text: str, secret: Optional[str]) -> str:
    """Return *text* with every occurrence of *secret* replaced by ``<token>``."""
    if secret and secret in text:
        return text.replace(secret, PLACEHOLDER)
    return text


def scrub_all(text: str, secrets: Iterable[Optional[str]]) -> str:
    """Return *text* with each of *secrets* replaced by ``<token>``."""
    for secret in secrets:
        text = scrub(text, secret)
    return text
