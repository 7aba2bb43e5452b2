"""RemoteConfig and load_config: every ConfigError case, env overrides, and no token leaks."""

from __future__ import annotations

import json
import logging
import math
import os
import pathlib
import stat
import string
import tempfile
from collections.abc import Iterator
from typing import Any, Optional, Union

import attrs
import pytest
import urllib3
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lightd_sync import ConfigError, LightdSyncError, RemoteConfig, load_config
from lightd_sync._config import make_converter, redact_token

TOKEN = "lightd_ad2f7fc49ed640429c450e14ed07c8d5"
URL = "https://remote.example/api"
KEYS = [a.name for a in attrs.fields(RemoteConfig)]
NO_ENV: dict[str, str] = {}

fast = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
urlish = st.builds(
    "{}{}".format,
    st.sampled_from(["http://", "https://", "ftp://", "", "https://user:pw@", "//"]),
    st.text(max_size=30),
)
hosts = st.one_of(
    st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z][a-z0-9]{0,6}){0,2}", fullmatch=True),
    st.sampled_from(["127.0.0.1", "[::1]", "10.0.0.7"]),
)


def enabled(**remote: Any) -> dict[str, Any]:
    """A whole config.json dict whose remote section is enabled and valid, plus *remote*."""
    return {"remote": {"enabled": True, "url": URL, "token": TOKEN, **remote}}


def config_error(source: Any, env: Optional[dict[str, str]] = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(source, env=NO_ENV if env is None else env)
    message = str(info.value)
    assert TOKEN not in message
    return message


def config_or_message(source: Any) -> Union[RemoteConfig, str]:
    """What load_config makes of *source*: a config, or the ConfigError's message."""
    try:
        return load_config(source, env=NO_ENV)
    except ConfigError as exc:  # any other exception fails the test
        return str(exc)


# --- sources, defaults and the disabled state -------------------------------------------


def test_valid_config_from_a_dict() -> None:
    config = load_config(enabled(), env=NO_ENV)
    assert config == RemoteConfig(enabled=True, url=URL, token=TOKEN)
    assert config.transport == config.effective_transport == "http"
    assert (config.timeout, config.health_interval) == (10.0, 30.0)
    assert (config.workers, config.queue_size) == (4, 1000)


@pytest.mark.parametrize("as_path", [str, pathlib.Path])
def test_valid_config_from_a_file(tmp_path: pathlib.Path, as_path: Any) -> None:
    path = tmp_path / "config.json"
    document = {"authorization": {"token": "other"}, **enabled(timeout=2, workers=8)}
    path.write_text(json.dumps(document), encoding="utf-8")
    config = load_config(as_path(path), env=NO_ENV)
    assert config == RemoteConfig(enabled=True, url=URL, token=TOKEN, timeout=2.0, workers=8)
    assert isinstance(config.timeout, float)


@pytest.mark.parametrize("document", [{}, {"authorization": {}}, {"remote": None}])
def test_absent_remote_means_disabled(document: dict[str, Any]) -> None:
    config = load_config(document, env=NO_ENV)
    assert config == RemoteConfig()
    assert config.enabled is False
    assert config.effective_transport == "null"


@pytest.mark.parametrize("transport", ["http", "file", "null", "my-plugin"])
def test_enabled_false_means_null_transport(transport: str) -> None:
    config = load_config({"remote": {"enabled": False, "transport": transport}}, env=NO_ENV)
    assert config.transport == transport
    assert config.effective_transport == "null"


def test_disabled_config_needs_no_url_or_token() -> None:
    assert load_config({"remote": {"enabled": False}}, env=NO_ENV).url is None


def test_url_trailing_slash_is_dropped() -> None:
    assert load_config(enabled(url=URL + "/"), env=NO_ENV).url == URL


def test_source_of_another_type_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="path or a dict"):
        load_config(42, env=NO_ENV)  # type: ignore[arg-type]


def test_config_error_is_a_value_error_and_a_lightd_sync_error() -> None:
    assert issubclass(ConfigError, ValueError)
    assert issubclass(ConfigError, LightdSyncError)


# --- the file itself --------------------------------------------------------------------


