"""The local API (lightd_sync.api): served for real, called with http.client, and fuzzed."""

from __future__ import annotations

import http.client
import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lightd_sync import ConfigError, RemoteConfig, SyncEngine, receiver
from lightd_sync._server.http import WsgiServer, serve
from lightd_sync.api import ApiApp, api_token_from_config, create_app

from .conftest import TOKEN, LogCapture
from .servers import wait_until

API_TOKEN = "lightd_api_5f0c2b7d9e4a41c3a8b6d0e2f4a6c8e0"
NEW_TOKEN = "lightd_new_remote_token_9a8b7c6d5e4f3a2b"
SECRETS = (TOKEN, API_TOKEN, NEW_TOKEN)
ROUTES = [
    ("GET", "/remote/config"),
    ("POST", "/remote/reload"),
    ("POST", "/remote/config/reload"),
    ("GET", "/remote/health"),
    ("GET", "/remote/stats"),
    ("GET", "/metrics"),
]
LIGHTD_ACCEPT = "Application/vnd.pkglatv1+json"


def write_config(path: Path, remote: dict[str, Any]) -> None:
    path.write_text(json.dumps({"remote": remote, "authorization": {"token": API_TOKEN}}))


class Client:
    """http.client against one server; remembers every body, to look for tokens in them."""

    def __init__(self, server: WsgiServer) -> None:
        self.server = server
        self.bodies: list[bytes] = []

    def request(
        self,
        method: str,
        path: str,
        *,
        auth: Optional[str] = f"Bearer {API_TOKEN}",
        headers: Optional[dict[str, str]] = None,
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.server.host, self.server.port, timeout=5)
        try:
            sent = dict(headers or {})
            if auth is not None:
                sent["Authorization"] = auth
            conn.request(method, path, headers=sent)
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        self.bodies.append(body)
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body

    def json(self, method: str, path: str, **kw: Any) -> tuple[int, dict[str, str], Any]:
        status, headers, body = self.request(method, path, **kw)
        assert "application/json" == headers["content-type"], (path, headers)
        return status, headers, json.loads(body)


@attrs.frozen
class Remote:
    """The reference receiver, live on 127.0.0.1."""

    app: receiver.ReceiverApp
    url: str

    def latest(self) -> dict[str, dict[str, Any]]:
        return self.app.store.latest()


@pytest.fixture
def remote() -> Iterator[Remote]:
    with receiver.create_app(TOKEN, rate=math.inf) as app, serve(app) as server:
        yield Remote(app, server.url)


@pytest.fixture
def config_path(tmp_path: Path, remote: Remote) -> Path:
    path = tmp_path / "config.json"
    write_config(path, {"enabled": True, "url": remote.url, "token": TOKEN})
    return path


@pytest.fixture
def engine(config_path: Path) -> Iterator[SyncEngine]:
    with SyncEngine.from_file(config_path) as eng:
        yield eng


@pytest.fixture
def client(engine: SyncEngine) -> Iterator[Client]:
    with serve(create_app(engine, token=API_TOKEN)) as server:
        c = Client(server)
        yield c
    for body in c.bodies:
        for secret in SECRETS:
            assert secret.encode() not in body


def test_every_route_answers_with_the_token(client: Client, engine: SyncEngine) -> None:
    status, _, doc = client.json("GET", "/remote/config")
    assert 200 == status
    assert engine.config.redacted() == doc
    assert doc["token"].startswith("lightd_…")
    status, _, doc = client.json("POST", "/remote/reload")
    assert (200, True, [], "unchanged") == (status, doc["success"], doc["changed"], doc["token"])
    assert wait_until(lambda: engine.health.healthy is not None)
    status, _, doc = client.json("GET", "/remote/health")
    assert (200, True) == (status, doc["healthy"])
    assert {"checked_at", "latency", "consecutive_failures", "error"} <= set(doc)
    status, _, doc = client.json("GET", "/remote/stats")
    assert 200 == status
    assert engine.stats().to_dict() == doc
    status, headers, body = client.request("GET", "/metrics")
    assert 200 == status
    assert "text/plain; version=0.0.4; charset=utf-8" == headers["content-type"]
    assert body.endswith(b"\n")


