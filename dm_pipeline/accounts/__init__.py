"""The accounts file: which X accounts to sync, through which provider, with which credentials.

Validated by a pydantic schema; every error names the file, the line and column, the key and the fix
(`config/accounts.example.yaml` documents every option). String values may use `${VAR}` or
`${VAR:-default}` (defaults may nest: `${A:-${B:-x}}`) so one file serves the simulator and production.
Secrets never appear in the file: it names the environment variables that hold them, and
`required_env` lists those an account needs, so commands can check them before anything runs.

By concern: `schema` (the pydantic models, patterns, defaults), `errors` (locations and messages),
`interpolation` (`${VAR}`), `loading` (parse, validate, select), `transport` (where credentials may go),
`needs` (required environment variables). Everything public is re-exported here.
"""

from dm_pipeline.accounts.errors import FIELDS, ITEMS, AccountsFileError, Loc
from dm_pipeline.accounts.loading import load_accounts, select_accounts
from dm_pipeline.accounts.needs import EnvNeed, Lookup, describe_missing, field_lines, missing_env, required_env
from dm_pipeline.accounts.schema import (
    CONVERSATION_ID,
    DEFAULT_SWEEP_INTERVAL_S,
    ENV_NAME,
    EXAMPLE,
    HANDLE,
    KEY,
    MAX_POLL_INTERVAL_S,
    OLD_KEYS_ENV,
    PARTNER,
    TOKEN_KEY_ENV,
    USER_ID,
    AccountEntry,
    AccountsFile,
    ConversationsEntry,
    OAuthEntry,
    Tab,
)
from dm_pipeline.accounts.transport import (
    LOOPBACK,
    Endpoint,
    check_transport,
    endpoint,
    is_loopback_host,
    is_simulator_url,
    transport_problems,
)

__all__ = [
    "CONVERSATION_ID",
    "DEFAULT_SWEEP_INTERVAL_S",
    "ENV_NAME",
    "EXAMPLE",
    "FIELDS",
    "HANDLE",
    "ITEMS",
    "KEY",
    "LOOPBACK",
    "MAX_POLL_INTERVAL_S",
    "OLD_KEYS_ENV",
    "PARTNER",
    "TOKEN_KEY_ENV",
    "USER_ID",
    "AccountEntry",
    "AccountsFile",
    "AccountsFileError",
    "ConversationsEntry",
    "Endpoint",
    "EnvNeed",
    "Loc",
    "Lookup",
    "OAuthEntry",
    "Tab",
    "check_transport",
    "describe_missing",
    "endpoint",
    "field_lines",
    "is_loopback_host",
    "is_simulator_url",
    "load_accounts",
    "missing_env",
    "required_env",
    "select_accounts",
    "transport_problems",
]
