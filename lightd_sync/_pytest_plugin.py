"""
The pytest plugin of lightd_sync: the ``lightd_remote`` and ``lightd_file_sync`` fixtures.

pytest loads it through the ``pytest11`` entry point named ``lightd_sync``
(``-p no:lightd_sync`` turns it off; with ``PYTEST_DISABLE_PLUGIN_AUTOLOAD``
set, ``-p lightd_sync`` turns it on). The fixtures live in this module and
the helpers in :mod:`lightd_sync.testing`, so that ``lightd_sync.testing``
can be imported without pytest. lightd_sync itself is imported only when a
test uses a fixture: loading the plugin costs every pytest run nothing, and
coverage of lightd_sync in its own suite is not skewed by an early import.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from lightd_sync import SyncEngine
    from lightd_sync.testing import LightdRemote

__all__ = ["lightd_file_sync", "lightd_remote", "pytest_configure"]

_TEARDOWN_TIMEOUT = 5.0


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``lightd_remote`` marker."""
    config.addinivalue_line(
        "markers",
        "lightd_remote(batch_max=None): build the lightd_remote fixture with these "
        "LightdRemote arguments (batch_max=N offers batches of up to N updates)",
    )


@pytest.fixture
def lightd_remote(request: pytest.FixtureRequest) -> Iterator[LightdRemote]:
    """
    A live reference remote on 127.0.0.1 with a random token, stopped after the test.

    See :class:`lightd_sync.testing.LightdRemote`: ``.url``, ``.token``,
    ``.config(**overrides)``, ``.updates``, ``.billing``,
    ``.wait_for(server, status)``, ``.fail_next(n, status)``,
    ``.delay(seconds)``, ``.down()``/``.up()``, and the batch switches.
    ``@pytest.mark.lightd_remote(batch_max=100)`` on a test builds it with
    those arguments. Close the engines you build on it within the test
    (``with SyncEngine(...)``). Testing mode is on during the test
    (:func:`lightd_sync.testing.set_testing`): retries and early health
    checks do not wait.
    """
    from lightd_sync.testing import LightdRemote, set_testing

    marker = request.node.get_closest_marker("lightd_remote")
    options = dict(marker.kwargs) if marker is not None else {}
    if marker is not None and marker.args:
        raise TypeError("@pytest.mark.lightd_remote takes keyword arguments only (batch_max=N)")
    remote = LightdRemote(**options).start()
    try:
        with set_testing():
            yield remote
    finally:
        ended = remote.stop(_TEARDOWN_TIMEOUT)
    assert ended, f"lightd_remote: the server threads of {remote!r} did not end in time"


@pytest.fixture
def lightd_file_sync(tmp_path: Path) -> Iterator[SyncEngine]:
    """
    A :class:`~lightd_sync.SyncEngine` on the file transport, writing in ``tmp_path``.

    Its file is ``engine.config.path``; after ``engine.flush()``,
    :func:`lightd_sync.testing.read_events` returns the bodies it logged.
    Closed after the test (at most 5 seconds), leaving no thread behind.
    Testing mode is on during the test, as with ``lightd_remote``.
    """
    from lightd_sync import RemoteConfig, SyncEngine
    from lightd_sync.testing import set_testing

    path = tmp_path / "lightd-sync-events.jsonl"
    engine = SyncEngine(RemoteConfig(enabled=True, transport="file", path=str(path)))
    try:
        with set_testing():
            yield engine
    finally:
        engine.close(_TEARDOWN_TIMEOUT)