BAD_AUTH = [
    None,
    "",
    "Bearer",
    "Bearer ",
    "Bearer wrong",
    f"Bearer {API_TOKEN}x",
    f"Bearer {API_TOKEN[:-1]}",
    f"Basic {API_TOKEN}",
    f"Token {API_TOKEN}",
    API_TOKEN,
    f"Bearer {TOKEN}",  # the remote's token is not the API's
]


@pytest.mark.parametrize("auth", BAD_AUTH)
def test_every_route_refuses_a_missing_or_wrong_token(
    client: Client, engine: SyncEngine, auth: Optional[str]
) -> None:
    for method, path in [*ROUTES, ("GET", "/nowhere"), ("DELETE", "/remote/config")]:
        status, headers, doc = client.json(method, path, auth=auth)
        assert 401 == status, (method, path)
        assert 'Bearer realm="lightd-sync"' == headers["www-authenticate"]
        assert False is doc["success"]
        assert "bearer token" in doc["error"]
    assert 0 == engine.stats().submitted


def test_the_scheme_is_case_insensitive(client: Client) -> None:
    for auth in (f"bearer {API_TOKEN}", f"BEARER {API_TOKEN}", f"  Bearer   {API_TOKEN}  "):
        assert 200 == client.request("GET", "/remote/stats", auth=auth)[0]


def test_unknown_path_is_404_and_wrong_method_405(client: Client) -> None:
    for path in ("/", "/remote", "/remote/config/", "/REMOTE/CONFIG", "/remote/update", "/x?y"):
        status, _, doc = client.json("GET", path)
        assert (404, False) == (status, doc["success"]), path
    for method, path in ROUTES:
        for wrong in ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
            if wrong == method:
                continue
            status, headers, doc = client.json(wrong, path)
            assert 405 == status, (wrong, path)
            assert method == headers["allow"]
            assert f"use {method}" in doc["error"]


def test_lightd_accept_header_and_any_other_are_accepted(client: Client) -> None:
    for accept in (LIGHTD_ACCEPT, "application/json", "text/html", "image/png;q=1, */*;q=0"):
        for method, path in ROUTES:
            status, _, _ = client.request(method, path, headers={"Accept": accept})
            assert 200 == status, (accept, path)
    status, headers, doc = client.json("GET", "/remote/config", headers={"Accept": LIGHTD_ACCEPT})
    assert (200, "application/json") == (status, headers["content-type"])
    assert "enabled" in doc


def test_reload_route_applies_a_changed_file(
    client: Client, engine: SyncEngine, config_path: Path, remote: Remote
) -> None:
    url = remote.url
    write_config(
        config_path,
        {"enabled": True, "url": url, "token": TOKEN, "health_interval": 5, "queue_size": 50},
    )
    status, _, doc = client.json("POST", "/remote/reload")
    assert 200 == status
    assert {
        "success": True,
        "changed": ["health_interval", "queue_size"],
        "token": "unchanged",
    }.items() <= doc.items()
    assert 50 == doc["config"]["queue_size"] == engine.config.queue_size
    write_config(config_path, {"enabled": True, "url": url, "token": NEW_TOKEN})
    status, _, doc = client.json("POST", "/remote/reload")
    assert (200, "changed") == (status, doc["token"])
    assert {"health_interval", "queue_size", "token"} == set(doc["changed"])
    assert NEW_TOKEN == engine.config.token


