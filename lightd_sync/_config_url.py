"""
The ``remote.url`` and ``remote.proxy`` rules: check a URL and bring it to the one form we send.

A URL that passes :func:`normalize_url` is pure printable ASCII and safe to
put into an HTTP request line and ``Host`` header as it is:

- the scheme and host are lower case; a non-ASCII host name is IDNA-encoded
  (``bücher.example`` becomes ``xn--bcher-kva.example``) by the standard
  library's ``idna`` codec (IDNA 2003 with nameprep: the ``idna`` package is
  not a dependency);
- the path is percent-encoded (UTF-8) where RFC 3986 wants it; existing
  ``%XX`` escapes are kept (upper-cased, never encoded twice), a ``%`` that
  starts no escape becomes ``%25``;
- the port is written as a plain number (``:080`` is ``:80``);
- the trailing ``/`` is dropped.

This is the form urllib3's :func:`urllib3.util.parse_url` gives back unchanged.
Whatever cannot be brought to it is refused with a :class:`ConfigError` naming
the key. Messages never show a URL that holds an ``@``: a password is a secret
too.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import quote, unquote, urlsplit

from ._exceptions import ConfigError

__all__ = ["hide_userinfo", "is_loopback_url", "normalize_url", "shown_url"]

#: A host name after IDNA encoding: letters, digits, ``-`` and ``_`` in dot-separated labels.
_ASCII_HOST = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")
#: A ``%`` that starts no ``%XX`` escape.
_STRAY_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
#: RFC 3986 pchar / userinfo characters, plus ``%`` for the escapes already there.
_PATH_SAFE = "/:@!$&'()*+,;=~%"
_USERINFO_SAFE = ":!$&'()*+,;=~%"
#: Characters that IDNA 2003 (the stdlib codec) and IDNA 2008 / UTS #46 (browsers,
#: the ``idna`` package) encode differently, so the two would reach different hosts.
_DEVIATIONS = {"ß": "ss or xn--zca", "ς": "\u03c3 or xn--3xa"}


def shown_url(url: str) -> str:
    """*url* as a message shows it: not at all if it has an ``@`` (a password is a secret too)."""
    return repr(url) if "@" not in url else "a URL with '@' (not shown: it may hold a password)"


def hide_userinfo(url: str) -> str:
    """*url* with any ``user:password@`` shown as ``***@``, for a repr or a log line."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url if "@" not in url else "***"
    authority, slash, path = rest.partition("/")
    if "@" not in authority:
        return url
    return f"{scheme}://***@{authority.rpartition('@')[2]}{slash}{path}"


def is_loopback_url(url: str) -> bool:
    """True if *url* points at this machine (``localhost`` or a loopback address)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _encode(text: str, safe: str) -> str:
    text = _STRAY_PERCENT.sub("%25", text)
    text = _ESCAPE.sub(lambda match: match.group(0).upper(), text)
    return quote(text, safe=safe)


def _host(key: str, hostname: str, bracketed: bool, url: str) -> str:
    if bracketed:
        try:
            address = ipaddress.ip_address(hostname)
        except ValueError:
            address = None
        if "%" in hostname or not isinstance(address, ipaddress.IPv6Address):
            raise ConfigError(
                f"remote.{key}: [{hostname}] is not an IPv6 address (zone ids such as %eth0 "
                f"are not supported): {shown_url(url)}"
            )
        return f"[{hostname}]"
    for char, instead in _DEVIATIONS.items():
        if char in hostname:
            raise ConfigError(
                f"remote.{key}: the host name holds {char!r}, which the IDNA standards encode "
                f"differently; write {instead} as you mean it: {shown_url(url)}"
            )
    try:
        ascii_host = hostname.encode("idna").decode("ascii")
    except UnicodeError as exc:
        # The codec's own words (its wording differs between Python versions):
        # 3.13 raises UnicodeEncodeError with .reason, older ones a UnicodeError
        # that may wrap the label's error.
        cause = exc.__cause__ or exc
        reason = getattr(cause, "reason", None) or getattr(exc, "reason", None) or cause
        raise ConfigError(
            f"remote.{key}: the host name cannot be IDNA-encoded ({reason}): {shown_url(url)}"
        ) from None
    if not _ASCII_HOST.fullmatch(ascii_host):
        raise ConfigError(
            f"remote.{key}: the host name may hold only letters, digits, '-', '_' and dots: "
            f"{shown_url(url)}"
        )
    return ascii_host


def normalize_url(key: str, value: str, *, userinfo: bool) -> str:
    """
    Check *value* as the URL of ``remote.<key>`` and return its normalized form.

    Args:
        key: The key named in errors (``url`` or ``proxy``).
        value: The URL as configured.
        userinfo: Whether ``user:password@`` is allowed (a proxy's credentials).

    Raises:
        ConfigError: The URL cannot be sent as it is, nor normalized to a form that can.
    """
    url = value.rstrip("/")
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise ConfigError(
            f"remote.{key}: contains whitespace or control characters: {shown_url(url)}"
        )
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError on a bad port
    except ValueError as exc:
        if "@" in url:  # exc may quote the password
            raise ConfigError(f"remote.{key}: not a valid URL: {shown_url(url)}") from None
        raise ConfigError(f"remote.{key}: {exc} in {url!r}") from None
    if parts.scheme not in ("http", "https"):
        raise ConfigError(
            f"remote.{key}: must start with https:// or http://, got {shown_url(url)}"
        )
    if not parts.hostname:
        raise ConfigError(f"remote.{key}: has no host name: {shown_url(url)}")
    has_userinfo = "@" in parts.netloc
    if has_userinfo and not userinfo:
        # Do not echo the URL: the password in it is a secret too.
        raise ConfigError(
            f"remote.{key}: must not contain user:password@; the token authenticates requests"
        )
    if "?" in url or "#" in url:
        raise ConfigError(f"remote.{key}: must not have a ?query or #fragment: {shown_url(url)}")
    if port == 0:
        raise ConfigError(f"remote.{key}: port 0 is not a port to connect to: {shown_url(url)}")
    if any(unquote(segment) in (".", "..") for segment in parts.path.split("/")[1:]):
        raise ConfigError(
            f"remote.{key}: must not have '.' or '..' path segments: {shown_url(url)}"
        )
    bracketed = parts.netloc.rpartition("@")[2].startswith("[")
    host = _host(key, parts.hostname, bracketed, url)
    credentials = _encode(parts.netloc.rpartition("@")[0], _USERINFO_SAFE) + "@"
    return "".join(
        (
            f"{parts.scheme}://",
            credentials if has_userinfo else "",
            host,
            f":{port}" if port is not None else "",
            _encode(parts.path, _PATH_SAFE),
        )
    )
