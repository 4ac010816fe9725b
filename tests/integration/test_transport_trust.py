"""Transport and trust, over real loopback sockets: a listener on the simulator's port gets the simulator's
credentials only if it proves to be the simulator (a fresh nonce answered with the seed's HMAC). A foreign
HTTP server there makes `sync`, `run` and `simulator_if_needed` refuse with a clear message (exit 2 in the
CLI), and it receives no token: it records every request, and none carries a credential. A real simulator
on the port, in this process or `dm-pipeline simulator serve`, is accepted."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from dm_pipeline.errors import ConfigError
from dm_pipeline.mainjob import SIM_SEED, simulator_credentials, simulator_if_needed
from dm_pipeline.models import Account, Provider
from dm_pipeline.settings import Settings, load_settings
from dm_pipeline.simulator import Simulator, World
from dm_pipeline.simulator.control import SERVICE, proof_for
from tests.integration.helpers import simulator_serve_process
from tests.integration.test_cli_errors import audit_rows, cli, one_clear_line
from tests.integration.test_cli_sync import stream_lines

WORLD = World(seed=SIM_SEED)
X_USER, XQ_USER, GX_USER = WORLD.accounts()[:3]
CREDENTIAL_HEADERS = {"authorization", "x-api-key", "cookie", "proxy-authorization"}
FOREIGN = "port {port} is in use by something that is not the dm_pipeline simulator; stop it or set DM_SIMULATOR_PORT"


class Foreign:
    """An HTTP server that is not the simulator, on 127.0.0.1: it records each request (method, path,
    headers, body) and answers as `behaviour` says."""

    def __init__(self, behaviour: str) -> None:
        self.requests: list[dict[str, Any]] = []
        foreign = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                foreign.requests.append({"method": self.command, "path": self.path,
                                         "headers": {k.lower(): v for k, v in self.headers.items()},
                                         "body": self.rfile.read(length) if length else b""})
                if behaviour == "hangup":
                    self.close_connection = True
                    return
                status, body = foreign.reply(behaviour)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    @staticmethod
    def reply(behaviour: str) -> tuple[int, Any]:
        if behaviour == "ok":          # a generic service that says yes to everything
            return 200, {"ok": True, "data": []}
        if behaviour == "not_found":
            return 404, {"error": "not found"}
        if behaviour == "forged":      # claims to be the simulator, cannot compute the proof
            return 200, {"proof": "0" * 64, "seed": SIM_SEED, "service": SERVICE}
        if behaviour == "replayed":    # an answer recorded for another nonce
            return 200, {"proof": proof_for(SIM_SEED, "ab" * 16), "seed": SIM_SEED, "service": SERVICE}
        if behaviour == "non_ascii":   # must not crash the comparison
            return 200, {"proof": "é" * 64, "seed": "7"}
        raise AssertionError(behaviour)

    def credentials_seen(self) -> list[dict[str, Any]]:
        """Requests that carried a credential: a credential header, or a simulator secret anywhere."""
        secrets = {WORLD.token_for(X_USER), WORLD.xquik_key(), WORLD.getxapi_key(), WORLD.getxapi_auth_token(GX_USER)}
        return [r for r in self.requests if CREDENTIAL_HEADERS & set(r["headers"])
                or any(s in r["path"] or s.encode() in r["body"] or s in json.dumps(r["headers"]) for s in secrets)]

    def __enter__(self) -> Foreign:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def foreign(request: pytest.FixtureRequest) -> Iterator[Foreign]:
    with Foreign(getattr(request, "param", "ok")) as server:
        yield server


def sim_accounts(port: int) -> list[Account]:
    """One account of each provider on http://127.0.0.1:<port>, their variables unset."""
    base = f"http://127.0.0.1:{port}"
    return [
        Account(key="x-ada", provider=Provider.X, user_id=X_USER, base_url=base, token_env="DM_TT_X_TOKEN"),
        Account(key="xq", provider=Provider.XQUIK, user_id=XQ_USER, base_url=f"{base}/xquik/api/v1",
                token_env="DM_TT_XQUIK_KEY", handle=WORLD.xquik_handle(XQ_USER), partners=("someone",)),
        Account(key="gx", provider=Provider.GETXAPI, user_id=GX_USER, base_url=f"{base}/getxapi",
                token_env="DM_TT_GX_KEY", auth_token_env="DM_TT_GX_AUTH"),
    ]