def test_reload_route_refuses_an_invalid_file_and_the_engine_keeps_delivering(
    client: Client, engine: SyncEngine, config_path: Path, remote: Remote
) -> None:
    before = engine.config
    cases = [
        ('{"remote": {"enabled": true, "url": 42}}', "remote.url: expected a string"),
        ("{not json", "line 1, column 2"),
        ('{"remote": {"enabled": true, "url": "ftp://x", "token": "t"}}', "remote.url"),
    ]
    for text, message in cases:
        config_path.write_text(text)
        status, _, doc = client.json("POST", "/remote/reload")
        assert 400 == status
        assert False is doc["success"]
        assert message in doc["error"]
        with pytest.raises(ConfigError, match=re.escape(message)):
            engine.reload()
        assert before is engine.config
    assert engine.update("after-bad-reload", "ready")
    assert wait_until(lambda: "after-bad-reload" in remote.latest())
    assert "ready" == remote.latest()["after-bad-reload"]["status"]


def test_reload_route_is_409_without_a_file_or_once_closed(config_path: Path) -> None:
    engines = [SyncEngine(RemoteConfig()), SyncEngine.from_file(config_path)]
    engines[1].close()
    try:
        for eng, word in zip(engines, ("not built from a file", "closed")):
            with serve(create_app(eng, token=API_TOKEN)) as server:
                c = Client(server)
                status, _, doc = c.json("POST", "/remote/reload")
                assert (409, False) == (status, doc["success"])
                assert word in doc["error"]
                assert 200 == c.request("GET", "/remote/config")[0]
    finally:
        engines[0].close()


def test_lightd_reload_route_answers_in_lightd_s_shapes(
    client: Client, engine: SyncEngine, config_path: Path, remote: Remote
) -> None:
    # Lightd: 200 {"message": "Configuration reloaded successfully"}, else {"error": "..."}.
    write_config(config_path, {"enabled": True, "url": remote.url, "token": TOKEN, "workers": 3})
    status, _, doc = client.json("POST", "/remote/config/reload", headers={"Accept": "*/*"})
    assert (200, {"message": "Configuration reloaded successfully"}) == (status, doc)
    assert 3 == engine.config.workers
    config_path.write_text('{"remote": {"enabled": true, "workers": "two"}}')
    status, _, doc = client.json("POST", "/remote/config/reload")
    assert 400 == status
    assert ["error"] == list(doc)
    assert doc["error"].startswith("remote.workers: expected a whole number")
    assert 3 == engine.config.workers
    # The extension's route is unchanged beside it.
    status, _, doc = client.json("POST", "/remote/reload")
    assert (400, False) == (status, doc["success"])
    status, headers, doc = client.json("GET", "/remote/config/reload")
    assert (405, "POST") == (status, headers["allow"])


def test_lightd_reload_route_is_409_with_only_an_error_without_a_file() -> None:
    with SyncEngine(RemoteConfig()) as eng, serve(create_app(eng, token=API_TOKEN)) as server:
        status, _, doc = Client(server).json("POST", "/remote/config/reload")
    assert (409, ["error"]) == (status, list(doc))
    assert "not built from a file" in doc["error"]


def _pasted_answers() -> dict[str, Any]:
    """The JSON answers docs/local-api.md shows after each ``curl ... ROUTE``, by route."""
    text = (Path(__file__).parent.parent / "docs" / "local-api.md").read_text(encoding="utf-8")
    found: dict[str, Any] = {}
    for block in re.findall(r"```console\n(.*?)```", text, re.S):
        lines = block.splitlines()
        for command, answer in zip(lines, lines[1:]):
            match = re.match(r"\$ curl .* http://127\.0\.0\.1:\d+(/\S+)$", command)
            if match:
                found[match.group(1)] = json.loads(answer)
    return found


