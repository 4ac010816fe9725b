"""Shared fixtures: a real embedded Postgres (one per session, a fresh database per test, cloned from a
migrated template) and the provider simulator over real loopback HTTP."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import URL, Engine, create_engine, text

from dm_pipeline.db.engine import ensure_database, start_embedded
from dm_pipeline.db.migrate import upgrade
from dm_pipeline.models import Account, Provider
from dm_pipeline.settings import PROJECT_ROOT

# One template per pytest process, so concurrent sessions on the same server never trip over each other.
TEMPLATE_DB = f"dm_test_template_{os.getpid()}"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[URL]:
    """The embedded server dedicated to tests (its own data directory), with a migrated template DB."""
    pgdata = Path(os.environ.get("DM_TEST_PGDATA", PROJECT_ROOT / ".dm_pipeline" / "test-pgdata"))
    base = start_embedded(pgdata)
    template = ensure_database(base, TEMPLATE_DB)
    upgrade(template.render_as_string(hide_password=False))
    yield base
    admin = create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}" WITH (FORCE)'))
    admin.dispose()


@contextlib.contextmanager
def scratch_database(server: URL, template: str | None = TEMPLATE_DB) -> Iterator[str]:
    """A database that lives for one test: cloned from the migrated template, or empty (template=None)."""
    name = f"dm_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def db_url(pg_server: URL) -> Iterator[str]:
    """A fresh, migrated database for one test."""
    with scratch_database(pg_server) as url:
        yield url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    eng = create_engine(db_url)
    yield eng
    eng.dispose()


@pytest.fixture
def world():  # type: ignore[no-untyped-def]
    from dm_pipeline.simulator import World

    return World(seed=11)


@pytest.fixture
def sim(world):  # type: ignore[no-untyped-def]
    from dm_pipeline.simulator import Simulator

    with Simulator(world, rate_limit=100_000) as server:
        yield server


def sim_account(sim, user_id: str, monkeypatch: pytest.MonkeyPatch, page_size: int = 50,  # type: ignore[no-untyped-def]
                key: str | None = None) -> Account:
    """An Account that talks to the simulator, its token exported under its own env var."""
    key = key or f"x-{user_id[-6:]}"
    env = f"DM_TEST_TOKEN_{user_id}"
    monkeypatch.setenv(env, sim.world.token_for(user_id))
    return Account(key=key, provider=Provider.X, user_id=user_id, base_url=sim.url, token_env=env,
                   page_size=page_size)


def xquik_account(sim, user_id: str, partners: list[str], monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
                  key: str | None = None) -> Account:
    monkeypatch.setenv("DM_TEST_XQUIK_KEY", sim.world.xquik_key())
    return Account(key=key or f"xquik-{user_id[-6:]}", provider=Provider.XQUIK, user_id=user_id,
                   base_url=sim.base_url("xquik"), token_env="DM_TEST_XQUIK_KEY",
                   handle=sim.world.xquik_handle(user_id), partners=tuple(partners))


def getxapi_account(sim, user_id: str, monkeypatch: pytest.MonkeyPatch, page_size: int = 20,  # type: ignore[no-untyped-def]
                    key: str | None = None) -> Account:
    monkeypatch.setenv("DM_TEST_GETXAPI_KEY", sim.world.getxapi_key())
    monkeypatch.setenv(f"DM_TEST_AUTH_{user_id}", sim.world.getxapi_auth_token(user_id))
    return Account(key=key or f"getxapi-{user_id[-6:]}", provider=Provider.GETXAPI, user_id=user_id,
                   base_url=sim.base_url("getxapi"), token_env="DM_TEST_GETXAPI_KEY",
                   auth_token_env=f"DM_TEST_AUTH_{user_id}", page_size=page_size)


CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def browser_page():  # type: ignore[no-untyped-def]
    """A page in headless Chromium from Debian's `chromium` package, driven by Playwright with the system
    browser (no browser download). Missing browser: a failure under CI=true, else a skip that says what to
    install."""
    import shutil

    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        message = "Debian's chromium is not installed: `make browser` (or `apt install chromium`)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            yield page
        finally:
            browser.close()
