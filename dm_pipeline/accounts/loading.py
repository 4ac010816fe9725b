"""Loading the accounts file: parse (libyaml when available), refuse duplicate keys, interpolate `${VAR}`,
validate against the schema, check where credentials may go; and selecting accounts by key."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from dm_pipeline.accounts.errors import AccountsFileError, _describe, _entry_key, _where, _yaml_error
from dm_pipeline.accounts.interpolation import _interpolate
from dm_pipeline.accounts.schema import EXAMPLE, AccountsFile
from dm_pipeline.accounts.transport import transport_problems
from dm_pipeline.errors import ConfigError
from dm_pipeline.models import Account


def _duplicate_keys(node: yaml.Node | None, path: Path) -> str | None:
    """YAML silently keeps the last of two equal keys in one mapping; we refuse them."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for k, v in node.value:
            key = getattr(k, "value", None)
            if isinstance(key, str) and key in seen:
                return (f"{path}:{k.start_mark.line + 1}:{k.start_mark.column + 1}: key `{key}` appears twice in "
                        "the same entry. Fix: keep one of them")
            if isinstance(key, str):
                seen.add(key)
            found = _duplicate_keys(v, path)
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            found = _duplicate_keys(item, path)
            if found:
                return found
    return None


def _duplicate_accounts(data: dict[str, Any], root: yaml.Node | None, path: Path) -> str | None:
    entries = data.get("accounts")
    if not isinstance(entries, list):
        return None
    first: dict[str, int] = {}
    for i, entry in enumerate(entries):
        key = entry.get("key") if isinstance(entry, dict) else None
        if not isinstance(key, str):
            continue
        if key in first:
            return (f"{_where(path, root, ('accounts', i, 'key'))} account key {key!r} appears twice (also "
                    f"accounts[{first[key]}]); keys must be unique, each is a Dagster partition. Fix: rename one")
        first[key] = i
    return None


# ---------------------------------------------------------------- loading

def _parse(path: Path) -> tuple[Any, yaml.Node | None]:
    if not path.exists():
        raise ConfigError(f"accounts file {path} does not exist. Fix: set DM_PIPELINE_ACCOUNTS to your file, "
                          f"or copy {EXAMPLE} and edit it")
    if path.is_dir():
        raise ConfigError(f"accounts file {path} is a directory. Fix: point DM_PIPELINE_ACCOUNTS at a YAML file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text. Fix: save the accounts file as UTF-8") from None
    if _FAST_LOADER is not yaml.SafeLoader:
        try:
            return _compose_and_load(text, _FAST_LOADER)
        except yaml.YAMLError:
            pass  # parse again below: the pure-Python loader words its errors the way _YAML_HINTS expects
    try:
        return _compose_and_load(text, yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise _yaml_error(path, exc) from None


# libyaml when PyYAML was built with it: a 1,000-account file parses ~10x faster (every run reads it).
_FAST_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _compose_and_load(text: str, loader_class: type[yaml.SafeLoader]) -> tuple[Any, yaml.Node | None]:
    """One parse: the node tree (line numbers, duplicate keys) and the data constructed from it."""
    loader = loader_class(text)
    try:
        root = loader.get_single_node()
        return (loader.construct_document(root) if root is not None else None), root
    finally:
        loader.dispose()


def load_accounts(path: Path) -> list[Account]:
    """Parse and validate the accounts file. Raises ConfigError (AccountsFileError for schema problems)
    naming the file, the line and column, the key and the fix."""
    data, root = _parse(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the file must be a mapping with an `accounts:` list (it is "
                          f"{'empty' if data is None else type(data).__name__}). Fix: start from {EXAMPLE}")
    duplicate = _duplicate_keys(root, path) or _duplicate_accounts(data, root, path)
    if duplicate:
        raise ConfigError(duplicate)
    try:
        parsed = AccountsFile.model_validate(_interpolate(data, (), path, root))
    except ValidationError as exc:
        problems = []
        # a misspelt key also makes the real one "missing": report the misspelling first
        for err in sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden"):
            loc = tuple(err["loc"])
            key = _entry_key(data, loc)
            context = f" (account {key!r})" if key and loc[-1] != "key" else ""
            problems.append(f"{_where(path, root, loc)} {_describe(dict(err))}{context}")
        raise AccountsFileError(problems) from None
    accounts = [entry.to_account() for entry in parsed.accounts]
    unsafe = [f"{_where(path, root, ('accounts', i, *field.split('.')))} {problem}"
              for i, account in enumerate(accounts) for field, problem in transport_problems(account)]
    if unsafe:
        raise AccountsFileError(unsafe)
    return accounts


def select_accounts(accounts: list[Account], keys: Iterable[str], source: Path) -> list[Account]:
    """The accounts of `keys` (all when empty), in file order. An unknown key is a ConfigError listing
    the known ones."""
    wanted = list(dict.fromkeys(keys))
    if not accounts:
        raise ConfigError(f"{source} lists no accounts. Fix: add one (see {EXAMPLE})")
    known = [a.key for a in accounts]
    unknown = [k for k in wanted if k not in known]
    if unknown:
        raise ConfigError(f"unknown account key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                          f"(not in {source}). Known keys: {', '.join(known)}")
    return [a for a in accounts if not wanted or a.key in wanted]