def test_the_answers_pasted_in_local_api_md_have_every_key_the_code_gives() -> None:
    from lightd_sync import HealthState, SyncStats

    answers = _pasted_answers()
    assert {"/remote/stats", "/remote/health", "/remote/reload"} <= set(answers)
    assert list(SyncStats().to_dict()) == list(answers["/remote/stats"])
    assert list(HealthState().to_dict()) == list(answers["/remote/health"])
    pasted = answers["/remote/reload"]["config"]
    # The same keys in the same order, and the values a config of these values shows.
    values = {k: v for k, v in pasted.items() if k != "token"}
    token = "lightd_ad2f7fc49ed640429c450e14ed07c8d5"  # the token of docs/cli.md's config.json
    assert RemoteConfig(**values, token=token).redacted() == pasted
    assert list(RemoteConfig().redacted()) == list(pasted)


# -- /metrics --------------------------------------------------------------------

_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\.)*)"')


def parse_metrics(text: str) -> dict[str, dict[str, Any]]:
    """
    Parse the text format 0.0.4 strictly enough to catch mistakes.

    Returns ``{family: {"help": str, "type": str, "samples": [(name, labels, value)]}}``.
    """
    assert text.endswith("\n")
    families: dict[str, dict[str, Any]] = {}
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert name not in families, f"HELP twice for {name}"
            assert help_text.strip()
            families[name] = {"help": help_text, "type": None, "samples": []}
            continue
        if line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert families[name]["type"] is None, f"TYPE twice for {name}"
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped")
            families[name]["type"] = kind
            continue
        match = _SAMPLE.fullmatch(line)
        assert match, f"not a sample line: {line!r}"
        name, label_text, value = match.groups()
        labels: dict[str, str] = {}
        if label_text is not None:
            pairs = _LABEL.findall(label_text)
            assert ",".join(f'{k}="{v}"' for k, v in pairs) == label_text, line
            labels = dict(pairs)
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        if family not in families or families[family]["type"] != "histogram":
            family = name
        assert families.get(family, {}).get("type"), f"no HELP/TYPE before {name}"
        families[family]["samples"].append((name, labels, float(value)))
    return families


def check_histogram(family: dict[str, Any], name: str) -> dict[str, float]:
    buckets = [(labels["le"], v) for n, labels, v in family["samples"] if n == f"{name}_bucket"]
    assert buckets and "+Inf" == buckets[-1][0]
    bounds = [float(le) for le, _ in buckets]
    assert bounds == sorted(bounds)
    counts = [v for _, v in buckets]
    assert counts == sorted(counts), "buckets are cumulative"
    single = {n: v for n, _, v in family["samples"] if not n.endswith("_bucket")}
    assert counts[-1] == single[f"{name}_count"]
    return single


def metrics(client: Client) -> dict[str, dict[str, Any]]:
    status, _, body = client.request("GET", "/metrics")
    assert 200 == status
    return parse_metrics(body.decode("utf-8"))


def value(families: dict[str, dict[str, Any]], name: str, **labels: str) -> Optional[float]:
    found = [v for n, lab, v in families[name]["samples"] if n == name and lab == labels]
    assert len(found) <= 1
    return found[0] if found else None


