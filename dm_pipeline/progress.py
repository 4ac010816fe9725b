"""What `dm-pipeline sync` shows while it runs: one progress line per stream (pages, events, rate-limit and
retry waits) with rich.progress on a terminal; plain, append-only lines when stdout is not a terminal (CI,
a pipe, a log file). Counts, IDs and statuses only: never message text, never tokens.

Fed by the engine's hooks: `on_stream_start` before each stream of an account, `on_page` after every
committed page, `on_done` when an account finishes, and the HTTP policy's `sleep`, wrapped per account
(`policy_for`), for the waits. The streams of one account run one after the other on one thread, so a wait
belongs to the stream the account most recently started: a stream that failed or parked, with or without
pages, shows its own waits, and the next stream does not inherit them.

An engine that does not call `on_stream_start` gets the older, approximate rule: a wait is credited to the
stream whose page is committed next (or, when none is, to the stream that then failed or parked), which
credits a failed stream's waits to the next stream that commits a page.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

import click
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn
from rich.table import Column

from dm_pipeline.http.policy import RetryPolicy
from dm_pipeline.models import Account, StreamResult, StreamStatus, SyncResult

NOISY_WAIT_S = 1.0  # plain mode prints waits at least this long (shorter backoffs are only counted)
MARK = {StreamStatus.SUCCEEDED: "✓ done", StreamStatus.PARTIAL: "… budget spent, parked",
        StreamStatus.RATE_LIMITED: "⏸ rate-limited, parked", StreamStatus.FAILED: "✗",
        StreamStatus.SKIPPED_LOCKED: "- skipped: another run holds it"}
Ident = tuple[str, str]  # (account key, stream key)


@dataclass
class Waits:
    count: int = 0
    seconds: float = 0.0

    def add(self, other: Waits) -> None:
        self.count += other.count
        self.seconds += other.seconds

    def __str__(self) -> str:
        return f"{self.count} ({self.seconds:.0f}s)" if self.count else "0"

    def label(self) -> str:
        """For the live display: empty until there was a wait."""
        return f"{self.count} wait{'s' if self.count > 1 else ''} {self.seconds:.0f}s" if self.count else ""


def stream_line(s: StreamResult, waits: Waits | None = None) -> str:
    """One stream's outcome as a plain line."""
    line = (f"{s.account_key}  {s.stream_key}  {s.status.value}  pages={s.pages} events={s.received} "
            f"new={s.inserted} updated={s.updated}")
    if waits is not None:
        line += f" waits={waits}"
    if s.error_code:
        line += f" error={s.error_code}" + (f" http={s.http_status}" if s.http_status else "")
    if s.gap_suspected:
        line += " gap_suspected"
    if s.retry_at is not None:
        line += f" next_try={s.retry_at:%Y-%m-%d %H:%M:%S}Z"
    return line


def idle_line(result: SyncResult) -> str | None:
    """The account's streams that needed no request: dormant (the inbox vouched) or not due (backoff)."""
    parts = []
    if result.dormant:
        parts.append(f"{len(result.dormant)} dormant (the inbox keeps them current)")
    if result.not_due:
        parts.append(f"{len(result.not_due)} not due (idle, backing off)")
    return f"{result.account_key}  " + ", ".join(parts) + ": 0 requests" if parts else None


