"""Fixtures of the end-to-end tests: Dagster processes on the embedded Postgres."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import URL

from tests.e2e.stack import fresh_dagster_database


@pytest.fixture
def dagster_pg_url(pg_server: URL) -> Iterator[str]:
    """A Dagster database of the test's own (run, event log and schedule storage), dropped after."""
    with fresh_dagster_database(pg_server) as url:
        yield url
