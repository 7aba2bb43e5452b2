"""A PostgreSQL database for the tests: ``LIGHTD_TEST_POSTGRES_URL`` (``.ci/postgres start``).

Each test gets a schema of its own (dropped afterwards) through the URL's
``options=-csearch_path=...``. Without a server the tests skip with the reason,
except in CI (``CI=true``), where a missing server is a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

ENV = "LIGHTD_TEST_POSTGRES_URL"


def base_url() -> str:
    url = os.environ.get(ENV, "")
    if url:
        return url
    reason = (
        f'no PostgreSQL server: set {ENV} (eval "$(.ci/postgres start)" starts one '
        "from Debian's postgresql package)"
    )
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI must test PostgreSQL: {reason}")
    pytest.skip(reason)


def fresh_schema() -> Iterator[str]:
    """Yield a URL whose tables land in a new, empty schema; drop it afterwards."""
    psycopg = pytest.importorskip("psycopg") if not os.environ.get("CI") else __import__("psycopg")
    url = base_url()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in url else "?"
    try:
        yield f"{url}{sep}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
