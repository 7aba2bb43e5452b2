"""Fixtures shared by the whole suite: real local servers, log capture, thread checks."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest

from lightd_sync import RemoteConfig
from lightd_sync.testing import set_testing

from .servers import ScriptedRemote, SilentServer, lightd_threads, serving, wait_until

TOKEN = "lightd_ad2f7fc49ed640429c450e14ed07c8d5"


class LogCapture(logging.Handler):
    """A thread-safe handler that keeps every formatted record of the lightd_sync loggers."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        # Guards records: lane and health threads log while the test reads.
        self._records_lock = threading.Lock()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        record.formatted = self.format(record)
        with self._records_lock:
            self.records.append(record)

    def messages(self, level: int = logging.DEBUG) -> list[str]:
        with self._records_lock:
            return [r.formatted for r in self.records if r.levelno >= level]

    def text(self) -> str:
        return "\n".join(self.messages())


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    handler = LogCapture()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    logger = logging.getLogger("lightd_sync")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert TOKEN not in handler.text()


PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture(autouse=True)
def no_proxy_from_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """The transports honour proxy variables; tests set them only on purpose."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture(autouse=True)
def fast_backoff(request: pytest.FixtureRequest) -> Iterator[None]:
    """
    Retries wait 0 s in tests (testing mode: the policy is the same, the waits are not).

    A test that measures real waits (Retry-After, backoff) is marked ``real_waits``.
    """
    if request.node.get_closest_marker("real_waits"):
        with set_testing(False):
            yield
    else:
        with set_testing(True):
            yield


#: The watchdog of a test that owns SIGALRM: pytest-timeout's signal method needs that signal.
OWNS_SIGNALS_TIMEOUT = 60


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """
    A test marked ``owns_signals`` gets pytest-timeout's ``thread`` method.

    The default (``signal``) method needs SIGALRM, which such a test takes
    over or blocks, so it could hang the suite for ever (issue #26). The
    thread method needs no signal: past the timeout it prints every thread's
    stack and ends the run, failing it.
    """
    for item in items:
        if item.get_closest_marker("owns_signals") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(OWNS_SIGNALS_TIMEOUT, method="thread"))


@pytest.fixture(autouse=True)
def no_thread_left() -> Iterator[None]:
    """Every test must leave no lightd-sync thread behind."""
    yield
    assert wait_until(lambda: not lightd_threads(), timeout=5), lightd_threads()


@pytest.fixture
def remote() -> Iterator[ScriptedRemote]:
    yield from serving(ScriptedRemote())


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    yield from serving(SilentServer())


def http_config(url: str, **kw: object) -> RemoteConfig:
    return RemoteConfig(enabled=True, url=url, token=TOKEN, **kw)  # type: ignore[arg-type]
