"""What every command shares: the consoles, the context settings, and the one-line error handling."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

from rich.console import Console

from dm_pipeline.errors import ConfigError, DatabaseUnavailable, InvalidIdentifier

F = TypeVar("F", bound=Callable[..., Any])
# On a terminal, its width; elsewhere (CI logs, pipes) wide enough that tables do not fold.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 200)
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def fail(message: str, code: int = 2) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", markup=True, soft_wrap=True, highlight=False)
    sys.exit(code)


def friendly_errors(fn: F) -> F:
    """Configuration and database problems: one line on stderr, exit 2, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ConfigError, DatabaseUnavailable, InvalidIdentifier) as exc:
            fail(_escape(str(exc)))
        except KeyboardInterrupt:
            err.print("interrupted: committed pages are kept; the next run resumes where this one stopped")
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _settings() -> Any:
    from dm_pipeline.preflight import checked_settings

    return checked_settings()

