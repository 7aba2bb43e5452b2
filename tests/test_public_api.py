"""The public API: ``__all__``, docstrings, the version, and what importing costs."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import textwrap
import types

import lightd_sync

#: The names issue 2 fixes; later issues may add more, never take these away.
CORE_API = {
    "AuthRejectedError",
    "ConfigError",
    "DeliveryError",
    "FileTransport",
    "HealthState",
    "HttpTransport",
    "Lifecycle",
    "LightdSyncError",
    "NullTransport",
    "RemoteConfig",
    "RemoteRejectedError",
    "RemoteTimeoutError",
    "RemoteUnreachableError",
    "Status",
    "SyncEngine",
    "SyncStats",
    "Transport",
    "Update",
    "__version__",
    "load_config",
}


def _defined_here(obj: object) -> bool:
    return getattr(obj, "__module__", "").split(".")[0] == "lightd_sync"


def test_all_is_sorted_and_unique() -> None:
    assert lightd_sync.__all__ == sorted(set(lightd_sync.__all__))


def test_all_is_exactly_the_public_names() -> None:
    exported = set(lightd_sync.__all__)
    assert exported >= CORE_API
    # Every public name bound in the package namespace that lightd_sync defines is exported...
    public = {
        name
        for name, obj in vars(lightd_sync).items()
        if not name.startswith("_") and not isinstance(obj, types.ModuleType) and _defined_here(obj)
    }
    assert public <= exported
    # ...and every exported name is one of those, or provided lazily by the module's __getattr__.
    lazy = exported - public - {"__version__"}
    for name in lazy:
        assert name not in vars(lightd_sync), name
        assert _defined_here(getattr(lightd_sync, name)), name
    # No helper leaks: typing's Any, the logging module, ``annotations`` are not API.
    assert not exported & {"Any", "logging", "annotations"}


def test_every_name_resolves_and_has_a_docstring() -> None:
    for name in lightd_sync.__all__:
        obj = getattr(lightd_sync, name)
        if name == "__version__":
            assert isinstance(obj, str)
            continue
        assert _defined_here(obj), name
        doc = obj.__doc__
        assert doc, f"{name} has no docstring"
        assert doc.strip(), f"{name} has an empty docstring"


def test_star_import_gives_all() -> None:
    namespace: dict[str, object] = {}
    exec("from lightd_sync import *", namespace)
    assert set(lightd_sync.__all__) <= set(namespace)


def test_unknown_attribute_is_an_attribute_error() -> None:
    assert not hasattr(lightd_sync, "NoSuchThing")


def test_version_is_the_installed_distribution() -> None:
    assert lightd_sync.__version__ == importlib.metadata.version("lightd-sync")


def test_import_starts_no_thread_and_does_not_import_urllib3() -> None:
    code = textwrap.dedent(
        """
        import logging, sys, threading
        import lightd_sync
        assert "urllib3" not in sys.modules, "urllib3 imported by import lightd_sync"
        assert threading.active_count() == 1, threading.enumerate()
        lightd_sync.__version__
        lightd_sync.load_config({"remote": {"enabled": False}}, env={})
        assert "urllib3" not in sys.modules, "urllib3 imported by __version__/load_config"
        assert threading.active_count() == 1, threading.enumerate()
        handlers = logging.getLogger("lightd_sync").handlers
        assert [type(h) for h in handlers] == [logging.NullHandler], handlers
        lightd_sync.HttpTransport
        assert "urllib3" in sys.modules
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