VARIABLES = ("DM_TT_X_TOKEN", "DM_TT_XQUIK_KEY", "DM_TT_GX_KEY", "DM_TT_GX_AUTH")


@pytest.fixture
def settings_on(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Settings with DM_SIMULATOR_PORT = port; the credential variables unset (and restored afterwards,
    since simulator_if_needed exports them into os.environ)."""
    for name in VARIABLES:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)

    def make(port: int) -> Settings:
        return dataclasses.replace(load_settings(), simulator_port=port)

    return make


# ---------------------------------------------------------------- a foreign listener is refused

@pytest.mark.parametrize("foreign", ["ok", "not_found", "forged", "replayed", "non_ascii", "hangup"],
                         indirect=True)
def test_a_foreign_listener_on_the_simulator_port_is_refused_and_gets_no_token(foreign: Foreign,
                                                                                settings_on: Any) -> None:

    entered = False
    with pytest.raises(ConfigError) as info, simulator_if_needed(settings_on(foreign.port),
                                                                 sim_accounts(foreign.port)):
        entered = True
    assert not entered
    assert str(info.value).startswith(FOREIGN.format(port=foreign.port)), info.value
    assert "no credentials were sent to it" in str(info.value)
    assert all(os.environ.get(name) is None for name in VARIABLES)  # nothing exported
    # It saw the challenge, and nothing else: one GET with a nonce, no credential.
    assert [(r["method"], r["path"].split("?")[0]) for r in foreign.requests] == [("GET", "/_sim/prove")]
    assert re.fullmatch(r"/_sim/prove\?nonce=[0-9a-f]{32}", foreign.requests[0]["path"])
    assert foreign.credentials_seen() == []


def test_each_challenge_uses_a_fresh_nonce(foreign: Foreign, settings_on: Any) -> None:
    for _ in range(2):
        with pytest.raises(ConfigError), simulator_if_needed(settings_on(foreign.port),
                                                             sim_accounts(foreign.port)[:1]):
            pass
    first, second = (r["path"] for r in foreign.requests)
    assert first != second


@pytest.mark.parametrize("command", ["sync", "run"])
def test_sync_and_run_refuse_a_foreign_listener_with_exit_2(command: str, foreign: Foreign, tmp_path: Path,
                                                            db_url: str) -> None:
    path = tmp_path / "accounts.yaml"
    path.write_text(
        "accounts:\n"
        f"  - key: x-ada\n    provider: x\n    user_id: \"{X_USER}\"\n    base_url: http://127.0.0.1:{foreign.port}\n"
        "    token_env: DX_TT_TOKEN\n"
        f"  - key: gx\n    provider: getxapi\n    user_id: \"{GX_USER}\"\n"
        f"    base_url: http://127.0.0.1:{foreign.port}/getxapi\n    token_env: DX_TT_GX_KEY\n"
        "    auth_token_env: DX_TT_GX_AUTH\n")
    env = {"DM_PIPELINE_ACCOUNTS": str(path), "DATABASE_URL": db_url, "DAGSTER_PG_URL": db_url,
           "DM_SIMULATOR_PORT": str(foreign.port), "DM_PIPELINE_HOME": str(tmp_path / "home")}
    line = one_clear_line(cli(command, env=env))
    assert line.startswith("error: " + FOREIGN.format(port=foreign.port)), line
    assert [r["path"].split("?")[0] for r in foreign.requests] == ["/_sim/prove"]
    assert foreign.credentials_seen() == []
    assert audit_rows(db_url) == 0  # nothing ran


# ---------------------------------------------------------------- the simulator is accepted

def test_a_simulator_already_on_the_port_is_used(settings_on: Any) -> None:

    world = World(seed=SIM_SEED)
    with Simulator(world, rate_limit=100_000) as sim:
        port = int(sim.url.rsplit(":", 1)[1])
        accounts = sim_accounts(port)
        with simulator_if_needed(settings_on(port), accounts):
            for account in accounts:
                assert {n: os.environ.get(n) for n in simulator_credentials(world, account)} == \
                    simulator_credentials(world, account)
            token = os.environ["DM_TT_X_TOKEN"]
            reply = httpx.get(f"{sim.url}/2/dm_events", headers={"Authorization": f"Bearer {token}"})
            assert reply.status_code == 200
        assert sim.requests(X_USER) == 1  # the account's requests reach the simulator that was there
        assert httpx.get(f"{sim.url}/_sim/health").status_code == 200  # and it is left running


def test_a_simulator_of_another_seed_is_refused_by_name(settings_on: Any, sim: Simulator) -> None:

    port = int(sim.url.rsplit(":", 1)[1])
    refused = rf"port {port} is in use by a dm_pipeline simulator serving seed {sim.world.seed}'s world.*--seed 7"
    with pytest.raises(ConfigError, match=refused), simulator_if_needed(settings_on(port), sim_accounts(port)):
        pass
    assert all(os.environ.get(name) is None for name in VARIABLES)


def test_the_prove_route_answers_the_nonce_and_refuses_a_malformed_one(sim: Simulator) -> None:
    nonce = "0123456789abcdef" * 2
    answer = httpx.get(f"{sim.url}/_sim/prove", params={"nonce": nonce}).json()
    assert answer == {"proof": proof_for(sim.world.seed, nonce), "seed": sim.world.seed, "service": SERVICE}
    assert httpx.get(f"{sim.url}/_sim/prove", params={"nonce": "short"}).status_code == 400
    assert httpx.get(f"{sim.url}/_sim/prove").status_code == 400


def test_simulator_serve_on_the_port_is_accepted_by_sync(tmp_path: Path, db_url: str) -> None:
    """`dm-pipeline simulator serve` (seed 7 by default) already on DM_SIMULATOR_PORT: `sync` proves it is the
    simulator, exports its credentials for the accounts on it, and syncs against it."""
    serve = simulator_serve_process()
    try:
        assert serve.stdout is not None
        port = None
        for line in serve.stdout:  # the first line names the address; the process flushes it, then serves
            found = re.search(r"on http://127\.0\.0\.1:(\d+);", line)
            if found:
                port = int(found.group(1))
                break
        assert port is not None
        path = tmp_path / "accounts.yaml"
        path.write_text(f"accounts:\n  - key: x-ada\n    provider: x\n    user_id: \"{X_USER}\"\n"
                        f"    base_url: http://127.0.0.1:{port}\n    token_env: DX_TT_UNSET_TOKEN\n")
        proc = cli("sync", env={"DM_PIPELINE_ACCOUNTS": str(path), "DATABASE_URL": db_url,
                                "DM_SIMULATOR_PORT": str(port)})
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert " succeeded " in stream_lines(proc.stdout)["x-ada/dm_events"]
    finally:
        serve.send_signal(signal.SIGINT)
        assert serve.wait(timeout=30) == 0
    assert "Traceback" not in (serve.stderr.read() if serve.stderr else "")


# ---------------------------------------------------------------- lookalike addresses get nothing

def test_lookalike_addresses_get_no_simulator_and_no_credentials(settings_on: Any) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    lookalikes = [dataclasses.replace(a, base_url=url) for a, url in zip(
        sim_accounts(port), [f"http://127.0.0.1:{port}0", f"https://127.0.0.1:{port}", f"http://localhost:{port}"],
        strict=True)]
    with simulator_if_needed(settings_on(port), lookalikes):
        assert all(os.environ.get(name) is None for name in VARIABLES)
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0  # no simulator was started for them