def test_json_syntax_error_names_file_line_and_column(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "config.json"
    # A missing colon: every Python version reports it at the same place.
    path.write_text('{\n  "remote": {\n    "enabled" true\n  }\n}\n', encoding="utf-8")
    message = config_error(path)
    assert message.startswith(f"{path}: invalid JSON at line 3, column 15: ")


def test_missing_file_names_the_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "nope.json"
    assert config_error(path) == f"{path}: cannot read the config file: No such file or directory"


def test_file_that_is_not_utf8(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(b'{"remote": "\xff"}')
    assert config_error(path).startswith(f"{path}: not UTF-8 text")


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000,  # nesting deeper than the JSON decoder's recursion
        '{"remote": {"timeout": ' + "1" * 5000 + "}}",  # an int over Python's 4300 digits
    ],
    ids=["too-deep", "huge-int"],
)
def test_json_the_decoder_refuses_is_a_config_error(tmp_path: pathlib.Path, text: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(text, encoding="utf-8")
    assert config_error(path).startswith(f"{path}: invalid JSON: ")


@pytest.mark.parametrize("text", ["[]", '"remote"', "1", "null"])
def test_top_level_must_be_an_object(tmp_path: pathlib.Path, text: str) -> None:
    path = tmp_path / "config.json"
    path.write_text(text, encoding="utf-8")
    assert config_error(path) == f"{path}: the top level must be a JSON object"


@pytest.mark.parametrize("remote", [[], "on", 1, True])
def test_remote_must_be_an_object(remote: Any) -> None:
    expected = f"remote: expected a JSON object, got {type(remote).__name__}"
    assert config_error({"remote": remote}) == expected


# --- values -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("timeout", "ten", "remote.timeout: expected a number > 0, got 'ten'"),
        ("timeout", 0, "remote.timeout: expected a number > 0, got 0.0"),
        ("timeout", -1.5, "remote.timeout: expected a number > 0, got -1.5"),
        ("timeout", True, "remote.timeout: expected a number > 0, got True"),
        ("timeout", None, "remote.timeout: expected a number > 0, got None"),
        (
            "timeout",
            10**400,
            "remote.timeout: expected a number of seconds > 0 and at most 86400 (one day), "
            "got an integer of about 401 digits",
        ),
        ("health_interval", math.nan, "remote.health_interval: expected a number > 0, got nan"),
        (
            "health_interval",
            math.inf,
            "remote.health_interval: expected a number of seconds > 0 and at most 86400 "
            "(one day), got inf",
        ),
        ("health_interval", "30", "remote.health_interval: expected a number > 0, got '30'"),
        ("workers", "10", "remote.workers: expected a whole number from 1 to 64, got '10'"),
        ("workers", 4.0, "remote.workers: expected a whole number from 1 to 64, got 4.0"),
        ("workers", 0, "remote.workers: expected a whole number from 1 to 64, got 0"),
        ("workers", 65, "remote.workers: expected a whole number from 1 to 64, got 65"),
        ("workers", True, "remote.workers: expected a whole number from 1 to 64, got True"),
        (
            "queue_size",
            0,
            "remote.queue_size: expected a whole number from 1 to 10000000, got 0",
        ),
        ("enabled", "false", "remote.enabled: expected true or false, got 'false'"),
        ("enabled", "true", "remote.enabled: expected true or false, got 'true'"),
        ("enabled", 1, "remote.enabled: expected true or false, got 1"),
        ("enabled", None, "remote.enabled: expected true or false, got None"),
        ("url", 5, "remote.url: expected a string, got 5"),
        ("url", ["https://x"], "remote.url: expected a string, got ['https://x']"),
        ("token", 5, "remote.token: expected a string, got int"),
        ("token", [TOKEN], "remote.token: expected a string, got list"),
        ("path", 5, "remote.path: expected a string, got 5"),
        ("path", "", "remote.path: expected a file path, got ''"),
        ("path", "a\0b", "remote.path: expected a file path, got 'a\\x00b'"),
        (
            "transport",
            5,
            "remote.transport: expected a transport name such as 'http', 'file' or 'null', got 5",
        ),
        (
            "transport",
            "null\n",
            "remote.transport: expected a transport name such as 'http', 'file' or 'null', "
            "got 'null\\n'",
        ),
        (
            "transport",
            "",
            "remote.transport: expected a transport name such as 'http', 'file' or 'null', got ''",
        ),
    ],
)
def test_wrong_value_names_key_and_value(key: str, value: Any, expected: str) -> None:
    assert config_error(enabled(**{key: value})) == expected


@pytest.mark.parametrize(
    ("key", "value"),
    [("enabled", "false"), ("enabled", "true"), ("enabled", 0), ("workers", "10"),
     ("queue_size", "10"), ("timeout", "10"), ("url", 1), ("path", 1), ("token", 1)],
)  # fmt: skip
def test_cattrs_never_coerces(key: str, value: Any) -> None:
    assert config_error(enabled(**{key: value})).startswith(f"remote.{key}: ")


def test_converter_passes_values_through_for_the_validators() -> None:
    converter = make_converter()
    assert converter is make_converter()  # built once
    for tp, value in [(bool, "false"), (int, "10"), (float, "10"), (str, 5)]:
        assert converter.structure(value, tp) is value


def test_ints_stand_for_floats() -> None:
    config = load_config(enabled(timeout=3, health_interval=1), env=NO_ENV)
    assert (config.timeout, config.health_interval) == (3.0, 1.0)
    assert type(config.timeout) is float


@pytest.mark.parametrize(
    ("typo", "closest"),
    [("enabeld", "enabled"), ("tmeout", "timeout"), ("urls", "url"), ("Token", "token"),
     ("health-interval", "health_interval"), ("queuesize", "queue_size")],
)  # fmt: skip
def test_unknown_key_names_the_closest_known_key(typo: str, closest: str) -> None:
    expected = f"remote.{typo}: unknown key; did you mean {closest!r}?"
    assert config_error(enabled(**{typo: 1})) == expected


def test_unknown_key_without_a_close_one_lists_the_known_keys() -> None:
    message = config_error(enabled(qqqqqq=1))
    assert message == f"remote.qqqqqq: unknown key; known keys: {', '.join(KEYS)}"


def test_unknown_non_string_key_in_a_dict_source() -> None:
    assert config_error({"remote": {1: 2}}).startswith("remote.1: unknown key; ")


@pytest.mark.parametrize("key", ["url", "token"])
@pytest.mark.parametrize("how", ["absent", "null"])
def test_missing_url_or_token_while_enabled(key: str, how: str) -> None:
    document = enabled()
    if how == "absent":
        del document["remote"][key]
    else:
        document["remote"][key] = None
    expected = f"remote.{key}: missing; it is required when remote.enabled is true"
    assert config_error(document) == expected


def test_file_transport_needs_a_path() -> None:
    message = config_error({"remote": {"enabled": True, "transport": "file"}})
    assert message == "remote.path: missing; the file transport needs a path to write to"


