"""
The secrets rule, written once: what replaces a secret wherever text might hold it.

The secrets of a config are the token, the proxy's password (as written in
the URL and percent-decoded) and the ``Proxy-Authorization`` value built from
it (its Base64 form). A remote or a proxy may echo anything (a body, a header,
a reason phrase), and exceptions of the standard library or urllib3 may quote
a request head or keep what was read (``IncompleteRead.partial``). Every piece
of text the library shows, logs or raises that could hold a secret goes
through :func:`scrub_all` first, **before** it is cut to length;
:func:`clean_error` applies the rule to an exception, its arguments,
attributes and chain. :func:`redact_token` is the short form that may be
shown on purpose (``lightd_…abcd``).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Iterator
from typing import Optional, Union
from urllib.parse import unquote, urlsplit

__all__ = [
    "PLACEHOLDER",
    "Secrets",
    "holds_secret",
    "redact_token",
    "scrub",
    "scrub_all",
    "secrets_of",
]

#: What stands in for a secret in any text the library produces.
PLACEHOLDER = "<token>"

#: The secrets of one config: never shown anywhere (longest first).
Secrets = tuple[str, ...]

# Shorter strings are not scrubbed: "a" as a password would turn every "a" into <token>.
_SHORTEST = 4


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
    """Return *text* with each of *secrets* replaced by ``<token>`` (apply before cutting)."""
    if isinstance(secrets, str):  # one secret given alone: not its characters
        secrets = (secrets,)
    for secret in secrets:
        text = scrub(text, secret)
    return text


def _proxy_secrets(proxy: Optional[str]) -> Iterator[str]:
    """The password of *proxy* (raw and decoded) and its ``Proxy-Authorization`` forms."""
    if not proxy or "@" not in proxy:
        return
    raw = proxy if "://" in proxy else f"http://{proxy}"
    try:
        parts = urlsplit(raw)
        user, password = parts.username, parts.password
    except ValueError:
        return
    if user is None:
        return
    if password:
        yield password
        yield unquote(password)
    creds = f"{unquote(user)}:{unquote(password or '')}".encode()
    for encoding in (base64.b64encode(creds).decode(),):
        yield encoding
        yield encoding.rstrip("=")


def secrets_of(token: Optional[str], proxy: Optional[str] = None) -> Secrets:
    """
    The secrets of a config: *token*, and *proxy*'s password with its Base64 header form.

    Longest first, so that a secret holding another is replaced whole.
    """
    found = {s for s in (token, *_proxy_secrets(proxy)) if s and len(s) >= _SHORTEST}
    return tuple(sorted(found, key=len, reverse=True))


def holds_secret(value: object, secrets: Union[Secrets, str]) -> bool:
    """Whether *value* (text, bytes, or anything's ``str``/``repr``) shows one of *secrets*."""
    if isinstance(secrets, str):
        secrets = (secrets,)
    if not secrets:
        return False
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        return any(s.encode("utf-8", "replace") in data for s in secrets)
    texts = [value] if isinstance(value, str) else [str(value), repr(value)]
    return any(s in text for text in texts for s in secrets)