def test_metrics_parse_and_agree_with_the_engine(
    client: Client, engine: SyncEngine, remote: Remote
) -> None:
    for i in range(5):
        assert engine.update(f"m{i}", "installing")
    assert engine.flush(5)
    assert wait_until(lambda: engine.health.healthy is not None)
    families = metrics(client)
    expected = {
        "lightd_sync_updates_total": "counter",
        "lightd_sync_updates_submitted_total": "counter",
        "lightd_sync_updates_resynced_total": "counter",
        "lightd_sync_updates_pending": "gauge",
        "lightd_sync_remote_healthy": "gauge",
        "lightd_sync_health_check_latency_seconds": "gauge",
        "lightd_sync_health_consecutive_failures": "gauge",
        "lightd_sync_delivery_seconds": "histogram",
        "lightd_sync_updates_failed_total": "counter",
        "lightd_sync_updates_dropped_total": "counter",
        "lightd_sync_info": "gauge",
    }
    assert expected == {name: f["type"] for name, f in families.items()}
    from lightd_sync import __version__
    from lightd_sync._exceptions import REASONS

    assert 1 == value(families, "lightd_sync_info", version=__version__)
    for reason in REASONS:
        assert 0 == value(families, "lightd_sync_updates_failed_total", reason=reason)
    for reason in ("queue_full", "closed"):
        assert 0 == value(families, "lightd_sync_updates_dropped_total", reason=reason)
    stats = engine.stats()
    for outcome in ("delivered", "failed", "dropped", "superseded"):
        assert getattr(stats, outcome) == value(
            families, "lightd_sync_updates_total", outcome=outcome
        )
    assert 5 == value(families, "lightd_sync_updates_total", outcome="delivered")
    assert 5 == value(families, "lightd_sync_updates_submitted_total")
    assert 0 == value(families, "lightd_sync_updates_resynced_total")
    assert 0 == value(families, "lightd_sync_updates_pending")
    assert 1 == value(families, "lightd_sync_remote_healthy")
    latency = value(families, "lightd_sync_health_check_latency_seconds")
    assert latency is not None and latency >= 0
    assert 0 == value(families, "lightd_sync_health_consecutive_failures")
    single = check_histogram(
        families["lightd_sync_delivery_seconds"], "lightd_sync_delivery_seconds"
    )
    assert 5 == single["lightd_sync_delivery_seconds_count"]
    assert 0 < single["lightd_sync_delivery_seconds_sum"] < 5 * 10


def test_metrics_before_the_first_health_check_have_no_health_samples() -> None:
    engine = SyncEngine(RemoteConfig())  # never started: no check yet
    try:
        with serve(create_app(engine, token=API_TOKEN)) as server:
            families = metrics(Client(server))
            assert "gauge" == families["lightd_sync_remote_healthy"]["type"]
            assert [] == families["lightd_sync_remote_healthy"]["samples"]
            assert [] == families["lightd_sync_health_check_latency_seconds"]["samples"]
            assert 0 == value(families, "lightd_sync_health_consecutive_failures")
            check_histogram(
                families["lightd_sync_delivery_seconds"], "lightd_sync_delivery_seconds"
            )
            engine.check_health()
            assert 1 == value(metrics(Client(server)), "lightd_sync_remote_healthy")
    finally:
        engine.close()


# -- the token, the app, and fuzzing ----------------------------------------------


def test_api_token_from_config(tmp_path: Path) -> None:
    assert API_TOKEN == api_token_from_config({"authorization": {"token": API_TOKEN}}, env={})
    assert None is api_token_from_config({}, env={})
    assert None is api_token_from_config({"authorization": None}, env={})
    assert None is api_token_from_config({"authorization": {"other": 1}}, env={})
    path = tmp_path / "config.json"
    write_config(path, {"enabled": False})
    assert API_TOKEN == api_token_from_config(path, env={})
    assert API_TOKEN == api_token_from_config(str(path), env={})
    env = {"LIGHTD_API_TOKEN": "lightd_from_the_environment_0001"}
    assert env["LIGHTD_API_TOKEN"] == api_token_from_config(path, env=env)
    assert API_TOKEN == api_token_from_config(path, env={"LIGHTD_API_TOKEN": ""})
    for bad in (42, "", "has space", "tab\there", "é-unicode", ["x"]):
        with pytest.raises(ConfigError, match=r"^authorization\.token: ") as info:
            api_token_from_config({"authorization": {"token": bad}}, env={})
        assert str(bad) not in str(info.value) or bad == ""
    with pytest.raises(ConfigError, match=r"^authorization: expected a JSON object"):
        api_token_from_config({"authorization": "x"}, env={})
    with pytest.raises(ConfigError, match="LIGHTD_API_TOKEN"):
        api_token_from_config({}, env={"LIGHTD_API_TOKEN": "two words"})
    path.write_text("[1]")
    with pytest.raises(ConfigError, match="top level"):
        api_token_from_config(path, env={})
    with pytest.raises(ConfigError, match="cannot read"):
        api_token_from_config(tmp_path / "missing.json", env={})
    with pytest.raises(TypeError):
        api_token_from_config(42, env={})  # type: ignore[arg-type]