def test_file_transport_needs_no_url_or_token(tmp_path: pathlib.Path) -> None:
    remote = {"enabled": True, "transport": "file", "path": str(tmp_path / "out.jsonl")}
    config = load_config({"remote": remote}, env=NO_ENV)
    assert config.effective_transport == "file"
    assert config.url is None


# --- durations: timeout, health_interval, shutdown_timeout, max_retry_after ------------

DURATIONS = ["timeout", "health_interval", "shutdown_timeout", "max_retry_after"]
AT_MOST = "expected a number of seconds > 0 and at most 86400 (one day), got "


def test_max_retry_after_defaults_to_five_minutes() -> None:
    config = load_config(enabled(), env=NO_ENV)
    assert config.max_retry_after == 300.0
    assert load_config(enabled(max_retry_after=5), env=NO_ENV).max_retry_after == 5.0


@pytest.mark.parametrize("key", DURATIONS)
@pytest.mark.parametrize("value", [86_400, 86_400.0, 1e-9, 0.5])
def test_durations_up_to_one_day_are_accepted(key: str, value: float) -> None:
    config = load_config(enabled(**{key: value}), env=NO_ENV)
    assert getattr(config, key) == value
    assert type(getattr(config, key)) is float


@pytest.mark.parametrize("key", DURATIONS)
@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (86_400.001, "86400.001"),
        (86_401, "86401.0"),
        (1e10, "10000000000.0"),
        (math.inf, "inf"),
        (2**64, "1.8446744073709552e+19"),
        (10**400, "an integer of about 401 digits"),
        (10**5000, "an integer of about 5001 digits"),  # repr() of it would raise ValueError
    ],
    ids=["just-over", "86401", "1e10", "inf", "2**64", "10**400", "10**5000"],
)
def test_durations_above_one_day_are_refused(key: str, value: float, shown: str) -> None:
    assert config_error(enabled(**{key: value})) == f"remote.{key}: {AT_MOST}{shown}"


@pytest.mark.parametrize("key", DURATIONS)
@pytest.mark.parametrize(
    ("value", "shown"),
    [(math.nan, "nan"), (-math.inf, "-inf"), (-(10**400), "an integer of about 401 digits"),
     (0, "0.0"), ("300", "'300'"), (False, "False"), (None, "None")],
)  # fmt: skip
def test_durations_that_are_not_positive_numbers(key: str, value: Any, shown: str) -> None:
    assert (
        config_error(enabled(**{key: value})) == f"remote.{key}: expected a number > 0, got {shown}"
    )


def test_huge_int_for_a_whole_number_key_is_named_by_its_size() -> None:
    message = config_error(enabled(workers=10**5000))
    assert message == (
        "remote.workers: expected a whole number from 1 to 64, got an integer of about 5001 digits"
    )


@fast
@given(
    key=st.sampled_from(DURATIONS),
    value=st.floats(allow_nan=True, allow_infinity=True)
    | st.integers()
    | st.integers(min_value=2**1000, max_value=2**20000),
)
def test_any_number_for_a_duration_is_accepted_iff_within_one_day(key: str, value: float) -> None:
    result = config_or_message(enabled(**{key: value}))  # never OverflowError or ValueError
    nan = isinstance(value, float) and math.isnan(value)
    in_range = not nan and 0 < value <= 86_400
    if in_range:
        assert isinstance(result, RemoteConfig)
        assert getattr(result, key) == float(value)
    else:
        assert isinstance(result, str)
        assert result.startswith(f"remote.{key}: expected a number ")
        assert len(result) < 200


def test_durations_built_in_code_are_capped_too() -> None:
    with pytest.raises(ConfigError, match=r"^remote\.max_retry_after: .*at most 86400"):
        RemoteConfig(max_retry_after=86_401)
    with pytest.raises(ConfigError, match=r"^remote\.shutdown_timeout: .*at most 86400"):
        attrs.evolve(RemoteConfig(), shutdown_timeout=math.inf)


# --- state_path -------------------------------------------------------------------------


def test_state_path_defaults_to_none() -> None:
    assert load_config(enabled(), env=NO_ENV).state_path is None
    assert RemoteConfig().state_path is None


def test_state_path_expands_the_home_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/lightd")
    config = load_config(enabled(state_path="~/sync/state.db"), env=NO_ENV)
    assert config.state_path == "/home/lightd/sync/state.db"
    assert RemoteConfig(state_path="~/x").state_path == "/home/lightd/x"
    assert load_config(enabled(state_path="rel/state.db"), env=NO_ENV).state_path == "rel/state.db"


def test_state_path_may_be_path_like(tmp_path: pathlib.Path) -> None:
    config = RemoteConfig(state_path=tmp_path / "state.db")  # type: ignore[arg-type]
    assert config.state_path == os.fspath(tmp_path / "state.db")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", "remote.state_path: expected a file path, got ''"),
        ("a\0b", "remote.state_path: expected a file path, got 'a\\x00b'"),
        ("x" * 4097, "remote.state_path: expected a file path, got '" + "x" * 4097 + "'"),
        (5, "remote.state_path: expected a string, got 5"),
        (False, "remote.state_path: expected a string, got False"),
        (["/a"], "remote.state_path: expected a string, got ['/a']"),
    ],
)
def test_bad_state_path(value: Any, expected: str) -> None:
    assert config_error(enabled(state_path=value)) == expected


