"""`${VAR}` and `${VAR:-default}` in the accounts file's string values (defaults may nest:
`${A:-${B:-x}}`), so one file serves the simulator and production."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from dm_pipeline.accounts.errors import Loc, _loc_text, _where
from dm_pipeline.errors import ConfigError

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^${}]*))?\}")  # innermost references first


def _interpolate(value: Any, loc: Loc, source: Path, root: yaml.Node | None) -> Any:
    if isinstance(value, dict):
        return {k: _interpolate(v, (*loc, k), source, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, (*loc, i), source, root) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        got = os.environ.get(name)
        if got:
            return got
        if default is not None:
            return default
        raise ConfigError(f"{_where(source, root, loc)} {_loc_text(loc)} uses ${{{name}}}, which is not set. "
                          f"Fix: export {name}=… or write ${{{name}:-default}} in the file")

    for _ in range(8):  # nested defaults resolve from the inside out
        new = _ENV_REF.sub(sub, value)
        if new == value:
            break
        value = new
    return value