def test_create_app_refuses_unusable_tokens_and_engines() -> None:
    engine = SyncEngine(RemoteConfig())
    try:
        for bad in ("", "a b", "line\nbreak", None, b"bytes"):
            with pytest.raises(ConfigError, match=r"^token: "):
                create_app(engine, token=bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            create_app(object(), token=API_TOKEN)  # type: ignore[arg-type]
        app = create_app(engine, token=API_TOKEN)
        assert isinstance(app, ApiApp)
        assert API_TOKEN not in repr(app)
    finally:
        engine.close()


def call(app: ApiApp, environ: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    seen: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        seen.append((status, headers))

    body = b"".join(app(environ, start_response))
    ((status, headers),) = seen
    return int(status.split()[0]), dict(headers), body


def test_a_bug_is_a_logged_json_500(monkeypatch: pytest.MonkeyPatch, logs: LogCapture) -> None:
    engine = SyncEngine(RemoteConfig())
    try:
        app = create_app(engine, token=API_TOKEN)

        def broken() -> None:
            raise RuntimeError("a bug")

        monkeypatch.setattr(engine, "stats", broken)
        environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/remote/stats"}
        environ["HTTP_AUTHORIZATION"] = f"Bearer {API_TOKEN}"
        status, headers, body = call(app, environ)
        assert (500, "application/json") == (status, headers["Content-Type"])
        assert False is json.loads(body)["success"]
        assert "a bug" not in body.decode()
        assert [r for r in logs.records if r.name == "lightd_sync.api" and r.exc_info]
    finally:
        engine.close()


_METHODS = st.one_of(
    st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "get", ""]),
    st.text(max_size=12),
)
_PATHS = st.one_of(
    st.sampled_from([p for _, p in ROUTES] + ["/", "", "/remote/", "/metrics/", "//metrics"]),
    st.text(max_size=40),
    st.builds(lambda p, s: p + s, st.sampled_from([p for _, p in ROUTES]), st.text(max_size=5)),
)
_AUTH = st.one_of(
    st.none(),
    st.just(f"Bearer {API_TOKEN}"),
    st.just(f"Bearer {TOKEN}"),
    st.builds(lambda s: f"Bearer {s}", st.text(max_size=50)),
    st.text(max_size=60),
)


def test_fuzzed_requests_get_json_or_metrics_never_500(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    write_config(path, {"enabled": False, "token": TOKEN})
    engine = SyncEngine.from_file(path)
    app = create_app(engine, token=API_TOKEN)

    @settings(max_examples=300, deadline=None)
    @given(
        method=_METHODS,
        path=_PATHS,
        auth=_AUTH,
        extra=st.dictionaries(
            st.sampled_from(["HTTP_ACCEPT", "CONTENT_TYPE", "CONTENT_LENGTH", "QUERY_STRING"]),
            st.text(max_size=30),
        ),
    )
    def check(method: str, path: str, auth: Optional[str], extra: dict[str, str]) -> None:
        environ: dict[str, Any] = {"REQUEST_METHOD": method, "PATH_INFO": path, **extra}
        if auth is not None:
            environ["HTTP_AUTHORIZATION"] = auth
        status, headers, body = call(app, environ)
        assert status in (200, 401, 404, 405), (status, body)
        assert str(len(body)) == headers["Content-Length"]
        for secret in SECRETS:
            assert secret.encode() not in body
        if headers["Content-Type"].startswith("text/plain"):
            assert (200, "GET", "/metrics") == (status, method, path)
            parse_metrics(body.decode("utf-8"))
        else:
            assert "application/json" == headers["Content-Type"]
            doc = json.loads(body)
            assert (status == 200) == (doc.get("success", True) is True)
        if status == 405:
            assert headers["Allow"] in ("GET", "POST")

    try:
        check()
    finally:
        engine.close()