def test_load_config_does_not_touch_the_state_file(tmp_path: pathlib.Path) -> None:
    # A FIFO would block an open() for ever; a missing folder would be created by a makedirs.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert load_config(enabled(state_path=str(fifo)), env=NO_ENV).state_path == str(fifo)
    missing = tmp_path / "no" / "such" / "state.db"
    assert load_config(enabled(state_path=str(missing)), env=NO_ENV).state_path == str(missing)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo"]


def test_env_state_path_overrides_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/lightd")
    env = {"LIGHTD_REMOTE_STATE_PATH": "~/state.db"}
    config = load_config(enabled(state_path="/var/lib/a.db"), env=env)
    assert config.state_path == "/home/lightd/state.db"
    empty = {"LIGHTD_REMOTE_STATE_PATH": ""}  # counts as unset
    assert load_config(enabled(state_path="/var/lib/a.db"), env=empty).state_path == "/var/lib/a.db"


def test_env_bad_state_path_names_the_variable() -> None:
    message = config_error(enabled(), env={"LIGHTD_REMOTE_STATE_PATH": "a\0b"})
    assert message == (
        "remote.state_path: expected a file path, got 'a\\x00b' (set by LIGHTD_REMOTE_STATE_PATH)"
    )


@fast
@given(value=st.text(max_size=50) | json_values)
def test_any_state_path_is_accepted_or_named(value: Any) -> None:
    result = config_or_message(enabled(state_path=value))
    if isinstance(result, RemoteConfig):
        assert value is None or (isinstance(value, str) and value and "\0" not in value)
        assert result.state_path == (None if value is None else os.path.expanduser(value))
    else:
        assert result.startswith("remote.state_path: expected a "), result


# --- url --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://remote.example",
        "http://127.0.0.1:8080/api",
        "http://localhost/api/v1",
        "https://[::1]:8443/lightd",
        "http://remote.example/api",  # plain http to another host: accepted (HTTPS advised)
    ],
)
def test_good_urls(url: str) -> None:
    assert load_config(enabled(url=url), env=NO_ENV).url == url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("ftp://remote.example", "remote.url: must start with https:// or http://, got "),
        ("remote.example/api", "remote.url: must start with https:// or http://, got "),
        ("", "remote.url: must start with https:// or http://, got ''"),
        ("https:///api", "remote.url: has no host name: "),
        ("https://", "remote.url: has no host name: "),
        ("http://remote.example:99999", "remote.url: Port out of range"),
        ("http://remote.example:http", "remote.url: Port could not be cast"),
        ("http://[::1", "remote.url: Invalid IPv6 URL"),
        ("http://remote.example:0", "remote.url: port 0 is not a port to connect to"),
        ("https://remote.example/api?x=1", "remote.url: must not have a ?query or #fragment"),
        ("https://remote.example/api#top", "remote.url: must not have a ?query or #fragment"),
        ("https://remote.example/a b", "remote.url: contains whitespace or control characters"),
        ("https://remote.ex\nample/", "remote.url: contains whitespace or control characters"),
        ("https://remote.example/\x7f", "remote.url: contains whitespace or control characters"),
    ],
)
def test_bad_urls(url: str, expected: str) -> None:
    assert config_error(enabled(url=url)).startswith(expected)


@pytest.mark.parametrize(
    "url",
    [
        "https://user:s3cretpw@remote.example/api",
        "https://:s3cretpw@remote.example/api",
        "https://user@remote.example/api",
        # other checks fail first: the password must not be echoed by them either
        "ftp://user:s3cretpw@remote.example",
        "https://user:s3cretpw@remote.example:99999/api",
        "https://user:s3cretpw@:80/api",
        "https://user:s3c@retpw@remote.example/api",
    ],
)
def test_url_with_user_and_password_never_echoes_the_password(url: str) -> None:
    message = config_error(enabled(url=url))
    assert message.startswith("remote.url: ")
    assert "s3c" not in message
    assert "retpw" not in message


def test_url_with_user_and_password_says_why() -> None:
    message = config_error(enabled(url="https://user:s3cretpw@remote.example"))
    assert message == (
        "remote.url: must not contain user:password@; the token authenticates requests"
    )


# --- url normalization: what load_config accepts can be sent as it is -----------------


