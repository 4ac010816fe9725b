"""`accounts list | validate`: the accounts file (`accounts connect` is in oauth_tokens.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from dm_pipeline.cli.common import CONTEXT, _escape, _settings, err, fail, friendly_errors, out


@click.group(context_settings=CONTEXT, short_help="List and validate the accounts file.")
def accounts() -> None:
    """The accounts file: DM_PIPELINE_ACCOUNTS, default config/accounts.yaml (every option is documented
    in config/accounts.example.yaml).

    \b
    Example: dm-pipeline accounts validate --env
    """


@accounts.command("list", context_settings=CONTEXT, short_help="The accounts, their streams and variables.")
@friendly_errors
def accounts_list() -> None:
    """List the configured accounts, their streams' source and whether their environment variables are
    set (names only, never values).

    \b
    Example: dm-pipeline accounts list
    """
    from dm_pipeline.accounts import load_accounts, required_env
    from dm_pipeline.preflight import env_lookup, simulator_provided

    settings = _settings()
    loaded = load_accounts(settings.accounts_file)
    provided = simulator_provided(settings, loaded, settings.accounts_file)
    table = Table(title=f"accounts in {settings.accounts_file}")
    for col in ("key", "provider", "user_id", "base_url", "streams", "environment"):
        table.add_column(col, overflow="fold")
    def state(name: str) -> str:
        return "set" if env_lookup(name) else "from the simulator" if name in provided else "MISSING"

    for a in loaded:
        env = ", ".join(" or ".join(f"{n} {state(n)}" for n in (need.name, *(n for _, n in need.alternatives)))
                        for need in required_env(a)) or "—"
        table.add_row(a.key, a.provider.value, a.user_id, a.base_url, _streams_of(a), env)
    out.print(table)


def _streams_of(a: Any) -> str:
    if a.provider.value == "x":
        parts = ["dm_events"]
        if a.conversation_ids or a.participant_ids:
            parts.append(f"+{len(a.conversation_ids) + len(a.participant_ids)} conversations")
        if a.discover_conversations:
            parts.append("+discovered conversations")
        return " ".join(parts)
    if a.provider.value == "xquik":
        return f"history with {len(a.partners)} partner(s)"
    return "tabs " + ",".join(a.tabs)


@accounts.command("validate", context_settings=CONTEXT, short_help="Check a file: every problem, with its line.")
@click.argument("path", required=False, type=click.Path(dir_okay=False))
@click.option("--env", "check_env", is_flag=True,
              help="Also fail when an environment variable the accounts need is not set.")
@friendly_errors
def accounts_validate(path: str | None, check_env: bool) -> None:
    """Validate an accounts file (default: the configured one) and list every problem with its line.
    Unset environment variables are listed; with --env they are an error too.

    \b
    Example: dm-pipeline accounts validate config/accounts.example.yaml
    """
    from dm_pipeline.accounts import AccountsFileError, describe_missing, load_accounts, missing_env
    from dm_pipeline.preflight import env_lookup, missing_hint, simulator_provided

    settings = _settings()
    target = Path(path) if path else settings.accounts_file
    try:
        loaded = load_accounts(target)
    except AccountsFileError as exc:
        for problem in exc.problems:
            err.print(f"[bold red]error:[/] {_escape(problem)}", soft_wrap=True)
        sys.exit(2)
    provided = simulator_provided(settings, loaded, target)
    missing = missing_env(loaded, env_lookup, provided=provided)
    click.echo(f"{target}: {len(loaded)} accounts, valid")
    if missing:
        names = ", ".join(dict.fromkeys(n.name for n in missing))
        if check_env:
            fail(_escape(describe_missing(missing, target, missing_hint(settings, loaded))))
        click.echo(f"note: not set in this environment: {names} (`run` and `sync` check them before they start)")
