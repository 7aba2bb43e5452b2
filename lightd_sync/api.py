"""
The local API of a :class:`~lightd_sync.SyncEngine`: a WSGI application, :func:`create_app`.

Lightd offers routes to read the remote config and to reload it from the
file; these are the same routes, plus health, counters and Prometheus
metrics. Mount the application in the daemon's own HTTP server, or serve it
alone (the ``lightd-sync agent`` command does):

>>> from lightd_sync import RemoteConfig, SyncEngine
>>> from lightd_sync.api import create_app
>>> engine = SyncEngine(RemoteConfig(enabled=False))
>>> app = create_app(engine, token="lightd_0123456789abcdef0123")
>>> engine.close()

===============================  =================================================
``GET /remote/config``           the config the engine runs on, token redacted
``POST /remote/reload``          re-read the file and apply it live (an extension:
                                 Lightd itself needs a restart)
``POST /remote/config/reload``   the same, answered in Lightd's own shapes:
                                 ``200 {"message": "Configuration reloaded
                                 successfully"}``, or an error status with
                                 ``{"error": "..."}``
``GET /remote/health``           the last health check of the remote
``GET /remote/stats``            the engine's counters
``GET /metrics``                 the same in the Prometheus text format 0.0.4
===============================  =================================================

Every request needs ``Authorization: Bearer <token>``, Lightd's own API token
(:func:`api_token_from_config` reads it from ``config.json``). Without it the
answer is 401 whatever the path, so that a client without the token learns
nothing; then an unknown path is 404 and a wrong method 405 (with ``Allow``;
``HEAD`` is not served). Answers are JSON (``application/json``) except the
metrics; any ``Accept`` header is accepted, Lightd's
``Application/vnd.pkglatv1+json`` included. No answer ever contains a token.

.. versionadded:: 0.1.0
.. versionchanged:: 0.2.0 ``POST /remote/config/reload``, Lightd's own reload route.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import Any, Callable, Optional, Union

from ._auth import bearer_matches
from ._config import read_document
from ._engine import SyncEngine
from ._exceptions import ConfigError, LightdSyncError
from ._logutil import get_logger
from ._metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ._metrics import render_metrics
from ._secrets import scrub_all
from ._server.http import StartResponse, WSGIEnvironment

__all__ = ["API_TOKEN_ENV", "ApiApp", "api_token_from_config", "create_app"]

log = get_logger("api")

#: The environment variable that overrides ``authorization.token`` (like ``LIGHTD_REMOTE_TOKEN``).
API_TOKEN_ENV = "LIGHTD_API_TOKEN"  # noqa: S105 - a variable name, not a token

_JSON_HEADERS = [
    ("Content-Type", "application/json"),
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
]
_Answer = tuple[int, Any]
#: What Lightd's ``POST /remote/config/reload`` answers when the reload worked.
LIGHTD_RELOADED = {"message": "Configuration reloaded successfully"}


def _token_problem(token: object) -> Optional[str]:
    """Say what makes *token* unusable as a bearer token, without echoing it."""
    if not isinstance(token, str):
        return f"expected a string, got {type(token).__name__}"
    if not token:
        return "must not be empty"
    if not (token.isascii() and token.isprintable()) or any(ch.isspace() for ch in token):
        return (
            "must be usable as an HTTP header value "
            "(printable ASCII, no whitespace or control characters)"
        )
    return None


def api_token_from_config(
    source: Union[str, os.PathLike[str], Mapping[str, Any]],
    *,
    env: Mapping[str, str] = os.environ,
) -> Optional[str]:
    """
    Return Lightd's own API token, ``authorization.token`` of ``config.json``, or None if unset.

    ``LIGHTD_API_TOKEN`` in *env*, when set and not empty, overrides the file
    (as ``LIGHTD_REMOTE_TOKEN`` overrides ``remote.token``).

    Args:
        source: A path to ``config.json``, or the already-parsed dict of the whole file.
        env: Where to look for ``LIGHTD_API_TOKEN``.

    Raises:
        ConfigError: The file cannot be read or parsed, ``authorization`` is not
            an object, or ``authorization.token`` is present but not a usable
            string (the message names the key, never the value).

    .. versionadded:: 0.1.0
    """
    override = env.get(API_TOKEN_ENV)
    if override:
        problem = _token_problem(override)
        if problem is not None:
            raise ConfigError(f"{API_TOKEN_ENV}: {problem}")
        return override
    section = read_document(source).get("authorization")
    if section is None:
        return None
    if not isinstance(section, Mapping):
        raise ConfigError(f"authorization: expected a JSON object, got {type(section).__name__}")
    token = section.get("token")
    if token is None:
        return None
    problem = _token_problem(token)
    if problem is not None:
        raise ConfigError(f"authorization.token: {problem}")
    return str(token)


class _RejectError(Exception):
    """Answer with a JSON error: raised anywhere in the handling of a request."""

    def __init__(self, status: int, message: str, headers: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = list(headers)


class ApiApp:
    """
    The local API as a WSGI application; build it with :func:`create_app`.

    Thread-safe: a threading server may call it from many threads at once.
    It does not own the engine: closing the engine is the caller's business.

    Attributes:
        engine: The engine whose config, health and counters are served.
    """

    def __init__(self, engine: SyncEngine, *, token: str) -> None:
        if not isinstance(engine, SyncEngine):
            raise TypeError(f"engine must be a SyncEngine, not {type(engine).__name__}")
        problem = _token_problem(token)
        if problem is not None:
            raise ConfigError(f"token: {problem}")
        self.engine = engine
        self._token = token
        self._token_bytes = token.encode("ascii")
        self._routes: dict[str, tuple[str, Callable[[], _Answer]]] = {
            "/remote/config": ("GET", self._config),
            "/remote/reload": ("POST", self._reload),
            "/remote/config/reload": ("POST", self._lightd_reload),
            "/remote/health": ("GET", self._health),
            "/remote/stats": ("GET", self._stats),
            "/metrics": ("GET", self._metrics),
        }

    def __repr__(self) -> str:
        return f"<ApiApp engine={self.engine!r}>"

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Answer one request (the WSGI protocol)."""
        headers: list[tuple[str, str]] = []
        try:
            status, doc = self._handle(environ)
        except _RejectError as reject:
            status, headers = reject.status, reject.headers
            doc = {"success": False, "error": reject.message}
        except Exception:  # a bug: log it, answer 500, keep serving
            if not sys.is_finalizing():
                log.exception(
                    "error handling %.32r %.200r",
                    environ.get("REQUEST_METHOD"),
                    environ.get("PATH_INFO"),
                )
            status = 500
            doc = {"success": False, "error": "internal error; see the log of lightd_sync.api"}
        if isinstance(doc, str):  # the metrics
            body = doc.encode("utf-8")
            headers = [("Content-Type", METRICS_CONTENT_TYPE), ("Cache-Control", "no-store")]
        else:
            body = json.dumps(self._scrub(doc), separators=(",", ":")).encode("ascii")
            headers = [*_JSON_HEADERS, *headers]
        headers.append(("Content-Length", str(len(body))))
        start_response(f"{status} {HTTPStatus(status).phrase}", headers)
        return [body]

    def _handle(self, environ: WSGIEnvironment) -> _Answer:
        if not self._authorized(environ.get("HTTP_AUTHORIZATION")):
            raise _RejectError(
                401,
                "missing or invalid bearer token: send Authorization: Bearer <API token> "
                "(authorization.token in Lightd's config.json)",
                [("WWW-Authenticate", 'Bearer realm="lightd-sync"')],
            )
        path = str(environ.get("PATH_INFO") or "")
        method = str(environ.get("REQUEST_METHOD") or "")
        route = self._routes.get(path)
        if route is None:
            raise _RejectError(404, "no such route")
        allowed, handler = route
        if method != allowed:
            raise _RejectError(405, f"method not allowed; use {allowed}", [("Allow", allowed)])
        return handler()

    def _authorized(self, header: object) -> bool:
        return bearer_matches(header, self._token_bytes)

    def _scrub(self, doc: Any) -> Any:
        """Replace the tokens (the API's, the remote's) wherever they appear in *doc*."""
        secrets = [self._token]
        remote = self.engine.config.token
        if remote:
            secrets.append(remote)

        def walk(value: Any) -> Any:
            if isinstance(value, str):
                return scrub_all(value, secrets)
            if isinstance(value, dict):
                return {walk(k): walk(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [walk(v) for v in value]
            return value

        return walk(doc)

    # -- the routes --------------------------------------------------------------

    def _config(self) -> _Answer:
        return 200, self.engine.config.redacted()

    def _reload(self) -> _Answer:
        engine = self.engine
        # Private state of a sibling module: the engine has no public flag for either.
        if engine.source is None:
            raise _RejectError(
                409,
                "this engine was not built from a file (SyncEngine.from_file); "
                "there is nothing to reload",
            )
        if engine.closed:
            raise _RejectError(409, "the engine is closed")
        try:
            result = engine.reload()
        except ConfigError as exc:
            return 400, {"success": False, "error": str(exc)}
        except LightdSyncError as exc:  # closed meanwhile
            raise _RejectError(409, str(exc)) from None
        return 200, {"success": True, **result.to_dict()}

    def _lightd_reload(self) -> _Answer:
        """Lightd's route: the same reload, answered ``{"message": ...}`` or ``{"error": ...}``."""
        try:
            status, doc = self._reload()
        except _RejectError as reject:
            return reject.status, {"error": reject.message}
        if status != 200:
            return status, {"error": doc["error"]}
        return 200, dict(LIGHTD_RELOADED)

    def _health(self) -> _Answer:
        return 200, self.engine.health.to_dict()

    def _stats(self) -> _Answer:
        return 200, self.engine.stats().to_dict()

    def _metrics(self) -> _Answer:
        engine = self.engine
        from ._version import version

        return 200, render_metrics(
            engine.stats(),
            engine.health,
            engine.latency_histogram(),
            engine.outcome_reasons(),
            version(),
        )


def create_app(engine: SyncEngine, *, token: str) -> ApiApp:
    """
    Build the local API of *engine* as a WSGI application.

    Args:
        engine: The engine to serve; the application never closes it.
        token: The bearer token every request must send (Lightd's own API
            token; see :func:`api_token_from_config`).

    Raises:
        ConfigError: *token* is empty or not usable as an HTTP header value.
        TypeError: *engine* is not a :class:`~lightd_sync.SyncEngine`.

    .. versionadded:: 0.1.0
    """
    return ApiApp(engine, token=token)