@pytest.mark.parametrize(
    ("url", "normal"),
    [
        ("https://bücher.example/api", "https://xn--bcher-kva.example/api"),
        ("https://BÜCHER.Example/API", "https://xn--bcher-kva.example/API"),
        ("HTTPS://Remote.EXAMPLE:0443/", "https://remote.example:443"),
        ("https://例え.テスト/", "https://xn--r8jz45g.xn--zckzah"),
        ("https://remote.example/статус", "https://remote.example/%D1%81%D1%82%D0%B0%D1%82%D1%83%D1%81"),
        ("https://remote.example/a%2fb", "https://remote.example/a%2Fb"),  # kept, upper-cased
        ("https://remote.example/100%25", "https://remote.example/100%25"),  # not encoded twice
        ("https://remote.example/100%", "https://remote.example/100%25"),  # a stray % is encoded
        ("https://remote.example/%zz", "https://remote.example/%25zz"),
        ('https://remote.example/a"<>^`{|}\\', "https://remote.example/a%22%3C%3E%5E%60%7B%7C%7D%5C"),
        ("https://remote.example/a;b=c:d@e!$&'()*+,~", "https://remote.example/a;b=c:d@e!$&'()*+,~"),
        ("https://remote.example//api//", "https://remote.example//api"),
        ("http://[::1]:8080/api", "http://[::1]:8080/api"),
        ("http://[FE80::1]/api", "http://[fe80::1]/api"),
        ("http://remote.example.:80", "http://remote.example.:80"),
        ("http://remote.example:/api", "http://remote.example/api"),
    ],
)  # fmt: skip
def test_url_is_normalized_to_what_is_sent(url: str, normal: str) -> None:
    config = load_config(enabled(url=url), env=NO_ENV)
    assert config.url == normal
    assert RemoteConfig(url=url).url == normal  # built in code: the same
    assert RemoteConfig(url=normal).url == normal  # idempotent
    assert urllib3.util.parse_url(normal).url == normal


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://straße.example", "remote.url: the host name holds 'ß', which the IDNA "
         "standards encode differently; write ss or xn--zca as you mean it: "),
        ("https://ςφ.example", "remote.url: the host name holds 'ς', "),
        ("https://a..b/api", "remote.url: the host name cannot be IDNA-encoded (label empty"),
        ("https://" + "x" * 64 + ".example", "remote.url: the host name cannot be IDNA-encoded"),
        ("https://ex\u00adample\u0000.com", "remote.url: contains whitespace or control"),
        ("https://ho$t.example/api", "remote.url: the host name may hold only letters, "),
        ("https://ho%41st.example", "remote.url: the host name may hold only letters, "),
        ("https://a\\b.example", "remote.url: the host name may hold only letters, "),
        ("https://remote.example/a/../b", "remote.url: must not have '.' or '..' path segments"),
        ("https://remote.example/./b", "remote.url: must not have '.' or '..' path segments"),
        ("https://remote.example/a/%2E%2e", "remote.url: must not have '.' or '..' path segments"),
        ("https://remote.example/api?", "remote.url: must not have a ?query or #fragment"),
        ("http://[fe80::1%25eth0]/api", "remote.url: "),
        ("http://[127.0.0.1]/api", "remote.url: "),
        ("http://[v1.x]/api", "remote.url: "),  # each Python words these three its own way
        ("https://remote.example/\u200b", "remote.url: contains whitespace or control"),
    ],
)  # fmt: skip
def test_url_that_cannot_be_sent_is_refused(url: str, expected: str) -> None:
    assert config_error(enabled(url=url)).startswith(expected)
    with pytest.raises(ConfigError, match=r"^remote\.url: "):
        RemoteConfig(url=url)


unicode_host = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12
)
url_text = st.builds(
    "{}://{}{}{}{}".format,
    st.sampled_from(["http", "https", "HTTP", "ftp"]),
    st.one_of(
        hosts,
        unicode_host,
        st.from_regex(r"[a-zA-Zä-ü0-9.\-]{1,20}", fullmatch=True),
        st.just("[::1]"),
        st.just("user:pw@remote.example"),
    ),
    st.one_of(st.just(""), st.integers(0, 70000).map(":{}".format), st.just(":")),
    st.text(max_size=20).map(lambda t: "/" + t),
    st.sampled_from(["", "/", "?q", "#f"]),
)


@fast
@given(url=url_text | urlish | st.text(max_size=40))
def test_any_url_load_config_accepts_is_ascii_and_round_trips(url: str) -> None:
    result = config_or_message(enabled(url=url))
    if isinstance(result, str):
        assert result.startswith("remote.url: "), result
        assert ":pw" not in result
        return
    normal = result.url
    assert normal is not None
    assert normal.isascii()
    assert not any(ch.isspace() or not ch.isprintable() for ch in normal)
    assert urllib3.util.parse_url(normal).url == normal
    assert not normal.endswith("/")
    assert RemoteConfig(url=normal).url == normal


# --- proxy credentials -------------------------------------------------------------------

PROXY = "http://lightd:pr0xy-s3cret@proxy.example:3128"


def test_proxy_may_carry_credentials_never_shown() -> None:
    config = load_config(enabled(proxy=PROXY), env=NO_ENV)
    assert config.proxy == PROXY
    for text in (repr(config), str(config), repr(config.redacted()), json.dumps(config.redacted())):
        assert "pr0xy-s3cret" not in text
        assert "lightd:" not in text
    assert config.redacted()["proxy"] == "http://***@proxy.example:3128"
    assert "proxy='http://***@proxy.example:3128'" in repr(config)
    assert RemoteConfig(proxy=None).redacted()["proxy"] is None


def test_proxy_credentials_are_percent_encoded_and_reach_the_header() -> None:
    import base64

    from lightd_sync._transports._pools import Proxy, choose_proxy

    config = RemoteConfig(
        enabled=True,
        url=URL,
        token=TOKEN,
        proxy="http://us@er:p@ss wörd@proxy.example:3128".replace(" ", ""),
    )
    assert config.proxy == "http://us%40er:p%40ssw%C3%B6rd@proxy.example:3128"
    proxy = choose_proxy(config)
    assert isinstance(proxy, Proxy)
    assert proxy.url == "http://proxy.example:3128"
    expected = base64.b64encode("us@er:p@sswörd".encode()).decode()
    assert proxy.headers == {"Proxy-Authorization": f"Basic {expected}"}


@pytest.mark.parametrize(
    "proxy",
    [
        "ftp://lightd:pr0xy-s3cret@proxy.example",
        "http://lightd:pr0xy-s3cret@proxy.example:99999",
        "http://lightd:pr0xy-s3cret@proxy.example:0",
        "http://lightd:pr0xy-s3cret@straße.example",
        "http://lightd:pr0xy-s3cret@ho$t.example",
        "http://lightd:pr0xy-s3cret@proxy.example/a/../b",
        "http://lightd:pr0xy-s3cret@proxy.example/?x",
        "http://lightd:pr0xy-s3cret@[::1",
        "http://lightd:pr0xy-s3cret@[127.0.0.1]",
        "http://lightd:pr0xy-s3cret@proxy.example/a b",
        "http://lightd:pr0xy-s3cret@",
    ],
)
def test_bad_proxy_never_echoes_the_password(proxy: str) -> None:
    message = config_error(enabled(proxy=proxy))
    assert message.startswith("remote.proxy: "), message
    assert "s3cret" not in message


