"""Commit a stream's pages on a writer thread while the caller fetches the next ones.

The fetch of page n+1 needs only page n's cursor, not its commit, so the two overlap: the caller (HTTP,
parsing) hands each page to `submit`, the writer commits pages strictly in order, and whatever has queued up
while a commit ran goes into the next transaction together (group commit: one pipeline, one COMMIT, one
WAL flush for several pages). Crash safety is unchanged: every transaction holds whole pages with their
audit rows and the cursor after its last page, so committed pages are always a prefix of the pass and the
next run resumes from the last committed cursor. A crash can cost the pages still queued, never a gap.

`write_ahead=0` commits every page on the caller's thread before the next request (the serial order).

A foldable page (`PageWrite.fold`) that changed nothing commits its rows and cursor but no audit row; the
committer keeps its figures, and the range of IDs every committed page saw, for the stream's job row
(`job_figures`, docs/architecture.md §14).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

from dm_pipeline.db.writes import PageWrite

Committed = tuple[PageWrite, int, int]  # the page, rows inserted, rows updated
CommitGroup = Callable[[Sequence[PageWrite]], Sequence[tuple[int, int]]]  # one transaction; counts per page
_STOP = object()


class PageCommitter:
    """`commit` writes consecutive pages in one transaction (writes.commit_pages). `write_ahead` pages may
    wait for it; one transaction takes up to `max_group` of them."""

    def __init__(self, commit: CommitGroup, *, write_ahead: int, max_group: int = 16, name: str = "commit") -> None:
        self._commit = commit
        self._max_group = max(1, max_group)
        self._done: list[Committed] = []
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._abort = threading.Event()  # set when the caller is interrupted: commit nothing more
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max(1, write_ahead))
        self._thread: threading.Thread | None = None
        self.transactions = 0
        self._folded = 0                 # pages that wrote no audit row, and their credits
        self._folded_credits = 0
        self._newest: str | None = None  # the range of IDs the committed pages received
        self._oldest: str | None = None
        if write_ahead > 0:
            self._thread = threading.Thread(target=self._run, name=name, daemon=True)
            self._thread.start()

    def __enter__(self) -> PageCommitter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # Pages already fetched are valid: commit them even when the caller is leaving on an error.
        self.close(raise_error=exc is None)

    def submit(self, write: PageWrite) -> None:
        """Queue a page (blocks while `write_ahead` pages wait). Raises the writer's error, if it failed."""
        self.check()
        if self._thread is None:
            self._record([write], self._commit([write]))
            return
        self._queue.put(write)
        self.check()  # a put that waited may have been freed by a writer that failed meanwhile

    def check(self) -> None:
        """Raise the writer's error, if a commit failed (the caller asks before spending a request)."""
        if self._error is not None:
            raise self._error

    def committed(self) -> list[Committed]:
        """The pages committed since the last call, in order."""
        with self._lock:
            done, self._done = self._done, []
        return done

    def close(self, raise_error: bool = True) -> None:
        """Commit what is queued and stop the writer. Interrupted (Ctrl-C, a terminating run), it lets the
        transaction in flight finish, drops the rest and still waits: the caller releases the stream's lock
        next, and no commit of this stream may land after that."""
        if self._thread is not None:
            try:
                self._queue.put(_STOP)
                self._thread.join()
            except BaseException:
                self._abort.set()
                while self._thread.is_alive():
                    self._drain()
                    self._thread.join(0.05)
                raise
            finally:
                if not self._thread.is_alive():
                    self._thread = None
        if raise_error:
            self.check()

    def _drain(self) -> None:
        """Drop what is queued and ask the writer to stop."""
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_STOP)

    def job_figures(self) -> dict[str, Any]:
        """The job row's share of the committed pages: how many wrote no audit row (a one-page pass that
        changed nothing) and their credits, and the newest and oldest IDs all of them received."""
        with self._lock:
            return {"folded_pages": self._folded, "credits": self._folded_credits, "newest_id": self._newest,
                    "oldest_id": self._oldest}

    def _record(self, group: Sequence[PageWrite], counts: Sequence[tuple[int, int]]) -> None:
        with self._lock:
            for w, (i, u) in zip(group, counts, strict=True):
                self._done.append((w, i, u))
                if w.fold and not i and not u:  # as the page statement decided: no audit row
                    self._folded += 1
                    self._folded_credits += w.audit.credits
                if w.audit.newest_id is not None and (self._newest is None
                                                      or int(w.audit.newest_id) > int(self._newest)):
                    self._newest = w.audit.newest_id
                if w.audit.oldest_id is not None and (self._oldest is None
                                                      or int(w.audit.oldest_id) < int(self._oldest)):
                    self._oldest = w.audit.oldest_id
            self.transactions += 1

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                return
            group: list[PageWrite] = [first]  # type: ignore[list-item]
            while len(group) < self._max_group:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                group.append(item)  # type: ignore[arg-type]
            if self._abort.is_set():
                return
            try:
                self._record(group, self._commit(group))
            except BaseException as exc:  # handed to the caller's thread and raised there
                self._error = exc
                # Keep draining so a caller blocked in submit() wakes up and sees the error.
                while not stopping and self._queue.get() is not _STOP:
                    pass
                return
