"""
The package metadata and the sdist: one version, the classifiers, and an sdist
from which ``pip install`` and ``pytest`` both work.

Building the sdist needs the ``build`` package and setuptools in the test
environment; tox's py311 environment has them (the others skip that test,
which takes about 20 s).
"""

from __future__ import annotations

import configparser
import importlib.metadata
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import lightd_sync

ROOT = Path(__file__).resolve().parent.parent


def setup_cfg() -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg", encoding="utf-8")
    return config


def test_the_version_is_written_in_one_place() -> None:
    assert setup_cfg()["metadata"]["version"] == "attr: lightd_sync._version.__version__"
    # A version of lightd-sync assigned as a literal (not mermaid's, nor a dependency's).
    written = re.compile(r"""^\s*(__version__|version|release)\s*=\s*["']\d+\.\d+""", re.M)
    places = [
        path.relative_to(ROOT)
        for path in [*ROOT.joinpath("lightd_sync").rglob("*.py"), ROOT / "docs" / "conf.py"]
        if written.search(path.read_text(encoding="utf-8"))
    ]
    assert places == [Path("lightd_sync/_version.py")]


def test_the_installed_metadata_agrees_with_the_package() -> None:
    assert importlib.metadata.version("lightd-sync") == lightd_sync.__version__
    from lightd_sync._transports.protocol import request_headers

    user_agent = request_headers("lightd_x", post=False)["User-Agent"]
    assert user_agent == f"lightd-sync/{lightd_sync.__version__}"


def test_the_classifiers_name_the_pytest_plugin() -> None:
    classifiers = setup_cfg()["metadata"]["classifiers"].split("\n")
    assert "Framework :: Pytest" in classifiers
    entry_points = setup_cfg()["options.entry_points"]["pytest11"]
    assert "lightd_sync._pytest_plugin" in entry_points


def test_no_placeholder_project_url() -> None:
    """There is no public home yet: no project_urls rather than invented ones."""
    metadata = setup_cfg()["metadata"]
    for value in metadata.get("project_urls", "").split("\n"):
        if value.strip():
            url = value.split("=", 1)[1].strip()
            assert url.startswith("https://")
            assert not re.search(r"example|placeholder|todo|xxx", url, re.IGNORECASE)


#: The status page's package data: the receiver serves them from the installed package.
PAGE_FILES = [
    "lightd_sync/_server/page/page.html",
    "lightd_sync/_server/page/login.html",
    "lightd_sync/_server/page/static/app.js",
    "lightd_sync/_server/page/static/style.css",
    "lightd_sync/_server/page/static/favicon.svg",
]

#: What a packager needs in the sdist to install, test and document lightd-sync.
SDIST_MUST_HAVE = [
    "setup.cfg",
    "setup.py",
    "pyproject.toml",
    "tox.ini",
    "README.md",
    "LICENSE",
    "CHANGELOG.md",
    "lightd_sync/py.typed",
    "lightd_sync/_version.py",
    *PAGE_FILES,
    "tests/conftest.py",
    "tests/servers.py",
    "tests/test_public_api.py",
    "tests/faults/__init__.py",
    "docs/conf.py",
    "docs/index.md",
    "docs/_ext/wire_capture.py",
    "docs/examples",
    "benchmarks/run.py",
]


@pytest.mark.timeout(180)
def test_the_sdist_installs_and_its_tests_run(tmp_path: Path) -> None:
    for needed in ("build", "setuptools"):  # installed distributions, not a build/ folder
        try:
            importlib.metadata.distribution(needed)
        except importlib.metadata.PackageNotFoundError:
            pytest.skip(f"needs {needed} installed (tox -e py311 has it)")
    dist = tmp_path / "dist"
    build = ["build", "--sdist", "--no-isolation", "--skip-dependency-check", "--outdir"]
    subprocess.run(
        [sys.executable, "-m", *build, str(dist)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=120,
    )
    (sdist,) = dist.glob("lightd*sync-*.tar.gz")  # lightd_sync- with setuptools >= 69.3
    top = sdist.name[: -len(".tar.gz")]
    assert top.replace("-", "_") == f"lightd_sync_{lightd_sync.__version__}"
    with tarfile.open(sdist) as tar:
        names = tar.getnames()
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(tmp_path / "src", **safe)  # our own archive
    inside = {name[len(top) + 1 :] for name in names if name.startswith(top + "/")}
    missing = [path for path in SDIST_MUST_HAVE if path not in inside]
    assert not missing, f"the sdist lacks {missing}"
    assert not [n for n in inside if "__pycache__" in n or n.startswith("docs/_build")]
    assert not [n for n in inside if "node_modules" in n or n.endswith(".install.lock")]

    # pip install of the sdist, as a packager does (its dependencies are in this environment).
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--target", str(site), str(sdist)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    missing = [path for path in PAGE_FILES if not (site / path).is_file()]
    assert not missing, f"the installed package lacks {missing}"
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("PYTHONDEVMODE", None)
    probe = subprocess.run(
        [sys.executable, "-c", "import lightd_sync, sys; print(lightd_sync.__file__, "
         "lightd_sync.__version__)"],
        cwd=tmp_path, env=env, check=True, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    where, version = probe.stdout.split()
    assert Path(where).is_relative_to(site)
    assert version == lightd_sync.__version__

    # pytest from the unpacked sdist: its config and fixtures work there.
    some = ["tests/test_public_api.py", "tests/test_packaging.py::test_no_placeholder_project_url"]
    tests = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *some],
        check=False,
        cwd=tmp_path / "src" / top,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert re.search(r"\d+ passed", tests.stdout)