# --- token ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        "lightd_ad2f7fc49ed640 429c450e14ed07c8d5",
        "lightd_ad2f7fc49ed640429c450e14ed07c8d5\n",
        "lightd_ad2f7fc49ed640429c450e14ed07c8d5\r\nX-Evil: 1",
        "lightd_ad2f7fc49ed640429c450e14ed07c8d5\t",
        "lightd_ad2f7fc49ed640429c450e14ed07c8d5\x00",
        "lightd_ad2f7fc49ed640429c450e14ed07c8d5\x7f",
        "lightd_ad2f7fc49ed640429c450e14ed07c8dé",
        "lightd_ad2f7fc49ed640429c450e14ed07c8d\u00a0",
    ],
)
def test_token_must_be_usable_as_a_header_value(token: str) -> None:
    message = config_error(enabled(token=token))
    assert message == (
        "remote.token: must be usable as an HTTP header value "
        "(printable ASCII, no whitespace or control characters)"
    )
    assert "ad2f7fc49" not in message


def test_empty_token() -> None:
    assert config_error(enabled(token="")) == "remote.token: must not be empty"


def test_token_never_in_repr_str_or_redacted() -> None:
    config = load_config(enabled(), env=NO_ENV)
    for text in (repr(config), str(config), repr(config.redacted()), str(config.redacted())):
        assert TOKEN not in text
        assert "ad2f7fc49ed640429c450e14ed07" not in text
    assert config.redacted()["token"] == "lightd_…c8d5"
    assert "token='lightd_…c8d5'" in repr(config)
    assert config.redacted() == {**attrs.asdict(config), "token": "lightd_…c8d5"}
    assert config.redacted()["url"] == URL


@pytest.mark.parametrize(
    ("token", "shown"),
    [
        (None, None),
        ("lightd_ad2f7fc49ed640429c450e14ed07c8d5", "lightd_…c8d5"),
        ("ad2f7fc49ed640429c450e14ed07c8d5", "…c8d5"),
        ("lightd_short", "lightd_…"),
        ("abc", "…"),
    ],
)
def test_redact_token(token: Optional[str], shown: Optional[str]) -> None:
    assert redact_token(token) == shown


def test_config_built_in_code_is_validated_the_same_way() -> None:
    with pytest.raises(ConfigError, match=r"^remote\.timeout: expected a number > 0, got 'ten'$"):
        RemoteConfig(timeout="ten")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^remote\.token: missing"):
        RemoteConfig(enabled=True, url=URL)
    with pytest.raises(ConfigError, match=r"^remote\.workers: "):
        attrs.evolve(RemoteConfig(), workers=0)


def test_path_like_path_is_stored_as_str(tmp_path: pathlib.Path) -> None:
    config = RemoteConfig(enabled=True, transport="file", path=tmp_path / "x")  # type: ignore[arg-type]
    assert config.path == os.fspath(tmp_path / "x")


# --- environment overrides --------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "value"),
    [("true", True), ("TRUE", True), ("1", True), ("yes", True), (" Yes ", True),
     ("false", False), ("False", False), ("0", False), ("no", False)],
)  # fmt: skip
def test_env_enabled(raw: str, value: bool) -> None:
    document = enabled(enabled=not value)
    config = load_config(document, env={"LIGHTD_REMOTE_ENABLED": raw})
    assert config.enabled is value
    assert config.effective_transport == ("http" if value else "null")


@pytest.mark.parametrize("raw", ["maybe", "2", "enabled", "tru", "y e s"])
def test_env_enabled_bad_value_names_the_variable(raw: str) -> None:
    message = config_error({}, env={"LIGHTD_REMOTE_ENABLED": raw})
    assert message == f"LIGHTD_REMOTE_ENABLED: expected true/false/1/0/yes/no, got {raw!r}"


def test_env_empty_variable_counts_as_unset() -> None:
    env = {"LIGHTD_REMOTE_ENABLED": "", "LIGHTD_REMOTE_URL": "", "LIGHTD_REMOTE_TOKEN": ""}
    assert load_config(enabled(), env=env) == load_config(enabled(), env=NO_ENV)


def test_env_supplies_everything() -> None:
    env = {
        "LIGHTD_REMOTE_ENABLED": "yes",
        "LIGHTD_REMOTE_URL": "http://127.0.0.1:9000/api/",
        "LIGHTD_REMOTE_TOKEN": TOKEN,
    }
    config = load_config({}, env=env)
    assert config == RemoteConfig(enabled=True, url="http://127.0.0.1:9000/api", token=TOKEN)


def test_env_overrides_the_file() -> None:
    other = "lightd_0123456789abcdef0123456789abcdef"
    env = {"LIGHTD_REMOTE_URL": "https://other.example", "LIGHTD_REMOTE_TOKEN": other}
    config = load_config(enabled(), env=env)
    assert (config.url, config.token) == ("https://other.example", other)


def test_env_bad_url_names_the_variable() -> None:
    message = config_error(enabled(), env={"LIGHTD_REMOTE_URL": "ftp://x"})
    assert message == (
        "remote.url: must start with https:// or http://, got 'ftp://x' (set by LIGHTD_REMOTE_URL)"
    )


