"""The real CLI in a subprocess: `accounts connect` (--no-browser, the redirected URL pasted; exit 0, 1, 2),
`oauth status | reset | rotate-key`, and the preflight of an account never connected. Nothing printed holds
a token, a code or a key."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import create_engine, text

from dm_pipeline.models import StreamStatus
from dm_pipeline.settings import PROJECT_ROOT
from tests.integration.test_cli_errors import SCRUB, cli, one_clear_line
from tests.integration.test_oauth_connect import decide, free_port
from tests.integration.test_sync_x import run_sync

KEY_A = Fernet.generate_key().decode()
KEY_B = Fernet.generate_key().decode()


def accounts_file(tmp_path: Path, sim: Any, extra: str = "") -> Path:
    port = free_port()
    path = tmp_path / "accounts.yaml"
    entries = "".join(
        f"  - key: {key}\n    provider: x\n    user_id: \"{uid}\"\n    base_url: {sim.url}\n    page_size: 50\n"
        f"    oauth:\n      client_id_env: DX_CLIENT_ID\n      redirect_uri: http://127.0.0.1:{port}/callback\n"
        for key, uid in (("x-ada", sim.world.accounts()[0]), ("x-omar", sim.world.accounts()[2])))
    path.write_text("accounts:\n" + entries + extra)
    return path


def environment(path: Path, db_url: str, **extra: str) -> dict[str, str]:
    return {"DM_PIPELINE_ACCOUNTS": str(path), "DATABASE_URL": db_url, "DX_CLIENT_ID": "my-app",
            "DM_PIPELINE_TOKEN_KEY": KEY_A, **extra}


def connect(env: dict[str, str], key: str, decision: str = "approve", user_id: str | None = None,
            *options: str) -> tuple[subprocess.CompletedProcess[str], str]:
    """`accounts connect KEY --no-browser` with the redirected URL pasted; (the finished process, the URL pasted)."""
    base = {k: v for k, v in os.environ.items() if k not in SCRUB and not k.startswith("DX_")}
    proc = subprocess.Popen([sys.executable, "-m", "dm_pipeline.cli", *options, "accounts", "connect", key,
                             "--no-browser", "--timeout", "120"], cwd=PROJECT_ROOT, text=True, env={**base, **env},
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdin is not None
    seen = []
    for line in proc.stdout:                                # blocks on the next line: no sleep
        seen.append(line)
        if re.match(r"^https?://\S+/oauth2/authorize\?\S+$", line.strip()):
            break
    else:
        raise AssertionError(f"no authorization URL printed: {seen} {proc.stderr.read() if proc.stderr else ''}")
    location = decide(line.strip(), decision, user_id)
    out, err = proc.communicate(location + "\n", timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, "".join(seen) + out, err), location


def no_secret_in(text: str, location: str = "") -> None:
    code = re.search(r"code=([^&]+)", location)
    assert not code or code.group(1) not in text
    assert KEY_A not in text and KEY_B not in text and "code=" not in text


def test_connect_by_pasting_then_status_reset_and_sync(sim, db_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = environment(accounts_file(tmp_path, sim), db_url)
    line = one_clear_line(cli("sync", "--account", "x-ada", env=env))   # never connected: the preflight says so
    assert "account 'x-ada' is not connected" in line and "Fix: dm-pipeline accounts connect x-ada" in line

    proc, location = connect(env, "x-ada", "approve", None, "-v")     # -v: the log lines say nothing secret either
    assert proc.returncode == 0, proc.stderr
    assert "HTTP Request: POST" in proc.stderr and "/2/oauth2/token" in proc.stderr
    lines = proc.stdout.splitlines()
    url = next(x for x in lines if "/oauth2/authorize?" in x)
    assert url.startswith(f"{sim.url}/i/oauth2/authorize?response_type=code&client_id=my-app&")  # a line of its own
    assert f"connected x-ada: X user {sim.world.accounts()[0]} (@ada_" in proc.stdout
    assert "scope dm.read tweet.read users.read offline.access" in proc.stdout
    no_secret_in(proc.stdout + proc.stderr, location)

    status = cli("oauth", "status", env=env)
    assert status.returncode == 0, status.stderr
    ada = next(x for x in status.stdout.splitlines() if "x-ada" in x)
    assert "stored" in ada and "dm.read tweet.read users.read offline.access" in ada and "current" in ada
    omar = next(x for x in status.stdout.splitlines() if "x-omar" in x)
    assert "not connected: dm-pipeline accounts connect x-omar" in omar
    no_secret_in(status.stdout)

    synced = cli("sync", "--account", "x-ada", env=env)
    assert synced.returncode == 0, synced.stderr
    assert "x-ada  dm_events  succeeded" in synced.stdout

    dry = cli("oauth", "reset", "--account", "x-ada", "--account", "x-omar", env=env)
    assert dry.returncode == 0 and "dry run: would forget the stored pair of x-ada" in dry.stdout
    assert "x-omar: no pair stored" in dry.stdout
    gone = cli("oauth", "reset", "--account", "x-ada", "--yes", env=env)
    assert gone.returncode == 0 and "x-ada: stored pair forgotten" in gone.stdout
    assert "not connected" in next(x for x in cli("oauth", "status", "--account", "x-ada", env=env).stdout.splitlines()
                                   if "x-ada" in x)


@pytest.mark.parametrize(("decision", "as_omar", "code", "fragment"), [
    ("deny", False, 1, "the authorization was denied on X: nothing stored"),
    ("approve", True, 2, "the X account that approved is @omar_"),
])
def test_connect_failures_are_one_line_and_their_exit_code(sim, db_url: str, tmp_path: Path, decision: str,  # type: ignore[no-untyped-def]
                                                           as_omar: bool, code: int, fragment: str) -> None:
    env = environment(accounts_file(tmp_path, sim), db_url)
    proc, location = connect(env, "x-ada", decision, sim.world.accounts()[2] if as_omar else None)
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    errors = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: ") and fragment in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    no_secret_in(proc.stdout + proc.stderr, location)
    engine = create_engine(db_url)
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM dm_private.oauth_tokens")) == 0
    engine.dispose()


def test_connect_configuration_errors_exit_2_before_any_browser(sim, db_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = accounts_file(tmp_path, sim, extra=f"  - key: x-plain\n    provider: x\n    user_id: \"1\"\n"
                                              f"    base_url: {sim.url}\n    token_env: DX_TOKEN\n")
    env = environment(path, db_url)
    line = one_clear_line(cli("accounts", "connect", "x-plain", "--no-browser", env=env))
    assert "is not an X account with an `oauth:` block" in line
    line = one_clear_line(cli("accounts", "connect", "x-ada", "--no-browser", env={**env, "DX_CLIENT_ID": ""}))
    assert "environment variable DX_CLIENT_ID is not set" in line
    line = one_clear_line(cli("accounts", "connect", "x-ada", env={**env, "DM_PIPELINE_TOKEN_KEY": "nope"}))
    assert "DM_PIPELINE_TOKEN_KEY is not a valid Fernet key" in line and "nope" not in line
    line = one_clear_line(cli("accounts", "connect", "x-nobody", env=env))
    assert "unknown account key 'x-nobody'" in line
    assert sim.requests() == 0                              # nothing reached X


def test_rotate_key_re_encrypts_every_pair_and_every_account_keeps_syncing(sim, db_url: str, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                           monkeypatch) -> None:
    from dm_pipeline.accounts import load_accounts

    path = accounts_file(tmp_path, sim)
    env = environment(path, db_url)
    for key, as_user in (("x-ada", None), ("x-omar", sim.world.accounts()[2])):
        assert connect(env, key, user_id=as_user)[0].returncode == 0
    line = one_clear_line(cli("oauth", "rotate-key", env={**env, "DM_PIPELINE_TOKEN_KEY": KEY_B}))
    assert "DM_PIPELINE_TOKEN_KEYS_OLD is not set" in line

    # The new key alone reads nothing yet: the preflight says how to proceed; with the old key listed, syncs work.
    new_only = {**env, "DM_PIPELINE_TOKEN_KEY": KEY_B}
    assert "put the old key in DM_PIPELINE_TOKEN_KEYS_OLD" in one_clear_line(cli("sync", env=new_only))
    status = cli("oauth", "status", env={**new_only, "DM_PIPELINE_TOKEN_KEYS_OLD": KEY_A})
    assert status.stdout.count("old key 1") == 2, status.stdout
    rotated = cli("oauth", "rotate-key", env={**new_only, "DM_PIPELINE_TOKEN_KEYS_OLD": KEY_A})
    assert rotated.returncode == 0, rotated.stderr
    assert "re-encrypted 2 stored pairs with DM_PIPELINE_TOKEN_KEY (x-ada, x-omar); 2 were under an old key" in \
        rotated.stdout
    no_secret_in(rotated.stdout + status.stdout)
    assert cli("oauth", "status", env=new_only).stdout.count("current") == 2

    engine = create_engine(db_url)
    with engine.connect() as conn:
        for enc in conn.scalars(text("SELECT access_token_enc FROM dm_private.oauth_tokens")):
            Fernet(KEY_B.encode()).decrypt(bytes(enc))                       # the new key, alone
    monkeypatch.setenv("DM_PIPELINE_TOKEN_KEY", KEY_B)
    monkeypatch.setenv("DX_CLIENT_ID", "my-app")
    monkeypatch.delenv("DM_PIPELINE_TOKEN_KEYS_OLD", raising=False)
    for account in load_accounts(path):
        sim.oauth.expire(account.user_id)                                   # and they refresh with it too
        assert run_sync(engine, account).status is StreamStatus.SUCCEEDED
    assert sim.oauth.refreshes == 2

    # A pair no key decrypts: nothing is re-encrypted, and the message names the account.
    with engine.begin() as conn:
        conn.execute(text("UPDATE dm_private.oauth_tokens SET access_token_enc = :e WHERE account_key = 'x-omar'"),
                     {"e": Fernet(Fernet.generate_key()).encrypt(b"other")})
        before = conn.execute(text("SELECT account_key, access_token_enc FROM dm_private.oauth_tokens "
                                   "ORDER BY 1")).all()
    line = one_clear_line(cli("oauth", "rotate-key", env={**env, "DM_PIPELINE_TOKEN_KEYS_OLD": KEY_B}))
    assert "no key decrypts the stored pair of 'x-omar'" in line and "nothing was re-encrypted" in line
    with engine.connect() as conn:
        assert conn.execute(text("SELECT account_key, access_token_enc FROM dm_private.oauth_tokens "
                                 "ORDER BY 1")).all() == before
    engine.dispose()
    assert httpx.get(f"{sim.url}/_sim/health").status_code == 200
