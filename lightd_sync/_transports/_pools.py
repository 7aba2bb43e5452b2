"""
The HTTP transports' connection settings: the TLS context and the proxy.

Everything here runs when a transport is created, never per request. It
works on urllib3 1.26 and 2.x alike.
"""

from __future__ import annotations

import base64
import os
import ssl
import urllib.request
from typing import Union
from urllib.parse import unquote, urlsplit

import attrs
import urllib3
from urllib3.util.ssl_ import create_urllib3_context

from .._config import RemoteConfig
from .._exceptions import ConfigError

__all__ = ["NO_DELAY", "Proxy", "choose_proxy", "tls_context"]

#: Socket options towards a proxy: TCP_NODELAY, urllib3's default, which it turns
#: off there. A request's headers and body are two writes, so with Nagle's
#: algorithm each request on a kept-alive connection waits 40 ms for the proxy's
#: delayed ACK.
NO_DELAY = list(urllib3.connection.HTTPConnection.default_socket_options)

_PROXY_SCHEMES = ("http", "https")


def _no_password() -> bytes:
    # Without a callback, OpenSSL would prompt on the terminal for an
    # encrypted key's passphrase: a daemon would hang.
    raise ConfigError("remote.client_key: the key is encrypted; give an unencrypted key file")


def _ssl_reason(exc: ssl.SSLError) -> str:
    return str(exc.reason or exc.strerror or exc)


def _readable(key: str, path: str) -> None:
    if not os.access(path, os.R_OK):
        why = "does not exist" if not os.path.exists(path) else "is not readable"
        raise ConfigError(f"remote.{key}: {path!r} {why}")


def tls_context(config: RemoteConfig) -> ssl.SSLContext:
    """
    Build the one TLS context of a transport from ``verify``, ``ca_bundle`` and the client cert.

    Files are read once, here: a missing or broken file is a :class:`ConfigError`
    now rather than a failed connection later, and no connection re-reads them.

    Raises:
        ConfigError: A file is missing, unreadable or not PEM; the key is encrypted.
    """
    ctx = create_urllib3_context(cert_reqs=ssl.CERT_REQUIRED if config.verify else ssl.CERT_NONE)
    # The name in the certificate is checked by the handshake itself (server_hostname).
    ctx.check_hostname = bool(config.verify)
    try:
        if config.ca_bundle is not None:
            _readable("ca_bundle", config.ca_bundle)
            if os.path.isdir(config.ca_bundle):
                ctx.load_verify_locations(capath=config.ca_bundle)
            else:
                ctx.load_verify_locations(cafile=config.ca_bundle)
        elif config.verify:
            ctx.load_default_certs()
    except ssl.SSLError as exc:
        raise ConfigError(
            f"remote.ca_bundle: no PEM certificates to load: {_ssl_reason(exc)}"
        ) from None
    if config.client_cert is not None:
        _readable("client_cert", config.client_cert)
        if config.client_key is not None:
            _readable("client_key", config.client_key)
        try:
            ctx.load_cert_chain(config.client_cert, config.client_key, password=_no_password)
        except ssl.SSLError as exc:
            raise ConfigError(
                "remote.client_cert: cannot load the client certificate and key "
                f"(not PEM, or the key does not match): {_ssl_reason(exc)}"
            ) from None
    return ctx


@attrs.frozen
class Proxy:
    """
    The proxy a transport goes through.

    Attributes:
        url: ``scheme://host:port`` without any credentials.
        headers: ``Proxy-Authorization``, when the proxy URL held user:password.
        source: Where it came from: ``remote.proxy`` or the environment variable.
    """

    url: str
    headers: dict[str, str] = attrs.field(repr=False)
    source: str

    def __str__(self) -> str:
        return f"{self.url} (from {self.source})"


def _env_name(scheme: str) -> str:
    for name in (f"{scheme}_proxy", f"{scheme.upper()}_PROXY"):
        if os.environ.get(name):
            return name
    return f"{scheme.upper()}_PROXY"


def _parse_proxy(raw: str, source: str) -> Union[Proxy, str]:
    """Split *raw* into a :class:`Proxy`, or return why it cannot be used (no secrets in it)."""
    if "://" not in raw:  # "proxy:3128", as curl and requests accept it
        raw = f"http://{raw}"
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError:
        return f"{source} is not a valid URL"
    if parts.scheme.lower() not in _PROXY_SCHEMES or not parts.hostname:
        return f"{source} is not an http:// or https:// proxy URL (scheme {parts.scheme!r})"
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    url = f"{parts.scheme.lower()}://{host}" + (f":{port}" if port else "")
    headers: dict[str, str] = {}
    if parts.username is not None:
        creds = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        headers["Proxy-Authorization"] = "Basic " + base64.b64encode(creds.encode()).decode()
    return Proxy(url, headers, source)


def choose_proxy(config: RemoteConfig) -> Union[Proxy, str, None]:
    """
    The proxy for the remote: ``remote.proxy``, else ``HTTPS_PROXY``/``HTTP_PROXY``.

    The environment is read through :func:`urllib.request.getproxies` (lower
    case wins; ``HTTP_PROXY`` is ignored in a CGI request) and ``NO_PROXY``
    through :func:`urllib.request.proxy_bypass`. ``remote.proxy`` is used
    whatever ``NO_PROXY`` says.

    Returns:
        The proxy; ``None`` for a direct connection; or a string saying why the
        environment's proxy cannot be used (the caller logs it and goes direct).
    """
    if config.proxy is not None:
        return _parse_proxy(config.proxy, "remote.proxy")
    assert config.url is not None  # the transport checked
    parts = urlsplit(config.url)
    raw = urllib.request.getproxies().get(parts.scheme)
    if not raw or urllib.request.proxy_bypass(parts.netloc):
        return None
    return _parse_proxy(raw, _env_name(parts.scheme))