def test_env_bad_token_names_the_variable_not_the_token() -> None:
    bad = TOKEN + " x"
    message = config_error(enabled(), env={"LIGHTD_REMOTE_TOKEN": bad})
    assert message.startswith("remote.token: must be usable as an HTTP header value")
    assert message.endswith("(set by LIGHTD_REMOTE_TOKEN)")
    assert bad not in message


def test_env_is_not_read_from_os_environ_when_given() -> None:
    # A dict, even empty, replaces os.environ entirely.
    assert load_config({}, env=NO_ENV).enabled is False


# --- properties -------------------------------------------------------------------------


@fast
@given(key=st.sampled_from(KEYS), value=json_values | urlish)
def test_any_json_value_for_a_key_is_accepted_or_named(key: str, value: Any) -> None:
    document = enabled(**{"path": "/tmp/lightd-sync-test.jsonl", key: value})
    result = config_or_message(document)
    if isinstance(result, RemoteConfig):
        assert TOKEN not in repr(result)
        return
    assert result.startswith(f"remote.{key}: "), result
    assert TOKEN not in result
    if key == "token" and isinstance(value, str) and value:
        assert repr(value) not in result
    if key == "url" and isinstance(value, str) and "user:pw@" in value:
        assert ":pw" not in result


@fast
@given(remote=st.dictionaries(st.sampled_from([*KEYS, "tokn", "xyzzy"]), json_values))
def test_any_remote_object_is_accepted_or_a_config_error(remote: dict[str, Any]) -> None:
    remote.setdefault("token", TOKEN)
    result = config_or_message({"remote": remote})
    if not isinstance(result, RemoteConfig):
        assert result.startswith("remote."), result
        assert TOKEN not in result


paths = st.lists(
    st.from_regex(r"[A-Za-z0-9._~-]{1,8}", fullmatch=True).filter(lambda s: s not in (".", "..")),
    max_size=3,
)
good_urls = st.builds(
    lambda scheme, host, port, segments: (
        f"{scheme}://{host}{port}" + "".join(f"/{s}" for s in segments)
    ),
    st.sampled_from(["http", "https"]),
    hosts,
    st.one_of(st.just(""), st.integers(1, 65535).map(":{}".format)),
    paths,
)
good_tokens = st.builds(
    "lightd_{}".format,
    st.text(alphabet=string.ascii_letters + string.digits + string.punctuation, min_size=13),
)
positive = st.floats(min_value=1e-3, max_value=86_400) | st.integers(1, 86_400)


@st.composite
def good_configs(draw: st.DrawFn) -> RemoteConfig:
    transport = draw(st.sampled_from(["http", "file", "null", "my.plugin-2"]))
    return RemoteConfig(
        enabled=draw(st.booleans()),
        url=draw(good_urls),
        token=draw(good_tokens),
        transport=transport,
        path=draw(
            st.one_of(
                st.just("/var/log/lightd-sync.jsonl"),
                st.text(min_size=1, max_size=40).filter(lambda p: "\0" not in p),
            )
        ),
        timeout=draw(positive),
        health_interval=draw(positive),
        workers=draw(st.integers(1, 64)),
        queue_size=draw(st.integers(1, 10_000_000)),
        max_retry_after=draw(positive),
        state_path=draw(st.none() | st.just("/var/lib/lightd/sync-state.db")),
    )


@fast
@given(config=good_configs())
def test_round_trip_through_asdict_and_json(config: RemoteConfig) -> None:
    values = attrs.asdict(config)
    assert load_config({"remote": values}, env=NO_ENV) == config
    as_json = json.loads(json.dumps({"remote": values}))
    assert load_config(as_json, env=NO_ENV) == config
    assert config.token not in repr(config)
    assert config.token not in str(config.redacted())


@pytest.fixture(scope="module")
def scratch() -> Iterator[pathlib.Path]:
    with tempfile.TemporaryDirectory() as folder:
        yield pathlib.Path(folder)


@fast
@given(
    content=st.text()
    | st.binary()
    | json_values.map(json.dumps)
    | st.dictionaries(st.sampled_from(KEYS), json_values).map(
        lambda remote: json.dumps({"remote": remote})
    )
)
def test_any_file_content_is_a_config_or_a_config_error(
    scratch: pathlib.Path, content: Any
) -> None:
    path = scratch / "config.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", errors="surrogatepass")
    result = config_or_message(path)
    if not isinstance(result, RemoteConfig):
        assert result.startswith((f"{path}: ", "remote")), result


# --- LIGHTD_REMOTE_TOKEN_FILE and files readable by others ------------------------------

OTHER = "lightd_0123456789abcdef0123456789abcdef"
CONFIG_LOGGER = "lightd_sync.config"


def token_file(folder: pathlib.Path, content: Union[str, bytes], mode: int = 0o600) -> str:
    path = folder / "token"
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    path.chmod(mode)
    return str(path)


def shared_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == CONFIG_LOGGER and r.levelname == "WARNING" and "readable by" in r.getMessage()
    ]


