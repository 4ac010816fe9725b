"""`simulator serve`: the local simulator of the providers."""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.table import Table

from dm_pipeline.cli.common import CONTEXT, _settings, friendly_errors, out
from dm_pipeline.errors import ConfigError


@click.group(context_settings=CONTEXT, short_help="The local simulator of X API v2, Xquik and GetXAPI.")
def simulator() -> None:
    """The provider simulator: X API v2 (+ its OAuth 2.0 token endpoint), Xquik and GetXAPI on one local
    port, on a deterministic world. `run` and `sync` start one by themselves when accounts point at it.

    \b
    Example: dm-pipeline simulator serve --port 8765
    """


@simulator.command("serve", context_settings=CONTEXT, short_help="Serve it; print base URLs and credentials.")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="Default: DM_SIMULATOR_PORT or 8765.")
@click.option("--seed", type=int, default=7, show_default=True,
              help="The world's seed (7 is the one `run` and `sync` use).")
@friendly_errors
def simulator_serve(port: int | None, seed: int) -> None:
    """Serve the simulator in the foreground until interrupted, and print for each provider its base URL
    and the credentials to use (simulator tokens are not secrets), plus the `export` lines that point the
    shipped accounts file at it.

    \b
    Example: dm-pipeline simulator serve --port 8795
    """
    import errno
    import threading

    from dm_pipeline.simulator import Simulator, World

    settings = _settings()
    world = World(seed=seed)
    sim = Simulator(world, port=settings.simulator_port if port is None else port)
    try:
        sim.start()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"port {port or settings.simulator_port} is already in use (another simulator?). "
                              "Fix: --port <free port>, or stop the other process") from None
        raise
    try:
        _print_simulator(sim, settings, seed)
        sys.stdout.flush()
        threading.Event().wait()
    except KeyboardInterrupt:
        click.echo("simulator stopped")
    finally:
        sim.stop()


def _print_simulator(sim: Any, settings: Any, seed: int) -> None:
    import shlex

    from dm_pipeline.accounts import load_accounts
    from dm_pipeline.mainjob import simulator_credentials

    w = sim.world
    out.print(f"simulator (seed {seed}) on {sim.url}; Ctrl-C to stop. Its control API: {sim.url}/_sim/accounts",
              markup=False)
    providers = Table(title="providers: base_url and credentials (simulator tokens are not secrets)", box=None,
                      title_justify="left")
    for col in ("provider", "base_url", "credentials"):
        providers.add_column(col, overflow="fold")
    providers.add_row("x", sim.base_url("x"), "token_env: the account's X token below (Bearer). oauth: any "
                      f"client ID; token endpoint {sim.base_url('x')}/2/oauth2/token; consent page "
                      f"{sim.url}/i/oauth2/authorize (dm-pipeline accounts connect KEY); or a first token pair: "
                      f"curl -X POST {sim.url}/_sim/oauth/issue -d '{{\"user_id\": \"<user_id>\"}}'")
    providers.add_row("xquik", sim.base_url("xquik"),
                      f"token_env: {w.xquik_key()} (x-api-key); handle: the account's handle below")
    providers.add_row("getxapi", sim.base_url("getxapi"),
                      f"token_env: {w.getxapi_key()} (Bearer); auth_token_env: the account's auth_token below; "
                      "optional ct0_env: any value, twid_env: u=<user_id>")
    out.print(providers)
    table = Table(title="accounts", box=None, title_justify="left")
    for col in ("user_id", "handle", "X token", "GetXAPI auth_token"):
        table.add_column(col, no_wrap=True)
    for a in w.accounts():
        table.add_row(a, w.xquik_handle(a), w.token_for(a), w.getxapi_auth_token(a))
    out.print(table)
    try:
        accounts = [a for a in load_accounts(settings.accounts_file) if a.user_id in w.accounts()]
    except ConfigError:
        return
    text = settings.accounts_file.read_text(encoding="utf-8")
    env: dict[str, str] = {}
    for base_var, provider in (("DM_X_BASE_URL", "x"), ("DM_XQUIK_BASE_URL", "xquik"),
                               ("DM_GETXAPI_BASE_URL", "getxapi")):
        if "${" + base_var in text:  # the shipped file reads its base URLs from these
            env[base_var] = sim.base_url(provider)
    for account in accounts:
        env.update(simulator_credentials(w, account))
    click.echo("")
    click.echo(f"To sync {settings.accounts_file} against it from another shell:")
    if env:
        click.echo("  export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()))
    click.echo("  dm-pipeline sync")