class SyncProgress:
    def __init__(self, console: Console, *, live: bool, sleep: Callable[[float], None] = time.sleep) -> None:
        self.console = console
        self.live = live
        self._sleep = sleep
        self._lock = threading.Lock()
        self.waits: dict[str, Waits] = {}             # per account: every wait
        self.stream_waits: dict[Ident, Waits] = {}    # per stream: the waits credited to it
        self._pending: dict[str, Waits] = {}          # per account: waits not credited yet (no stream started)
        self._running: dict[str, Ident] = {}          # per account: the stream started last (on_stream_start)
        self._current: dict[str, Ident] = {}          # per account: the stream shown as running
        self._tasks: dict[Ident, TaskID] = {}
        self._progress = Progress(
            SpinnerColumn(finished_text=" "),
            TextColumn("{task.description}", table_column=Column(ratio=1, min_width=20, no_wrap=True,
                                                                 overflow="ellipsis")),
            TextColumn("{task.fields[pages]:>5} pages {task.fields[events]:>7} events",
                       table_column=Column(no_wrap=True)),
            TextColumn("{task.fields[waits]}", table_column=Column(no_wrap=True)),
            TextColumn("{task.fields[note]}", table_column=Column(no_wrap=True)),
            console=console, transient=False, auto_refresh=live, disable=not live, expand=True,
        )

    # ------------------------------------------------------------------ context
    def __enter__(self) -> SyncProgress:
        if self.live:
            self._progress.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        if self.live:
            self._progress.stop()

    # ------------------------------------------------------------------ hooks
    def policy_for(self, account: Account) -> RetryPolicy:
        """The account's retry policy: the default one, whose sleeps are counted and shown."""
        key = account.key
        with self._lock:
            self.waits.setdefault(key, Waits())
            self._pending.setdefault(key, Waits())

        def sleep(seconds: float) -> None:
            with self._lock:
                self.waits[key].add(Waits(1, seconds))
                running = self._running.get(key)
                if running is not None:  # called on the account's thread, so during this stream
                    credited = self.stream_waits.setdefault(running, Waits())
                else:
                    credited = self._pending.setdefault(key, Waits())
                credited.add(Waits(1, seconds))
                label = credited.label() if running is not None else None
                total = self.waits[key].count
                shown = self._current.get(key, (key, "…"))
            if self.live:
                waits = {} if label is None else {"waits": label}
                self._update(shown, note=f"waiting {seconds:.0f}s (rate limit / retry)…", **waits)
            elif seconds >= NOISY_WAIT_S:
                where = f"{key}  {running[1]}" if running is not None else key
                click.echo(f"{where}  waiting {seconds:.0f}s (rate limit / retry; wait {total} of this account)")
            self._sleep(seconds)
            if self.live:
                self._update(shown, note="")

        return RetryPolicy(sleep=sleep)

    def on_stream_start(self, account_key: str, stream_key: str) -> None:
        """The engine starts a stream of the account (before its first request): the waits from now until
        the next start are this stream's. Called on the account's thread, like the fetches."""
        ident = (account_key, stream_key)
        with self._lock:
            previous = self._current.get(account_key)
            self._running[account_key] = self._current[account_key] = ident
            waits = self.stream_waits.setdefault(ident, Waits())
            # Waits of an engine that reported no start before this one: during the stream shown, if any.
            earlier = self._pending.pop(account_key, Waits())
            if earlier.count:
                self.stream_waits.setdefault(previous or ident, Waits()).add(earlier)
            placeholder = self._tasks.pop((account_key, "…"), None)
        if not self.live:
            return
        if placeholder is not None:
            self._progress.remove_task(placeholder)
        if previous and previous != ident and previous[1] != "…":
            self._finish(previous, "")  # its outcome is shown by on_done
        self._update(ident, waits=waits.label(), note="")

    def on_page(self, s: StreamResult) -> None:
        ident = (s.account_key, s.stream_key)
        with self._lock:
            previous = self._current.get(s.account_key)
            self._current[s.account_key] = ident
            waits = self.stream_waits.setdefault(ident, Waits())
            if self._running.get(s.account_key) is None:  # no stream starts reported: the approximate rule
                waits.add(self._pending.pop(s.account_key, Waits()))
            placeholder = self._tasks.pop((s.account_key, "…"), None)
        if not self.live:
            return
        if placeholder is not None:
            self._progress.remove_task(placeholder)
        if previous and previous != ident and previous[1] != "…":
            self._finish(previous, "")  # the streams of one account run one after the other
        self._update(ident, pages=s.pages, events=s.received, waits=waits.label(), note="")

    def on_done(self, result: SyncResult) -> None:
        with self._lock:
            self._running.pop(result.account_key, None)
            leftover = self._pending.pop(result.account_key, Waits())
            if leftover.count and result.streams:
                blamed = next((s for s in result.streams if s.status in {StreamStatus.FAILED,
                                                                          StreamStatus.RATE_LIMITED}),
                              result.streams[-1])
                self.stream_waits.setdefault((blamed.account_key, blamed.stream_key), Waits()).add(leftover)
            placeholder = self._tasks.pop((result.account_key, "…"), None)
        if self.live and placeholder is not None:
            self._progress.remove_task(placeholder)
        for s in result.streams:
            waits = self.stream_waits.get((s.account_key, s.stream_key), Waits())
            if self.live:
                note = MARK[s.status] + (f" {s.error_code}" if s.error_code else "")
                self._update((s.account_key, s.stream_key), pages=s.pages, events=s.received, waits=waits.label())
                self._finish((s.account_key, s.stream_key), note)
            else:
                click.echo(stream_line(s, waits))
        idle = idle_line(result)
        if idle and self.live:
            self.console.print(idle, markup=False)
        elif idle:
            click.echo(idle)

    # ------------------------------------------------------------------ tasks
    def _label(self, ident: Ident) -> str:
        account, stream = ident
        room = max(24, self.console.width - 54) - len(account) - 3
        if len(stream) > room > 12:  # keep both ends: conversation IDs differ at the end
            head = room // 2
            stream = stream[:head] + "…" + stream[-(room - head - 1):]
        return f"{account} › {stream}"

    def _task(self, ident: Ident) -> TaskID:
        with self._lock:
            task = self._tasks.get(ident)
            if task is None:
                task = self._progress.add_task(self._label(ident), total=None, pages=0, events=0, waits="", note="")
                self._tasks[ident] = task
            return task

    def _update(self, ident: Ident, **fields: object) -> None:
        self._progress.update(self._task(ident), **fields)  # type: ignore[arg-type]

    def _finish(self, ident: Ident, note: str) -> None:
        self._progress.update(self._task(ident), total=1, completed=1, note=note)