def test_token_file_wins_over_the_file_and_the_variable(tmp_path: pathlib.Path) -> None:
    path = token_file(tmp_path, f"\n  {OTHER}\r\n\n")
    env = {"LIGHTD_REMOTE_TOKEN": TOKEN, "LIGHTD_REMOTE_TOKEN_FILE": path}
    assert load_config(enabled(), env=env).token == OTHER
    assert load_config({}, env={**env, "LIGHTD_REMOTE_ENABLED": "1", "LIGHTD_REMOTE_URL": URL}) == (
        RemoteConfig(enabled=True, url=URL, token=OTHER)
    )


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda d: str(d / "missing"), "cannot read '{path}': No such file or directory"),
        (os.fspath, "'{path}' is not a regular file (drwx"),
        (lambda d: token_file(d, ""), "'{path}' is empty"),
        (lambda d: token_file(d, " \n\t\n"), "'{path}' is empty"),
        (lambda d: token_file(d, b"\xff" + TOKEN.encode()), "'{path}' is not UTF-8 text"),
        (lambda d: token_file(d, TOKEN * 2000), "'{path}' is larger than 65536 bytes"),
        (lambda d: "a\0b", "cannot read 'a\\x00b': the path holds a NUL character"),
    ],
    ids=["missing", "folder", "empty", "whitespace", "not-utf8", "huge", "nul"],
)
def test_token_file_that_cannot_be_used(tmp_path: pathlib.Path, make: Any, expected: str) -> None:
    path = make(tmp_path)
    message = config_error(enabled(), env={"LIGHTD_REMOTE_TOKEN_FILE": path})
    assert message.startswith("LIGHTD_REMOTE_TOKEN_FILE: " + expected.format(path=path)), message


def test_token_file_that_is_a_fifo_fails_at_once(tmp_path: pathlib.Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # an open() without O_NONBLOCK would wait for a writer for ever
    message = config_error(enabled(), env={"LIGHTD_REMOTE_TOKEN_FILE": str(fifo)})
    assert message.startswith(f"LIGHTD_REMOTE_TOKEN_FILE: {str(fifo)!r} is not a regular file (prw")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_token_file_without_permission(tmp_path: pathlib.Path) -> None:
    path = token_file(tmp_path, TOKEN, mode=0o000)
    message = config_error(enabled(), env={"LIGHTD_REMOTE_TOKEN_FILE": path})
    assert message == f"LIGHTD_REMOTE_TOKEN_FILE: cannot read {path!r}: Permission denied"


def test_token_file_set_to_an_empty_string_is_an_error() -> None:
    message = config_error(enabled(), env={"LIGHTD_REMOTE_TOKEN_FILE": ""})
    assert message == (
        "LIGHTD_REMOTE_TOKEN_FILE: set to an empty string; name the token file, or unset it"
    )


def test_token_file_with_a_bad_token_names_the_variable_not_the_token(
    tmp_path: pathlib.Path,
) -> None:
    path = token_file(tmp_path, f"{TOKEN}\nsecond line")
    message = config_error(enabled(), env={"LIGHTD_REMOTE_TOKEN_FILE": path})
    assert message == (
        "remote.token: must be usable as an HTTP header value (printable ASCII, no whitespace "
        "or control characters) (set by LIGHTD_REMOTE_TOKEN_FILE)"
    )
    assert "second" not in message


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o666])
def test_token_file_readable_by_others_logs_a_warning(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture, mode: int
) -> None:
    path = token_file(tmp_path, OTHER, mode=mode)
    with caplog.at_level(logging.WARNING, logger=CONFIG_LOGGER):
        assert load_config(enabled(), env={"LIGHTD_REMOTE_TOKEN_FILE": path}).token == OTHER
    [warning] = shared_warnings(caplog)
    assert warning.startswith(f"LIGHTD_REMOTE_TOKEN_FILE: {path!r} is readable by group or others")
    assert warning.endswith(f"({stat.filemode(0o100000 | mode)})")
    assert OTHER not in caplog.text


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_private_token_file_logs_nothing(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture, mode: int
) -> None:
    path = token_file(tmp_path, OTHER, mode=mode)
    with caplog.at_level(logging.DEBUG, logger="lightd_sync"):
        load_config(enabled(), env={"LIGHTD_REMOTE_TOKEN_FILE": path})
    assert shared_warnings(caplog) == []


@pytest.mark.parametrize(
    ("mode", "remote", "warned"),
    [
        (0o644, enabled(), True),
        (0o640, enabled(), True),
        (0o600, enabled(), False),
        (0o644, {"remote": {"enabled": False}}, False),  # no token in it
        (0o644, {"remote": {"enabled": False, "token": None}}, False),
    ],
)
def test_config_file_with_a_token_readable_by_others_logs_a_warning(
    tmp_path: pathlib.Path,
    caplog: pytest.LogCaptureFixture,
    mode: int,
    remote: dict[str, Any],
    warned: bool,
) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(remote), encoding="utf-8")
    path.chmod(mode)
    with caplog.at_level(logging.WARNING, logger=CONFIG_LOGGER):
        load_config(path, env=NO_ENV)
    warnings = shared_warnings(caplog)
    assert len(warnings) == int(warned)
    if warned:
        assert warnings[0].startswith(f"{path} holds remote.token and is readable by group")
        assert "LIGHTD_REMOTE_TOKEN_FILE" in warnings[0]
    assert TOKEN not in caplog.text


@fast
@given(content=st.binary(max_size=200) | st.text(max_size=60).map(str.encode))
def test_any_token_file_is_a_token_or_a_config_error_without_its_contents(
    scratch: pathlib.Path, content: bytes
) -> None:
    path = scratch / "token"
    path.write_bytes(content)
    path.chmod(0o600)
    try:
        config = load_config(enabled(), env={"LIGHTD_REMOTE_TOKEN_FILE": str(path)})
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith(("LIGHTD_REMOTE_TOKEN_FILE: ", "remote.token: ")), message
        stripped = content.strip()
        if len(stripped) >= 4:
            assert repr(stripped.decode("utf-8", "replace"))[1:-1] not in message
    else:
        assert config.token == content.decode().strip()
