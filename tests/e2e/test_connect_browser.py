"""`dm-pipeline accounts connect` in a real browser: headless Chromium (Debian's `chromium`, driven by
Playwright with the system browser) opens the URL the CLI prints, approves on the simulator's consent page
and lands on the CLI's loopback callback page; the CLI (a subprocess) exits 0, the pair is stored encrypted,
and a sync uses it, then refreshes it. Synchronised on the CLI's output lines and the browser's navigation,
never on sleeps."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from cryptography.fernet import Fernet
from sqlalchemy import Engine, text

from dm_pipeline.accounts import load_accounts
from dm_pipeline.models import StreamStatus
from dm_pipeline.settings import PROJECT_ROOT
from tests.integration.helpers import assert_equals_truth
from tests.integration.test_cli_errors import SCRUB
from tests.integration.test_oauth_connect import free_port
from tests.integration.test_sync_x import run_sync


def test_connect_in_a_real_browser_then_sync(browser_page, sim, engine: Engine, db_url: str, tmp_path: Path,  # type: ignore[no-untyped-def]
                                             monkeypatch) -> None:
    from playwright.sync_api import expect

    user = sim.world.accounts()[1]
    redirect_uri = f"http://127.0.0.1:{free_port()}/callback"
    path = tmp_path / "accounts.yaml"
    path.write_text(f"accounts:\n  - key: x-li\n    provider: x\n    user_id: \"{user}\"\n    base_url: {sim.url}\n"
                    f"    oauth:\n      client_id_env: DX_CLIENT_ID\n      redirect_uri: {redirect_uri}\n")
    key = Fernet.generate_key().decode()
    env = {**{k: v for k, v in os.environ.items() if k not in SCRUB and not k.startswith("DX_")},
           "DM_PIPELINE_ACCOUNTS": str(path), "DATABASE_URL": db_url, "DM_PIPELINE_TOKEN_KEY": key,
           "DX_CLIENT_ID": "dm-pipeline-test-app"}
    proc = subprocess.Popen([sys.executable, "-m", "dm_pipeline.cli", "accounts", "connect", "x-li", "--no-browser",
                             "--timeout", "120"], cwd=PROJECT_ROOT, env=env, text=True, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        printed: list[str] = []
        for line in proc.stdout:                            # the CLI listens before it prints the URL
            printed.append(line)
            if "/oauth2/authorize?" in line:
                break
        url = printed[-1].strip()
        assert re.fullmatch(rf"{re.escape(sim.url)}/i/oauth2/authorize\?\S+", url), printed

        page = browser_page
        page.goto(url)
        expect(page.get_by_role("heading", level=1)).to_contain_text("to access your X account?")
        expect(page.locator("li")).to_have_count(4)         # dm.read tweet.read users.read offline.access
        page.select_option("#user_id", user)                 # "signed in as" the account to connect
        page.get_by_role("button", name="Approve").click()
        page.wait_for_url(re.compile(rf"^{re.escape(redirect_uri)}\?"))
        expect(page.get_by_role("heading", level=1)).to_have_text("Connected")
        expect(page.locator("main")).to_contain_text(f"x-li is connected as @{sim.world.user(user).username}")
        assert "code=" not in page.content()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, (printed, out, err)
    assert f"connected x-li: X user {user}" in out and "code=" not in "".join(printed) + out + err

    with engine.connect() as conn:
        access_enc, refresh_enc, scope = conn.execute(text(
            "SELECT access_token_enc, refresh_token_enc, scope FROM dm_private.oauth_tokens "
            "WHERE account_key = 'x-li'")).one()
    fernet = Fernet(key.encode())
    access, refresh = fernet.decrypt(bytes(access_enc)).decode(), fernet.decrypt(bytes(refresh_enc)).decode()
    assert sim.oauth.account_for(access) == user and scope == "dm.read tweet.read users.read offline.access"
    assert access not in out + err and refresh not in out + err

    monkeypatch.setenv("DM_PIPELINE_TOKEN_KEY", key)
    monkeypatch.setenv("DX_CLIENT_ID", "dm-pipeline-test-app")
    (account,) = load_accounts(path)
    assert account.token_env is None                        # the stored pair is all it has
    result = run_sync(engine, account)
    assert result.status is StreamStatus.SUCCEEDED and sim.oauth.refreshes == 0
    assert_equals_truth(engine, "x-li", sim.world.truth(user))
    sim.world.advance(user, 2)
    sim.oauth.expire(user)                                  # the stored pair refreshes and rotates as before
    assert run_sync(engine, account).total("inserted") == 2 and sim.oauth.refreshes == 1
    with engine.connect() as conn:
        rotated = conn.scalar(text("SELECT refresh_token_enc FROM dm_private.oauth_tokens"))
    assert fernet.decrypt(bytes(rotated)).decode() != refresh
