"""
The ``remote`` section of Lightd's ``config.json``: :class:`RemoteConfig` and :func:`load_config`.

Every value is checked by the attrs validators of :class:`RemoteConfig`, so a
config built in code is held to the same rules as one read from a file. The
one cattrs converter (:func:`make_converter`) only maps the JSON object onto
the class and refuses unknown keys; it never coerces (``"false"`` is not a
boolean here).
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

import attrs

from ._config_secrets import TOKEN_FILE_VAR, read_token_file, warn_if_shared
from ._config_url import hide_userinfo, is_loopback_url, normalize_url
from ._exceptions import ConfigError
from ._secrets import redact_token

if TYPE_CHECKING:
    import cattrs

__all__ = ["RemoteConfig", "is_loopback_url", "load_config", "make_converter", "redact_token"]

#: Environment variables that override the file, and the key each one sets.
ENV_OVERRIDES = {
    "LIGHTD_REMOTE_ENABLED": "enabled",
    "LIGHTD_REMOTE_URL": "url",
    "LIGHTD_REMOTE_TOKEN": "token",
    TOKEN_FILE_VAR: "token",  # after LIGHTD_REMOTE_TOKEN: the file wins
    "LIGHTD_REMOTE_STATE_PATH": "state_path",
}
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_TRANSPORT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_MAX_PATH = 4096
#: The largest number of seconds any duration key may hold: one day. Beyond
#: it, threading's timeouts overflow (``OverflowError``) and a lane or the
#: health timer would sleep for longer than any daemon runs between restarts.
MAX_SECONDS = 86_400


def _token_repr(token: Optional[str]) -> str:
    return repr(redact_token(token))


def _fail(key: str, expect: str, value: object) -> ConfigError:
    return ConfigError(f"remote.{key}: expected {expect}, got {_shown_number(value)}")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _to_float(value: Any) -> Any:
    """Let ints stand for floats; leave anything else for the validator to name."""
    if not _is_number(value):
        return value
    try:
        return float(value)
    except OverflowError:  # an int too large for a float: the validator names it
        return value


def _shown_number(value: object) -> str:
    """*value* for a message; an int too long for ``repr`` (or a page) by its size."""
    if type(value) is int and value.bit_length() > 64:
        digits = int(value.bit_length() * math.log10(2)) + 1
        return f"an integer of about {digits} digits"
    return repr(value)


def _to_path(value: Any) -> Any:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


def _to_user_path(value: Any) -> Any:
    """A path with ``~`` expanded (no file system access beyond the user database)."""
    value = _to_path(value)
    return os.path.expanduser(value) if isinstance(value, str) and "\0" not in value else value


def _seconds(inst: object, attr: attrs.Attribute[float], value: object) -> None:
    """A duration: a float > 0 and at most :data:`MAX_SECONDS` (so inf, nan and huge ints fail)."""
    positive = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and not (isinstance(value, float) and math.isnan(value))
        and value > 0
    )
    if not positive:
        raise ConfigError(f"remote.{attr.name}: expected a number > 0, got {_shown_number(value)}")
    if not (isinstance(value, float) and value <= MAX_SECONDS):
        raise ConfigError(
            f"remote.{attr.name}: expected a number of seconds > 0 and at most "
            f"{MAX_SECONDS} (one day), got {_shown_number(value)}"
        )


def _int_between(low: int, high: int) -> Callable[[object, attrs.Attribute[int], object], None]:
    def check(inst: object, attr: attrs.Attribute[int], value: object) -> None:
        if not (type(value) is int and low <= value <= high):
            raise _fail(attr.name, f"a whole number from {low} to {high}", value)

    return check


def _bool(inst: object, attr: attrs.Attribute[bool], value: object) -> None:
    if type(value) is not bool:
        raise _fail(attr.name, "true or false", value)


def _optional_str(inst: object, attr: attrs.Attribute[Optional[str]], value: object) -> None:
    if value is not None and not isinstance(value, str):
        raise _fail(attr.name, "a string", value)


def _to_url(value: Any) -> Any:
    """The attrs converter of ``remote.url``: a string is checked and normalized."""
    return normalize_url("url", value, userinfo=False) if isinstance(value, str) else value


def _to_proxy(value: Any) -> Any:
    """The attrs converter of ``remote.proxy``: like ``url``, but ``user:password@`` is allowed."""
    return normalize_url("proxy", value, userinfo=True) if isinstance(value, str) else value


def _proxy_repr(url: Optional[str]) -> str:
    return repr(None if url is None else hide_userinfo(url))


def _token(inst: object, attr: attrs.Attribute[Optional[str]], value: object) -> None:
    # Never echo the value: it is (or was meant to be) the secret.
    if value is None:
        return
    if not isinstance(value, str):
        raise ConfigError(f"remote.token: expected a string, got {type(value).__name__}")
    if not value:
        raise ConfigError("remote.token: must not be empty")
    if not (value.isascii() and value.isprintable()) or any(ch.isspace() for ch in value):
        raise ConfigError(
            "remote.token: must be usable as an HTTP header value "
            "(printable ASCII, no whitespace or control characters)"
        )


def _transport(inst: object, attr: attrs.Attribute[str], value: object) -> None:
    if not (isinstance(value, str) and _TRANSPORT_NAME.fullmatch(value)):
        raise _fail("transport", "a transport name such as 'http', 'file' or 'null'", value)


def _path(inst: object, attr: attrs.Attribute[Optional[str]], value: object) -> None:
    _optional_str(inst, attr, value)
    if isinstance(value, str) and not (0 < len(value) <= _MAX_PATH and "\0" not in value):
        raise _fail(attr.name, "a file path", value)


@attrs.frozen
class RemoteConfig:
    """
    The ``remote`` section of Lightd's ``config.json``, validated.

    Build it with :func:`load_config`, or directly; both apply the same checks
    and raise :class:`ConfigError` naming the key. Derive variants with
    :func:`attrs.evolve`. The token never appears in ``repr``/``str``: see
    :meth:`redacted` for a form that is safe to show.

    Attributes:
        enabled: Turn remote sync on. ``False`` means the null transport.
        url: Base URL of the remote API; ``/update`` and ``/health`` are appended.
            Normalized so that it can be sent as it is: a non-ASCII host is
            IDNA-encoded, the path percent-encoded, the trailing ``/`` dropped.
        token: Shared secret, sent as ``Authorization: Bearer <token>``.
        transport: ``"http"``, ``"file"``, ``"null"``, or a plugin's name.
        path: The file the ``file`` transport appends to.
        timeout: Seconds an HTTP request may wait to connect, and then again
            for each read of the answer (the protocol's 10 seconds).
        health_interval: Seconds between two health checks.
        workers: Delivery threads (`lightd-sync-worker-N`): requests in flight at most; one
            server has one update in flight at a time.
        queue_size: Updates that may wait at most; beyond, they are dropped and counted.
        retries: Extra attempts for a delivery that may succeed when retried
            (connection errors, timeouts, 429, 502, 503, 504), with exponential
            backoff and full jitter. ``0`` is the protocol's plain behaviour.
        resync: Remember each server's latest update and re-send the ones the
            remote never acknowledged once it is healthy again.
        max_servers: How many servers ``resync`` remembers (least recently
            updated forgotten first).
        shutdown_timeout: Seconds the interpreter waits at exit for open engines.
        verify: Verify the remote's TLS certificate. ``false`` logs a loud warning.
        ca_bundle: A PEM file of CA certificates to trust (a private CA).
        client_cert: A PEM client certificate, for mutual TLS.
        client_key: The client certificate's key, when not in ``client_cert``.
        proxy: An ``http://`` or ``https://`` proxy URL, normalized like ``url``;
            overrides ``HTTPS_PROXY``/``HTTP_PROXY``. It may hold
            ``user:password@`` (sent as ``Proxy-Authorization``), which
            ``repr``, :meth:`redacted` and error messages never show.
        max_retry_after: The longest pause, in seconds, that a remote's
            ``Retry-After`` can impose; a longer one is cut to it (and logged).
        state_path: A crash-safe state file holding each server's latest
            update and whether the remote acknowledged it, so that a restart
            of the daemon (even ``kill -9`` during an outage) still lets the
            remote converge. ``~`` is expanded here; the file itself is opened
            by the engine, never by :func:`load_config` (see the engine docs
            for the file and its limits). ``None``: memory only.

    Every duration (``timeout``, ``health_interval``, ``shutdown_timeout``,
    ``max_retry_after``) is a number of seconds > 0 and at most
    ``MAX_SECONDS`` (86,400: one day).

    .. versionadded:: 0.1.0 ``retries``, ``resync``, ``max_servers``,
       ``shutdown_timeout``, ``verify``, ``ca_bundle``, ``client_cert``,
       ``client_key`` and ``proxy``.
    .. versionadded:: 0.2.0 ``max_retry_after`` and ``state_path``.
    """

    enabled: bool = attrs.field(default=False, validator=_bool)
    url: Optional[str] = attrs.field(default=None, converter=_to_url, validator=_optional_str)
    token: Optional[str] = attrs.field(default=None, validator=_token, repr=_token_repr)
    transport: str = attrs.field(default="http", validator=_transport)
    path: Optional[str] = attrs.field(default=None, converter=_to_path, validator=_path)
    timeout: float = attrs.field(default=10.0, converter=_to_float, validator=_seconds)
    health_interval: float = attrs.field(default=30.0, converter=_to_float, validator=_seconds)
    workers: int = attrs.field(default=4, validator=_int_between(1, 64))
    queue_size: int = attrs.field(default=1000, validator=_int_between(1, 10_000_000))
    retries: int = attrs.field(default=2, validator=_int_between(0, 10))
    resync: bool = attrs.field(default=True, validator=_bool)
    max_servers: int = attrs.field(default=10_000, validator=_int_between(1, 10_000_000))
    shutdown_timeout: float = attrs.field(default=2.0, converter=_to_float, validator=_seconds)
    verify: bool = attrs.field(default=True, validator=_bool)
    ca_bundle: Optional[str] = attrs.field(default=None, converter=_to_path, validator=_path)
    client_cert: Optional[str] = attrs.field(default=None, converter=_to_path, validator=_path)
    client_key: Optional[str] = attrs.field(default=None, converter=_to_path, validator=_path)
    proxy: Optional[str] = attrs.field(
        default=None,
        converter=_to_proxy,
        validator=_optional_str,
        repr=_proxy_repr,
    )
    max_retry_after: float = attrs.field(default=300.0, converter=_to_float, validator=_seconds)
    state_path: Optional[str] = attrs.field(default=None, converter=_to_user_path, validator=_path)

    def __attrs_post_init__(self) -> None:
        if self.client_key is not None and self.client_cert is None:
            raise ConfigError("remote.client_key: given without remote.client_cert")
        if not self.enabled:
            return
        if self.transport in ("http", "requests"):
            for key in ("url", "token"):
                if getattr(self, key) is None:
                    raise ConfigError(
                        f"remote.{key}: missing; it is required when remote.enabled is true"
                    )
        if self.transport == "file" and self.path is None:
            raise ConfigError("remote.path: missing; the file transport needs a path to write to")

    @property
    def effective_transport(self) -> str:
        """The transport actually used (``"null"`` when sync is disabled)."""
        return self.transport if self.enabled else "null"

    def redacted(self) -> dict[str, Any]:
        """
        Return the config as a dict that is safe to log or show.

        The token is redacted (as ``redact_token`` does) and a proxy's
        ``user:password@`` is shown as ``***@``.
        """
        values = attrs.asdict(self)
        values["token"] = redact_token(self.token)
        if self.proxy is not None:
            values["proxy"] = hide_userinfo(self.proxy)
        return values


@functools.cache
def make_converter() -> cattrs.Converter:
    """
    Build the one cattrs converter of lightd_sync (once, on first use).

    cattrs maps the JSON object onto :class:`RemoteConfig` and refuses unknown
    keys (:exc:`cattrs.ForbiddenExtraKeysError`); the values themselves pass
    through unchanged to the attrs converters and validators of the class.
    Why cattrs does not judge the values, precisely:

    - Its structure hooks for ``bool``, ``int``, ``float`` and ``str`` coerce by
      design (``bool("false")`` is ``True``, ``int("10")`` is ``10``,
      ``str(5)`` is ``'5'``), which our config must never do.
    - Strict hooks in their place would be a second copy of the rules: the
      attrs validators must stay, because a :class:`RemoteConfig` built in code
      (or by :func:`attrs.evolve`) has to obey exactly the same ones.
    - :func:`cattrs.transform_error` names a key only for errors raised by that
      key's structure hook. What the class itself raises (the validators, and
      the checks across keys such as "``url`` is required when enabled") it
      reports as ``invalid value @ $``, without the key; and its texts
      ("invalid value for type, expected float") cannot say a range.

    ``detailed_validation=False`` makes cattrs raise the first error as it is,
    our :class:`ConfigError` (whose message already starts with the key path)
    or the unknown-key error, so no exception group has to be searched.
    """
    import cattrs  # only load_config needs it: keeps `import lightd_sync` cheap

    field_types = {a.type for a in attrs.fields(attrs.resolve_types(RemoteConfig))}
    converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=False)
    for tp in field_types:  # bool, int, float, str, Optional[str]
        converter.register_structure_hook(tp, lambda value, _: value)
    return converter


def _closest(key: str) -> str:
    known = [a.name for a in attrs.fields(RemoteConfig)]
    match = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    hint = f"did you mean {match[0]!r}?" if match else f"known keys: {', '.join(known)}"
    return f"remote.{key}: unknown key; {hint}"


def _structure(values: dict[Any, Any]) -> RemoteConfig:
    from cattrs import ForbiddenExtraKeysError

    try:
        return make_converter().structure(values, RemoteConfig)
    except ForbiddenExtraKeysError as exc:
        raise ConfigError(_closest(sorted(map(str, exc.extra_fields))[0])) from None


def _parse_bool_env(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}: expected true/false/1/0/yes/no, got {raw!r}")


def _read_json(path: Union[str, os.PathLike[str]]) -> tuple[Any, int]:
    """The parsed file at *path*, and its mode (for :func:`warn_if_shared`)."""
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            text = fh.read()
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read the config file: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        return json.loads(text), mode
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{name}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    except (ValueError, RecursionError) as exc:  # an int over 4300 digits; nesting too deep
        raise ConfigError(f"{name}: invalid JSON: {exc}") from None


def _document(
    source: Union[str, os.PathLike[str], Mapping[str, Any]],
) -> tuple[Mapping[str, Any], Optional[int]]:
    mode: Optional[int] = None
    if isinstance(source, Mapping):
        document: Any = source
        where = "config"
    elif isinstance(source, (str, os.PathLike)):
        document, mode = _read_json(source)
        where = os.fspath(source)
    else:
        raise TypeError(
            f"source must be a path or a dict of config.json, not {type(source).__name__}"
        )
    if not isinstance(document, Mapping):
        raise ConfigError(f"{where}: the top level must be a JSON object")
    return document, mode


def read_document(source: Union[str, os.PathLike[str], Mapping[str, Any]]) -> Mapping[str, Any]:
    """
    Return the whole of a Lightd ``config.json``: read from a path, or *source* itself.

    Raises:
        ConfigError: The file cannot be read, is not JSON, or is not a JSON object.
        TypeError: *source* is neither a path nor a mapping.
    """
    return _document(source)[0]


def load_config(
    source: Union[str, os.PathLike[str], Mapping[str, Any]],
    *,
    env: Mapping[str, str] = os.environ,
) -> RemoteConfig:
    """
    Read and validate the ``remote`` section of a Lightd ``config.json``.

    Args:
        source: A path to the file, or the already-parsed dict of the whole file.
            A missing ``remote`` object means sync is disabled.
        env: Where to read the overrides ``LIGHTD_REMOTE_ENABLED`` (true/false/
            1/0/yes/no), ``LIGHTD_REMOTE_URL``, ``LIGHTD_REMOTE_TOKEN``,
            ``LIGHTD_REMOTE_TOKEN_FILE`` and ``LIGHTD_REMOTE_STATE_PATH``; an
            empty variable counts as unset, except ``LIGHTD_REMOTE_TOKEN_FILE``
            (an error).

    ``LIGHTD_REMOTE_TOKEN_FILE`` names a file that holds the token (surrounding
    whitespace stripped); it wins over ``remote.token`` and
    ``LIGHTD_REMOTE_TOKEN``. A token file, or a ``config.json`` holding a
    token, that is readable by group or others logs a WARNING on the
    ``lightd_sync.config`` logger.

    Raises:
        ConfigError: The file cannot be read or parsed, or a value is invalid;
            the message names the key path (or file, line and column, or the
            variable).

    .. versionadded:: 0.2.0 ``LIGHTD_REMOTE_TOKEN_FILE`` and ``LIGHTD_REMOTE_STATE_PATH``.
    """
    document, mode = _document(source)
    remote = document.get("remote", {})
    if remote is None:
        remote = {}
    if not isinstance(remote, Mapping):
        raise ConfigError(f"remote: expected a JSON object, got {type(remote).__name__}")
    if mode is not None and isinstance(remote.get("token"), str):
        warn_if_shared(
            mode,
            "%s holds remote.token and is readable by group or others: chmod 600 it, "
            "or move the token to %s",
            os.fspath(source),  # type: ignore[arg-type]  # a path: mode is only set for one
            TOKEN_FILE_VAR,
        )
    values = dict(remote)
    from_env: dict[str, str] = {}
    for var, key in ENV_OVERRIDES.items():
        raw = env.get(var)
        if var == TOKEN_FILE_VAR and raw is not None:
            values[key] = read_token_file(raw)  # set but empty: a ConfigError
        elif not raw:
            continue
        else:
            values[key] = _parse_bool_env(var, raw) if key == "enabled" else raw
        from_env[key] = var
    try:
        return _structure(values)
    except ConfigError as error:
        for key, var in from_env.items():
            if str(error).startswith(f"remote.{key}:"):
                raise ConfigError(f"{error} (set by {var})") from None
        raise error from None
